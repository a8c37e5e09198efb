//! Fault-injection test for the `net_rx_latency` collector: work in progress.
