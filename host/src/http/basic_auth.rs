//! HTTP basic auth against bcrypt hashes (the web config's `basic_auth_users`).
//!
//! bcrypt is slow on purpose (tens of milliseconds at cost 10), too slow to pay on every
//! 1 s Prometheus scrape, so a successful verification is remembered as the SHA-256 of the
//! password that passed, per user; the next request with the same password compares
//! digests in constant time instead. Only passwords that passed bcrypt are remembered, so the
//! cache holds at most one entry per configured user. Failures are never cached and always
//! cost a bcrypt (an unknown user is checked against a dummy hash of the same cost, so the
//! answer's timing does not tell which users exist); the per-client rate limit runs first,
//! and at most two verifications run at once.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use base64::Engine as _;
use sha2::{Digest, Sha256};

/// Verifications allowed at once: the machine's other work must not stall behind a flood of
/// wrong passwords.
const CONCURRENT_BCRYPTS: usize = 2;

pub struct BasicAuth {
    users: HashMap<String, String>,
    /// For unknown users: a hash of the configured users' highest cost.
    dummy_hash: String,
    verified: Mutex<HashMap<String, [u8; 32]>>,
    slots: tokio::sync::Semaphore,
}

impl std::fmt::Debug for BasicAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BasicAuth")
            .field("users", &self.users.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl BasicAuth {
    /// Checks every hash; an error names the user.
    pub fn new(users: BTreeMap<String, String>) -> Result<Self, (String, String)> {
        let mut max_cost = bcrypt::DEFAULT_COST;
        for (user, hash) in &users {
            if user.contains(':') {
                return Err((
                    user.clone(),
                    "a user name cannot contain ':' (basic auth separates it from the password with one)"
                        .to_owned(),
                ));
            }
            let parts: bcrypt::HashParts = hash.parse().map_err(|err| {
                (
                    user.clone(),
                    format!("not a bcrypt hash ({err}); make one with `htpasswd -nBC 10 {user}` or Python's bcrypt.hashpw"),
                )
            })?;
            max_cost = max_cost.max(parts.get_cost());
        }
        let dummy_hash = bcrypt::hash("kpulse: no such user", max_cost).map_err(|err| {
            (
                String::from("*"),
                format!("cannot make a bcrypt hash: {err}"),
            )
        })?;
        Ok(Self {
            users: users.into_iter().collect(),
            dummy_hash,
            verified: Mutex::new(HashMap::new()),
            slots: tokio::sync::Semaphore::new(CONCURRENT_BCRYPTS),
        })
    }

    /// Whether an `Authorization` header value names a configured user and their password.
    pub async fn check(&self, authorization: Option<&[u8]>) -> bool {
        let Some((user, password)) = authorization.and_then(parse_basic) else {
            return false;
        };
        let digest: [u8; 32] = Sha256::digest(password.as_bytes()).into();
        if let Some(known) = self.verified_digest(&user)
            && constant_time_eq(&known, &digest)
        {
            return true;
        }
        let (hash, known_user) = match self.users.get(&user) {
            Some(hash) => (hash.clone(), true),
            None => (self.dummy_hash.clone(), false),
        };
        let Ok(_slot) = self.slots.acquire().await else {
            return false;
        };
        let matched = tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash))
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or(false);
        let passed = matched && known_user;
        if passed && let Ok(mut verified) = self.verified.lock() {
            verified.insert(user, digest);
        }
        passed
    }

    fn verified_digest(&self, user: &str) -> Option<[u8; 32]> {
        self.verified.lock().ok()?.get(user).copied()
    }
}

/// `Basic <base64(user:password)>` into its two parts.
fn parse_basic(header: &[u8]) -> Option<(String, String)> {
    let header = std::str::from_utf8(header).ok()?;
    let (scheme, encoded) = header.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(password: &str) -> BasicAuth {
        let hash = bcrypt::hash(password, 4).expect("hash");
        BasicAuth::new(BTreeMap::from([("prom".to_owned(), hash)])).expect("valid")
    }

    fn header(user: &str, password: &str) -> Vec<u8> {
        let encoded =
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        format!("Basic {encoded}").into_bytes()
    }

    #[tokio::test]
    async fn checks_users_and_caches_only_successes() {
        let auth = auth("s3cret");
        assert!(!auth.check(None).await);
        assert!(!auth.check(Some(b"Bearer x")).await);
        assert!(!auth.check(Some(&header("prom", "wrong"))).await);
        assert!(auth.verified_digest("prom").is_none());
        assert!(!auth.check(Some(&header("nobody", "s3cret"))).await);
        assert!(auth.check(Some(&header("prom", "s3cret"))).await);
        assert!(auth.verified_digest("prom").is_some());
        // Cached: still right, and a wrong password is still refused.
        assert!(auth.check(Some(&header("prom", "s3cret"))).await);
        assert!(!auth.check(Some(&header("prom", "s3cret2"))).await);
    }

    #[test]
    fn refuses_bad_hashes_by_user() {
        let err = BasicAuth::new(BTreeMap::from([(
            "prom".to_owned(),
            "plaintext".to_owned(),
        )]))
        .expect_err("not a hash");
        assert_eq!(err.0, "prom");
        assert!(err.1.contains("not a bcrypt hash"), "{}", err.1);
    }
}
