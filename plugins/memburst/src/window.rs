//! The sliding window of anonymous-memory samples and HUATUO's burst rule, without host
//! calls (unit-tested natively).

use std::collections::VecDeque;

/// The last `capacity` samples of Active(anon) + Inactive(anon), in bytes, oldest first.
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    capacity: usize,
    samples: VecDeque<u64>,
}

/// What one sample says about the burst rule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Verdict {
    /// The sample just taken.
    pub current: u64,
    /// The oldest sample of the window (`capacity - 1` samples before `current`); `None`
    /// until the window is full, when HUATUO does not judge yet.
    pub oldest: Option<u64>,
    /// `current / oldest`; `None` until the window is full or while `oldest` is 0.
    pub ratio: Option<f64>,
    /// Both conditions hold: `current ≥ burst_ratio × oldest` and `current ≥ anon_floor`.
    pub burst: bool,
}

/// HUATUO's thresholds in the units the rule compares.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    /// `1 + delta_memory_burst / 100`.
    pub burst_ratio: f64,
    /// `delta_anon_threshold` % of MemTotal, in bytes.
    pub anon_floor: u64,
}

impl Thresholds {
    pub fn new(delta_memory_burst: f64, delta_anon_threshold: f64, mem_total: u64) -> Self {
        Thresholds {
            burst_ratio: 1.0 + delta_memory_burst / 100.0,
            // f64 is exact up to 2^53 bytes (8 PiB): far beyond any MemTotal.
            anon_floor: (mem_total as f64 * delta_anon_threshold / 100.0).ceil() as u64,
        }
    }
}

impl Window {
    /// `capacity` is at least 2 (checked by the settings).
    pub fn new(capacity: usize) -> Self {
        Window {
            capacity,
            samples: VecDeque::with_capacity(capacity),
        }
    }

    /// Samples held (at most the capacity).
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// Adds `current` (dropping the oldest sample of a full window) and judges it the way
    /// HUATUO's `checkAndRecordMemoryUsage` does: once the window is full, against the
    /// oldest sample still in it.
    pub fn push(&mut self, current: u64, thresholds: Thresholds) -> Verdict {
        if self.samples.len() == self.capacity {
            self.samples.pop_front();
        }
        self.samples.push_back(current);
        let oldest = (self.samples.len() == self.capacity)
            .then(|| self.samples.front().copied())
            .flatten();
        let ratio = oldest.filter(|&o| o > 0).map(|o| current as f64 / o as f64);
        let burst = oldest.is_some_and(|o| {
            current as f64 >= thresholds.burst_ratio * o as f64 && current >= thresholds.anon_floor
        });
        Verdict {
            current,
            oldest,
            ratio,
            burst,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn defaults(mem_total: u64) -> Thresholds {
        Thresholds::new(100.0, 70.0, mem_total)
    }

    #[test]
    fn thresholds_follow_huatuo_defaults() {
        let t = defaults(10 * GIB);
        assert_eq!(t.burst_ratio, 2.0);
        assert_eq!(t.anon_floor, 7 * GIB);
        // A fractional percentage (finer than HUATUO's integers) rounds the floor up.
        assert_eq!(Thresholds::new(100.0, 0.5, 1001).anon_floor, 6);
    }

    #[test]
    fn no_verdict_until_the_window_is_full() {
        let mut w = Window::new(3);
        let t = defaults(10 * GIB);
        let v = w.push(GIB, t);
        assert_eq!((v.oldest, v.burst), (None, false));
        let v = w.push(8 * GIB, t);
        assert_eq!((v.oldest, v.ratio, v.burst), (None, None, false));
        // Full: compared with the sample two ticks back.
        let v = w.push(8 * GIB, t);
        assert_eq!(v.oldest, Some(GIB));
        assert_eq!(v.ratio, Some(8.0));
        assert!(v.burst);
        assert_eq!(w.len(), 3);
    }

    #[test]
    fn the_oldest_sample_slides() {
        let mut w = Window::new(2);
        let t = defaults(10 * GIB);
        w.push(GIB, t);
        assert!(w.push(8 * GIB, t).burst);
        // 8 GiB is now the oldest: 9 GiB is not twice that.
        let v = w.push(9 * GIB, t);
        assert_eq!(v.oldest, Some(8 * GIB));
        assert!(!v.burst);
    }

    #[test]
    fn both_conditions_are_needed() {
        let t = defaults(10 * GIB);
        // Doubled, but below 70 % of MemTotal.
        let mut w = Window::new(2);
        w.push(GIB, t);
        assert!(!w.push(2 * GIB, t).burst);
        // Above 70 %, but not doubled.
        let mut w = Window::new(2);
        w.push(5 * GIB, t);
        assert!(!w.push(8 * GIB, t).burst);
        // Exactly at both thresholds fires (HUATUO compares with >=).
        let mut w = Window::new(2);
        w.push(7 * GIB / 2, t);
        assert!(w.push(7 * GIB, t).burst);
    }

    #[test]
    fn an_empty_oldest_sample_has_no_ratio_but_can_burst() {
        let t = Thresholds::new(100.0, 0.0, GIB);
        let mut w = Window::new(2);
        w.push(0, t);
        let v = w.push(1, t);
        assert_eq!(v.ratio, None);
        assert!(v.burst, "any growth from 0 is at least twice 0");
    }
}
