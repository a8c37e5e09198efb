//! Test guest: panics in its first timer call. The panic message must reach the
//! operator through `/plugins` `last_error`.

use std::time::Duration;

use kpulse_sdk::prelude::*;

struct Panicker;

kpulse_sdk::register!(Panicker {
    name: "panicker",
    version: "0.1.0",
    interval: 1,
    kinds: [tracing],
    capabilities: [],
    summary: "Test guest: panics on a timer",
});

impl Plugin for Panicker {
    fn init(_config: Config) -> Result<Self> {
        Ok(Panicker)
    }
}

impl Tracing for Panicker {
    fn start(&mut self, ctx: &mut Context) -> Result<()> {
        ctx.after(Duration::from_millis(20))?;
        Ok(())
    }

    fn on_timer(&mut self, _ctx: &mut Context, _timer: TimerId) -> Result<()> {
        panic!("deliberate panic in on_timer");
    }
}
