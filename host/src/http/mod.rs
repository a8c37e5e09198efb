//! The HTTP API (warp): the status page (`/`), `/metrics`, health, `/plugins`, `/events`
//! and its live stream, `/containers`, and HUATUO's `/tracers` and `/containers/json`.
//!
//! Mutating endpoints (`PUT /plugins/{name}/start|stop`) answer loopback clients only,
//! unless a bearer token is configured, in which case any client presenting it may call them.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use chrono::{DateTime, Utc};
use serde_json::json;
use warp::Filter;
use warp::http::StatusCode;
use warp::reply::{Reply, Response};

pub mod basic_auth;
mod cloudevents;
mod profiles;
mod rate_limit;
pub mod requests;
pub mod server;
mod status;
mod tasks;
mod tracers;
mod watch;
pub mod web_config;

use crate::metrics::{Exposition, OPENMETRICS_CONTENT_TYPE, TEXT_CONTENT_TYPE};
use crate::plugins::PluginManager;
use crate::plugins::stats::PluginState;
use crate::storage::{EventQuery, Store};

/// Largest `limit` accepted by `/events`.
pub const MAX_EVENTS_LIMIT: usize = 10_000;

/// What the handlers share.
pub struct AppState {
    pub manager: Arc<PluginManager>,
    pub store: Store,
    /// The OpenSearch sink, when configured (`GET /events?source=opensearch`).
    pub opensearch: Option<Arc<crate::sinks::opensearch::OpenSearchSink>>,
    pub exposition: Exposition,
    pub bearer_token: Option<crate::config::Secret>,
    /// Set once the initial plugin scan is done.
    pub ready: AtomicBool,
    /// The container registry (`GET /containers`, `GET /containers/json`).
    pub containers: crate::containers::Registry,
    /// Documents live watchers lost by falling behind (`GET /events/watch`).
    pub watch_dropped: prometheus_client::metrics::counter::Counter,
    /// Requests per route, method and status, and their durations.
    pub http_metrics: requests::HttpMetrics,
    /// The CPU profiler (`POST /tasks`).
    pub profiler: crate::profiler::Profiler,
}

/// Serves on `listener` until `shutdown` resolves, with the web config's TLS and basic auth
/// and `[http]`'s limits (see [`server`]).
pub async fn serve(
    state: Arc<AppState>,
    listener: tokio::net::TcpListener,
    security: web_config::WebSecurity,
    limits: server::Limits,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(
            %addr,
            tls = security.tls.is_some(),
            basic_auth = security.basic_auth.is_some(),
            "HTTP API listening"
        );
    }
    let http_metrics = state.http_metrics.clone();
    let observed = warp::log::custom(move |info: warp::log::Info<'_>| {
        http_metrics.observe(
            info.path(),
            info.method().as_str(),
            info.status().as_u16(),
            info.elapsed().as_secs_f64(),
        );
    });
    let metrics = state.http_metrics.clone();
    let bearer_token = state.bearer_token.clone();
    let service = warp::service(routes(state).with(observed));
    server::run(
        listener,
        service,
        security,
        bearer_token,
        limits,
        metrics,
        shutdown,
    )
    .await;
    Ok(())
}

/// One route the agent serves: a method and a path template (`{x}` is one path segment).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub method: &'static str,
    pub template: &'static str,
}

const fn route(method: &'static str, template: &'static str) -> Route {
    Route { method, template }
}

/// Every route of the HTTP API, in one place. [`routes`] serves only requests that match an
/// entry here (anything else is 404, or 405 for a known path), the request metrics label by
/// these templates, `kpulse routes` prints them, and tests/integration/openapi.rs checks them
/// against docs/openapi.yaml both ways: a filter added without an entry here is unreachable,
/// and an entry here without a documented operation fails that test.
pub const ROUTES: &[Route] = &[
    route("GET", "/"),
    route("GET", "/status"),
    route("GET", "/metrics"),
    route("GET", "/healthz"),
    route("GET", "/readyz"),
    route("GET", "/version"),
    route("GET", "/plugins"),
    route("PUT", "/plugins/{name}/{action}"),
    route("GET", "/tracers"),
    route("PUT", "/tracers/{name}/{action}"),
    route("GET", "/containers"),
    route("GET", "/containers/json"),
    route("GET", "/events"),
    route("GET", "/events/watch"),
    route("POST", "/v1/events/watch"),
    route("GET", "/profiles/{file}"),
    route("GET", "/tasks"),
    route("POST", "/tasks"),
    route("GET", "/tasks/{id}"),
    route("DELETE", "/tasks/{id}"),
];

/// Whether `path` fits `template`: literal segments equal, `{x}` any non-empty segment.
/// Leading and trailing slashes are ignored, as warp's path filters ignore them.
fn fits(template: &str, path: &str) -> bool {
    let mut want = template.trim_matches('/').split('/');
    let mut got = path.trim_matches('/').split('/');
    loop {
        match (want.next(), got.next()) {
            (None, None) => return true,
            (Some(w), Some(g)) if w.starts_with('{') && w.ends_with('}') => {
                if g.is_empty() {
                    return false;
                }
            }
            (Some(w), Some(g)) if w == g => {}
            _ => return false,
        }
    }
}

/// The template of [`ROUTES`] that `path` belongs to, literal templates first (so that a
/// fixed path wins over a `{x}` one of the same length).
pub fn template_of(path: &str) -> Option<&'static str> {
    let literal = ROUTES
        .iter()
        .find(|r| !r.template.contains('{') && fits(r.template, path));
    literal
        .or_else(|| ROUTES.iter().find(|r| fits(r.template, path)))
        .map(|r| r.template)
}

/// A known path asked with a method [`ROUTES`] does not list for it: 405 with `Allow`.
#[derive(Debug)]
struct MethodNotInTable {
    /// The methods the table lists for the path (RFC 9110 requires them in `Allow`).
    allow: String,
}
impl warp::reject::Reject for MethodNotInTable {}

/// Lets through only requests that [`ROUTES`] lists.
fn listed() -> impl Filter<Extract = (), Error = warp::Rejection> + Clone + Send + Sync + 'static {
    warp::method()
        .and(warp::path::full())
        .and_then(
            |method: warp::http::Method, path: warp::path::FullPath| async move {
                let path = path.as_str();
                let known: Vec<&Route> = ROUTES.iter().filter(|r| fits(r.template, path)).collect();
                if known.is_empty() {
                    Err(warp::reject::not_found())
                } else if known.iter().any(|r| r.method == method.as_str()) {
                    Ok(())
                } else {
                    let mut allow: Vec<&str> = known.iter().map(|r| r.method).collect();
                    allow.dedup();
                    Err(warp::reject::custom(MethodNotInTable {
                        allow: allow.join(", "),
                    }))
                }
            },
        )
        .untuple_one()
}

/// All routes; public for tests and benches.
pub fn routes(
    state: Arc<AppState>,
) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone + Send + Sync + 'static {
    let with_state = {
        let state = state.clone();
        warp::any().map(move || state.clone())
    };

    let metrics = warp::path!("metrics")
        .and(warp::get())
        .and(warp::header::optional::<String>("accept"))
        .and(with_state.clone())
        .then(|accept: Option<String>, state: Arc<AppState>| async move {
            let openmetrics = accept.is_some_and(|a| a.contains("application/openmetrics-text"));
            let body = state
                .exposition
                .scrape(&state.manager, &state.store, openmetrics)
                .await;
            let content_type = if openmetrics {
                OPENMETRICS_CONTENT_TYPE
            } else {
                TEXT_CONTENT_TYPE
            };
            warp::reply::with_header(body, "content-type", content_type).into_response()
        });

    let healthz = warp::path!("healthz")
        .and(warp::get())
        .map(|| StatusCode::NO_CONTENT.into_response());

    let readyz = warp::path!("readyz")
        .and(warp::get())
        .and(with_state.clone())
        .map(|state: Arc<AppState>| {
            if state.ready.load(Ordering::Acquire) {
                StatusCode::NO_CONTENT.into_response()
            } else {
                json_reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &json!({"status": "not ready"}),
                )
            }
        });

    let version = warp::path!("version").and(warp::get()).map(|| {
        json_reply(
            StatusCode::OK,
            &json!({"data": {
                "version": crate::build_info::VERSION,
                "wit": crate::build_info::WIT_PACKAGE,
                "wasmtime": crate::build_info::WASMTIME,
                "rustc": crate::build_info::RUSTC,
            }}),
        )
    });

    let plugins = warp::path!("plugins")
        .and(warp::get())
        .and(with_state.clone())
        .then(|state: Arc<AppState>| async move {
            json_reply(StatusCode::OK, &state.manager.views().await)
        });

    let control = warp::path!("plugins" / String / String)
        .and(warp::put())
        .and(
            warp::ext::optional::<server::ClientAddr>()
                .map(|a: Option<server::ClientAddr>| a.map(|a| a.0)),
        )
        .and(warp::header::optional::<String>("authorization"))
        .and(with_state.clone())
        .then(
            |name: String,
             action: String,
             remote: Option<SocketAddr>,
             auth: Option<String>,
             state: Arc<AppState>| async move {
                control(&state, &name, &action, remote, auth.as_deref()).await
            },
        );

    // kpulse's view: every workload (containers, systemd units, other cgroups), all labels.
    // `?runtime=docker` filters by runtime, `?state=running` by state.
    let containers = warp::path!("containers")
        .and(warp::get())
        .and(warp::query::<HashMap<String, String>>())
        .and(with_state.clone())
        .map(|params: HashMap<String, String>, state: Arc<AppState>| {
            if let Some(key) = params
                .keys()
                .find(|k| !matches!(k.as_str(), "runtime" | "state"))
            {
                return error_reply(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    &format!("unknown parameter {key:?}; use runtime, state"),
                );
            }
            // A misspelt state would otherwise match nothing and look like an empty host.
            if let Some(wanted) = params
                .get("state")
                .filter(|s| !matches!(s.as_str(), "running" | "stopped"))
            {
                return error_reply(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    &format!("state must be running or stopped, got {wanted:?}"),
                );
            }
            let table = state.containers.snapshot();
            let listed: Vec<&crate::containers::Container> = table
                .containers()
                .iter()
                .map(|c| &**c)
                .filter(|c| {
                    params
                        .get("runtime")
                        .is_none_or(|r| c.runtime.as_str() == r)
                })
                .filter(|c| {
                    params.get("state").is_none_or(|s| match c.state {
                        crate::containers::State::Running => s == "running",
                        crate::containers::State::Stopped => s == "stopped",
                    })
                })
                .collect();
            json_reply(
                StatusCode::OK,
                &json!({"data": {
                    "generation": state.containers.generation(),
                    "containers": listed,
                }}),
            )
        });

    // HUATUO's shape: running containers only, `?container_id=` for one.
    let containers_json = warp::path!("containers" / "json")
        .and(warp::get())
        .and(warp::query::<HashMap<String, String>>())
        .and(with_state.clone())
        .map(|params: HashMap<String, String>, state: Arc<AppState>| {
            use crate::containers::huatuo;
            let table = state.containers.snapshot();
            let synced_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
            let wanted = params.get("container_id").filter(|id| !id.is_empty());
            let listed: Vec<_> = table
                .containers()
                .iter()
                .filter(|c| huatuo::listed(c))
                .filter(|c| wanted.is_none_or(|id| &c.id == id))
                .map(|c| huatuo::of(c, &synced_at))
                .collect();
            json_reply(StatusCode::OK, &json!({"data": listed}))
        });

    let events = warp::path!("events")
        .and(warp::get())
        .and(warp::query::<HashMap<String, String>>())
        .and(with_state)
        .then(
            |params: HashMap<String, String>, state: Arc<AppState>| async move {
                let query = match parse_event_query(&params) {
                    Ok(query) => query,
                    Err(message) => {
                        return error_reply(StatusCode::BAD_REQUEST, "bad_request", &message);
                    }
                };
                match params.get("source").map(String::as_str) {
                    None | Some("local") => {}
                    Some("opensearch") => {
                        let Some(sink) = &state.opensearch else {
                            return error_reply(
                                StatusCode::BAD_REQUEST,
                                "bad_request",
                                "source=opensearch needs [storage.opensearch] in the config",
                            );
                        };
                        return match sink.query(&query).await {
                            Ok(docs) => json_reply(StatusCode::OK, &docs),
                            Err(err) => {
                                error_reply(StatusCode::BAD_GATEWAY, "opensearch", &err.to_string())
                            }
                        };
                    }
                    Some(other) => {
                        return error_reply(
                            StatusCode::BAD_REQUEST,
                            "bad_request",
                            &format!("source must be local or opensearch, got {other:?}"),
                        );
                    }
                }
                let store = state.store.clone();
                let result = tokio::task::spawn_blocking(move || store.query(&query)).await;
                match result {
                    Ok(Ok(docs)) => json_reply(StatusCode::OK, &docs),
                    Ok(Err(err)) => {
                        error_reply(StatusCode::INTERNAL_SERVER_ERROR, "io", &err.to_string())
                    }
                    Err(err) => error_reply(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "internal",
                        &err.to_string(),
                    ),
                }
            },
        );

    listed()
        .and(
            metrics
                .or(healthz)
                .unify()
                .or(readyz)
                .unify()
                .or(version)
                .unify()
                .or(plugins)
                .unify()
                .or(control)
                .unify()
                .or(events)
                .unify()
                .or(containers)
                .unify()
                .or(containers_json)
                .unify()
                // Boxed halfway: one unboxed chain of this many filters overflows the trait solver.
                .boxed()
                .or(watch::route(state.clone()))
                .unify()
                .or(cloudevents::route(state.clone()))
                .unify()
                .or(tracers::routes(state.clone()))
                .unify()
                .or(profiles::routes(state.clone()))
                .unify()
                .or(status::route(state.clone()))
                .unify(),
        )
        .recover(|rejection: warp::Rejection| async move {
            let (status, message) = if rejection.is_not_found() {
                (StatusCode::NOT_FOUND, "no such endpoint".to_owned())
            } else if let Some(refused) = rejection.find::<MethodNotInTable>() {
                let mut reply = error_reply(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "request",
                    "method not allowed",
                );
                if let Ok(allow) = warp::http::HeaderValue::from_str(&refused.allow) {
                    reply.headers_mut().insert(warp::http::header::ALLOW, allow);
                }
                return Ok::<_, Infallible>(reply);
            } else if rejection.find::<warp::reject::MethodNotAllowed>().is_some() {
                (
                    StatusCode::METHOD_NOT_ALLOWED,
                    "method not allowed".to_owned(),
                )
            } else if rejection.find::<warp::reject::PayloadTooLarge>().is_some() {
                (
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "request body too large for this endpoint".to_owned(),
                )
            } else if rejection.find::<warp::reject::LengthRequired>().is_some() {
                (
                    StatusCode::LENGTH_REQUIRED,
                    "this endpoint needs a Content-Length".to_owned(),
                )
            } else if rejection.find::<warp::reject::InvalidQuery>().is_some() {
                (StatusCode::BAD_REQUEST, "invalid query string".to_owned())
            } else {
                (StatusCode::BAD_REQUEST, format!("{rejection:?}"))
            };
            Ok::<_, Infallible>(error_reply(status, "request", &message))
        })
        .unify()
}

/// Starts or stops plugin `name` for an authorised client: 204, or 403, 404, 409.
async fn control(
    state: &AppState,
    name: &str,
    action: &str,
    remote: Option<SocketAddr>,
    auth: Option<&str>,
) -> Response {
    if !authorized(state, remote, auth) {
        return error_reply(
            StatusCode::FORBIDDEN,
            "forbidden",
            "mutating endpoints answer loopback clients, or clients with the configured bearer token",
        );
    }
    let start = match action {
        "start" => true,
        "stop" => false,
        _ => {
            return error_reply(
                StatusCode::NOT_FOUND,
                "not_found",
                "action must be start or stop",
            );
        }
    };
    match state.manager.command(name, start).await {
        None => error_reply(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("no plugin named {name:?}"),
        ),
        Some(PluginState::Running | PluginState::Starting) if start => error_reply(
            StatusCode::CONFLICT,
            "conflict",
            "plugin is already running",
        ),
        Some(PluginState::Stopped) if !start => error_reply(
            StatusCode::CONFLICT,
            "conflict",
            "plugin is already stopped",
        ),
        Some(_) => StatusCode::NO_CONTENT.into_response(),
    }
}

fn authorized(state: &AppState, remote: Option<SocketAddr>, auth: Option<&str>) -> bool {
    if let Some(token) = &state.bearer_token {
        let presented = auth.and_then(|a| a.strip_prefix("Bearer "));
        if presented.is_some_and(|p| constant_time_eq(p.as_bytes(), token.expose().as_bytes())) {
            return true;
        }
    }
    remote.is_some_and(|addr| addr.ip().is_loopback())
}

use basic_auth::constant_time_eq;

/// The filters of `GET /events` from its query parameters (public for the fuzz targets).
#[doc(hidden)]
pub fn parse_event_query(params: &HashMap<String, String>) -> Result<EventQuery, String> {
    for key in params.keys() {
        if !matches!(
            key.as_str(),
            "tracer" | "container" | "since" | "until" | "limit" | "source"
        ) {
            return Err(format!(
                "unknown parameter {key:?}; use tracer, container, since, until, limit, source"
            ));
        }
    }
    let limit = match params.get("limit") {
        None => 100,
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_EVENTS_LIMIT).contains(n))
            .ok_or_else(|| format!("limit must be an integer from 1 to {MAX_EVENTS_LIMIT}"))?,
    };
    let time = |key: &str| -> Result<Option<DateTime<Utc>>, String> {
        params
            .get(key)
            .map(|v| {
                parse_time(v)
                    .ok_or_else(|| format!("{key} must be RFC 3339 or Unix seconds, got {v:?}"))
            })
            .transpose()
    };
    Ok(EventQuery {
        tracer: params.get("tracer").filter(|t| !t.is_empty()).cloned(),
        container: params.get("container").filter(|c| !c.is_empty()).cloned(),
        since: time("since")?,
        until: time("until")?,
        limit,
    })
}

/// RFC 3339, or Unix seconds (fractions allowed).
fn parse_time(value: &str) -> Option<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(value) {
        return Some(t.with_timezone(&Utc));
    }
    let seconds: f64 = value.parse().ok()?;
    if !seconds.is_finite() || seconds < 0.0 {
        return None;
    }
    DateTime::from_timestamp_millis((seconds * 1000.0) as i64)
}

fn json_reply<T: serde::Serialize>(status: StatusCode, value: &T) -> Response {
    warp::reply::with_status(warp::reply::json(value), status).into_response()
}

fn error_reply(status: StatusCode, code: &str, message: &str) -> Response {
    json_reply(
        status,
        &json!({"error": {"code": code, "message": message}}),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_fit_templates() {
        assert_eq!(template_of("/"), Some("/"));
        assert_eq!(template_of(""), Some("/"));
        assert_eq!(template_of("/metrics/"), Some("/metrics"));
        assert_eq!(
            template_of("/plugins/oom/stop"),
            Some("/plugins/{name}/{action}")
        );
        assert_eq!(template_of("/events/watch"), Some("/events/watch"));
        assert_eq!(template_of("/containers/json"), Some("/containers/json"));
        assert_eq!(template_of("/tasks/abc"), Some("/tasks/{id}"));
        assert_eq!(template_of("/plugins//stop"), None);
        assert_eq!(template_of("/plugins/oom"), None);
        assert_eq!(template_of("/no/such/thing/at/all"), None);
    }

    #[test]
    fn every_route_is_listed_once() {
        for (i, a) in ROUTES.iter().enumerate() {
            assert!(a.template.starts_with('/'), "{a:?}");
            assert!(ROUTES[i + 1..].iter().all(|b| b != a), "{a:?} listed twice");
        }
    }

    #[test]
    fn event_query_validation() {
        let params = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<HashMap<_, _>>()
        };
        let q = parse_event_query(&params(&[
            ("tracer", "oom"),
            ("since", "1700000000"),
            ("limit", "5"),
        ]))
        .expect("valid");
        assert_eq!(q.tracer.as_deref(), Some("oom"));
        assert_eq!(q.limit, 5);
        assert_eq!(q.since.map(|t| t.timestamp()), Some(1_700_000_000));
        assert!(parse_event_query(&params(&[("limit", "0")])).is_err());
        assert!(parse_event_query(&params(&[("since", "yesterday")])).is_err());
        assert!(parse_event_query(&params(&[("tracer_name", "x")])).is_err());
        let q = parse_event_query(&params(&[("until", "2024-01-01T00:00:00Z")])).expect("rfc3339");
        assert!(q.until.is_some());
    }
}
