//! HUATUO's tracer API, for scripts written against HUATUO: `GET /tracers` and
//! `PUT /tracers/{name}/start|stop` (204; 404 unknown; 409 already so), with HUATUO's
//! `{"data": ...}` / `{"error": {"code", "message"}}` envelope. A tracer is a plugin.

use std::net::SocketAddr;
use std::sync::Arc;

use serde_json::json;
use warp::Filter;
use warp::http::StatusCode;
use warp::reply::Response;

use super::{AppState, control, json_reply};

/// HUATUO's `flag` bits: `FlagTracing` and `FlagMetric`.
const FLAG_TRACING: u32 = 1;
const FLAG_METRIC: u32 = 2;

pub(super) fn routes(
    state: Arc<AppState>,
) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone + Send + Sync + 'static {
    let list_state = state.clone();
    let list = warp::path!("tracers")
        .and(warp::get())
        .then(move || {
            let state = list_state.clone();
            async move {
                let mut data = serde_json::Map::new();
                for handle in state.manager.handles().await {
                    let info = &handle.spec.info;
                    let view = handle.view();
                    let flag = if info.kinds.tracing { FLAG_TRACING } else { 0 }
                        | if info.kinds.metric { FLAG_METRIC } else { 0 };
                    data.insert(
                        info.name.clone(),
                        json!({
                            "name": info.name,
                            "running": matches!(view.state, crate::plugins::stats::PluginState::Running),
                            "hit": view.hits,
                            "restart_interval": info.restart_interval_secs,
                            "flag": flag,
                        }),
                    );
                }
                json_reply(StatusCode::OK, &json!({"data": data}))
            }
        });
    let command = warp::path!("tracers" / String / String)
        .and(warp::put())
        .and(super::server::client_addr())
        .and(warp::header::optional::<String>("authorization"))
        .then(
            move |name: String,
                  action: String,
                  remote: Option<SocketAddr>,
                  auth: Option<String>| {
                let state = state.clone();
                async move { control(&state, &name, &action, remote, auth.as_deref()).await }
            },
        );
    list.or(command).unify()
}
