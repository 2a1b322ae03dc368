//! Retrying transient failures, for every step that does: [`Retry`] runs an operation until it
//! succeeds, fails permanently, reaches an attempt cap or a deadline, or is cancelled, sleeping a
//! capped exponential [`Backoff`] with jitter in between, counting each retry in
//! `blip2idc_transient_retries_total{step}` and logging it. Used by the S3 fetch, the database
//! writes, dead-letter delivery, adapter uploads and the breaker's record.

use std::fmt::Display;
use std::future::Future;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

/// `initial · 2^(attempt-1)`, capped at `max`, then scaled by a random factor in [0.5, 1.0] so that a
/// fleet of consumers does not retry in lockstep.
#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff { initial, max: max.max(initial) }
    }

    /// The un-jittered delay before retry number `attempt` (1-based).
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.saturating_sub(1).min(30)).unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// The jittered delay before retry number `attempt` (1-based).
    pub fn delay(&self, attempt: u32) -> Duration {
        self.ceiling(attempt).mul_f64(0.5 + rand::random::<f64>() * 0.5)
    }
}

/// How a retried operation ended without success; each variant carries the last error.
#[derive(Debug)]
pub enum GaveUp<E> {
    /// The error is not worth retrying (the `retryable` predicate said so).
    Permanent(E),
    /// The cancellation token fired while waiting to retry.
    Cancelled(E),
    /// The attempt cap or the deadline was reached: `retries` retries over `failing_for`.
    Exhausted { retries: u32, failing_for: Duration, last: E },
}

impl<E> GaveUp<E> {
    /// The last error, however it ended.
    pub fn into_last(self) -> E {
        match self {
            GaveUp::Permanent(e) | GaveUp::Cancelled(e) | GaveUp::Exhausted { last: e, .. } => e,
        }
    }
}

/// A retry policy for one step. Without [`Retry::at_most`] or [`Retry::for_at_most`] it retries until
/// it succeeds or is cancelled.
#[derive(Clone, Copy)]
pub struct Retry<'a> {
    step: &'static str,
    backoff: Backoff,
    cancel: Option<&'a CancellationToken>,
    max_attempts: Option<u32>,
    give_up_after: Option<Duration>,
    about: Option<&'a (dyn Display + Sync)>,
}

impl<'a> Retry<'a> {
    /// Retries of `step` (the metric's label) with `backoff` between attempts.
    pub fn new(step: &'static str, backoff: Backoff) -> Self {
        Retry { step, backoff, cancel: None, max_attempts: None, give_up_after: None, about: None }
    }

    /// Stops waiting (and returns [`GaveUp::Cancelled`]) when `cancel` fires.
    pub fn cancelled_by(self, cancel: &'a CancellationToken) -> Self {
        Retry { cancel: Some(cancel), ..self }
    }

    /// Makes at most `attempts` attempts in all.
    pub fn at_most(self, attempts: u32) -> Self {
        Retry { max_attempts: Some(attempts.max(1)), ..self }
    }

    /// Gives up when a failure comes `deadline` or more after the first failure.
    pub fn for_at_most(self, deadline: Duration) -> Self {
        Retry { give_up_after: Some(deadline), ..self }
    }

    /// Names what is retried in the log lines (an object, a message).
    pub fn about(self, what: &'a (dyn Display + Sync)) -> Self {
        Retry { about: Some(what), ..self }
    }

    /// Runs `op` until it succeeds or gives up; errors for which `retryable` is false end it at once.
    pub async fn run<T, E, Fut>(
        &self,
        mut op: impl FnMut() -> Fut,
        retryable: impl Fn(&E) -> bool,
    ) -> Result<T, GaveUp<E>>
    where
        E: Display,
        Fut: Future<Output = Result<T, E>>,
    {
        let mut retries = 0u32;
        let mut first_failure: Option<Instant> = None;
        loop {
            let e = match op().await {
                Ok(v) => return Ok(v),
                Err(e) if !retryable(&e) => return Err(GaveUp::Permanent(e)),
                Err(e) => e,
            };
            let failing_for = first_failure.get_or_insert_with(Instant::now).elapsed();
            let out_of_time = self.give_up_after.is_some_and(|d| failing_for >= d);
            let out_of_attempts = self.max_attempts.is_some_and(|n| retries + 1 >= n);
            if out_of_time || out_of_attempts {
                return Err(GaveUp::Exhausted { retries, failing_for, last: e });
            }
            retries += 1;
            metrics::counter!(crate::metrics::TRANSIENT_RETRIES, "step" => self.step).increment(1);
            let delay = self.backoff.delay(retries);
            let about = self.about.map(|a| format!(" ({a})")).unwrap_or_default();
            tracing::warn!(step = self.step, attempt = retries, retry_in = ?delay, "{} failed{about}: {e:#}", self.step);
            match self.cancel {
                Some(cancel) => tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = cancel.cancelled() => return Err(GaveUp::Cancelled(e)),
                },
                None => tokio::time::sleep(delay).await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    fn fast() -> Backoff {
        Backoff::new(Duration::from_millis(1), Duration::from_millis(2))
    }

    /// An operation failing `fails` times with errors `retryable` then succeeding; counts its calls.
    async fn flaky(retry: Retry<'_>, fails: u32, retryable: bool) -> (Result<u32, GaveUp<String>>, u32) {
        let calls = Cell::new(0);
        let op = || {
            calls.set(calls.get() + 1);
            let n = calls.get();
            async move {
                if n <= fails {
                    Err(format!("failure {n}"))
                } else {
                    Ok(n)
                }
            }
        };
        let out = retry.run(op, |_| retryable).await;
        (out, calls.get())
    }

    #[tokio::test]
    async fn retries_until_it_succeeds() {
        let (out, calls) = flaky(Retry::new("test", fast()), 3, true).await;
        assert_eq!((out.unwrap(), calls), (4, 4));
    }

    #[tokio::test]
    async fn a_permanent_error_ends_it_at_once() {
        let (out, calls) = flaky(Retry::new("test", fast()), 3, false).await;
        assert!(matches!(out, Err(GaveUp::Permanent(ref e)) if e == "failure 1"), "{out:?}");
        assert_eq!(calls, 1);
    }

    #[tokio::test]
    async fn at_most_counts_attempts_in_all_and_does_not_sleep_after_the_last() {
        let t = Instant::now();
        let slow = Retry::new("test", Backoff::new(Duration::from_millis(300), Duration::from_millis(300)));
        let (out, calls) = flaky(slow.at_most(2), 10, true).await;
        assert!(matches!(out, Err(GaveUp::Exhausted { retries: 1, ref last, .. }) if last == "failure 2"), "{out:?}");
        assert_eq!(calls, 2);
        assert!(t.elapsed() < Duration::from_millis(300) * 2, "{:?}", t.elapsed());
    }

    #[tokio::test]
    async fn the_deadline_counts_from_the_first_failure() {
        let retry = Retry::new("test", Backoff::new(Duration::from_millis(20), Duration::from_millis(20)));
        let (out, calls) = flaky(retry.for_at_most(Duration::from_millis(50)), 1000, true).await;
        match out {
            Err(GaveUp::Exhausted { retries, failing_for, .. }) => {
                assert!(failing_for >= Duration::from_millis(50), "{failing_for:?}");
                assert_eq!(calls, retries + 1);
                assert!((2..=6).contains(&retries), "{retries}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn cancelling_stops_the_wait() {
        let cancel = CancellationToken::new();
        let retry = Retry::new("test", Backoff::new(Duration::from_secs(60), Duration::from_secs(60)));
        let stopper = {
            let cancel = cancel.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                cancel.cancel();
            })
        };
        let t = Instant::now();
        let (out, calls) = flaky(retry.cancelled_by(&cancel), 10, true).await;
        assert!(matches!(out, Err(GaveUp::Cancelled(ref e)) if e == "failure 1"), "{out:?}");
        assert_eq!(calls, 1);
        assert!(t.elapsed() < Duration::from_secs(10));
        stopper.await.unwrap();
    }

    #[test]
    fn grows_then_caps() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        assert_eq!(b.ceiling(1), Duration::from_millis(100));
        assert_eq!(b.ceiling(2), Duration::from_millis(200));
        assert_eq!(b.ceiling(4), Duration::from_millis(800));
        assert_eq!(b.ceiling(5), Duration::from_secs(1));
        assert_eq!(b.ceiling(500), Duration::from_secs(1));
        for a in 1..10 {
            let d = b.delay(a);
            assert!(d <= b.ceiling(a) && d >= b.ceiling(a) / 2);
        }
    }
}
