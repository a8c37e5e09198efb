//! `hungtask`: work in progress.
