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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

/// The request families and the hardening counters, registered once.
#[derive(Clone, Debug)]
pub struct HttpMetrics {
    requests: Family<RequestLabels, Counter>,
    duration: HistogramFamily,
    /// Requests refused with 429 by the per-client rate limit.
    pub rate_limited: Counter,
    /// TLS handshakes that failed or timed out (plain HTTP to the TLS port, bad client
    /// certificates, ...).
    pub tls_handshake_errors: Counter,
    closed: Family<ReasonLabels, Counter>,
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
            rate_limited: Counter::default(),
            tls_handshake_errors: Counter::default(),
            closed: Family::default(),
        };
        registry.register(
            "http_server_rate_limited",
            "HTTP requests refused with 429 by the per-client rate limit.",
            metrics.rate_limited.clone(),
        );
        registry.register(
            "http_server_tls_handshake_errors",
            "TLS handshakes on the HTTP API that failed or timed out.",
            metrics.tls_handshake_errors.clone(),
        );
        registry.register(
            "http_server_connections_closed",
            "Connections the HTTP API closed on a timeout: header_timeout (request head too slow), idle_timeout (keep-alive unused).",
            metrics.closed.clone(),
        );
        // Both reasons from the start, so that the family is there (at 0) before the first
        // timeout and `rate()` works.
        for reason in ["header_timeout", "idle_timeout"] {
            let _ = metrics.closed.get_or_create(&ReasonLabels { reason });
        }
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

    /// Counts a connection closed on a timeout (`header_timeout`, `idle_timeout`).
    pub fn connection_closed(&self, reason: &'static str) {
        self.closed.get_or_create(&ReasonLabels { reason }).inc();
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

/// The route template a path belongs to (one of [`super::ROUTES`]), or `other`.
pub fn route(path: &str) -> &'static str {
    super::template_of(path).unwrap_or("other")
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
