//! Test guest: allocates without bound in its first timer call. The host's memory cap must
//! trap it without affecting anything else.

use std::time::Duration;

use kpulse_sdk::prelude::*;

struct MemBomb {
    hoard: Vec<Vec<u8>>,
}

kpulse_sdk::register!(MemBomb {
    name: "membomb",
    version: "0.1.0",
    interval: 1,
    kinds: [tracing],
    capabilities: [],
    summary: "Test guest: unbounded allocation on a timer",
});

impl Plugin for MemBomb {
    fn init(_config: Config) -> Result<Self> {
        Ok(MemBomb { hoard: Vec::new() })
    }
}

impl Tracing for MemBomb {
    fn start(&mut self, ctx: &mut Context) -> Result<()> {
        ctx.after(Duration::from_millis(20))?;
        Ok(())
    }

    fn on_timer(&mut self, _ctx: &mut Context, _timer: TimerId) -> Result<()> {
        loop {
            let chunk = vec![0xa5u8; 1024 * 1024];
            self.hoard.push(std::hint::black_box(chunk));
        }
    }
}
