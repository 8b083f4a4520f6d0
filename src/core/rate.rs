//! Rate limits as token buckets: [`RateBucket`] (a connection's inbound messages and its
//! publishes, a core's share of accepted connections), [`InboundLimit`], a connection's
//! message limiter, which tells a burst ([`RateVerdict::Limited`]) from abuse
//! ([`RateVerdict::Abuse`]), and [`PublishLimit`], a connection's publish limiter, which says
//! when a refused publish may be retried.
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

    /// Milliseconds from the last [`RateBucket::take`] until the bucket holds a whole token
    /// at `rate` (at least 1; 0 when it holds one already). A `rate` of 0 never refills:
    /// `u64::MAX`.
    pub fn wait_ms(&self, rate: u64) -> u64 {
        let missing = 1000u64.saturating_sub(self.milli_tokens);
        match (missing, rate) {
            (0, _) => 0,
            (_, 0) => u64::MAX,
            (m, r) => m.div_ceil(r),
        }
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
            self.passed();
            RateVerdict::Ok
        } else {
            self.refused(abuse_limit)
        }
    }

    /// A message another limit let through (a `pub` within the publish limit): the run of
    /// refusals is over.
    pub fn passed(&self) {
        self.refused_in_a_row.set(0);
    }

    /// A message refused (by this limit, or a `pub` by the publish limit): `Limited`, or
    /// `Abuse` once `abuse_limit` were refused in a row.
    pub fn refused(&self, abuse_limit: u32) -> RateVerdict {
        let streak = self.refused_in_a_row.get() + 1;
        self.refused_in_a_row.set(streak);
        if streak >= abuse_limit {
            RateVerdict::Abuse
        } else {
            RateVerdict::Limited
        }
    }
}

/// One connection's publish limit (`--max-publish-per-sec`, or its token's
/// `max_publish_rate`): every message published counts one, a `pub` or one message of a
/// batch; one second of burst.
#[derive(Debug, Default)]
pub struct PublishLimit {
    bucket: Cell<RateBucket>,
}

impl PublishLimit {
    /// Takes one publish at `now_ms` (`rate` per second; 0: unlimited). `Err(ms)`: refused,
    /// and the limit has room again in `ms` milliseconds (at least 1).
    pub fn take(&self, now_ms: u64, rate: u32) -> Result<(), u64> {
        if rate == 0 {
            return Ok(());
        }
        let mut bucket = self.bucket.get();
        let ok = bucket.take(now_ms, rate as u64);
        self.bucket.set(bucket);
        if ok {
            Ok(())
        } else {
            Err(bucket.wait_ms(rate as u64).max(1))
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

    #[test]
    fn a_refused_publish_says_when_the_next_token_is_due() {
        let l = PublishLimit::default();
        for _ in 0..5 {
            assert_eq!(l.take(1, 5), Ok(()));
        }
        assert_eq!(l.take(1, 5), Err(200), "one token per 200 ms at 5/s");
        assert_eq!(l.take(101, 5), Err(100), "half of it refilled");
        assert_eq!(l.take(201, 5), Ok(()));
    }

    #[test]
    fn a_zero_publish_rate_is_unlimited() {
        let l = PublishLimit::default();
        assert!((0..100_000).all(|_| l.take(1, 0).is_ok()));
    }

    #[test]
    fn a_message_passed_by_another_limit_ends_the_run_of_refusals() {
        let l = InboundLimit::default();
        assert_eq!(l.refused(3), RateVerdict::Limited);
        assert_eq!(l.refused(3), RateVerdict::Limited);
        l.passed();
        assert_eq!(l.refused(3), RateVerdict::Limited);
        assert_eq!(l.refused(3), RateVerdict::Limited);
        assert_eq!(l.refused(3), RateVerdict::Abuse);
    }
}
