//! Exponential back-off, shared by the plugin supervisor (restart after a failure) and the
//! OpenSearch sink (retries of bulk requests and of the template install).

use std::time::Duration;

/// `base × 2^attempt`, capped at `max`; optionally jittered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
    /// Draw each delay between half and all of its step, so that many clients retrying
    /// after the same outage spread out.
    pub jitter: bool,
}

impl Backoff {
    /// Exact (un-jittered) exponential back-off.
    pub fn new(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max,
            jitter: false,
        }
    }

    /// The same, jittered.
    pub fn jittered(self) -> Self {
        Self {
            jitter: true,
            ..self
        }
    }

    /// The step of the `attempt`-th retry (0-based): `base × 2^attempt`, at most `max`.
    pub fn step(&self, attempt: u32) -> Duration {
        // In nanoseconds as u128: at most u64::MAX shifted by at most 63 bits, no overflow.
        let base = self.base.as_nanos().min(u128::from(u64::MAX));
        let nanos = base << attempt.min(63);
        let capped = nanos.min(self.max.as_nanos());
        Duration::from_nanos(u64::try_from(capped).unwrap_or(u64::MAX))
    }

    /// The delay before the `attempt`-th retry (0-based): the step, or with jitter a
    /// uniform draw between half of it and all of it.
    pub fn delay(&self, attempt: u32) -> Duration {
        let step = self.step(attempt);
        if !self.jitter {
            return step;
        }
        let step = u64::try_from(step.as_nanos()).unwrap_or(u64::MAX);
        let half = step / 2;
        Duration::from_nanos(half + fastrand::u64(0..=step - half))
    }

    /// A sequence of delays that grows with each call of [`Attempts::next_delay`].
    pub fn attempts(self) -> Attempts {
        Attempts {
            backoff: self,
            attempt: 0,
        }
    }
}

/// Consecutive attempts of one operation under a [`Backoff`].
#[derive(Debug, Clone)]
pub struct Attempts {
    backoff: Backoff,
    attempt: u32,
}

impl Attempts {
    /// The next delay; grows ×2 per call up to the maximum.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.backoff.delay(self.attempt);
        self.attempt = self.attempt.saturating_add(1);
        delay
    }

    /// Attempts so far.
    pub fn count(&self) -> u32 {
        self.attempt
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_and_caps() {
        let backoff = Backoff::new(Duration::from_secs(10), Duration::from_secs(60));
        assert_eq!(backoff.delay(0), Duration::from_secs(10));
        assert_eq!(backoff.delay(1), Duration::from_secs(20));
        assert_eq!(backoff.delay(2), Duration::from_secs(40));
        assert_eq!(backoff.delay(3), Duration::from_secs(60));
        assert_eq!(backoff.delay(u32::MAX), Duration::from_secs(60));
        let huge = Backoff::new(Duration::MAX, Duration::MAX);
        assert_eq!(huge.delay(40), Duration::from_nanos(u64::MAX));
    }

    #[test]
    fn jitter_grows_between_half_and_all_and_caps() {
        let mut attempts = Backoff::new(Duration::from_millis(100), Duration::from_millis(1000))
            .jittered()
            .attempts();
        let first = attempts.next_delay().as_millis();
        assert!((50..=100).contains(&first), "{first}");
        let second = attempts.next_delay().as_millis();
        assert!((100..=200).contains(&second), "{second}");
        let third = attempts.next_delay().as_millis();
        assert!((200..=400).contains(&third), "{third}");
        let fourth = attempts.next_delay().as_millis();
        assert!((400..=800).contains(&fourth), "{fourth}");
        for _ in 0..38 {
            let capped = attempts.next_delay().as_millis();
            assert!((500..=1000).contains(&capped), "{capped}");
        }
        assert_eq!(attempts.count(), 42);
        attempts.reset();
        assert!(attempts.next_delay() <= Duration::from_millis(100));
    }
}
