//! Test guest: loops forever in its first timer call. The host must stop it at the
//! per-call deadline, restart it with back-off, then quarantine it.

use std::time::Duration;

use kpulse_sdk::prelude::*;

struct Spin;

kpulse_sdk::register!(Spin {
    name: "spin",
    version: "0.1.0",
    interval: 1,
    kinds: [tracing],
    capabilities: [],
    summary: "Test guest: infinite loop on a timer",
});

impl Plugin for Spin {
    fn init(_config: Config) -> Result<Self> {
        Ok(Spin)
    }
}

impl Tracing for Spin {
    fn start(&mut self, ctx: &mut Context) -> Result<()> {
        ctx.after(Duration::from_millis(20))?;
        Ok(())
    }

    fn on_timer(&mut self, _ctx: &mut Context, _timer: TimerId) -> Result<()> {
        let mut n: u64 = 0;
        loop {
            n = std::hint::black_box(n.wrapping_add(1));
        }
    }
}
