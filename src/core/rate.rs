//! Rate limits as token buckets: [`RateBucket`] (a connection's inbound messages, a core's
//! share of accepted connections) and [`InboundLimit`], a connection's limiter, which tells
//! a burst ([`RateVerdict::Limited`]) from abuse ([`RateVerdict::Abuse`]).
//!
//! Plain values kept in `Cell`s by their owner (core-local); integer arithmetic only, so a
//! refill is exact whatever the clock granularity.

use std::cell::Cell;

/// A token bucket: `rate` tokens per second, one second of burst, counted in milli-tokens so
/// that integer refills are exact. Starts full.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateBucket {
    milli_tokens: u64,
    last_ms: u64,
}

impl RateBucket {
    /// Takes one token at `now_ms` (any monotonic clock, never 0) if there is one.
    pub fn take(&mut self, now_ms: u64, rate: u64) -> bool {
        let cap = rate.saturating_mul(1000);
        let tokens = if self.last_ms == 0 {
            cap
        } else {
            let refill = now_ms.saturating_sub(self.last_ms).saturating_mul(rate);
            self.milli_tokens.saturating_add(refill).min(cap)
        };
        self.last_ms = now_ms;
        let ok = tokens >= 1000;
        self.milli_tokens = if ok { tokens - 1000 } else { tokens };
        ok
    }
}

/// Outcome of the inbound rate limiter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateVerdict {
    /// Within the rate.
    Ok,
    /// Over the rate: answer `rate_limited`, drop the message.
    Limited,
    /// Over the rate for too long: close 4029.
    Abuse,
}

/// One connection's inbound limit: a bucket, and how many messages in a row it refused.
#[derive(Debug, Default)]
pub struct InboundLimit {
    bucket: Cell<RateBucket>,
    refused_in_a_row: Cell<u32>,
}

impl InboundLimit {
    /// Takes one inbound message (`rate` per second, one second of burst; 0: unlimited);
    /// `abuse_limit` refusals in a row are abuse.
    pub fn take(&self, now_ms: u64, rate: u32, abuse_limit: u32) -> RateVerdict {
        if rate == 0 {
            return RateVerdict::Ok;
        }
        let mut bucket = self.bucket.get();
        let ok = bucket.take(now_ms, rate as u64);
        self.bucket.set(bucket);
        if ok {
            self.refused_in_a_row.set(0);
            return RateVerdict::Ok;
        }
        let streak = self.refused_in_a_row.get() + 1;
        self.refused_in_a_row.set(streak);
        if streak >= abuse_limit {
            RateVerdict::Abuse
        } else {
            RateVerdict::Limited
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_rate_with_one_second_of_burst() {
        let mut b = RateBucket::default();
        let taken = (0..15).filter(|_| b.take(1, 10)).count();
        assert_eq!(taken, 10, "a full second of burst");
        assert!(!b.take(50, 10), "half a token after 50 ms");
        assert!(b.take(101, 10), "one token after 100 ms");
        assert!(!b.take(101, 10));
    }

    #[test]
    fn refusals_in_a_row_become_abuse_and_a_pass_resets_them() {
        let l = InboundLimit::default();
        assert_eq!(l.take(1, 1, 3), RateVerdict::Ok);
        assert_eq!(l.take(1, 1, 3), RateVerdict::Limited);
        assert_eq!(l.take(1, 1, 3), RateVerdict::Limited);
        assert_eq!(l.take(1, 1, 3), RateVerdict::Abuse);
        assert_eq!(l.take(2000, 1, 3), RateVerdict::Ok);
        assert_eq!(l.take(2000, 1, 3), RateVerdict::Limited);
        assert_eq!(l.take(2000, 0, 3), RateVerdict::Ok, "0 is unlimited");
    }

    #[test]
    fn a_zero_rate_allows_nothing_and_a_late_refill_never_exceeds_the_burst() {
        let mut b = RateBucket::default();
        assert!(!b.take(1, 0));
        let mut b = RateBucket::default();
        assert!(b.take(1, 2));
        assert!(b.take(1, 2));
        assert!(!b.take(1, 2));
        let after_an_hour = 3_600_000;
        let taken = (0..5).filter(|_| b.take(after_an_hour, 2)).count();
        assert_eq!(taken, 2);
    }
}
