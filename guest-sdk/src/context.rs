//! What a tracer can do from its entry points: arm timers and learn about the host.

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::Duration;

use crate::bindings::kpulse::plugin::{clock, host};
use crate::error::{Error, Result};

/// Identifies a timer in [`crate::Tracing::on_timer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TimerId(pub u64);

/// Facts about the host: hostname, region, kernel release, CPUs, boot time.
pub type HostInfo = host::HostInfo;

struct Armed {
    timer: clock::Timer,
    one_shot: bool,
}

thread_local! {
    /// Timers stay armed while their handle lives; the SDK keeps the handles.
    static TIMERS: RefCell<HashMap<u64, Armed>> = RefCell::new(HashMap::new());
}

/// Handed to every tracing entry point.
#[derive(Debug, Default)]
pub struct Context {
    _private: (),
}

impl Context {
    pub(crate) fn new() -> Self {
        Self { _private: () }
    }

    /// Fires `on_timer` every `period`, first after one period.
    pub fn every(&mut self, period: Duration) -> Result<TimerId> {
        arm(period, Some(period))
    }

    /// Fires `on_timer` once after `delay`.
    pub fn after(&mut self, delay: Duration) -> Result<TimerId> {
        arm(delay, None)
    }

    /// Stops a timer.
    pub fn cancel(&mut self, timer: TimerId) {
        if let Some(armed) = TIMERS.with(|t| t.borrow_mut().remove(&timer.0)) {
            armed.timer.cancel();
        }
    }

    /// Facts about the host.
    pub fn host(&self) -> HostInfo {
        host::info()
    }

    /// Wall-clock time, nanoseconds since the Unix epoch.
    pub fn now_ns(&self) -> u64 {
        clock::now_ns()
    }

    /// Monotonic time in nanoseconds (the clock of BPF's `bpf_ktime_get_ns`).
    pub fn monotonic_ns(&self) -> u64 {
        clock::monotonic_ns()
    }
}

fn arm(after: Duration, every: Option<Duration>) -> Result<TimerId> {
    let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    let timer = clock::Timer::arm(ms(after), every.map(ms))
        .map_err(|code| Error::host(code, "arm timer"))?;
    let id = timer.id();
    TIMERS.with(|t| {
        t.borrow_mut().insert(
            id,
            Armed {
                timer,
                one_shot: every.is_none(),
            },
        )
    });
    Ok(TimerId(id))
}

/// Forgets a one-shot timer once it fired.
pub(crate) fn fired(id: u64) {
    TIMERS.with(|t| {
        let mut timers = t.borrow_mut();
        if timers.get(&id).is_some_and(|armed| armed.one_shot) {
            timers.remove(&id);
        }
    });
}
