//! Per-endpoint circuit breaking: once an endpoint has failed
//! [`TRIP_AFTER`] attempts in a row, this process stops sending to it and
//! lets one request through now and then (a probe, on the oldest due
//! delivery) until one succeeds. A dead, hanging or refusing endpoint then
//! costs one request per back-off instead of one per event, and its
//! deliveries simply stay due (nothing is lost: they are sent once the
//! endpoint answers again).
//!
//! The back-off starts at the retry schedule's first delay and doubles with
//! each failed probe, up to [`MAX_OPEN`]. A 429 or 503 with `Retry-After`
//! opens the circuit for that long at once (within the same bounds as a
//! delivery's own retry), so a receiver asking for time gets it for all its
//! deliveries, not just the one it answered.
//!
//! The state is this process's own, in memory: another instance learns on
//! its own after as many failures, and a restarted one starts closed. That
//! is what it costs, a few requests; what it saves is that no write and no
//! shared lock sits on the path of every attempt.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use uuid::Uuid;

/// Consecutive failed attempts that open an endpoint's circuit.
pub const TRIP_AFTER: u32 = 5;
/// The longest the circuit stays open between two probes.
pub const MAX_OPEN: Duration = Duration::from_secs(60);
/// An entry not touched for this long is forgotten (the endpoint was
/// deleted, disabled, or has nothing due): it starts closed again.
const FORGET_AFTER: Duration = Duration::from_secs(600);

/// What the breakers allow for an endpoint now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allowance {
    /// Closed: as many requests as its slots allow.
    Any,
    /// Half-open: one probe, if none is in flight.
    Probe,
    /// Open: nothing until the back-off ends.
    None,
}

/// An attempt's outcome as the breaker sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Delivered,
    /// Any failure; `wait` is how long the receiver asked for (a bounded
    /// `Retry-After` on 429/503), if it did.
    Failed {
        wait: Option<Duration>,
    },
}

#[derive(Debug)]
struct Health {
    /// Failed attempts since the last success.
    failures: u32,
    /// Failed probes since the circuit opened: the back-off's exponent.
    trips: u32,
    /// While in the future, the circuit is open.
    open_until: Option<Instant>,
    touched: Instant,
}

/// Every endpoint's circuit in this process.
#[derive(Debug)]
pub struct Breakers {
    /// The first back-off (the retry schedule's first delay, at most [`MAX_OPEN`]).
    base: Duration,
    endpoints: Mutex<HashMap<Uuid, Health>>,
}

impl Breakers {
    pub fn new(base: Duration) -> Self {
        Self {
            base: base.min(MAX_OPEN),
            endpoints: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Health>> {
        self.endpoints.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Record an attempt's outcome at `now`.
    pub fn record(&self, endpoint: Uuid, outcome: Outcome, now: Instant) {
        let mut endpoints = self.lock();
        let Outcome::Failed { wait } = outcome else {
            endpoints.remove(&endpoint);
            return;
        };
        let health = endpoints.entry(endpoint).or_insert(Health {
            failures: 0,
            trips: 0,
            open_until: None,
            touched: now,
        });
        health.failures = health.failures.saturating_add(1);
        health.touched = now;
        let open = health.open_until.is_some_and(|until| until > now);
        let backoff = if open {
            // A request sent before the circuit opened: it says nothing new.
            None
        } else if health.open_until.is_some() {
            // The probe failed: wait twice as long as last time.
            health.trips = health.trips.saturating_add(1);
            Some(self.backoff(health.trips))
        } else if health.failures >= TRIP_AFTER {
            Some(self.backoff(0))
        } else {
            None
        };
        // A receiver asking for time is given it, whatever the count.
        let until = match (backoff, wait) {
            (None, None) => None,
            (b, w) => Some(now + b.unwrap_or_default().max(w.unwrap_or_default())),
        };
        if let Some(until) = until {
            health.open_until = Some(health.open_until.map_or(until, |u| u.max(until)));
        }
    }

    fn backoff(&self, trips: u32) -> Duration {
        self.base
            .saturating_mul(2u32.saturating_pow(trips.min(16)))
            .min(MAX_OPEN)
    }

    /// What each endpoint with a circuit not closed may take at `now`;
    /// endpoints not listed take [`Allowance::Any`]. Forgets stale entries.
    pub fn allowances(&self, now: Instant) -> Vec<(Uuid, Allowance)> {
        let mut endpoints = self.lock();
        endpoints.retain(|_, h| now.saturating_duration_since(h.touched) < FORGET_AFTER);
        endpoints
            .iter()
            .filter_map(|(id, h)| {
                let allowance = match h.open_until {
                    None => return None,
                    Some(until) if until > now => Allowance::None,
                    Some(_) => Allowance::Probe,
                };
                Some((*id, allowance))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: Duration = Duration::from_secs(5);
    const FAILED: Outcome = Outcome::Failed { wait: None };

    fn allowance(b: &Breakers, endpoint: Uuid, now: Instant) -> Allowance {
        b.allowances(now)
            .into_iter()
            .find(|(id, _)| *id == endpoint)
            .map_or(Allowance::Any, |(_, a)| a)
    }

    #[test]
    fn a_circuit_opens_after_consecutive_failures_only() {
        let b = Breakers::new(BASE);
        let (e, now) = (Uuid::now_v7(), Instant::now());
        for _ in 0..TRIP_AFTER - 1 {
            b.record(e, FAILED, now);
        }
        assert_eq!(allowance(&b, e, now), Allowance::Any);
        b.record(e, Outcome::Delivered, now);
        for _ in 0..TRIP_AFTER - 1 {
            b.record(e, FAILED, now);
        }
        assert_eq!(
            allowance(&b, e, now),
            Allowance::Any,
            "a success resets the count"
        );
        b.record(e, FAILED, now);
        assert_eq!(allowance(&b, e, now), Allowance::None);
        assert_eq!(
            allowance(&b, Uuid::now_v7(), now),
            Allowance::Any,
            "others are untouched"
        );
    }

    #[test]
    fn an_open_circuit_lets_a_probe_through_and_backs_off_when_it_fails() {
        let b = Breakers::new(BASE);
        let (e, t0) = (Uuid::now_v7(), Instant::now());
        for _ in 0..TRIP_AFTER {
            b.record(e, FAILED, t0);
        }
        // Requests sent before it opened fail meanwhile: no longer back-off.
        b.record(e, FAILED, t0 + Duration::from_secs(1));
        assert_eq!(
            allowance(&b, e, t0 + BASE - Duration::from_millis(1)),
            Allowance::None
        );
        let t1 = t0 + BASE;
        assert_eq!(allowance(&b, e, t1), Allowance::Probe);
        b.record(e, FAILED, t1);
        assert_eq!(
            allowance(&b, e, t1 + BASE * 2 - Duration::from_millis(1)),
            Allowance::None
        );
        let t2 = t1 + BASE * 2;
        assert_eq!(allowance(&b, e, t2), Allowance::Probe);
        b.record(e, Outcome::Delivered, t2);
        assert_eq!(
            allowance(&b, e, t2),
            Allowance::Any,
            "a good probe closes it"
        );
    }

    #[test]
    fn the_back_off_is_capped() {
        let b = Breakers::new(BASE);
        let (e, mut now) = (Uuid::now_v7(), Instant::now());
        for _ in 0..TRIP_AFTER {
            b.record(e, FAILED, now);
        }
        for _ in 0..40 {
            now += MAX_OPEN;
            assert_eq!(allowance(&b, e, now), Allowance::Probe);
            b.record(e, FAILED, now);
        }
        assert_eq!(allowance(&b, e, now + MAX_OPEN), Allowance::Probe);
    }

    #[test]
    fn retry_after_opens_the_circuit_at_once_for_as_long_as_asked() {
        let b = Breakers::new(BASE);
        let (e, now) = (Uuid::now_v7(), Instant::now());
        let wait = Duration::from_secs(30);
        b.record(e, Outcome::Failed { wait: Some(wait) }, now);
        assert_eq!(
            allowance(&b, e, now + wait - Duration::from_millis(1)),
            Allowance::None
        );
        assert_eq!(allowance(&b, e, now + wait), Allowance::Probe);
        b.record(e, Outcome::Delivered, now + wait);
        assert_eq!(allowance(&b, e, now + wait), Allowance::Any);
    }

    #[test]
    fn quiet_endpoints_are_forgotten() {
        let b = Breakers::new(BASE);
        let (e, now) = (Uuid::now_v7(), Instant::now());
        b.record(e, FAILED, now);
        assert_eq!(b.lock().len(), 1);
        b.allowances(now + FORGET_AFTER);
        assert!(b.lock().is_empty());
    }
}
