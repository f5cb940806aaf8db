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

pub fn millis_from_timestamp(timestamp: &Timestamp) -> i64 {
    timestamp.seconds * 1000 + i64::from(timestamp.nanos) / 1_000_000
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
