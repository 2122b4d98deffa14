//! Report ids and times.
//!
//! A [`ReportId`] names a report's files (`<id>.json`, `<id>.txt`, `<id>.core`), so it is
//! minted by the daemon when it accepts a failure and checked wherever one arrives from
//! outside (a worker's reply, an API path, a stored file): only ASCII letters, digits,
//! `-` and `_`, at most [`ReportId::MAX_LEN`] bytes, never starting with `-`.
//! Times are [`Timestamp`]s (jiff) until they are serialized, as RFC 3339 in UTC.

use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

pub use jiff::Timestamp;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::Error;

/// The current time, to the millisecond (what reports record).
pub fn now() -> Timestamp {
    Timestamp::from_millisecond(Timestamp::now().as_millisecond()).unwrap_or(Timestamp::UNIX_EPOCH)
}

/// A time from the standard library's clock, to the millisecond.
pub fn timestamp(t: std::time::SystemTime) -> Timestamp {
    let ms = match t.duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_millis()).unwrap_or(i64::MAX),
    };
    Timestamp::from_millisecond(ms).unwrap_or(Timestamp::UNIX_EPOCH)
}

/// The id of one report: its time, its guest and a random part, safe as a file name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ReportId(String);

impl ReportId {
    /// The longest id accepted.
    pub const MAX_LEN: usize = 128;

    /// A new id for a diagnosis of `guest` whose failure happened `at`:
    /// `20261122T062315Z-<guest>-<8 hex digits>`, the guest name reduced to safe
    /// characters.
    pub fn mint(guest: &str, at: Timestamp) -> ReportId {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_i128(Timestamp::now().as_nanosecond());
        h.write_u64(SEQ.fetch_add(1, Ordering::Relaxed));
        let stamp = at.strftime("%Y%m%dT%H%M%SZ");
        let name: String = guest
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .take(40)
            .collect();
        ReportId(format!("{stamp}-{name}-{:08x}", h.finish() as u32))
    }

    /// Checks an id that came from elsewhere.
    pub fn parse(s: &str) -> Result<ReportId, Error> {
        let bad = |why: &str| Error::BadId {
            id: s.chars().take(Self::MAX_LEN + 8).collect(),
            why: why.to_string(),
        };
        if s.is_empty() {
            return Err(bad("it is empty"));
        }
        if s.len() > Self::MAX_LEN {
            return Err(bad("it is longer than 128 bytes"));
        }
        if s.starts_with('-') {
            return Err(bad("it starts with '-'"));
        }
        if let Some(c) = s
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
        {
            return Err(bad(&format!(
                "{c:?} is not allowed (only ASCII letters, digits, '-' and '_')"
            )));
        }
        Ok(ReportId(s.to_string()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ReportId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for ReportId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        ReportId::parse(s)
    }
}

impl TryFrom<String> for ReportId {
    type Error = Error;
    fn try_from(s: String) -> Result<Self, Error> {
        ReportId::parse(&s)
    }
}

impl From<ReportId> for String {
    fn from(id: ReportId) -> String {
        id.0
    }
}

impl AsRef<str> for ReportId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl JsonSchema for ReportId {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "ReportId".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": "^[A-Za-z0-9_][A-Za-z0-9_-]{0,127}$",
            "description": "A report id (time, guest, random part); also the stem of the report's file names."
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_ids_are_safe_unique_and_parse_back() {
        let at: Timestamp = "2026-11-22T06:23:15.139Z".parse().unwrap();
        let a = ReportId::mint("bravo/../x", at);
        let b = ReportId::mint("bravo/../x", at);
        assert_ne!(a, b);
        assert!(
            a.as_str().starts_with("20261122T062315Z-bravo____x-"),
            "{a}"
        );
        assert_eq!(ReportId::parse(a.as_str()).unwrap(), a);
        let long = ReportId::mint(&"g".repeat(500), at);
        assert!(long.as_str().len() <= ReportId::MAX_LEN, "{long}");
    }

    #[test]
    fn ids_from_elsewhere_are_checked() {
        for bad in [
            "",
            "../etc/passwd",
            "a/b",
            "x.json",
            "-rf",
            "ä",
            &"a".repeat(129),
        ] {
            let e = ReportId::parse(bad).unwrap_err().to_string();
            assert!(e.contains("not a valid report id"), "{bad:?}: {e}");
        }
        assert!(ReportId::parse("20261122T062315Z-web-0a1b2c3d").is_ok());
        let e: Result<ReportId, _> = serde_json::from_str("\"../x\"");
        assert!(e.is_err());
    }

    #[test]
    fn times_are_milliseconds_in_utc() {
        let t = timestamp(
            std::time::UNIX_EPOCH + std::time::Duration::from_nanos(1_795_328_595_139_999_999),
        );
        assert_eq!(t.to_string(), "2026-11-22T06:23:15.139Z");
        assert_eq!(
            serde_json::to_string(&t).unwrap(),
            "\"2026-11-22T06:23:15.139Z\""
        );
        let back: Timestamp = serde_json::from_str("\"2026-11-22T07:23:15.139+01:00\"").unwrap();
        assert_eq!(back, t);
        assert_eq!(now().subsec_nanosecond() % 1_000_000, 0);
    }
}
