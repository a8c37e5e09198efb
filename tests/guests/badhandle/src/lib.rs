//! Test guest: hands the host a timer handle it never got. The host's imports are
//! trappable, so this must trap the instance (and be reported), not answer a made-up id.

use kpulse_sdk::bindings::kpulse::plugin::clock::Timer;
use kpulse_sdk::prelude::*;

#[derive(Default)]
struct BadHandle;

kpulse_sdk::register!(BadHandle {
    name: "badhandle",
    interval: 1,
    kinds: [tracing],
});

impl Tracing for BadHandle {
    fn start(&mut self, _ctx: &mut Context) -> Result<()> {
        // SAFETY: deliberately forging a handle the host did not hand out (the test).
        #[allow(unsafe_code, reason = "the point of this guest is a forged handle")]
        let forged = unsafe { Timer::from_handle(4242) };
        let id = forged.id();
        kpulse_sdk::log::info(&format!("the host answered a forged handle with id {id}"));
        std::mem::forget(forged);
        Ok(())
    }
}
