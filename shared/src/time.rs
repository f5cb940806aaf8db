//! Time on the wire and on screen: protobuf `Timestamp` from and to Unix
//! milliseconds (how the store keeps time), and RFC 3339 for people.

use prost_types::Timestamp;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

pub fn timestamp_from_millis(millis: i64) -> Timestamp {
    Timestamp {
        seconds: millis.div_euclid(1000),
        nanos: (millis.rem_euclid(1000) * 1_000_000) as i32,
    }
}

/// Unix milliseconds of `timestamp`, saturating: a client's `since` of
/// the far future or past is as far as milliseconds go (it overflowed,
/// panicking a debug build and wrapping to "since ever" in release).
/// Nanoseconds outside a second are taken as the second's bounds.
pub fn millis_from_timestamp(timestamp: &Timestamp) -> i64 {
    let millis = i64::from(timestamp.nanos.clamp(0, 999_999_999)) / 1_000_000;
    timestamp
        .seconds
        .saturating_mul(1000)
        .saturating_add(millis)
}

/// RFC 3339 in UTC, to the second: `2026-11-28T13:27:47Z`.
pub fn format_timestamp(timestamp: &Timestamp) -> String {
    OffsetDateTime::from_unix_timestamp(timestamp.seconds)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| format!("@{}", timestamp.seconds))
}

/// RFC 3339 of a time in Unix milliseconds.
pub fn format_millis(millis: i64) -> String {
    format_timestamp(&timestamp_from_millis(millis))
}

pub fn now_millis() -> i64 {
    (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_timestamp_a_client_sends_is_in_range() {
        let at = |seconds, nanos| millis_from_timestamp(&Timestamp { seconds, nanos });
        assert_eq!(at(i64::MAX, 999_999_999), i64::MAX);
        assert_eq!(at(i64::MIN, -1), i64::MIN);
        assert_eq!(at(1, -5), 1000);
        assert_eq!(at(1, 2_000_000_000), 1999);
        assert_eq!(at(1_700_000_000, 250_000_000), 1_700_000_000_250);
    }

    #[test]
    fn round_trips_and_formats() {
        for millis in [0, 1, 999, 1_764_336_467_123, -1] {
            assert_eq!(
                millis_from_timestamp(&timestamp_from_millis(millis)),
                millis
            );
        }
        assert_eq!(
            format_timestamp(&timestamp_from_millis(1_795_873_667_000)),
            "2026-11-28T13:47:47Z"
        );
    }
}
