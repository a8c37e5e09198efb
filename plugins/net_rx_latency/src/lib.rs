//! `net_rx_latency`: work in progress.
