//! `kpulse:plugin/clock`: wall and monotonic time, and timers over [`crate::timers`].

use std::time::Duration;

use wasmtime::component::Resource;

use crate::timers::{TimerError, TimerHandle};
use crate::wit::{ErrorCode, clock};

use super::HostState;

impl clock::Host for HostState {
    fn now_ns(&mut self) -> wasmtime::Result<u64> {
        Ok(std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
            .unwrap_or(0))
    }

    fn monotonic_ns(&mut self) -> wasmtime::Result<u64> {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid out-pointer; CLOCK_MONOTONIC always exists on Linux.
        #[allow(unsafe_code, reason = "clock_gettime has no safe std equivalent in ns")]
        unsafe {
            libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts);
        }
        Ok(u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000
            + u64::try_from(ts.tv_nsec).unwrap_or(0))
    }
}

impl clock::HostTimer for HostState {
    fn arm(
        &mut self,
        after_ms: u64,
        every_ms: Option<u64>,
    ) -> wasmtime::Result<Result<Resource<TimerHandle>, ErrorCode>> {
        let armed = self.timers.arm(
            Duration::from_millis(after_ms),
            every_ms.map(Duration::from_millis),
        );
        let id = match armed {
            Ok(id) => id,
            Err(TimerError::TooMany) => return Ok(Err(ErrorCode::TooLarge)),
            Err(TimerError::ZeroPeriod) => return Ok(Err(ErrorCode::InvalidArgument)),
        };
        match self.table.push(TimerHandle { id }) {
            Ok(handle) => Ok(Ok(handle)),
            Err(_) => {
                self.timers.cancel(id);
                Ok(Err(ErrorCode::TooLarge))
            }
        }
    }

    fn id(&mut self, timer: Resource<TimerHandle>) -> wasmtime::Result<u64> {
        Ok(self.table.get(&timer)?.id)
    }

    fn cancel(&mut self, timer: Resource<TimerHandle>) -> wasmtime::Result<()> {
        let id = self.table.get(&timer)?.id;
        self.timers.cancel(id);
        Ok(())
    }

    fn drop(&mut self, timer: Resource<TimerHandle>) -> wasmtime::Result<()> {
        let handle = self.table.delete(timer)?;
        self.timers.cancel(handle.id);
        Ok(())
    }
}
