//! HTTP server self-metrics, as HUATUO and node_exporter users expect:
//! `<prefix>_http_server_requests_total{route,method,status}` and
//! `<prefix>_http_server_request_duration_seconds{route,method}`. Routes are the API's
//! templates (`/plugins/{name}/{action}`), never raw paths, so a client cannot grow the
//! series count.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: &'static str,
    method: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: &'static str,
    method: String,
}

type HistogramFamily = Family<RouteLabels, Histogram, fn() -> Histogram>;

/// The two families, registered once.
#[derive(Clone, Debug)]
pub struct HttpMetrics {
    requests: Family<RequestLabels, Counter>,
    duration: HistogramFamily,
}

fn histogram() -> Histogram {
    // 0.5 ms to ~8 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 15))
}

impl HttpMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            requests: Family::default(),
            duration: Family::new_with_constructor(histogram as fn() -> Histogram),
        };
        registry.register(
            "http_server_requests",
            "HTTP requests answered, by route template, method and status.",
            metrics.requests.clone(),
        );
        registry.register(
            "http_server_request_duration_seconds",
            "Time to the response head, by route template and method.",
            metrics.duration.clone(),
        );
        metrics
    }

    pub fn observe(&self, path: &str, method: &str, status: u16, seconds: f64) {
        let route = route(path);
        let method = if matches!(method, "GET" | "PUT" | "POST" | "DELETE" | "HEAD") {
            method.to_owned()
        } else {
            "other".to_owned()
        };
        self.requests
            .get_or_create(&RequestLabels {
                route,
                method: method.clone(),
                status,
            })
            .inc();
        self.duration
            .get_or_create(&RouteLabels { route, method })
            .observe(seconds);
    }
}

/// The route template a path belongs to.
pub fn route(path: &str) -> &'static str {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    match parts.as_slice() {
        [""] => "/",
        ["metrics"] => "/metrics",
        ["healthz"] => "/healthz",
        ["readyz"] => "/readyz",
        ["version"] => "/version",
        ["status"] => "/status",
        ["events"] => "/events",
        ["events", "watch"] => "/events/watch",
        ["v1", "events", "watch"] => "/v1/events/watch",
        ["plugins"] => "/plugins",
        ["plugins", _, _] => "/plugins/{name}/{action}",
        ["tracers"] => "/tracers",
        ["tracers", _, _] => "/tracers/{name}/{action}",
        ["containers"] => "/containers",
        ["containers", "json"] => "/containers/json",
        ["tasks"] => "/tasks",
        ["tasks", _] => "/tasks/{id}",
        ["profiles", _] => "/profiles/{file}",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::route;

    #[test]
    fn paths_map_to_templates_and_the_rest_to_other() {
        assert_eq!(route("/"), "/");
        assert_eq!(route("/plugins/oom/stop"), "/plugins/{name}/{action}");
        assert_eq!(route("/events/watch"), "/events/watch");
        assert_eq!(route("/no/such/thing/at/all"), "other");
        assert_eq!(route("/metrics/"), "/metrics");
    }
}
