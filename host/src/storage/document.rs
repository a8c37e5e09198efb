//! Validation of one `storage.save` and its enrichment into HUATUO's document shape.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;

use super::ids::IdGenerator;
use super::{DropCause, SaveError, SaveRequest};
use crate::hostinfo::HostInfo;

/// The stored document, field for field HUATUO's (`pkg/tracing/types.go`) plus `@timestamp`.
#[derive(Debug, Serialize)]
struct Document<'a> {
    #[serde(rename = "@timestamp")]
    timestamp: String,
    hostname: &'a str,
    region: &'a str,
    uploaded_time: String,
    time: String,
    #[serde(skip_serializing_if = "str::is_empty")]
    container_id: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    container_hostname: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    container_host_namespace: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    container_type: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    container_qos: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    container_name: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    container_image: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    pod_name: &'a str,
    /// The workload's cgroup (containers, systemd units and other cgroups alike).
    #[serde(skip_serializing_if = "str::is_empty")]
    cgroup_path: &'a str,
    tracer_name: &'a str,
    tracer_id: &'a str,
    tracer_time: String,
    tracer_type: &'a str,
    tracer_data: &'a serde_json::value::RawValue,
}

/// Validates `request` and builds its document; returns the new `tracer_id` and the JSON
/// line (without the newline), or the error with its drop cause (`too_large` or `invalid`).
pub(super) fn build(
    request: &SaveRequest<'_>,
    host: &HostInfo,
    max_document_bytes: usize,
    ids: &IdGenerator,
) -> Result<(String, String), (DropCause, SaveError)> {
    if request.data_json.len() > max_document_bytes {
        return Err((
            DropCause::TooLarge,
            SaveError::Invalid(format!(
                "tracer_data is {} bytes, above the {} byte limit",
                request.data_json.len(),
                max_document_bytes
            )),
        ));
    }
    validate(request).map_err(|err| (DropCause::Invalid, err))?;
    // Validated without building a tree, and embedded as the guest wrote it.
    let data: &serde_json::value::RawValue =
        serde_json::from_str(request.data_json).map_err(|err| {
            let err = SaveError::Invalid(format!("tracer_data is not JSON: {err}"));
            (DropCause::Invalid, err)
        })?;
    if !data.get().starts_with('{') {
        return Err((
            DropCause::Invalid,
            SaveError::Invalid("tracer_data must be a JSON object".to_owned()),
        ));
    }
    // One document, one line: NDJSON in the store, the spool and the bulk body. Valid JSON
    // has raw CR/LF only as whitespace between tokens (inside strings they are escaped), so
    // they become spaces; embedded as written, `{\n}` split the document and let a guest
    // start a line of the bulk body of its own (found by fuzz/fuzz_targets/wit_boundary.rs).
    if data.get().contains(['\n', '\r']) {
        let one_line =
            serde_json::value::RawValue::from_string(data.get().replace(['\n', '\r'], " "))
                .map_err(|err| {
                    let err = SaveError::Invalid(format!("tracer_data is not JSON: {err}"));
                    (DropCause::Invalid, err)
                })?;
        return encode(request, host, ids, &one_line).map_err(|err| (DropCause::Invalid, err));
    }
    encode(request, host, ids, data).map_err(|err| (DropCause::Invalid, err))
}

/// The tracer name and container id.
fn validate(request: &SaveRequest<'_>) -> Result<(), SaveError> {
    if !is_tracer_name(request.tracer_name) {
        return Err(SaveError::Invalid(format!(
            "tracer name {:?} must match [a-zA-Z0-9_.-]{{1,64}} and not start with '.'",
            request.tracer_name
        )));
    }
    if request.container.id.len() > 128 {
        return Err(SaveError::Invalid(
            "container id longer than 128 bytes".to_owned(),
        ));
    }
    Ok(())
}

/// The enriched document of a validated request.
fn encode(
    request: &SaveRequest<'_>,
    host: &HostInfo,
    ids: &IdGenerator,
    data: &serde_json::value::RawValue,
) -> Result<(String, String), SaveError> {
    let now = Utc::now();
    let tracer_time = time_from_ns(request.time_ns).unwrap_or(now);
    let tracer_id = ids.next(now);
    let huatuo_time = tracer_time
        .with_timezone(&chrono::Local)
        .format("%Y-%m-%d %H:%M:%S%.3f %z")
        .to_string();
    let document = Document {
        timestamp: tracer_time.to_rfc3339_opts(SecondsFormat::Millis, true),
        hostname: &host.hostname,
        region: &host.region,
        uploaded_time: now.to_rfc3339_opts(SecondsFormat::Millis, true),
        time: huatuo_time.clone(),
        container_id: request.container.id,
        container_hostname: request.container.hostname,
        container_host_namespace: request.container.host_namespace,
        container_type: request.container.container_type,
        container_qos: request.container.qos,
        container_name: request.container.name,
        container_image: request.container.image,
        pod_name: request.container.pod_name,
        cgroup_path: request.container.cgroup_path,
        tracer_name: request.tracer_name,
        tracer_id: &tracer_id,
        tracer_time: huatuo_time,
        tracer_type: request.run_type.as_str(),
        tracer_data: data,
    };
    let text = serde_json::to_string(&document)
        .map_err(|err| SaveError::Invalid(format!("cannot encode document: {err}")))?;
    Ok((tracer_id, text))
}

/// `[a-zA-Z0-9_.-]{1,64}`, not starting with `.`: safe as a file name.
pub(super) fn is_tracer_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

fn time_from_ns(ns: u64) -> Option<DateTime<Utc>> {
    if ns == 0 {
        return None;
    }
    let secs = i64::try_from(ns / 1_000_000_000).ok()?;
    DateTime::from_timestamp(secs, u32::try_from(ns % 1_000_000_000).ok()?)
}
