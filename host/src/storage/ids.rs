//! `tracer_id`s: globally unique, time-ordered ids in the shape of HUATUO's xid.

use std::sync::atomic::{AtomicU32, Ordering};

use chrono::{DateTime, Utc};

/// 20 base32hex characters from 4 bytes of seconds, 3 of host hash, 2 of pid and a 3-byte
/// counter.
pub(super) struct IdGenerator {
    machine: [u8; 3],
    pid: u16,
    counter: AtomicU32,
}

impl IdGenerator {
    pub(super) fn new(hostname: &str) -> Self {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(hostname.as_bytes());
        let seed = u32::from_le_bytes([digest[3], digest[4], digest[5], digest[6]])
            ^ std::process::id()
            ^ Utc::now().timestamp_subsec_nanos();
        Self {
            machine: [digest[0], digest[1], digest[2]],
            pid: (std::process::id() & 0xffff) as u16,
            counter: AtomicU32::new(seed),
        }
    }

    pub(super) fn next(&self, now: DateTime<Utc>) -> String {
        let secs = u32::try_from(now.timestamp()).unwrap_or(u32::MAX);
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let mut raw = [0u8; 12];
        raw[..4].copy_from_slice(&secs.to_be_bytes());
        raw[4..7].copy_from_slice(&self.machine);
        raw[7..9].copy_from_slice(&self.pid.to_be_bytes());
        raw[9..].copy_from_slice(&n.to_be_bytes()[1..]);
        base32hex(&raw)
    }
}

fn base32hex(raw: &[u8; 12]) -> String {
    const ALPHABET: &[u8; 32] = b"0123456789abcdefghijklmnopqrstuv";
    let mut bits: u128 = 0;
    for byte in raw {
        bits = (bits << 8) | u128::from(*byte);
    }
    // 96 bits → 20 characters of 5 bits (the last padded with 4 zero bits).
    bits <<= 4;
    (0..20)
        .rev()
        .map(|i| ALPHABET[((bits >> (i * 5)) & 31) as usize] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_xid_shaped() {
        let ids = IdGenerator::new("h");
        let a = ids.next(Utc::now());
        let b = ids.next(Utc::now());
        assert_ne!(a, b);
        assert_eq!(a.len(), 20);
    }
}
