//! Schedules: `rate(N hours|days)` and AWS's six-field
//! `cron(minute hour day-of-month month day-of-week year)` (UTC), with an
//! optional window, and the next time a rotation is due.

use time::{Date, OffsetDateTime, Time};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Schedule {
    /// Every this many milliseconds after the last rotation.
    Rate(i64),
    Cron(Box<Cron>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cron {
    minutes: Vec<u32>,
    hours: Vec<u32>,
    /// None: `?`.
    days_of_month: Option<Vec<u32>>,
    months: Vec<u32>,
    /// 1 = Sunday … 7 = Saturday, as AWS; None: `?`.
    days_of_week: Option<Vec<u32>>,
    years: Option<Vec<u32>>,
}

const HOUR: i64 = 3_600_000;
const DAY: i64 = 24 * HOUR;

/// The longest rate and the longest duration a configuration may be given
/// (AWS's bound on a rate): far from what the arithmetic on times can hold.
/// One stored before the bound is read as it is (`parse`, checked
/// arithmetic only).
const MAX_SPAN: i64 = 1000 * DAY;

/// A schedule as a configuration is given it: [`parse`], at most 1000 days.
pub fn parse_configured(text: &str) -> Result<Schedule, String> {
    match parse(text)? {
        Schedule::Rate(every) if every > MAX_SPAN => {
            Err(format!("{:?}: a rate is at most 1000 days", text.trim()))
        }
        schedule => Ok(schedule),
    }
}

/// A duration as a configuration is given it: [`parse_duration`], at most
/// 1000 days.
pub fn parse_configured_duration(text: &str) -> Result<i64, String> {
    parse_duration(text)
        .ok()
        .filter(|span| *span <= MAX_SPAN)
        .ok_or_else(|| {
            format!(
                "{:?} is not a duration like 30m, 2h or 1d, of at most 1000d",
                text.trim()
            )
        })
}

/// Parses a schedule, with a message that says what is wrong.
/// When a secret rotated at `now` under `schedule` (as stored) rotates
/// next: none when rotation is off, on demand only, or the schedule no
/// longer parses.
pub fn next_after_rotation(schedule: &str, enabled: bool, now: i64) -> Option<i64> {
    if !enabled || schedule.is_empty() {
        return None;
    }
    parse(schedule).ok()?.next(Some(now), now)
}

pub fn parse(text: &str) -> Result<Schedule, String> {
    let text = text.trim();
    if let Some(inner) = text.strip_prefix("rate(").and_then(|t| t.strip_suffix(')')) {
        let mut parts = inner.split_whitespace();
        let (Some(count), Some(unit), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(format!("{text:?}: write rate(N hours) or rate(N days)"));
        };
        let count: i64 = count
            .parse()
            .ok()
            .filter(|count| *count >= 1)
            .ok_or_else(|| format!("{text:?}: N must be a whole number, at least 1"))?;
        let unit = match unit {
            "hour" | "hours" => HOUR,
            "day" | "days" => DAY,
            other => return Err(format!("{text:?}: unit {other:?} must be hours or days")),
        };
        return count
            .checked_mul(unit)
            .filter(|every| *every <= i64::MAX / 4)
            .map(Schedule::Rate)
            .ok_or_else(|| format!("{text:?}: a rate is at most 1000 days"));
    }
    if let Some(inner) = text.strip_prefix("cron(").and_then(|t| t.strip_suffix(')')) {
        return parse_cron(inner).map(|cron| Schedule::Cron(Box::new(cron)));
    }
    Err(format!(
        "{text:?} is not a schedule: write rate(N hours|days) or cron(min hour day-of-month month day-of-week year)"
    ))
}

fn parse_cron(inner: &str) -> Result<Cron, String> {
    let fields: Vec<&str> = inner.split_whitespace().collect();
    let [minute, hour, dom, month, dow, year] = fields.as_slice() else {
        return Err(format!(
            "cron({inner}) has {} fields; AWS cron has six: minute hour day-of-month month day-of-week year",
            fields.len()
        ));
    };
    let days_of_month = optional_field(dom, "day-of-month", 1, 31, &[])?;
    let days_of_week = optional_field(
        dow,
        "day-of-week",
        1,
        7,
        &["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"],
    )?;
    if days_of_month.is_some() && days_of_week.is_some() {
        return Err("cron: one of day-of-month and day-of-week must be ?".to_owned());
    }
    if days_of_month.is_none() && days_of_week.is_none() {
        return Err("cron: day-of-month and day-of-week cannot both be ?".to_owned());
    }
    Ok(Cron {
        minutes: field(minute, "minute", 0, 59, &[])?,
        hours: field(hour, "hour", 0, 23, &[])?,
        days_of_month,
        months: field(
            month,
            "month",
            1,
            12,
            &[
                "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
            ],
        )?,
        days_of_week,
        years: if *year == "*" {
            None
        } else {
            Some(field(year, "year", 1970, 2199, &[])?)
        },
    })
}

fn optional_field(
    text: &str,
    what: &str,
    low: u32,
    high: u32,
    names: &[&str],
) -> Result<Option<Vec<u32>>, String> {
    if text == "?" {
        Ok(None)
    } else {
        field(text, what, low, high, names).map(Some)
    }
}

/// `*`, numbers, names, lists, ranges and steps; the values in range.
fn field(text: &str, what: &str, low: u32, high: u32, names: &[&str]) -> Result<Vec<u32>, String> {
    let value = |token: &str| -> Result<u32, String> {
        if let Some(index) = names
            .iter()
            .position(|name| name.eq_ignore_ascii_case(token))
        {
            return Ok(low + index as u32);
        }
        match token.parse::<u32>() {
            Ok(number) if (low..=high).contains(&number) => Ok(number),
            _ => Err(format!("cron {what}: {token:?} is not in {low}-{high}")),
        }
    };
    let mut values = Vec::new();
    for part in text.split(',') {
        let unsupported = part.split(['-', '/']).any(|token| {
            token.contains(['L', 'W', '#'])
                && names.iter().all(|name| !token.eq_ignore_ascii_case(name))
        });
        if unsupported {
            return Err(format!("cron {what}: {part:?} (L, W, #) is not supported"));
        }
        let (range, step) = match part.split_once('/') {
            Some((range, step)) => (
                range,
                step.parse::<u32>()
                    .ok()
                    .filter(|step| *step >= 1)
                    .ok_or_else(|| format!("cron {what}: step {step:?} must be at least 1"))?,
            ),
            None => (part, 1),
        };
        let (start, end) = if range == "*" {
            (low, high)
        } else if let Some((a, b)) = range.split_once('-') {
            (value(a)?, value(b)?)
        } else {
            let start = value(range)?;
            (start, if part.contains('/') { high } else { start })
        };
        if start > end {
            return Err(format!("cron {what}: range {range:?} runs backwards"));
        }
        values.extend((start..=end).step_by(step as usize));
    }
    values.sort_unstable();
    values.dedup();
    Ok(values)
}

fn millis(time: OffsetDateTime) -> i64 {
    (time.unix_timestamp_nanos() / 1_000_000) as i64
}

impl Cron {
    fn day_matches(&self, date: Date) -> bool {
        if let Some(days) = &self.days_of_month {
            return days.contains(&u32::from(date.day()));
        }
        if let Some(days) = &self.days_of_week {
            let weekday = u32::from(date.weekday().number_from_sunday());
            return days.contains(&weekday);
        }
        false
    }

    /// The first matching minute strictly after `after` (Unix millis),
    /// looking at most ten years ahead.
    pub fn next_after(&self, after: i64) -> Option<i64> {
        let start = OffsetDateTime::from_unix_timestamp(after.div_euclid(1000)).ok()?;
        let mut date = start.date();
        for _ in 0..(366 * 10) {
            let month_ok = self.months.contains(&(u32::from(u8::from(date.month()))));
            let year_ok = self
                .years
                .as_ref()
                .is_none_or(|years| years.contains(&(date.year() as u32)));
            if month_ok && year_ok && self.day_matches(date) {
                for hour in &self.hours {
                    for minute in &self.minutes {
                        let time = Time::from_hms(*hour as u8, *minute as u8, 0).ok()?;
                        let candidate = millis(date.with_time(time).assume_utc());
                        if candidate > after {
                            return Some(candidate);
                        }
                    }
                }
            }
            date = date.next_day()?;
        }
        None
    }
}

impl Schedule {
    /// When the next rotation is due: for a rate, that long after the last
    /// rotation (or after `since`, when it never rotated); for cron, the
    /// next matching time after `since`.
    pub fn next(&self, last_rotated: Option<i64>, since: i64) -> Option<i64> {
        match self {
            Schedule::Rate(every) => last_rotated.unwrap_or(since).checked_add(*every),
            Schedule::Cron(cron) => cron.next_after(since),
        }
    }
}

/// `90m`, `2h`, `1d`, `30s` as milliseconds (what the arithmetic on
/// times holds; a configuration is bounded by [`parse_configured_duration`]).
pub fn parse_duration(text: &str) -> Result<i64, String> {
    let text = text.trim();
    let unlike = || format!("{text:?} is not a duration like 30m, 2h or 1d, of at most 1000d");
    // The unit is one ASCII letter: anything else (a letter of another
    // alphabet too) is not a duration.
    let Some(unit) = text.chars().last().filter(char::is_ascii) else {
        return Err(unlike());
    };
    let number = &text[..text.len() - 1];
    let unit = match unit {
        's' => 1000,
        'm' => 60_000,
        'h' => HOUR,
        'd' => DAY,
        _ => return Err(unlike()),
    };
    number
        .parse::<i64>()
        .ok()
        .filter(|n| *n >= 1)
        .and_then(|n| n.checked_mul(unit))
        .filter(|span| *span <= i64::MAX / 4)
        .ok_or_else(unlike)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_are_bounded_and_odd_text_is_refused_not_a_panic() {
        for text in ["1é", "2hé", "é", "", "106751991168d", "0h", "-1d"] {
            assert!(parse_duration(text).is_err(), "{text:?}");
        }
        // A configuration is given at most 1000 days; one stored before
        // the bound is read as it is.
        assert_eq!(parse_configured_duration("1000d"), Ok(1000 * DAY));
        assert!(parse_configured_duration("1001d").is_err());
        assert_eq!(parse_duration("1001d"), Ok(1001 * DAY));
        for text in ["rate(1001 days)", "rate(24001 hours)"] {
            assert!(parse_configured(text).is_err(), "{text:?}");
            assert!(parse(text).is_ok(), "{text:?}");
        }
        assert!(parse("rate(106751991167 days)").is_err());
        assert_eq!(
            parse_configured("rate(1000 days)")
                .unwrap()
                .next(Some(0), 0),
            Some(1000 * DAY)
        );
    }
    use time::macros::datetime;

    fn at(time: OffsetDateTime) -> i64 {
        millis(time)
    }

    #[test]
    fn rates() {
        assert_eq!(parse("rate(4 hours)").unwrap(), Schedule::Rate(4 * HOUR));
        assert_eq!(parse("rate(1 day)").unwrap(), Schedule::Rate(DAY));
        assert_eq!(
            parse("rate(30 days)").unwrap().next(Some(0), 5),
            Some(30 * DAY)
        );
        assert_eq!(
            parse("rate(2 days)").unwrap().next(None, 7),
            Some(7 + 2 * DAY)
        );
        for bad in ["rate(0 days)", "rate(2 weeks)", "rate(days)", "every day"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn crons() {
        // 10:00 UTC every day.
        let daily = parse("cron(0 10 * * ? *)").unwrap();
        let from = at(datetime!(2026-11-28 13:27 UTC));
        assert_eq!(
            daily.next(None, from),
            Some(at(datetime!(2026-11-29 10:00 UTC)))
        );
        // Every Monday at 08:30 (2026-11-28 is a Saturday).
        let monday = parse("cron(30 8 ? * MON *)").unwrap();
        assert_eq!(
            monday.next(None, from),
            Some(at(datetime!(2026-11-30 08:30 UTC)))
        );
        // The first of the month, every 15 minutes past midnight.
        let first = parse("cron(0/15 0 1 * ? *)").unwrap();
        assert_eq!(
            first.next(None, from),
            Some(at(datetime!(2026-12-01 00:00 UTC)))
        );
        assert_eq!(
            first.next(None, at(datetime!(2026-12-01 00:00 UTC))),
            Some(at(datetime!(2026-12-01 00:15 UTC)))
        );
        // Weekdays 1-5 = Sunday-Thursday in AWS's numbering.
        let range = parse("cron(0 12 ? * 2-6 2027)").unwrap();
        assert_eq!(
            range.next(None, from),
            Some(at(datetime!(2027-01-01 12:00 UTC)))
        );
        // Ranges of names that hold L or W: Monday to Wednesday, June
        // to July (2026-11-28 is a Saturday).
        let names = parse("cron(0 10 ? * MON-WED *)").unwrap();
        assert_eq!(
            names.next(None, from),
            Some(at(datetime!(2026-11-30 10:00 UTC)))
        );
        let summer = parse("cron(0 10 1 JUN-JUL ? *)").unwrap();
        assert_eq!(
            summer.next(None, from),
            Some(at(datetime!(2027-06-01 10:00 UTC)))
        );
        for bad in [
            "cron(0 10 ? * MON-5L *)",
            "cron(0 10 ? * 2/2W *)",
            "cron(0 10 * * * *)",
            "cron(0 10 ? * ? *)",
            "cron(0 10 * *)",
            "cron(61 10 * * ? *)",
            "cron(0 10 L * ? *)",
            "cron(0 10 ? * 2#1 *)",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("2h"), Ok(2 * HOUR));
        assert_eq!(parse_duration("90m"), Ok(90 * 60_000));
        assert!(parse_duration("2w").is_err());
        assert!(parse_duration("0h").is_err());
    }
}
