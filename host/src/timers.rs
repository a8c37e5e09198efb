//! Guest timers, without WIT types: each armed timer is a tokio task that posts a firing to
//! the instance's mailbox. A firing waiting in the mailbox is not posted again, so a busy
//! plugin gets one firing, not a backlog.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::mpsc::UnboundedSender;
use tokio::task::AbortHandle;

use crate::plugins::actor::Call;

/// Timers one instance may hold at once.
pub const MAX_TIMERS: usize = 64;
/// Shortest timer period; anything faster is clamped, so a guest cannot flood its mailbox.
pub const MIN_TIMER_PERIOD: Duration = Duration::from_millis(10);

/// The host object behind a guest's `timer` handle.
#[derive(Debug)]
pub struct TimerHandle {
    pub id: u64,
}

/// Why a timer could not be armed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TimerError {
    #[error("more than {MAX_TIMERS} timers")]
    TooMany,
    #[error("a period of zero")]
    ZeroPeriod,
}

/// The timers of one instance; dropping it cancels them all.
pub struct Timers {
    /// Where firings go, tagged with the incarnation; `None` for throw-away instances
    /// (`describe` probes), whose timers never fire.
    mailbox: Option<(UnboundedSender<Call>, u64)>,
    runtime: tokio::runtime::Handle,
    next_id: u64,
    active: HashMap<u64, AbortHandle>,
}

impl Timers {
    pub fn new(
        mailbox: Option<(UnboundedSender<Call>, u64)>,
        runtime: tokio::runtime::Handle,
    ) -> Self {
        Self {
            mailbox,
            runtime,
            next_id: 1,
            active: HashMap::new(),
        }
    }

    /// The mailbox and incarnation firings go to (also used for BPF batches).
    pub fn mailbox(&self) -> Option<&(UnboundedSender<Call>, u64)> {
        self.mailbox.as_ref()
    }

    /// Arms a timer that fires once after `after`, then every `every` if given.
    pub fn arm(&mut self, after: Duration, every: Option<Duration>) -> Result<u64, TimerError> {
        if self.active.len() >= MAX_TIMERS {
            return Err(TimerError::TooMany);
        }
        if every.is_some_and(|period| period.is_zero()) {
            return Err(TimerError::ZeroPeriod);
        }
        let id = self.next_id;
        self.next_id += 1;
        let Some((mailbox, incarnation)) = self.mailbox.clone() else {
            return Ok(id);
        };
        let every = every.map(|period| period.max(MIN_TIMER_PERIOD));
        let pending = Arc::new(AtomicBool::new(false));
        let task = self.runtime.spawn(async move {
            let fire = || {
                if pending.swap(true, Ordering::AcqRel) {
                    return true;
                }
                mailbox
                    .send(Call::Timer {
                        incarnation,
                        id,
                        pending: pending.clone(),
                    })
                    .is_ok()
            };
            let start = tokio::time::Instant::now() + after;
            match every {
                None => {
                    tokio::time::sleep_until(start).await;
                    fire();
                }
                Some(period) => {
                    let mut ticks = tokio::time::interval_at(start, period);
                    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                    loop {
                        ticks.tick().await;
                        if !fire() {
                            break;
                        }
                    }
                }
            }
        });
        self.active.insert(id, task.abort_handle());
        Ok(id)
    }

    pub fn cancel(&mut self, id: u64) {
        if let Some(task) = self.active.remove(&id) {
            task.abort();
        }
    }
}

impl Drop for Timers {
    fn drop(&mut self) {
        for task in self.active.values() {
            task.abort();
        }
    }
}
