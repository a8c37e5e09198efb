//! Rate-limited log lines for errors that repeat with every event.
//!
//! A fault that hits each document (a full disk, a broken spool, a guest saving garbage in a
//! loop) must not turn the log into one line per document: [`RateLimit`] lets one line
//! through per interval and counts the others, and the next line that goes through says how
//! many were suppressed since the previous one. [`RateLimitBy`] does the same per key (an
//! error kind, a plugin), so that one flood does not hide a different error.
//!
//! ```ignore
//! if let Some(suppressed) = self.write_failed.check(&err.kind()) {
//!     tracing::error!(%err, "cannot write{suppressed}");
//! }
//! ```

use std::borrow::Borrow;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// The interval of per-event error lines: at most one line per kind this often.
pub const REPEAT_INTERVAL: Duration = Duration::from_secs(10);

/// How many lines were suppressed since the last one logged. Displays as
/// ` (N more suppressed)`, or as nothing when none were, so that it can end a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Suppressed(pub u64);

impl std::fmt::Display for Suppressed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            0 => Ok(()),
            n => write!(f, " ({n} more suppressed)"),
        }
    }
}

/// One kind's state: when a line last went through, and how many were held back since.
#[derive(Debug, Default)]
struct Window {
    last: Option<Instant>,
    suppressed: u64,
}

impl Window {
    fn check(&mut self, interval: Duration, now: Instant) -> Option<Suppressed> {
        if self
            .last
            .is_some_and(|at| now.saturating_duration_since(at) < interval)
        {
            self.suppressed = self.suppressed.saturating_add(1);
            return None;
        }
        self.last = Some(now);
        Some(Suppressed(std::mem::take(&mut self.suppressed)))
    }

    fn reset(&mut self) -> Suppressed {
        self.last = None;
        Suppressed(std::mem::take(&mut self.suppressed))
    }
}

/// The state is plain counters: a panic elsewhere while it was locked leaves it usable.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// At most one line per `interval`; usable from any thread and as a `static`.
#[derive(Debug)]
pub struct RateLimit {
    interval: Duration,
    window: Mutex<Window>,
}

impl RateLimit {
    pub const fn new(interval: Duration) -> Self {
        Self {
            interval,
            window: Mutex::new(Window {
                last: None,
                suppressed: 0,
            }),
        }
    }

    /// `Some` (with the count suppressed since the last line) when a line may be logged now;
    /// `None`, counted, when it is suppressed.
    pub fn check(&self) -> Option<Suppressed> {
        self.check_at(Instant::now())
    }

    pub fn check_at(&self, now: Instant) -> Option<Suppressed> {
        lock(&self.window).check(self.interval, now)
    }

    /// The error is over: the next one logs at once. Returns the lines suppressed since the
    /// last one logged, for a closing line.
    pub fn reset(&self) -> Suppressed {
        lock(&self.window).reset()
    }
}

/// Keys tracked at most; a new key beyond them replaces the one quiet the longest.
const MAX_KEYS: usize = 64;

/// [`RateLimit`] per key.
#[derive(Debug)]
pub struct RateLimitBy<K> {
    interval: Duration,
    windows: Mutex<Vec<(K, Window)>>,
}

impl<K> RateLimitBy<K> {
    pub const fn new(interval: Duration) -> Self {
        Self {
            interval,
            windows: Mutex::new(Vec::new()),
        }
    }

    /// [`RateLimit::check`] for `key`.
    pub fn check<Q>(&self, key: &Q) -> Option<Suppressed>
    where
        K: Borrow<Q>,
        Q: PartialEq + ToOwned<Owned = K> + ?Sized,
    {
        self.check_at(key, Instant::now())
    }

    pub fn check_at<Q>(&self, key: &Q, now: Instant) -> Option<Suppressed>
    where
        K: Borrow<Q>,
        Q: PartialEq + ToOwned<Owned = K> + ?Sized,
    {
        let mut windows = lock(&self.windows);
        if let Some((_, window)) = windows.iter_mut().find(|(k, _)| k.borrow() == key) {
            return window.check(self.interval, now);
        }
        if windows.len() >= MAX_KEYS
            && let Some(quietest) = windows
                .iter()
                .enumerate()
                .min_by_key(|(_, (_, w))| w.last)
                .map(|(index, _)| index)
        {
            windows.swap_remove(quietest);
        }
        let mut window = Window::default();
        let allowed = window.check(self.interval, now);
        windows.push((key.to_owned(), window));
        allowed
    }

    /// [`RateLimit::reset`] of every key: the lines suppressed since each key's last line,
    /// summed.
    pub fn reset_all(&self) -> Suppressed {
        let mut windows = lock(&self.windows);
        let total = windows
            .iter_mut()
            .map(|(_, window)| window.reset().0)
            .fold(0u64, u64::saturating_add);
        windows.clear();
        Suppressed(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_with_the_suppressed_count() {
        let limit = RateLimit::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(limit.check_at(t0), Some(Suppressed(0)));
        for ms in 1..=500 {
            assert_eq!(limit.check_at(t0 + Duration::from_millis(ms * 10)), None);
        }
        let next = limit.check_at(t0 + Duration::from_secs(10));
        assert_eq!(next, Some(Suppressed(500)));
        assert_eq!(
            next.map(|s| s.to_string()).as_deref(),
            Some(" (500 more suppressed)")
        );
        assert_eq!(Suppressed(0).to_string(), "");
        assert_eq!(limit.check_at(t0 + Duration::from_secs(11)), None);
        assert_eq!(limit.reset(), Suppressed(1));
        assert_eq!(
            limit.check_at(t0 + Duration::from_secs(12)),
            Some(Suppressed(0))
        );
    }

    #[test]
    fn keys_are_limited_apart_and_bounded() {
        let limit: RateLimitBy<String> = RateLimitBy::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert!(limit.check_at("a", t0).is_some());
        assert!(limit.check_at("a", t0).is_none());
        // A flood of one kind does not hide another.
        assert!(limit.check_at("b", t0).is_some());
        for n in 0..1000 {
            let _ = limit.check_at(format!("k{n}").as_str(), t0 + Duration::from_millis(n));
        }
        assert!(lock(&limit.windows).len() <= MAX_KEYS);
        assert_eq!(limit.reset_all(), Suppressed(0));
        assert!(limit.check_at("a", t0).is_some());
    }
}
