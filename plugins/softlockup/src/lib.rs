//! `softlockup`: work in progress.
