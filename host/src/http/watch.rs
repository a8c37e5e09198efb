//! `GET /events/watch`: every document saved from now on, as Server-Sent Events (`event:
//! document`, the stored JSON as `data`), filtered like `/events` by `tracer` (exact) and
//! `container` (id prefix). Each watcher reads from the store's broadcast at its own pace;
//! one that falls more than 1024 documents behind loses the oldest, gets an `event: dropped`
//! with how many, and the loss is counted in `<prefix>_events_watch_dropped_total`. Nothing
//! the agent does waits for a watcher.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast::error::RecvError;
use warp::Filter;
use warp::http::StatusCode;
use warp::reply::{Reply, Response};

use super::{AppState, error_reply};
use crate::storage::LiveDocument;

/// Keep-alive comment period (proxies close idle streams).
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// What a watcher asked for.
#[derive(Debug, Clone, Default)]
pub struct WatchFilter {
    pub tracer: Option<String>,
    pub container: Option<String>,
}

impl WatchFilter {
    pub fn parse(params: &HashMap<String, String>) -> Result<Self, String> {
        if let Some(key) = params
            .keys()
            .find(|k| !matches!(k.as_str(), "tracer" | "container"))
        {
            return Err(format!("unknown parameter {key:?}; use tracer, container"));
        }
        let given = |key: &str| params.get(key).filter(|v| !v.is_empty()).cloned();
        Ok(Self {
            tracer: given("tracer"),
            container: given("container"),
        })
    }

    pub fn matches(&self, doc: &LiveDocument) -> bool {
        self.tracer.as_deref().is_none_or(|t| t == doc.tracer)
            && self
                .container
                .as_deref()
                .is_none_or(|c| doc.container_id.starts_with(c))
    }
}

pub(super) fn route(
    state: Arc<AppState>,
) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone + Send + Sync + 'static {
    warp::path!("events" / "watch")
        .and(warp::get())
        .and(warp::query::<HashMap<String, String>>())
        .map(move |params: HashMap<String, String>| {
            let filter = match WatchFilter::parse(&params) {
                Ok(filter) => filter,
                Err(message) => {
                    return error_reply(StatusCode::BAD_REQUEST, "bad_request", &message);
                }
            };
            let receiver = state.store.watch();
            let dropped = state.watch_dropped.clone();
            let stream = futures_util::stream::unfold(
                (receiver, filter, dropped),
                |(mut receiver, filter, dropped)| async move {
                    loop {
                        let event = match receiver.recv().await {
                            Ok(doc) if filter.matches(&doc) => warp::sse::Event::default()
                                .event("document")
                                .data(doc.text.as_str()),
                            Ok(_) => continue,
                            Err(RecvError::Lagged(lost)) => {
                                dropped.inc_by(lost);
                                warp::sse::Event::default()
                                    .event("dropped")
                                    .data(lost.to_string())
                            }
                            Err(RecvError::Closed) => return None,
                        };
                        return Some((Ok::<_, Infallible>(event), (receiver, filter, dropped)));
                    }
                },
            );
            warp::sse::reply(warp::sse::keep_alive().interval(KEEP_ALIVE).stream(stream))
                .into_response()
        })
}
