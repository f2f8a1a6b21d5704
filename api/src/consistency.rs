//! Read-your-writes: how far the projector has brought the read models, as
//! one watch value per api process ([`Projected`]), so that a write handler
//! can wait until its own event is visible before it answers.
//!
//! One task per process follows `jeanus_projected_position()`: it LISTENs on
//! the projector's `jeanus_projected` channel (one notification per
//! projector commit, carrying the position) and, because a notification is
//! lost while the listening connection is down, also reads the position
//! every [`POLL_INTERVAL`]. The value only ever rises. Waiters share the one
//! task: waiting costs no query.
//!
//! Writes wait for their own event ([`Projected::settle`]); reads wait for
//! their tenant's last event ([`Projected::catch_up_tenant`]).

use std::time::Duration;

use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// The channel the projector notifies on at each commit (its
/// `consumer::NOTIFY_CHANNEL`; the api does not depend on the projector).
pub const CHANNEL: &str = "jeanus_projected";

/// How often the position is read even without notifications.
pub const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// How long a write handler waits for its event to be projected before it
/// answers anyway (the event is committed; only its visibility is late).
pub const WRITE_VISIBILITY_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a read waits for the projector to reach its tenant's last event
/// before it reads anyway ([`Projected::catch_up_tenant`]), unless
/// `JEANUS_READ_CATCH_UP_TIMEOUT` says otherwise.
pub const READ_CATCH_UP_TIMEOUT: Duration = Duration::from_secs(2);

/// The position through which every read model is up to date, as last seen
/// by this process. Cheap to clone.
#[derive(Clone)]
pub struct Projected {
    rx: watch::Receiver<i64>,
    /// The bound of [`Projected::catch_up_tenant`].
    read_timeout: Duration,
}

impl Projected {
    /// Starts the watcher on the current runtime; it stops when `stop` is
    /// cancelled. Stop it before closing `db`: its listener holds one of the
    /// pool's connections.
    pub fn spawn(db: PgPool, stop: CancellationToken) -> (Self, JoinHandle<()>) {
        let (tx, rx) = watch::channel(0);
        let task = tokio::spawn(watch_projected(db, tx, stop));
        let read_timeout = READ_CATCH_UP_TIMEOUT;
        (Self { rx, read_timeout }, task)
    }

    /// With reads bounded by `timeout` instead of [`READ_CATCH_UP_TIMEOUT`].
    pub fn with_read_timeout(self, timeout: Duration) -> Self {
        Self {
            read_timeout: timeout,
            ..self
        }
    }

    /// A value that never moves: for tests of handlers that do not write.
    pub fn fixed(position: i64) -> Self {
        let (_, rx) = watch::channel(position);
        let read_timeout = READ_CATCH_UP_TIMEOUT;
        Self { rx, read_timeout }
    }

    /// The receiver itself, to await changes directly.
    pub fn receiver(&self) -> watch::Receiver<i64> {
        self.rx.clone()
    }

    pub fn current(&self) -> i64 {
        *self.rx.borrow()
    }

    /// Waits until the read models include the event at `position`, for at
    /// most `timeout`. False on timeout, or if the watcher has stopped.
    pub async fn wait_projected(&self, position: i64, timeout: Duration) -> bool {
        let mut rx = self.rx.clone();
        let reached = tokio::time::timeout(timeout, rx.wait_for(|p| *p >= position))
            .await
            .is_ok_and(|waited| waited.is_ok());
        reached
    }

    /// What a write handler does after appending: wait (bounded by
    /// [`WRITE_VISIBILITY_TIMEOUT`]) for `position`, and on timeout log a
    /// warning and carry on, since the write itself has succeeded.
    pub async fn settle(&self, position: Option<i64>) {
        let Some(position) = position else { return };
        if !self
            .wait_projected(position, WRITE_VISIBILITY_TIMEOUT)
            .await
        {
            tracing::warn!(
                event.position = position,
                projected = self.current(),
                timeout_ms = WRITE_VISIBILITY_TIMEOUT.as_millis() as u64,
                "the projector has not applied this write yet; answering anyway"
            );
        }
    }

    /// What a read of a tenant's read models does first (the lists, GET by
    /// id): wait until the projector has applied the tenant's last event in
    /// the log, so that every write acknowledged before the read began is
    /// in it, including one whose own [`settle`](Self::settle) timed out or
    /// that another api instance appended. One indexed query (the tenant's
    /// highest position, from `events_tenant_position`); no wait at all when
    /// the projector is there already. Bounded by the read timeout
    /// ([`READ_CATCH_UP_TIMEOUT`] unless configured):
    /// past it, the read goes ahead on the read models as they are (stale,
    /// never wrong), with a warning. (Configurable: under load, or with a
    /// projector far behind, a longer wait trades latency for freshness.)
    pub async fn catch_up_tenant(&self, db: &PgPool, tenant_id: Uuid) -> Result<(), sqlx::Error> {
        let last: Option<i64> =
            sqlx::query_scalar("select max(position) from events where tenant_id = $1")
                .bind(tenant_id)
                .fetch_one(db)
                .await?;
        let Some(last) = last else { return Ok(()) };
        if self.current() >= last {
            return Ok(());
        }
        if !self.wait_projected(last, self.read_timeout).await {
            tracing::warn!(
                tenant.id = %tenant_id,
                event.position = last,
                projected = self.current(),
                timeout_ms = self.read_timeout.as_millis() as u64,
                "the projector has not reached this tenant's last event; reading anyway"
            );
        }
        Ok(())
    }
}

/// Raises the watched value to `position` if that is higher.
fn advance(tx: &watch::Sender<i64>, position: i64) {
    tx.send_if_modified(|current| {
        if position > *current {
            *current = position;
            true
        } else {
            false
        }
    });
}

enum Wake {
    Stop,
    Poll,
    Notified(Result<i64, sqlx::Error>),
}

async fn watch_projected(db: PgPool, tx: watch::Sender<i64>, stop: CancellationToken) {
    let mut listener: Option<PgListener> = None;
    let mut poll = tokio::time::interval(POLL_INTERVAL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Log a failure when it starts, not every 200 ms while it lasts.
    let mut failing = false;

    loop {
        let wake = tokio::select! {
            _ = stop.cancelled() => Wake::Stop,
            _ = poll.tick() => Wake::Poll,
            n = next_position(&mut listener) => Wake::Notified(n),
        };
        match wake {
            Wake::Stop => break,
            Wake::Notified(Ok(position)) => advance(&tx, position),
            Wake::Notified(Err(e)) => {
                if !failing {
                    tracing::warn!(error = %e, "lost the projection listener; polling until it is back");
                    failing = true;
                }
                listener = None;
            }
            Wake::Poll => {
                if listener.is_none() {
                    listener = listen(&db).await.ok();
                }
                match projected_position(&db).await {
                    Ok(position) => {
                        advance(&tx, position);
                        if failing && listener.is_some() {
                            tracing::info!("following the projector's position again");
                            failing = false;
                        }
                    }
                    Err(e) => {
                        if !failing {
                            tracing::warn!(error = %e, "cannot read the projector's position; retrying");
                            failing = true;
                        }
                    }
                }
            }
        }
    }
}

async fn listen(db: &PgPool) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(db).await?;
    listener.listen(CHANNEL).await?;
    Ok(listener)
}

/// The next notified position; pending forever without a listener (the
/// poll then reconnects it). A payload that is not a number is skipped.
async fn next_position(listener: &mut Option<PgListener>) -> Result<i64, sqlx::Error> {
    let Some(listener) = listener else {
        return std::future::pending().await;
    };
    loop {
        let notification = listener.recv().await?;
        match notification.payload().trim().parse() {
            Ok(position) => return Ok(position),
            Err(_) => tracing::warn!(
                payload = notification.payload(),
                "ignoring a {CHANNEL} notification that is not a position"
            ),
        }
    }
}

async fn projected_position(db: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("select jeanus_projected_position()")
        .fetch_one(db)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn set_checkpoint(db: &PgPool, position: i64) {
        sqlx::query(
            "insert into projector_checkpoint (name, position) values ('test', $1)
             on conflict (name) do update set position = excluded.position",
        )
        .bind(position)
        .execute(db)
        .await
        .expect("checkpoint");
    }

    #[sqlx::test(migrator = "schema::MIGRATOR")]
    async fn a_notification_wakes_waiters(db: PgPool) {
        let stop = CancellationToken::new();
        let (projected, task) = Projected::spawn(db.clone(), stop.clone());
        let waiter = {
            let projected = projected.clone();
            tokio::spawn(async move { projected.wait_projected(7, Duration::from_secs(5)).await })
        };
        // No checkpoint says 7, so only the notification can: notify until
        // the listener (connected asynchronously) has heard it.
        while !waiter.is_finished() {
            sqlx::query("select pg_notify($1, '7')")
                .bind(CHANNEL)
                .execute(&db)
                .await
                .expect("notify");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(waiter.await.expect("waiter"));
        assert_eq!(projected.current(), 7);

        stop.cancel();
        task.await.expect("the watcher stops");
    }

    #[sqlx::test(migrator = "schema::MIGRATOR")]
    async fn without_notifications_the_poll_finds_the_position(db: PgPool) {
        let stop = CancellationToken::new();
        let (projected, task) = Projected::spawn(db.clone(), stop.clone());
        set_checkpoint(&db, 3).await;
        assert!(projected.wait_projected(3, Duration::from_secs(2)).await);
        stop.cancel();
        task.await.expect("the watcher stops");
    }

    #[sqlx::test(migrator = "schema::MIGRATOR")]
    async fn a_wait_times_out_and_the_value_never_goes_back(db: PgPool) {
        let stop = CancellationToken::new();
        let (projected, task) = Projected::spawn(db.clone(), stop.clone());
        set_checkpoint(&db, 5).await;
        assert!(projected.wait_projected(5, Duration::from_secs(2)).await);
        assert!(
            !projected
                .wait_projected(6, Duration::from_millis(300))
                .await
        );

        sqlx::query("select pg_notify($1, '2')")
            .bind(CHANNEL)
            .execute(&db)
            .await
            .expect("notify");
        tokio::time::sleep(POLL_INTERVAL * 2).await;
        assert_eq!(projected.current(), 5);
        stop.cancel();
        task.await.expect("the watcher stops");
    }

    #[tokio::test]
    async fn a_fixed_value_answers_without_a_database() {
        let projected = Projected::fixed(10);
        assert!(projected.wait_projected(10, Duration::from_millis(1)).await);
        assert!(
            !projected
                .wait_projected(11, Duration::from_millis(10))
                .await
        );
    }
}
