//! Fault-injection test for the `softirq` collector: work in progress.
