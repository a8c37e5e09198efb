//! The kernel's fixed-point load average (`include/linux/sched/loadavg.h`), which HUATUO's
//! `dload` applies to a container's task counts on every sample.

/// Bits of fraction.
pub const FSHIFT: u32 = 11;
/// 1.0 in fixed point.
pub const FIXED_1: u64 = 1 << FSHIFT;
/// `FIXED_1 / exp(5 s / 1 min)`: the kernel's 1-minute decay per 5 s tick. HUATUO applies it
/// once per sample, whatever the sampling interval (10 s by default).
pub const EXP_1: u64 = 1884;

/// The kernel's `calc_load`: `load` decays by `exp` towards `active` (both fixed point);
/// rounds up while rising so that a steady `active` is reached exactly.
pub fn calc_load(load: u64, exp: u64, active: u64) -> u64 {
    let mut newload = load
        .saturating_mul(exp)
        .saturating_add(active.saturating_mul(FIXED_1 - exp));
    if active >= load {
        newload = newload.saturating_add(FIXED_1 - 1);
    }
    newload / FIXED_1
}

/// A 1-minute exponential moving average of a task count, in fixed point, starting at 0.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ema(u64);

impl Ema {
    /// Folds in one sample of `tasks`.
    pub fn update(&mut self, tasks: u64) {
        self.0 = calc_load(self.0, EXP_1, tasks.saturating_mul(FIXED_1));
    }

    /// The average with two decimals, as `/proc/loadavg` prints it: rounded by
    /// `FIXED_1 / 200`, then `LOAD_INT` + `LOAD_FRAC` / 100.
    pub fn value(self) -> f64 {
        let x = self.0.saturating_add(FIXED_1 / 200);
        let int = x >> FSHIFT;
        let frac = ((x & (FIXED_1 - 1)) * 100) >> FSHIFT;
        int as f64 + frac as f64 / 100.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_kernel_formula() {
        // One task from idle: (2048 × (2048 − 1884) + 2047 rounding) / 2048 = 164, i.e. 0.08.
        assert_eq!(calc_load(0, EXP_1, FIXED_1), 164);
        // Decay without rounding up when falling.
        assert_eq!(calc_load(FIXED_1, EXP_1, 0), 1884);
    }

    #[test]
    fn converges_to_a_steady_count_and_decays() {
        let mut ema = Ema::default();
        assert_eq!(ema.value(), 0.0);
        ema.update(4);
        // 4 × 164 / 2048 = 0.32 after one sample.
        assert_eq!(ema.value(), 0.32);
        let mut samples = 1;
        while ema.value() < 1.5 {
            ema.update(4);
            samples += 1;
        }
        // 4 (1 − 0.92^n) ≥ 1.5 from n = 6 (the kernel's rounding up gets there a tick early).
        assert!((5..=6).contains(&samples), "{samples}");
        for _ in 0..200 {
            ema.update(4);
        }
        assert_eq!(ema.value(), 4.0);
        for _ in 0..200 {
            ema.update(0);
        }
        assert_eq!(ema.value(), 0.0);
    }

    #[test]
    fn huge_counts_saturate_instead_of_overflowing() {
        let mut ema = Ema::default();
        ema.update(u64::MAX);
        assert!(ema.value() > 0.0);
    }
}
