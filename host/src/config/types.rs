//! Validating config types. Each checks its value while the file is deserialized
//! (`#[serde(try_from = ...)]`), so `toml` attaches the value's span to the error and the
//! message names the key and line; see [`super::ConfigError`].
//!
//! Most config fields keep their plain type (`u64`, `String`, ...) for the code that reads
//! them, and are deserialized through one of these with
//! `#[serde(deserialize_with = "Type::field")]`: the type owns the rule, the field the value.

use std::fmt;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer};

/// The largest TOML integer.
pub const TOML_INT_MAX: u64 = i64::MAX as u64;

/// An integer in `MIN..=MAX`. Deserialized from any TOML integer, so a negative or too large
/// value gets the range in its message rather than a type error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(try_from = "i64")]
pub struct Bounded<const MIN: u64, const MAX: u64>(u64);

/// At least 1.
pub type Positive = Bounded<1, TOML_INT_MAX>;
/// At least 1, for `u32` fields.
pub type PositiveU32 = Bounded<1, { u32::MAX as u64 }>;
/// Deadline of one guest call, in milliseconds: 1 ms to 10 minutes.
pub type DeadlineMs = Bounded<1, 600_000>;
/// Linear-memory cap of one plugin instance, in MiB: 1 MiB to 4 GiB (wasm32's address space).
pub type MemoryMib = Bounded<1, 4096>;
/// A file or spool size in MiB: 1 MiB to 1 TiB.
pub type SizeMib = Bounded<1, 1_048_576>;
/// A document or batch size in KiB: 1 KiB to 1 GiB.
pub type SizeKib = Bounded<1, 1_048_576>;
/// A timer or back-off step in milliseconds: 1 ms to one day.
pub type Millis = Bounded<1, 86_400_000>;
/// A timeout in seconds: 1 s to one day.
pub type Seconds = Bounded<1, 86_400>;

/// A value outside its type's range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RangeError {
    pub min: u64,
    pub max: u64,
    pub value: i128,
}

impl fmt::Display for RangeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Past u32::MAX an upper bound is the integer type's, not the setting's.
        let unbounded = self.max >= u64::from(u32::MAX);
        if unbounded && self.value < i128::from(self.min) {
            write!(f, "must be at least {}, got {}", self.min, self.value)
        } else if unbounded {
            write!(f, "must be at most {}, got {}", self.max, self.value)
        } else {
            write!(
                f,
                "must be between {} and {}, got {}",
                self.min, self.max, self.value
            )
        }
    }
}

impl std::error::Error for RangeError {}

impl<const MIN: u64, const MAX: u64> Bounded<MIN, MAX> {
    /// Checks `value` against the range.
    pub fn new(value: u64) -> Result<Self, RangeError> {
        if (MIN..=MAX).contains(&value) {
            Ok(Self(value))
        } else {
            Err(RangeError {
                min: MIN,
                max: MAX,
                value: i128::from(value),
            })
        }
    }

    /// Checks a value of a config built in code (usize, u32, u64).
    pub fn check<T: TryInto<u64>>(value: T) -> Result<(), RangeError> {
        match value.try_into() {
            Ok(value) => Self::new(value).map(drop),
            Err(_) => Err(RangeError {
                min: MIN,
                max: MAX,
                value: i128::MAX,
            }),
        }
    }

    pub const fn get(self) -> u64 {
        self.0
    }

    /// For `#[serde(deserialize_with = "Alias::field")]` on a plain integer field.
    pub fn field<'de, D, T>(deserializer: D) -> Result<T, D::Error>
    where
        D: Deserializer<'de>,
        T: TryFrom<u64>,
    {
        let value = Self::deserialize(deserializer)?.get();
        T::try_from(value)
            .map_err(|_| D::Error::custom(format!("{value} is too large for this setting")))
    }
}

impl<const MIN: u64, const MAX: u64> TryFrom<i64> for Bounded<MIN, MAX> {
    type Error = RangeError;

    fn try_from(value: i64) -> Result<Self, RangeError> {
        u64::try_from(value)
            .ok()
            .and_then(|v| Self::new(v).ok())
            .ok_or(RangeError {
                min: MIN,
                max: MAX,
                value: i128::from(value),
            })
    }
}

impl<const MIN: u64, const MAX: u64> fmt::Display for Bounded<MIN, MAX> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// A password, API key or token. `Debug` and `Display` print `<redacted>`, so a config (or
/// anything holding one) can be logged; [`Secret::expose`] is the only way to the text.
/// Never empty: an empty bearer token would match an empty `Authorization: Bearer `.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Secret(String);

/// What a secret prints as.
pub const REDACTED: &str = "<redacted>";

impl Secret {
    /// The secret text, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Secret {
    type Error = &'static str;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        if value.is_empty() {
            Err("must not be empty")
        } else {
            Ok(Self(value))
        }
    }
}

impl TryFrom<&str> for Secret {
    type Error = &'static str;

    fn try_from(value: &str) -> Result<Self, Self::Error> {
        Self::try_from(value.to_owned())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

/// A Prometheus metric name prefix: `[a-zA-Z_][a-zA-Z0-9_]*` (no colons: they are reserved
/// for recording rules).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct MetricPrefix(String);

impl MetricPrefix {
    pub fn check(name: &str) -> Result<(), String> {
        if super::is_metric_name(name) {
            Ok(())
        } else {
            Err(format!(
                "{name:?} is not a valid Prometheus name prefix ([a-zA-Z_][a-zA-Z0-9_]*)"
            ))
        }
    }

    /// For `#[serde(deserialize_with = "MetricPrefix::field")]` on a `String` field.
    pub fn field<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
        Self::deserialize(deserializer).map(|prefix| prefix.0)
    }
}

impl TryFrom<String> for MetricPrefix {
    type Error = String;

    fn try_from(value: String) -> Result<Self, String> {
        Self::check(&value).map(|()| Self(value))
    }
}

/// An absolute path prefix without `..` components (`policy.allow_read`, `deny_read`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct PathPrefix(String);

impl PathPrefix {
    pub fn check(prefix: &str) -> Result<(), String> {
        if prefix.starts_with('/') && !prefix.split('/').any(|part| part == "..") {
            Ok(())
        } else {
            Err(format!("{prefix:?} must be an absolute path without '..'"))
        }
    }

    /// For `#[serde(deserialize_with = "PathPrefix::list")]` on a `Vec<String>` field.
    pub fn list<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
        let prefixes = checked_strings::<D, Self>(deserializer)?;
        Ok(prefixes.into_iter().map(|prefix| prefix.0).collect())
    }
}

impl TryFrom<String> for PathPrefix {
    type Error = String;

    fn try_from(value: String) -> Result<Self, String> {
        Self::check(&value).map(|()| Self(value))
    }
}

/// A list of strings, each checked by `T::try_from` while the element itself is being
/// deserialized, so that `toml` reports a bad element at its own line and column. (A plain
/// `Vec<T>` runs `try_from` after the string is read, and the error gets the whole array's
/// span.)
pub fn checked_strings<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<String>,
    T::Error: fmt::Display,
{
    struct List<T>(std::marker::PhantomData<T>);
    struct Element<T>(std::marker::PhantomData<T>);

    impl<'de, T> serde::de::Visitor<'de> for List<T>
    where
        T: TryFrom<String>,
        T::Error: fmt::Display,
    {
        type Value = Vec<T>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an array of strings")
        }

        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let mut list = Vec::new();
            while let Some(element) = seq.next_element_seed(Element(std::marker::PhantomData))? {
                list.push(element);
            }
            Ok(list)
        }
    }

    impl<'de, T> serde::de::DeserializeSeed<'de> for Element<T>
    where
        T: TryFrom<String>,
        T::Error: fmt::Display,
    {
        type Value = T;

        fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<T, D::Error> {
            deserializer.deserialize_string(self)
        }
    }

    impl<'de, T> serde::de::Visitor<'de> for Element<T>
    where
        T: TryFrom<String>,
        T::Error: fmt::Display,
    {
        type Value = T;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a string")
        }

        fn visit_str<E: serde::de::Error>(self, value: &str) -> Result<T, E> {
            self.visit_string(value.to_owned())
        }

        fn visit_string<E: serde::de::Error>(self, value: String) -> Result<T, E> {
            T::try_from(value).map_err(E::custom)
        }
    }

    deserializer.deserialize_seq(List(std::marker::PhantomData))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_checks_both_ends_and_negatives() {
        assert_eq!(MemoryMib::try_from(64).map(Bounded::get), Ok(64));
        let err = MemoryMib::try_from(0).expect_err("zero");
        assert_eq!(err.to_string(), "must be between 1 and 4096, got 0");
        let err = MemoryMib::try_from(-3).expect_err("negative");
        assert_eq!(err.to_string(), "must be between 1 and 4096, got -3");
        assert!(MemoryMib::try_from(4097).is_err());
        let err = Positive::try_from(-1).expect_err("negative");
        assert_eq!(err.to_string(), "must be at least 1, got -1");
        assert!(PositiveU32::check(u64::from(u32::MAX) + 1).is_err());
        assert!(PositiveU32::check(7u32).is_ok());
    }

    #[test]
    fn secret_is_redacted_and_never_empty() {
        let secret = Secret::try_from("hunter2").expect("non-empty");
        assert_eq!(format!("{secret:?}"), REDACTED);
        assert_eq!(format!("{secret}"), REDACTED);
        assert_eq!(format!("{:?}", Some(secret.clone())), "Some(<redacted>)");
        assert_eq!(secret.expose(), "hunter2");
        assert!(Secret::try_from("").is_err());
    }

    #[test]
    fn prefixes_and_paths() {
        assert!(MetricPrefix::check("huatuo_bamai").is_ok());
        assert!(MetricPrefix::check("bad-prefix").is_err());
        assert!(MetricPrefix::check("9lives").is_err());
        assert!(PathPrefix::check("/proc").is_ok());
        assert!(PathPrefix::check("proc").is_err());
        assert!(PathPrefix::check("/proc/../etc").is_err());
    }
}
