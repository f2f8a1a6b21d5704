//! Taking due deliveries: each live endpoint's oldest, no more than this
//! process may send to it now, leased with `for update skip locked` so that
//! other dispatcher instances skip them.

use anyhow::Context as _;
use sqlx::PgPool;
use uuid::Uuid;

use super::{LEASE, PER_ENDPOINT};

/// A delivery taken by this worker, with what is needed to send it.
#[derive(Debug, sqlx::FromRow)]
pub struct Claimed {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub endpoint_id: Uuid,
    pub event_id: Uuid,
    pub attempts: i32,
    /// The event's body as stored once for every endpoint (migration 0015).
    pub body: Option<String>,
    /// The delivery's own copy of its body, kept by deliveries created
    /// before bodies were stored once; null since.
    pub payload: Option<serde_json::Value>,
    pub url: String,
    pub secrets: serde_json::Value,
}

impl Claimed {
    /// The exact bytes to send, the same at every attempt; `None` when the
    /// delivery has no body (which the intake never writes).
    pub fn body_bytes(&self) -> Option<Vec<u8>> {
        match (&self.body, &self.payload) {
            (Some(body), _) => Some(body.clone().into_bytes()),
            // As the dispatcher serialised these before: identical bytes.
            (None, Some(payload)) => serde_json::to_vec(payload).ok(),
            (None, None) => None,
        }
    }
}

/// How many more requests each listed endpoint may take now (0: none);
/// an endpoint not listed may take [`PER_ENDPOINT`].
#[derive(Debug, Default)]
pub struct Room {
    pub endpoints: Vec<Uuid>,
    pub free: Vec<i64>,
}

/// Claim up to `limit` due deliveries of enabled endpoints, no more per
/// endpoint than `room` allows, leasing them for [`LEASE`].
pub async fn claim(pool: &PgPool, limit: i64, room: &Room) -> anyhow::Result<Vec<Claimed>> {
    sqlx::query_as::<_, Claimed>(
        // Every lookup is an index probe whatever the statistics: a plan
        // cached while the table was empty (sqlx prepares statements, and
        // PostgreSQL switches to a generic plan) must not scan it per row.
        "with due as materialized (
             -- Each live endpoint's oldest due deliveries, no more than its
             -- room here, so that one endpoint's backlog never hides
             -- another's (index webhook_deliveries_due_by_endpoint); an
             -- endpoint with no room costs no probe (limit 0).
             select d.id
               from webhook_endpoints e
              cross join lateral (
                  select x.id, x.next_attempt_at
                    from webhook_deliveries x
                   where x.endpoint_id = e.id
                     and x.status = 'pending' and x.next_attempt_at <= now()
                   order by x.next_attempt_at
                   limit coalesce(
                       (select u.free
                          from unnest($2::uuid[], $5::bigint[]) as u(endpoint_id, free)
                         where u.endpoint_id = e.id),
                       $4)
                     for update of x skip locked
              ) d
              where e.enabled and e.deleted_at is null
              order by d.next_attempt_at
              limit $1
         )
         update webhook_deliveries d
            set next_attempt_at = now() + make_interval(secs => $3)
           from webhook_endpoints e
          where d.id = any(array(select id from due)) and e.id = d.endpoint_id
         returning d.id, d.tenant_id, d.endpoint_id, d.event_id, d.attempts,
                   (select b.body from webhook_bodies b where b.event_id = d.event_id) as body,
                   d.payload, e.url, e.secrets",
    )
    .bind(limit)
    .bind(&room.endpoints)
    .bind(LEASE.as_secs_f64())
    .bind(PER_ENDPOINT as i64)
    .bind(&room.free)
    .fetch_all(pool)
    .await
    .context("failed to claim due deliveries")
}

/// Hand a claimed delivery back, due now.
pub async fn release(pool: &PgPool, id: Uuid) -> anyhow::Result<()> {
    sqlx::query(
        "update webhook_deliveries set next_attempt_at = now() where id = $1 and status = 'pending'",
    )
    .bind(id)
    .execute(pool)
    .await
    .context("failed to release a delivery")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn endpoint(pool: &PgPool, enabled: bool) -> Uuid {
        let id = Uuid::now_v7();
        sqlx::query(
            "insert into webhook_endpoints
                 (id, tenant_id, url, events, enabled, secrets, version, created_at, updated_at)
             values ($1, $2, 'https://example.com/hook', '{lead.created}', $3, '[]', 1, now(), now())",
        )
        .bind(id)
        .bind(Uuid::now_v7())
        .bind(enabled)
        .execute(pool)
        .await
        .expect("an endpoint");
        id
    }

    /// `n` pending deliveries to `endpoint`, due `due_in_s` from now.
    async fn deliveries(pool: &PgPool, endpoint: Uuid, n: usize, due_in_s: f64) {
        for _ in 0..n {
            sqlx::query(
                "insert into webhook_deliveries
                     (id, tenant_id, endpoint_id, event_id, event_position, event_type, payload,
                      next_attempt_at)
                 values ($1, $2, $3, $4, 1, 'lead.created', '{}',
                         now() + make_interval(secs => $5))",
            )
            .bind(Uuid::now_v7())
            .bind(Uuid::now_v7())
            .bind(endpoint)
            .bind(Uuid::now_v7())
            .bind(due_in_s)
            .execute(pool)
            .await
            .expect("a delivery");
        }
    }

    #[sqlx::test(migrator = "schema::MIGRATOR")]
    async fn a_claimed_delivery_sends_its_events_body_or_else_its_own_copy(pool: PgPool) {
        let stored_once = endpoint(&pool, true).await;
        let older = endpoint(&pool, true).await;
        let event = Uuid::now_v7();
        let body = r#"{"id":"x","data":{"b":1,"a":[2]}}"#;
        sqlx::query("insert into webhook_bodies (event_id, body) values ($1, $2)")
            .bind(event)
            .bind(body)
            .execute(&pool)
            .await
            .expect("a body");
        sqlx::query(
            "insert into webhook_deliveries
                 (id, tenant_id, endpoint_id, event_id, event_position, event_type, next_attempt_at)
             values ($1, $2, $3, $4, 1, 'lead.created', now())",
        )
        .bind(Uuid::now_v7())
        .bind(Uuid::now_v7())
        .bind(stored_once)
        .bind(event)
        .execute(&pool)
        .await
        .expect("a delivery");
        // A delivery from before migration 0015, carrying its own payload.
        deliveries(&pool, older, 1, -1.0).await;

        let claimed = claim(&pool, 10, &Room::default()).await.expect("claimed");
        let sent = |endpoint: Uuid| {
            let delivery = claimed.iter().find(|c| c.endpoint_id == endpoint);
            delivery.and_then(Claimed::body_bytes).expect("a body")
        };
        assert_eq!(
            sent(stored_once),
            body.as_bytes(),
            "the stored text, byte for byte"
        );
        assert_eq!(sent(older), b"{}");
    }

    #[test]
    fn a_delivery_without_any_body_has_nothing_to_send() {
        let delivery = Claimed {
            id: Uuid::now_v7(),
            tenant_id: Uuid::now_v7(),
            endpoint_id: Uuid::now_v7(),
            event_id: Uuid::now_v7(),
            attempts: 0,
            body: None,
            payload: None,
            url: "https://example.com/hook".into(),
            secrets: serde_json::json!([]),
        };
        assert_eq!(delivery.body_bytes(), None);
    }

    fn count(claimed: &[Claimed], endpoint: Uuid) -> usize {
        claimed.iter().filter(|c| c.endpoint_id == endpoint).count()
    }

    #[sqlx::test(migrator = "schema::MIGRATOR")]
    async fn a_claim_takes_due_deliveries_of_live_endpoints_within_their_room_once(pool: PgPool) {
        let busy = endpoint(&pool, true).await;
        let full = endpoint(&pool, true).await;
        let open = endpoint(&pool, true).await;
        let disabled = endpoint(&pool, false).await;
        let later = endpoint(&pool, true).await;
        deliveries(&pool, busy, PER_ENDPOINT + 4, -1.0).await;
        deliveries(&pool, full, 3, -1.0).await;
        deliveries(&pool, open, 3, -1.0).await;
        deliveries(&pool, disabled, 3, -1.0).await;
        deliveries(&pool, later, 3, 60.0).await;
        let room = Room {
            endpoints: vec![full, open],
            free: vec![0, 1],
        };

        let claimed = claim(&pool, 100, &room).await.expect("claimed");
        assert_eq!(count(&claimed, busy), PER_ENDPOINT, "at most its slots");
        assert_eq!(count(&claimed, full), 0, "no room");
        assert_eq!(count(&claimed, open), 1, "room for one");
        assert_eq!(count(&claimed, disabled), 0, "disabled");
        assert_eq!(count(&claimed, later), 0, "not due yet");

        // Leased: the next claim takes only what was left.
        let again = claim(&pool, 100, &Room::default()).await.expect("claimed");
        assert_eq!(count(&again, busy), 4);
        assert_eq!(count(&again, full), 3);
        assert_eq!(count(&again, open), 2);
        assert!(again.iter().all(|c| claimed.iter().all(|d| d.id != c.id)));
        assert!(claim(&pool, 100, &Room::default())
            .await
            .expect("claimed")
            .is_empty());

        // A released delivery is due at once.
        release(&pool, claimed[0].id).await.expect("released");
        let released = claim(&pool, 100, &Room::default()).await.expect("claimed");
        assert_eq!(released.len(), 1);
        assert_eq!(released[0].id, claimed[0].id);
    }
}
