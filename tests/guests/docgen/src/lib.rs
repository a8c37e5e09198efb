//! Benchmark guest: saves `per_tick` event documents every `tick_ms` milliseconds (config),
//! shaped like the `example` collector's, to measure the storage path end to end (guest
//! `storage.save` → local store and OpenSearch sink → indexed).

use std::time::Duration;

use kpulse_sdk::prelude::*;

struct DocGen {
    per_tick: u64,
    tick_ms: u64,
    saved: u64,
    refused: u64,
}

kpulse_sdk::register!(DocGen {
    name: "docgen",
    version: "0.1.0",
    interval: 1,
    kinds: [tracing, metric],
    capabilities: [],
    summary: "Benchmark guest: documents at a fixed rate",
});

impl Plugin for DocGen {
    fn init(config: Config) -> Result<Self> {
        Ok(DocGen {
            per_tick: config.get_or("per_tick", 10)?,
            tick_ms: config.get_or("tick_ms", 10)?,
            saved: 0,
            refused: 0,
        })
    }
}

impl Tracing for DocGen {
    fn start(&mut self, ctx: &mut Context) -> Result<()> {
        ctx.every(Duration::from_millis(self.tick_ms))?;
        Ok(())
    }

    fn on_timer(&mut self, _ctx: &mut Context, _timer: TimerId) -> Result<()> {
        for _ in 0..self.per_tick {
            let n = self.saved + self.refused;
            let data = serde_json::json!({
                "running": n % 7,
                "running_per_cpu": 1.5,
                "load1": 0.42,
                "mem_available_bytes": 1_234_567_890u64,
                "runnable": [{"pid": n % 30_000, "comm": "kworker/0:1"}, {"pid": 42, "comm": "bash"}],
            });
            match storage::save("docgen", "", std::time::SystemTime::now(), &data) {
                Ok(_) => self.saved += 1,
                Err(_) => self.refused += 1,
            }
        }
        Ok(())
    }
}

impl Collector for DocGen {
    fn update(&mut self) -> Result<Vec<Metric>> {
        Ok(vec![
            metric::counter("saved", self.saved as f64, "Documents saved."),
            metric::counter("refused", self.refused as f64, "Saves refused by the host."),
        ])
    }
}
