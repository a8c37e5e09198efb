//! Fault-injection test for the `softlockup` collector: work in progress.
