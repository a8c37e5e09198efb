//! Fault-injection test for the `hungtask` collector: work in progress.
