//! Rate limits per principal: a token bucket for each principal that asks
//! (refilled at `requests_per_second`, holding at most `burst`), checked
//! after authentication and before the handler touches anything. A refused
//! request gets `RESOURCE_EXHAUSTED` with how long to wait, in the message
//! and in `grpc-retry-pushback-ms` (the metadata gRPC's retry policy reads).
//!
//! Refusals are audited, but at most one per principal per second: that
//! event counts the refusals left out since the previous one, so a client in
//! a tight loop cannot turn the limit into a flood of audit writes. Counts
//! that no later refusal carried are written by a sweep every second and at
//! shutdown ([`RateLimiter::take_unrecorded`]); a count whose event could
//! not be written is counted again for the next sweep, so none is lost.

use crate::config::RateLimitSettings;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Beyond this many buckets, idle (full) ones are dropped.
const PRUNE_ABOVE: usize = 10_000;

#[derive(Debug)]
pub struct RateLimiter {
    settings: RateLimitSettings,
    buckets: Mutex<HashMap<String, Bucket>>,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    updated: Instant,
    refusals: OncePerSecond,
}

impl Bucket {
    fn full(burst: f64, now: Instant) -> Self {
        Self {
            tokens: burst,
            updated: now,
            refusals: OncePerSecond::default(),
        }
    }
}

/// Which of a run of events are recorded: at most one a second, each
/// counting those left out since the one before. Shared by the rate
/// limit's refusals and the interceptor's (`auth`).
#[derive(Debug, Default)]
pub struct OncePerSecond {
    last_recorded: Option<Instant>,
    left_out: u64,
}

impl OncePerSecond {
    /// `Some(n)`: record this one, noting `n` left out before it; `None`:
    /// leave it out, counted in the next one recorded.
    pub fn admit(&mut self, now: Instant) -> Option<u64> {
        let due = self
            .last_recorded
            .is_none_or(|last| now.saturating_duration_since(last) >= Duration::from_secs(1));
        if due {
            self.last_recorded = Some(now);
            Some(std::mem::take(&mut self.left_out))
        } else {
            self.left_out += 1;
            None
        }
    }

    /// How many were left out since the last one recorded; they count as
    /// recorded from now on.
    pub fn take_left_out(&mut self) -> u64 {
        std::mem::take(&mut self.left_out)
    }

    /// Counts `left_out` more as left out (their event was not written).
    pub fn count_left_out(&mut self, left_out: u64) {
        self.left_out += left_out;
    }

    /// How many were left out since the last one recorded.
    pub fn left_out(&self) -> u64 {
        self.left_out
    }

    /// Whether one was recorded less than a second before `now`.
    pub fn recorded_within_a_second(&self, now: Instant) -> bool {
        self.last_recorded
            .is_some_and(|last| now.saturating_duration_since(last) < Duration::from_secs(1))
    }
}

/// A request over the limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub retry_after: Duration,
    /// `Some(n)`: audit this refusal, noting `n` refusals left out before
    /// it; `None`: leave it out of the log (one was recorded just now).
    pub record: Option<u64>,
}

impl RateLimiter {
    pub fn new(settings: RateLimitSettings) -> Self {
        Self {
            settings,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    pub fn settings(&self) -> &RateLimitSettings {
        &self.settings
    }

    /// Takes a token for `principal` at `now`, or says how long to wait.
    pub fn check(&self, principal: &str, now: Instant) -> Result<(), Refusal> {
        self.take(principal, 1.0, now)
    }

    /// Takes `tokens` for `principal` at `now` (at most a burst's worth:
    /// more could never be had), or says how long to wait for them.
    pub fn take(&self, principal: &str, tokens: f64, now: Instant) -> Result<(), Refusal> {
        let rate = f64::from(self.settings.requests_per_second);
        if rate <= 0.0 {
            return Ok(());
        }
        let burst = f64::from(self.settings.burst.max(1));
        let mut buckets = match self.buckets.lock() {
            Ok(buckets) => buckets,
            Err(poisoned) => poisoned.into_inner(),
        };
        // Looked up by reference: no allocation for a principal seen before
        // (every request but a principal's first).
        if !buckets.contains_key(principal) {
            // Pruned as a principal is added, not on every request: a scan
            // of many buckets under the lock each time would cost every
            // principal's requests.
            if buckets.len() > PRUNE_ABOVE {
                // Full buckets with nothing left to record are as good as new.
                buckets.retain(|_, bucket| {
                    bucket.refusals.left_out > 0
                        || bucket.tokens + now.duration_since(bucket.updated).as_secs_f64() * rate
                            < burst
                });
            }
            buckets.insert(principal.to_owned(), Bucket::full(burst, now));
        }
        #[allow(clippy::expect_used)] // inserted just above, under the same lock
        let bucket = buckets.get_mut(principal).expect("the bucket exists");
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(burst);
        bucket.updated = now;
        let tokens = tokens.min(burst);
        if bucket.tokens >= tokens {
            bucket.tokens -= tokens;
            return Ok(());
        }
        let retry_after = Duration::from_secs_f64((tokens - bucket.tokens) / rate);
        Err(Refusal {
            retry_after,
            record: bucket.refusals.admit(now),
        })
    }
}

impl RateLimiter {
    /// Counts `refused` of `principal`'s refusals as left out of the log
    /// again: the event that was to count them was not written.
    pub fn count_unrecorded(&self, principal: &str, refused: u64) {
        let mut buckets = match self.buckets.lock() {
            Ok(buckets) => buckets,
            Err(poisoned) => poisoned.into_inner(),
        };
        let burst = f64::from(self.settings.burst.max(1));
        buckets
            .entry(principal.to_owned())
            .or_insert_with(|| Bucket::full(burst, Instant::now()))
            .refusals
            .left_out += refused;
    }

    /// The refusals left out of the log that no recorded refusal has
    /// counted yet, by principal; they count as recorded from now on.
    pub fn take_unrecorded(&self) -> Vec<(String, u64)> {
        let mut buckets = match self.buckets.lock() {
            Ok(buckets) => buckets,
            Err(poisoned) => poisoned.into_inner(),
        };
        buckets
            .iter_mut()
            .filter(|(_, bucket)| bucket.refusals.left_out > 0)
            .map(|(principal, bucket)| {
                (
                    principal.clone(),
                    std::mem::take(&mut bucket.refusals.left_out),
                )
            })
            .collect()
    }
}

/// The Watch streams each principal has open, bounded: each holds a
/// subscription to every event and a timer, and costs a policy decision
/// per event, and a principal within its rate limit could otherwise open
/// tens of thousands in a minute.
#[derive(Debug, Default)]
pub struct OpenStreams {
    open: std::sync::Arc<Mutex<HashMap<String, usize>>>,
}

/// One open stream, counted until it is dropped.
#[derive(Debug)]
pub struct StreamSlot {
    open: std::sync::Arc<Mutex<HashMap<String, usize>>>,
    principal: String,
}

impl OpenStreams {
    /// A slot for another stream of `principal`, unless it has `most` open.
    pub fn take(&self, principal: &str, most: usize) -> Option<StreamSlot> {
        let mut open = match self.open.lock() {
            Ok(open) => open,
            Err(poisoned) => poisoned.into_inner(),
        };
        let count = open.entry(principal.to_owned()).or_default();
        if *count >= most {
            return None;
        }
        *count += 1;
        Some(StreamSlot {
            open: self.open.clone(),
            principal: principal.to_owned(),
        })
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut open = match self.open.lock() {
            Ok(open) => open,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(count) = open.get_mut(&self.principal) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.principal);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A principal has at most so many streams open; one that ends frees
    /// its slot, and others' count apart.
    #[test]
    fn open_streams_are_bounded_per_principal() {
        let streams = OpenStreams::default();
        let held: Vec<StreamSlot> = (0..3).map(|_| streams.take("app", 3).unwrap()).collect();
        assert!(streams.take("app", 3).is_none());
        let other = streams.take("other", 3).unwrap();
        drop(held);
        let again: Vec<StreamSlot> = (0..3).map(|_| streams.take("app", 3).unwrap()).collect();
        assert_eq!(again.len(), 3);
        drop((again, other));
        assert!(
            streams.open.lock().unwrap().is_empty(),
            "counts of none are dropped"
        );
    }

    /// A batch takes several tokens at once, or waits for them all.
    #[test]
    fn several_tokens_are_taken_at_once() {
        let limits = limiter(1, 30);
        let now = Instant::now();
        limits.take("app", 20.0, now).unwrap();
        let refused = limits.take("app", 20.0, now).unwrap_err();
        assert_eq!(refused.retry_after, Duration::from_secs(10));
        limits.take("app", 10.0, now).unwrap();
    }

    fn limiter(requests_per_second: u32, burst: u32) -> RateLimiter {
        RateLimiter::new(RateLimitSettings {
            requests_per_second,
            burst,
        })
    }

    #[test]
    fn a_burst_then_the_rate_and_each_principal_on_its_own() {
        let limiter = limiter(10, 3);
        let start = Instant::now();
        for _ in 0..3 {
            assert!(limiter.check("app", start).is_ok());
        }
        let refused = limiter.check("app", start).unwrap_err();
        assert_eq!(refused.record, Some(0));
        assert!(refused.retry_after > Duration::ZERO);
        assert!(refused.retry_after <= Duration::from_millis(100));
        assert!(limiter.check("other", start).is_ok());
        // Refusals within the second are counted, not recorded.
        assert_eq!(limiter.check("app", start).unwrap_err().record, None);
        assert_eq!(limiter.check("app", start).unwrap_err().record, None);
        // A tenth of a second later one token is back.
        let later = start + Duration::from_millis(100);
        assert!(limiter.check("app", later).is_ok());
        let second = start + Duration::from_secs(1);
        assert!(limiter.check("app", second).is_ok());
        let mut refused = None;
        for _ in 0..10 {
            if let Err(refusal) = limiter.check("app", second) {
                refused = Some(refusal);
                break;
            }
        }
        assert_eq!(refused.unwrap().record, Some(2));
        // Left out after that one: taken by the sweep, once.
        assert_eq!(limiter.check("app", second).unwrap_err().record, None);
        assert_eq!(limiter.take_unrecorded(), vec![("app".to_owned(), 1)]);
        assert!(limiter.take_unrecorded().is_empty());
    }

    #[test]
    fn zero_means_no_limit() {
        let limiter = limiter(0, 0);
        let now = Instant::now();
        assert!((0..10_000).all(|_| limiter.check("app", now).is_ok()));
    }
}
