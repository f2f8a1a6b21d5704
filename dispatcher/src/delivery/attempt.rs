//! One attempt from start to end: open the endpoint's secrets, send, tell
//! the breaker, decide the delivery's next state (delivered; failed on 410
//! or when the schedule is exhausted; else pending at the next jittered
//! retry, stretched by `Retry-After`) and queue its record.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use uuid::Uuid;

use super::breaker;
use super::record::Record;
use super::send::{send, AttemptOutcome};
use super::{Claimed, Workers};
use crate::retry::{self, RetrySchedule};
use crate::signing::SigningKey;

/// Send one delivery and queue its record. Returns the endpoint to disable
/// (tenant, endpoint) when it answered 410 Gone.
#[tracing::instrument(skip_all, fields(delivery.id = %delivery.id, endpoint.id = %delivery.endpoint_id, attempt = delivery.attempts + 1))]
pub async fn attempt(
    workers: &Workers,
    delivery: Claimed,
    endpoint_slot: OwnedSemaphorePermit,
    records: &mpsc::UnboundedSender<Record>,
) -> Option<(Uuid, Uuid)> {
    let at = Utc::now();
    let outcome = match live_keys(&workers.secret_key, &delivery.secrets, at) {
        Ok(keys) => send(&workers.client, workers.allow_private, &delivery, &keys, at).await,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "cannot sign for the endpoint");
            AttemptOutcome::failed(
                "http",
                "the endpoint's secret cannot be opened".into(),
                Duration::ZERO,
            )
        }
    };
    let wait = retry::retry_after(outcome.status_code, outcome.retry_after.as_deref(), at);
    workers.breakers.record(
        delivery.endpoint_id,
        if outcome.delivered() {
            breaker::Outcome::Delivered
        } else {
            breaker::Outcome::Failed { wait }
        },
        Instant::now(),
    );
    // The endpoint's slot is free once its answer is in: the delivery stays
    // leased until its record is written.
    drop(endpoint_slot);
    let attempts = u32::try_from(delivery.attempts).unwrap_or(0) + 1;
    let (status, next) = next_state(&workers.schedule, &outcome, attempts, at);
    tracing::debug!(
        status = outcome.status_code,
        error_class = outcome.error_class,
        latency_ms = outcome.latency.as_millis() as u64,
        outcome = status,
        "webhook attempt"
    );
    let gone =
        (outcome.status_code == Some(410)).then_some((delivery.tenant_id, delivery.endpoint_id));
    let _ = records.send(Record {
        delivery_id: delivery.id,
        endpoint_id: delivery.endpoint_id,
        tenant_id: delivery.tenant_id,
        at,
        outcome,
        status,
        next,
    });
    gone
}

/// The delivery's status after its `attempts`-th attempt made at `at`, and
/// when it is next due if it stays pending.
fn next_state(
    schedule: &RetrySchedule,
    outcome: &AttemptOutcome,
    attempts: u32,
    at: DateTime<Utc>,
) -> (&'static str, Option<DateTime<Utc>>) {
    if outcome.delivered() {
        return ("delivered", None);
    }
    if outcome.status_code == Some(410) {
        return ("failed", None);
    }
    let Some(delay) = schedule.delay_after(attempts, &mut rand::thread_rng()) else {
        return ("failed", None);
    };
    let delay = retry::with_retry_after(
        delay,
        outcome.status_code,
        outcome.retry_after.as_deref(),
        at,
    );
    let next = at + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::hours(1));
    ("pending", Some(next))
}

/// One of an endpoint's secrets, as the read model keeps it.
#[derive(Debug, Deserialize)]
struct StoredSecret {
    sealed: String,
    #[serde(default)]
    expires_at: Option<DateTime<Utc>>,
}

/// The keys that sign now: every secret not yet expired, opened.
fn live_keys(
    key: &schema::sealing::SecretKey,
    secrets: &serde_json::Value,
    now: DateTime<Utc>,
) -> anyhow::Result<Vec<SigningKey>> {
    let stored: Vec<StoredSecret> =
        serde_json::from_value(secrets.clone()).context("the endpoint's secrets are malformed")?;
    let mut keys = Vec::new();
    for secret in stored
        .iter()
        .filter(|s| s.expires_at.is_none_or(|at| at > now))
    {
        let plain = schema::sealing::open(key, &secret.sealed)
            .context("an endpoint secret does not open under JEANUS_SECRET_KEY")?;
        keys.push(SigningKey::from_secret(&plain)?);
    }
    anyhow::ensure!(!keys.is_empty(), "the endpoint has no live secret");
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;
    use schema::sealing::{seal, SecretKey};
    use serde_json::json;

    fn outcome(status: Option<u16>, retry_after: Option<&str>) -> AttemptOutcome {
        AttemptOutcome {
            status_code: status,
            error_class: status.filter(|s| !(200..300).contains(s)).map(|_| "http"),
            excerpt: None,
            retry_after: retry_after.map(str::to_owned),
            latency: Duration::ZERO,
        }
    }

    #[test]
    fn the_next_state_follows_the_answer_and_the_schedule() {
        let schedule = RetrySchedule::new(vec![Duration::from_secs(10), Duration::from_secs(60)]);
        let at = Utc::now();
        assert_eq!(
            next_state(&schedule, &outcome(Some(204), None), 1, at),
            ("delivered", None)
        );
        assert_eq!(
            next_state(&schedule, &outcome(Some(410), None), 1, at),
            ("failed", None),
            "410 Gone is final"
        );
        let (status, next) = next_state(&schedule, &outcome(Some(500), None), 1, at);
        assert_eq!(status, "pending");
        let wait = (next.expect("a retry") - at).num_milliseconds();
        assert!((9_000..=11_000).contains(&wait), "{wait} ms");
        let (_, next) = next_state(&schedule, &outcome(None, None), 2, at);
        let wait = (next.expect("a retry") - at).num_seconds();
        assert!((54..=66).contains(&wait), "{wait} s");
        assert_eq!(
            next_state(&schedule, &outcome(Some(500), None), 3, at),
            ("failed", None),
            "the schedule is exhausted"
        );
        let (_, next) = next_state(&schedule, &outcome(Some(429), Some("600")), 1, at);
        assert_eq!((next.expect("a retry") - at).num_seconds(), 600);
    }

    #[test]
    fn only_secrets_not_expired_sign() {
        let key = SecretKey::generate();
        let now = Utc::now();
        let current = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let secrets = json!([
            {"sealed": seal(&key, current), "expires_at": null},
            {"sealed": seal(&key, "whsec_c2VjcmV0"), "expires_at": now + chrono::Duration::hours(1)},
            {"sealed": seal(&key, "whsec_b2xk"), "expires_at": now - chrono::Duration::hours(1)},
        ]);
        let keys = live_keys(&key, &secrets, now).expect("keys");
        assert_eq!(keys.len(), 2);
        let signed = crate::signing::signature_header(&keys, "msg", 1, b"{}");
        assert_eq!(signed.split(' ').count(), 2);
    }

    #[test]
    fn secrets_that_cannot_sign_are_an_error() {
        let key = SecretKey::generate();
        let now = Utc::now();
        let other = SecretKey::generate();
        let wrong_key = json!([{"sealed": seal(&other, "whsec_c2VjcmV0")}]);
        let all_expired = json!([
            {"sealed": seal(&key, "whsec_c2VjcmV0"), "expires_at": now - chrono::Duration::seconds(1)}
        ]);
        for (secrets, why) in [
            (wrong_key, "JEANUS_SECRET_KEY"),
            (all_expired, "no live secret"),
            (json!({"sealed": 1}), "malformed"),
        ] {
            let e = live_keys(&key, &secrets, now).expect_err(why);
            assert!(format!("{e:#}").contains(why), "{e:#}");
        }
    }
}
