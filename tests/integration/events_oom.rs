//! Fault-injection test for the `oom` collector: work in progress.
