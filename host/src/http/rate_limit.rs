//! Per-client token buckets: each client address may send `burst` requests at once and
//! `rate` per second after that; the excess gets 429. IPv6 clients are grouped by /64, the
//! block one host usually gets, so that a client cannot escape its bucket by rotating
//! addresses. Loopback is not exempt: the generous default (50/s, burst 200) leaves a 1 s
//! Prometheus scrape and the status page far below the limit, and a runaway local script is
//! throttled like any other.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Buckets kept at most; when full, buckets that have refilled (clients that went quiet) are
/// dropped, and if none has, the whole table is, which at worst lets clients start over with
/// a full bucket.
const MAX_CLIENTS: usize = 16_384;

#[derive(Debug)]
pub struct RateLimiter {
    /// Tokens per second; 0 disables the limit.
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl RateLimiter {
    pub fn new(rate_per_second: u64, burst: u64) -> Self {
        Self {
            rate: rate_per_second as f64,
            burst: burst.max(1) as f64,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a token for `client`, or says how long until one is available.
    pub fn take(&self, client: IpAddr) -> Result<(), Duration> {
        if self.rate <= 0.0 {
            return Ok(());
        }
        let now = Instant::now();
        let Ok(mut buckets) = self.buckets.lock() else {
            return Ok(());
        };
        let key = bucket_key(client);
        if buckets.len() >= MAX_CLIENTS && !buckets.contains_key(&key) {
            buckets.retain(|_, bucket| self.refilled(*bucket, now) < self.burst);
            if buckets.len() >= MAX_CLIENTS {
                buckets.clear();
            }
        }
        let bucket = buckets.entry(key).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        bucket.tokens = self.refilled(*bucket, now);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / self.rate))
        }
    }

    fn refilled(&self, bucket: Bucket, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        (bucket.tokens + elapsed * self.rate).min(self.burst)
    }
}

fn bucket_key(client: IpAddr) -> IpAddr {
    match client {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        },
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_rate() {
        let limiter = RateLimiter::new(10, 3);
        let client: IpAddr = [192, 0, 2, 1].into();
        for _ in 0..3 {
            assert!(limiter.take(client).is_ok());
        }
        let wait = limiter.take(client).expect_err("over the burst");
        assert!(wait <= Duration::from_millis(100), "{wait:?}");
        // Another client has its own bucket.
        assert!(limiter.take([192, 0, 2, 2].into()).is_ok());
        std::thread::sleep(Duration::from_millis(120));
        assert!(limiter.take(client).is_ok());
    }

    #[test]
    fn zero_rate_disables_and_ipv6_groups_by_64() {
        let off = RateLimiter::new(0, 1);
        for _ in 0..100 {
            assert!(off.take([192, 0, 2, 1].into()).is_ok());
        }
        let limiter = RateLimiter::new(1, 1);
        let a: IpAddr = "2001:db8::1".parse().expect("v6");
        let b: IpAddr = "2001:db8::2".parse().expect("v6");
        assert!(limiter.take(a).is_ok());
        assert!(limiter.take(b).is_err(), "same /64, same bucket");
    }
}
