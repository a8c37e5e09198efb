//! Benchmark guest: saves `per_tick` event documents every `tick_ms` milliseconds (config),
//! shaped like the `example` collector's, to measure the storage path end to end (guest
//! `storage.save` → local store and OpenSearch sink → indexed).
//!
//! It also times every `storage::save` call with the host's monotonic clock (the call as a
//! plugin sees it: the SDK's JSON encoding of the document and the host call) and exports,
//! on each `update`, the latency quantiles of the saves since the previous `update` (so a
//! scrape at the start and one at the end of a run give the run's figures), plus cumulative
//! counters for the mean.
//!
//! With `conflict_every = N`, every N-th document carries a string where the index maps a
//! number, which OpenSearch rejects (the fault matrix's mapping conflict).

use std::time::Duration;

use kpulse_sdk::prelude::*;

struct DocGen {
    per_tick: u64,
    tick_ms: u64,
    /// Every `conflict_every`-th document (0: none) has a string where the index maps a
    /// number (`running`), so OpenSearch rejects it with a mapping conflict.
    conflict_every: u64,
    saved: u64,
    refused: u64,
    /// Nanoseconds spent in `storage::save`, all calls so far.
    save_ns_total: u64,
    /// Latencies of the saves since the last `update`.
    window: Histogram,
}

kpulse_sdk::register!(DocGen {
    name: "docgen",
    version: "0.1.0",
    interval: 1,
    kinds: [tracing, metric],
    capabilities: [],
    summary: "Benchmark guest: documents at a fixed rate, storage.save latency",
});

impl Plugin for DocGen {
    fn init(config: Config) -> Result<Self> {
        Ok(DocGen {
            per_tick: config.get_or("per_tick", 10)?,
            tick_ms: config.get_or("tick_ms", 10)?,
            conflict_every: config.get_or("conflict_every", 0)?,
            saved: 0,
            refused: 0,
            save_ns_total: 0,
            window: Histogram::new(),
        })
    }
}

impl Tracing for DocGen {
    fn start(&mut self, ctx: &mut Context) -> Result<()> {
        ctx.every(Duration::from_millis(self.tick_ms))?;
        Ok(())
    }

    fn on_timer(&mut self, ctx: &mut Context, _timer: TimerId) -> Result<()> {
        for _ in 0..self.per_tick {
            let n = self.saved + self.refused;
            let conflicting = self.conflict_every > 0 && n.is_multiple_of(self.conflict_every);
            let running = if conflicting {
                serde_json::json!("not a number")
            } else {
                serde_json::json!(n % 7)
            };
            let data = serde_json::json!({
                "running": running,
                "running_per_cpu": 1.5,
                "load1": 0.42,
                "mem_available_bytes": 1_234_567_890u64,
                "runnable": [{"pid": n % 30_000, "comm": "kworker/0:1"}, {"pid": 42, "comm": "bash"}],
            });
            let time = std::time::SystemTime::now();
            let started = ctx.monotonic_ns();
            let result = storage::save("docgen", "", time, &data);
            let took = ctx.monotonic_ns().saturating_sub(started);
            self.save_ns_total = self.save_ns_total.saturating_add(took);
            self.window.record(took);
            match result {
                Ok(_) => self.saved += 1,
                Err(_) => self.refused += 1,
            }
        }
        Ok(())
    }
}

impl Collector for DocGen {
    fn update(&mut self) -> Result<Vec<Metric>> {
        let window = std::mem::replace(&mut self.window, Histogram::new());
        let us = |ns: u64| ns as f64 / 1000.0;
        Ok(vec![
            metric::counter("saved", self.saved as f64, "Documents saved."),
            metric::counter("refused", self.refused as f64, "Saves refused by the host."),
            metric::counter(
                "save_seconds",
                self.save_ns_total as f64 / 1e9,
                "Time spent in storage.save, all calls.",
            ),
            metric::gauge(
                "save_latency_window_saves",
                window.count as f64,
                "storage.save calls since the previous scrape.",
            ),
            metric::gauge(
                "save_latency_p50_us",
                us(window.quantile(0.50)),
                "Median storage.save latency since the previous scrape (±1.6 %).",
            ),
            metric::gauge(
                "save_latency_p99_us",
                us(window.quantile(0.99)),
                "99th percentile of storage.save latency since the previous scrape (±1.6 %).",
            ),
            metric::gauge(
                "save_latency_p999_us",
                us(window.quantile(0.999)),
                "99.9th percentile of storage.save latency since the previous scrape (±1.6 %).",
            ),
            metric::gauge(
                "save_latency_max_us",
                us(window.max),
                "Slowest storage.save since the previous scrape.",
            ),
        ])
    }
}

/// Log-linear latency histogram (HDR style): exact below 64 ns, then 32 buckets per power of
/// two, so a quantile is within 1/64 (1.6 %) of the true value. Fixed size (1920 buckets),
/// whatever the rate or the time between scrapes.
struct Histogram {
    buckets: Vec<u64>,
    count: u64,
    max: u64,
}

const SUB_BITS: u32 = 5;
const SUB: usize = 1 << SUB_BITS;

impl Histogram {
    fn new() -> Self {
        Histogram {
            buckets: vec![0; bucket(u64::MAX) + 1],
            count: 0,
            max: 0,
        }
    }

    fn record(&mut self, ns: u64) {
        self.buckets[bucket(ns)] += 1;
        self.count += 1;
        self.max = self.max.max(ns);
    }

    /// The value at quantile `q` (0 to 1): the middle of its bucket, at most the maximum.
    fn quantile(&self, q: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let rank = ((q * self.count as f64).ceil() as u64).clamp(1, self.count);
        let mut seen = 0;
        for (index, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                let (low, high) = bounds(index);
                return (low + (high - low) / 2).min(self.max);
            }
        }
        self.max
    }
}

/// The bucket of `ns`: the value itself below 2·SUB, else the octave and the top SUB_BITS+1
/// bits.
fn bucket(ns: u64) -> usize {
    if ns < 2 * SUB as u64 {
        return ns as usize;
    }
    let shift = 63 - ns.leading_zeros() - SUB_BITS;
    ((shift as usize) << SUB_BITS) + (ns >> shift) as usize
}

/// The smallest and largest value of bucket `index`.
fn bounds(index: usize) -> (u64, u64) {
    if index < 2 * SUB {
        return (index as u64, index as u64);
    }
    let shift = (index >> SUB_BITS) - 1;
    let mantissa = (index % SUB + SUB) as u64;
    // The last bucket ends at u64::MAX: (64 << 58) wraps to 0.
    (mantissa << shift, ((mantissa + 1) << shift).wrapping_sub(1))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::*;

    #[test]
    fn buckets_are_contiguous_and_hold_their_values() {
        let mut next = 0u64;
        for index in 0..=bucket(u64::MAX) {
            let (low, high) = bounds(index);
            assert_eq!(low, next, "bucket {index}");
            assert_eq!(bucket(low), index);
            assert_eq!(bucket(high), index);
            next = high.wrapping_add(1);
        }
        assert_eq!(next, 0, "the last bucket ends at u64::MAX");
    }

    #[test]
    fn quantiles_are_within_the_resolution() {
        let mut h = Histogram::new();
        for us in 1..=1000u64 {
            h.record(us * 1000);
        }
        for (q, exact) in [(0.5, 500_000.0), (0.99, 990_000.0), (0.999, 999_000.0)] {
            let got = h.quantile(q) as f64;
            assert!(
                (got - exact).abs() / exact < 0.016,
                "q{q}: {got} vs {exact}"
            );
        }
        assert_eq!(h.quantile(1.0), 1_000_000);
        assert_eq!(h.max, 1_000_000);
        assert_eq!(Histogram::new().quantile(0.5), 0);
    }
}
