//! Integration tests: the real `kpulse` binary, real components built from `plugins/` and
//! `tests/guests/`, real HTTP, `promtool` and a real Prometheus server.
//! One test binary (wasmtime's `tests/all` layout) to keep linking fast.

#![allow(clippy::unwrap_used, reason = "tests: a failed step should panic")]

mod autotracing_cpu;
mod autotracing_dload;
mod autotracing_iotracing;
mod autotracing_memburst;
mod bpf;
mod capabilities;
mod cli;
mod config;
mod containers;
mod containment;
mod contract;
mod dashboards;
mod deploy;
mod deploy_kubernetes;
mod elasticsearch;
mod events_dropwatch;
mod events_hungtask;
mod events_lacp;
mod events_memreclaim;
mod events_net_rx_latency;
mod events_netdev_events;
mod events_oom;
mod events_replay_new;
mod events_sched_tick;
mod events_softirq;
mod events_softlockup;
mod events_tcp_retransmit;
mod fault_matrix;
mod hot_reload;
mod http_hardening;
mod metrics;
mod metrics_bpf;
mod metrics_catalogue;
mod metrics_container;
mod metrics_container_net;
mod metrics_fs;
mod metrics_host;
mod metrics_host2;
mod metrics_iolatency;
mod metrics_net;
mod metrics_vs_node_exporter;
mod openapi;
mod opensearch;
mod opensearch_secure;
mod profiler_faults;
mod profiles;
mod record_replay;
mod sdk_outside;
mod security;
mod shutdown;
mod status_page;
mod store;
mod store_faults;
