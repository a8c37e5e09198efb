//! `GET /profiles/{tracer_id}.svg|.pb.gz|.folded`: a stored profile document (any with
//! `tracer_data.folded`: cpusys, cpuidle, on-demand tasks) as an SVG flame graph, as pprof,
//! or as its folded text. Rendered on demand from the local store; nothing is cached.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::Value;
use warp::Filter;
use warp::http::StatusCode;
use warp::reply::{Reply, Response};

use super::{AppState, error_reply};
use crate::profiler::model::Mode;
use crate::profiler::render::{self, ProfileInfo};
use crate::storage::EventQuery;

/// Documents per tracer scanned for the id: the store reads newest first from the id's
/// time backwards, so this bounds the work, not what can be found in practice.
const SCAN_LIMIT: usize = 10_000;

/// The renderings offered, by file suffix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Svg,
    Pprof,
    Folded,
}

impl Format {
    fn split(file: &str) -> Option<(&str, Format)> {
        [
            (".svg", Format::Svg),
            (".pb.gz", Format::Pprof),
            (".folded", Format::Folded),
        ]
        .into_iter()
        .find_map(|(suffix, format)| file.strip_suffix(suffix).map(|id| (id, format)))
    }
}

/// These routes and the tasks API's, boxed: the server's filter type is deep enough already.
pub(super) fn routes(state: Arc<AppState>) -> warp::filters::BoxedFilter<(Response,)> {
    super::tasks::routes(state.clone())
        .or(route(state))
        .unify()
        .boxed()
}

fn route(
    state: Arc<AppState>,
) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone + Send + Sync + 'static {
    warp::path!("profiles" / String)
        .and(warp::get())
        .then(move |file: String| {
            let state = state.clone();
            async move {
                let Some((id, format)) = Format::split(&file) else {
                    return error_reply(
                        StatusCode::NOT_FOUND,
                        "not_found",
                        "use /profiles/{tracer_id}.svg, .pb.gz or .folded",
                    );
                };
                let id = id.to_owned();
                let store = state.store.clone();
                match tokio::task::spawn_blocking(move || render_document(&store, &id, format))
                    .await
                {
                    Ok(Ok(response)) => response,
                    Ok(Err((status, code, message))) => error_reply(status, code, &message),
                    Err(err) => error_reply(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "internal",
                        &err.to_string(),
                    ),
                }
            }
        })
}

type Failure = (StatusCode, &'static str, String);

fn render_document(
    store: &crate::storage::Store,
    id: &str,
    format: Format,
) -> Result<Response, Failure> {
    let not_found = |message: String| (StatusCode::NOT_FOUND, "not_found", message);
    let doc = find(store, id)
        .map_err(|err| (StatusCode::INTERNAL_SERVER_ERROR, "io", err.to_string()))?
        .ok_or_else(|| not_found(format!("no document with tracer_id {id:?}")))?;
    let data = &doc["tracer_data"];
    let Some(text) = data["folded"].as_str() else {
        return Err(not_found(format!(
            "document {id} ({}) holds no profile: tracer_data.folded is missing",
            doc["tracer_name"].as_str().unwrap_or("?")
        )));
    };
    let info = info_of(&doc, id);
    let folded = render::parse_folded(text);
    if folded.skipped > 0 {
        tracing::debug!(tracer_id = %id, skipped = folded.skipped, "folded lines skipped");
    }
    let render_failed =
        |err: render::RenderError| (StatusCode::INTERNAL_SERVER_ERROR, "render", err.to_string());
    Ok(match format {
        Format::Folded => reply(text.to_owned().into_bytes(), "text/plain; charset=utf-8"),
        Format::Svg => reply(
            render::svg(&folded, &info).map_err(render_failed)?,
            "image/svg+xml",
        ),
        Format::Pprof => {
            let body = render::pprof_gz(&folded, &info).map_err(render_failed)?;
            let disposition = format!("attachment; filename=\"{id}.pb.gz\"");
            warp::reply::with_header(
                reply(body, "application/octet-stream"),
                "content-disposition",
                disposition,
            )
            .into_response()
        }
    })
}

fn reply(body: Vec<u8>, content_type: &'static str) -> Response {
    warp::reply::with_header(body, "content-type", content_type).into_response()
}

/// Title, mode and rate from the document (`tracer_data.profile` when present; a document
/// without it is taken as on-CPU at an unknown rate).
fn info_of(doc: &Value, id: &str) -> ProfileInfo {
    let profile = &doc["tracer_data"]["profile"];
    let mode = match profile["mode"].as_str() {
        Some("off_cpu") => Mode::OffCpu,
        _ => Mode::OnCpu,
    };
    let tracer = doc["tracer_name"].as_str().unwrap_or("profile");
    let workload = ["container_name", "container_hostname", "container_id"]
        .iter()
        .find_map(|key| doc[*key].as_str().filter(|s| !s.is_empty()));
    let title = match workload {
        Some(workload) => format!("{tracer} {workload} ({id})"),
        None => format!("{tracer} ({id})"),
    };
    let time_ns = doc["@timestamp"]
        .as_str()
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .and_then(|t| t.timestamp_nanos_opt())
        .and_then(|ns| u64::try_from(ns).ok())
        .unwrap_or(0);
    ProfileInfo {
        title,
        mode,
        frequency_hz: profile["frequency_hz"]
            .as_u64()
            .and_then(|hz| u32::try_from(hz).ok())
            .unwrap_or(0),
        duration_ns: profile["duration_ms"]
            .as_u64()
            .map_or(0, |ms| ms.saturating_mul(1_000_000)),
        time_ns,
    }
}

/// The document with `tracer_id`. The id's first 32 bits are the second it was saved in, and
/// a document's time is never later than that, so the scan starts there.
fn find(store: &crate::storage::Store, id: &str) -> std::io::Result<Option<Value>> {
    let Some(saved) = id_time(id) else {
        return Ok(None);
    };
    let query = EventQuery {
        tracer: None,
        container: None,
        since: None,
        until: Some(saved + chrono::Duration::seconds(1)),
        limit: SCAN_LIMIT,
    };
    Ok(store
        .query(&query)?
        .into_iter()
        .find(|doc| doc["tracer_id"].as_str() == Some(id)))
}

/// When a `tracer_id` (20 base32hex characters, xid-shaped) was generated; None for anything
/// else.
fn id_time(id: &str) -> Option<DateTime<Utc>> {
    const ALPHABET: &[u8; 32] = b"0123456789abcdefghijklmnopqrstuv";
    if id.len() != 20 {
        return None;
    }
    let mut bits: u64 = 0;
    for (i, byte) in id.bytes().enumerate() {
        let digit = ALPHABET.iter().position(|a| *a == byte)? as u64;
        // 7 characters = 35 bits hold the leading 32-bit seconds; the rest is only checked.
        if i < 7 {
            bits = (bits << 5) | digit;
        }
    }
    DateTime::from_timestamp(i64::try_from(bits >> 3).ok()?, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_split_into_id_and_format() {
        assert_eq!(Format::split("abc.svg"), Some(("abc", Format::Svg)));
        assert_eq!(Format::split("abc.pb.gz"), Some(("abc", Format::Pprof)));
        assert_eq!(Format::split("abc.folded"), Some(("abc", Format::Folded)));
        assert_eq!(Format::split("abc.png"), None);
    }

    #[test]
    fn ids_decode_to_their_second() {
        // 1_700_000_000 = 0x6553f100 as the first 4 bytes, base32hex: "cl9v2" ...
        let secs: u32 = 1_700_000_000;
        let mut bits: u128 = 0;
        for byte in secs.to_be_bytes().iter().chain(&[7u8; 8]) {
            bits = (bits << 8) | u128::from(*byte);
        }
        bits <<= 4;
        let alphabet = b"0123456789abcdefghijklmnopqrstuv";
        let id: String = (0..20)
            .rev()
            .map(|i| alphabet[((bits >> (i * 5)) & 31) as usize] as char)
            .collect();
        assert_eq!(id_time(&id).map(|t| t.timestamp()), Some(1_700_000_000));
        assert_eq!(id_time("short"), None);
        assert_eq!(id_time("ZZZZZZZZZZZZZZZZZZZZ"), None);
        assert_eq!(id_time("../../../../etc/pass"), None);
    }
}
