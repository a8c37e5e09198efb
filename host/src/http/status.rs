//! The status page (`GET /`): one HTML file with plain JavaScript, embedded in the binary
//! (no CDN, no build step), that reads the JSON API (`/status`, `/plugins`, `/containers`,
//! `/events`) and tails `/events/watch`. `GET /status` is the agent's health in one object.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde_json::json;
use warp::Filter;
use warp::http::StatusCode;
use warp::reply::{Reply, Response};

use super::{AppState, authorized, json_reply};

const PAGE: &str = include_str!("status.html");

pub(super) fn route(
    state: Arc<AppState>,
) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone + Send + Sync + 'static {
    let page_state = state.clone();
    let page = warp::path::end()
        .and(warp::get())
        .and(super::server::client_addr())
        .and(warp::header::optional::<String>("authorization"))
        .map(move |remote: Option<SocketAddr>, auth: Option<String>| {
            // Start/stop buttons only for a client whose PUT would be accepted.
            let can_control = authorized(&page_state, remote, auth.as_deref());
            let body = PAGE.replace(
                "/*KPULSE_CONFIG*/",
                &format!("window.KPULSE = {{ canControl: {can_control} }};"),
            );
            warp::reply::with_header(body, "content-type", "text/html; charset=utf-8")
                .into_response()
        });
    let status = warp::path!("status").and(warp::get()).then(move || {
        let state = state.clone();
        async move {
            let stats = state.store.stats();
            let table = state.containers.snapshot();
            let running = table
                .containers()
                .iter()
                .filter(|c| {
                    c.runtime.is_container() && c.state == crate::containers::State::Running
                })
                .count();
            let sink: Vec<_> = state
                .store
                .sink_metrics()
                .into_iter()
                .map(|m| json!({"name": m.name, "labels": m.labels, "value": m.value}))
                .collect();
            let plugins = state.manager.views().await;
            json_reply(
                StatusCode::OK,
                &json!({"data": {
                    "version": crate::build_info::VERSION,
                    "ready": state.ready.load(Ordering::Acquire),
                    "plugins": plugins.len(),
                    "containers_running": running,
                    "workloads": table.containers().len(),
                    "storage": {
                        "queued": stats.queued.load(Ordering::Relaxed),
                        "dropped_queue_full": stats.dropped_queue_full.load(Ordering::Relaxed),
                        "rejected_invalid": stats.rejected_invalid.load(Ordering::Relaxed),
                        "write_errors": stats.write_errors.load(Ordering::Relaxed),
                    },
                    "opensearch": state.opensearch.is_some().then_some(sink),
                    "watch_dropped": state.watch_dropped.get(),
                }}),
            )
        }
    });
    page.or(status).unify()
}
