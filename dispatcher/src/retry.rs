//! When a failed delivery is tried again: the configured schedule
//! (`JEANUS_WEBHOOK_RETRY_SCHEDULE`) with ±10 % jitter, stretched by a
//! receiver's `Retry-After` on 429 and 503 within bounds.

use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::Rng;

/// The longest a `Retry-After` may push a retry out.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);
/// Each delay is the scheduled one times a factor in [1 − JITTER, 1 + JITTER],
/// so that deliveries failed together are not retried together.
const JITTER: f64 = 0.10;

/// The delays between attempts: after the n-th failed attempt (n ≥ 1) the
/// delivery waits `delays[n - 1]`; after the last, it is given up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetrySchedule {
    delays: Vec<Duration>,
}

impl RetrySchedule {
    pub fn new(delays: Vec<Duration>) -> Self {
        Self { delays }
    }

    /// The number of attempts in all (the first one and one per delay).
    pub fn max_attempts(&self) -> usize {
        self.delays.len() + 1
    }

    /// The scheduled delay (no jitter) after `attempts` failed attempts;
    /// `None` when the schedule is exhausted.
    pub fn scheduled(&self, attempts: u32) -> Option<Duration> {
        let index = usize::try_from(attempts).ok()?.checked_sub(1)?;
        self.delays.get(index).copied()
    }

    /// The delay after `attempts` failed attempts, with jitter; `None` when
    /// the schedule is exhausted.
    pub fn delay_after(&self, attempts: u32, rng: &mut impl Rng) -> Option<Duration> {
        self.scheduled(attempts)
            .map(|d| d.mul_f64(rng.gen_range(1.0 - JITTER..=1.0 + JITTER)))
    }
}

/// How long a receiver asked for with `Retry-After` (seconds or an HTTP
/// date; it only counts with 429 and 503), at most [`MAX_RETRY_AFTER`].
pub fn retry_after(
    status: Option<u16>,
    retry_after: Option<&str>,
    now: DateTime<Utc>,
) -> Option<Duration> {
    if !matches!(status, Some(429 | 503)) {
        return None;
    }
    retry_after
        .and_then(|v| parse_retry_after(v, now))
        .map(|asked| asked.min(MAX_RETRY_AFTER))
}

/// The delay after a failure, honouring the receiver's [`retry_after`]
/// within [`scheduled`, [`MAX_RETRY_AFTER`]]: a receiver may ask for more
/// time, never for less than the schedule, nor for more than an hour.
pub fn with_retry_after(
    scheduled: Duration,
    status: Option<u16>,
    retry_after: Option<&str>,
    now: DateTime<Utc>,
) -> Duration {
    self::retry_after(status, retry_after, now).map_or(scheduled, |asked| asked.max(scheduled))
}

/// `120` or `Wed, 21 Oct 2015 07:28:00 GMT` → how long from `now`.
fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = DateTime::parse_from_rfc2822(value).ok()?;
    Some(
        (at.with_timezone(&Utc) - now)
            .to_std()
            .unwrap_or(Duration::ZERO),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, SeedableRng};

    fn schedule() -> RetrySchedule {
        RetrySchedule::new(vec![
            Duration::from_secs(5),
            Duration::from_secs(300),
            Duration::from_secs(1800),
        ])
    }

    #[test]
    fn attempt_n_waits_the_nth_delay_then_the_delivery_is_given_up() {
        let s = schedule();
        assert_eq!(s.max_attempts(), 4);
        assert_eq!(s.scheduled(0), None);
        assert_eq!(s.scheduled(1), Some(Duration::from_secs(5)));
        assert_eq!(s.scheduled(2), Some(Duration::from_secs(300)));
        assert_eq!(s.scheduled(3), Some(Duration::from_secs(1800)));
        assert_eq!(s.scheduled(4), None);
    }

    #[test]
    fn jitter_stays_within_ten_percent_and_varies() {
        let s = schedule();
        let mut rng = StdRng::seed_from_u64(7);
        let delays: Vec<Duration> = (0..200)
            .map(|_| s.delay_after(2, &mut rng).expect("scheduled"))
            .collect();
        for d in &delays {
            assert!(
                (270.0..=330.0).contains(&d.as_secs_f64()),
                "{d:?} is outside 300 s ± 10 %"
            );
        }
        assert!(delays.iter().any(|d| *d != delays[0]), "jitter varies");
        assert_eq!(s.delay_after(4, &mut rng), None);
    }

    #[test]
    fn retry_after_is_honoured_on_429_and_503_within_bounds() {
        let now = Utc::now();
        let five = Duration::from_secs(5);
        assert_eq!(
            with_retry_after(five, Some(429), Some("120"), now),
            Duration::from_secs(120)
        );
        assert_eq!(
            with_retry_after(five, Some(503), Some("1"), now),
            five,
            "never sooner than the schedule"
        );
        assert_eq!(
            with_retry_after(five, Some(503), Some("86400"), now),
            MAX_RETRY_AFTER,
            "never later than an hour"
        );
        assert_eq!(with_retry_after(five, Some(500), Some("120"), now), five);
        assert_eq!(with_retry_after(five, Some(429), Some("soon"), now), five);
        assert_eq!(with_retry_after(five, Some(429), None, now), five);
    }

    #[test]
    fn what_a_receiver_asks_for_is_bounded_and_only_read_on_429_and_503() {
        let now = Utc::now();
        assert_eq!(
            retry_after(Some(429), Some("30"), now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            retry_after(Some(503), Some("86400"), now),
            Some(MAX_RETRY_AFTER)
        );
        assert_eq!(retry_after(Some(500), Some("30"), now), None);
        assert_eq!(retry_after(Some(429), Some("later"), now), None);
        assert_eq!(retry_after(None, None, now), None);
    }

    #[test]
    fn retry_after_may_be_an_http_date() {
        let now = DateTime::parse_from_rfc3339("2015-10-21T07:20:00Z")
            .expect("a date")
            .with_timezone(&Utc);
        assert_eq!(
            with_retry_after(
                Duration::from_secs(5),
                Some(503),
                Some("Wed, 21 Oct 2015 07:28:00 GMT"),
                now
            ),
            Duration::from_secs(480)
        );
    }

    #[test]
    fn a_schedule_longer_than_an_hour_is_not_shortened_by_retry_after() {
        let ten_hours = Duration::from_secs(36_000);
        assert_eq!(
            with_retry_after(ten_hours, Some(429), Some("60"), Utc::now()),
            ten_hours
        );
    }
}
