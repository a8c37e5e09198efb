//! HUATUO's `POST /v1/events/watch`: saved documents as CloudEvents 1.0 over Server-Sent
//! Events, for HUATUO users' consumers. The body `{"filters": {...}}` holds RE2-style regexes
//! on `tracer_name`, `hostname`, `container_hostname`, `container_host_namespace`,
//! `container_qos` and `region` (all must match; a missing field is the empty string). As in
//! HUATUO, `tracer_data` is not sent, a `: ping` comment comes every 30 s, and more than 100
//! clients get 429. A slow client loses the oldest documents like any `/events/watch`
//! client (counted in `<prefix>_events_watch_dropped_total`).

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use regex_automata::meta::Regex;
use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;
use warp::Filter;
use warp::http::StatusCode;
use warp::reply::{Reply, Response};

use super::{AppState, error_reply};

/// HUATUO's limit.
pub const MAX_CLIENTS: usize = 100;
const PING: Duration = Duration::from_secs(30);
const MAX_BODY: u64 = 64 * 1024;
const FIELDS: [&str; 6] = [
    "tracer_name",
    "hostname",
    "container_hostname",
    "container_host_namespace",
    "container_qos",
    "region",
];

/// The filters of one client.
#[derive(Debug)]
struct Filters(Vec<(&'static str, Regex)>);

impl Filters {
    fn parse(body: &[u8]) -> Result<Self, String> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self(Vec::new()));
        }
        let value: Value =
            serde_json::from_slice(body).map_err(|err| format!("body is not JSON: {err}"))?;
        let Some(filters) = value.get("filters") else {
            return Ok(Self(Vec::new()));
        };
        let Some(filters) = filters.as_object() else {
            return Err("filters must be an object".to_owned());
        };
        let mut out = Vec::new();
        for (key, pattern) in filters {
            let Some(field) = FIELDS.iter().find(|f| **f == key.as_str()) else {
                return Err(format!("unknown filter {key:?}; use {}", FIELDS.join(", ")));
            };
            let Some(pattern) = pattern.as_str() else {
                return Err(format!("filter {key:?} must be a string"));
            };
            if pattern.is_empty() {
                continue;
            }
            let regex =
                Regex::new(pattern).map_err(|err| format!("filter {key:?}: bad regex: {err}"))?;
            out.push((*field, regex));
        }
        Ok(Self(out))
    }

    fn matches(&self, doc: &Value) -> bool {
        self.0.iter().all(|(field, regex)| {
            regex.is_match(doc.get(*field).and_then(Value::as_str).unwrap_or(""))
        })
    }
}

/// HUATUO's event envelope for one stored document.
fn cloud_event(doc: &Value) -> Value {
    let text = |key: &str| doc.get(key).and_then(Value::as_str).unwrap_or("");
    json!({
        "specversion": "1.0",
        "type": "tech.huatuo.kernel.event",
        "source": format!("/huatuo/{}/{}", text("hostname"), text("tracer_name")),
        "id": text("tracer_id"),
        "time": text("@timestamp"),
        "datacontenttype": "application/json",
        "data": {
            "hostname": text("hostname"),
            "region": text("region"),
            "observed_timestamp": text("@timestamp"),
            "container_id": text("container_id"),
            "container_hostname": text("container_hostname"),
            "container_host_namespace": text("container_host_namespace"),
            "container_type": text("container_type"),
            "container_qos": text("container_qos"),
            "tracer_name": text("tracer_name"),
            "tracer_id": text("tracer_id"),
            "tracer_run_type": text("tracer_type"),
        },
    })
}

/// Holds a client's place in the count until its stream ends.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

pub(super) fn route(
    state: Arc<AppState>,
) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone + Send + Sync + 'static {
    let clients = Arc::new(AtomicUsize::new(0));
    warp::path!("v1" / "events" / "watch")
        .and(warp::post())
        .and(warp::body::content_length_limit(MAX_BODY))
        .and(warp::body::bytes())
        .map(move |body: bytes::Bytes| {
            let filters = match Filters::parse(&body) {
                Ok(filters) => filters,
                Err(message) => {
                    return error_reply(StatusCode::BAD_REQUEST, "bad_request", &message);
                }
            };
            if clients.fetch_add(1, Ordering::AcqRel) >= MAX_CLIENTS {
                clients.fetch_sub(1, Ordering::AcqRel);
                return error_reply(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too_many_clients",
                    &format!("at most {MAX_CLIENTS} clients watch at once"),
                );
            }
            let slot = Slot(clients.clone());
            let receiver = state.store.watch();
            let dropped = state.watch_dropped.clone();
            let stream = futures_util::stream::unfold(
                (receiver, filters, dropped, slot),
                |(mut receiver, filters, dropped, slot)| async move {
                    loop {
                        match receiver.recv().await {
                            Ok(doc) => {
                                let Ok(value) = serde_json::from_str::<Value>(&doc.text) else {
                                    continue;
                                };
                                if !filters.matches(&value) {
                                    continue;
                                }
                                let event = warp::sse::Event::default()
                                    .data(cloud_event(&value).to_string());
                                return Some((
                                    Ok::<_, Infallible>(event),
                                    (receiver, filters, dropped, slot),
                                ));
                            }
                            Err(RecvError::Lagged(lost)) => {
                                dropped.inc_by(lost);
                            }
                            Err(RecvError::Closed) => return None,
                        }
                    }
                },
            );
            warp::sse::reply(
                warp::sse::keep_alive()
                    .interval(PING)
                    .text(" ping")
                    .stream(stream),
            )
            .into_response()
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_are_regexes_on_known_fields() {
        let f =
            Filters::parse(br#"{"filters": {"tracer_name": "^oom$", "container_qos": "burst"}}"#)
                .expect("valid");
        assert!(f.matches(&json!({"tracer_name": "oom", "container_qos": "burstable"})));
        assert!(!f.matches(&json!({"tracer_name": "oomx", "container_qos": "burstable"})));
        assert!(!f.matches(&json!({"tracer_name": "oom"})));
        assert!(Filters::parse(b"").expect("empty").matches(&json!({})));
        assert!(Filters::parse(br#"{"filters": {"colour": "x"}}"#).is_err());
        assert!(Filters::parse(br#"{"filters": {"hostname": "("}}"#).is_err());
        assert!(Filters::parse(b"{not json").is_err());
    }

    #[test]
    fn the_envelope_leaves_tracer_data_out() {
        let event = cloud_event(&json!({
            "hostname": "h", "tracer_name": "oom", "tracer_id": "1", "tracer_type": "event",
            "@timestamp": "2026-12-02T00:00:00.000Z", "tracer_data": {"secret": 1}
        }));
        assert_eq!(event["source"], "/huatuo/h/oom");
        assert_eq!(event["data"]["tracer_run_type"], "event");
        assert!(event["data"].get("tracer_data").is_none());
    }
}
