//! `oom`: work in progress.
