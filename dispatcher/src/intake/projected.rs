//! Waiting for the projector: the intake matches a batch against the
//! webhook endpoints only once every read model is up to date through the
//! batch's last event.

use anyhow::Context as _;
use futures::FutureExt as _;
use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use super::PROJECTED_POLL;

/// Wait until every read model (the webhook endpoints among them) is up to
/// date through `position`; `known` is the position last seen, raised as
/// the wait learns more. `false` on shutdown.
pub async fn wait_for_projector(
    pool: &PgPool,
    projected: &mut PgListener,
    known: &mut i64,
    position: i64,
    shutdown: &CancellationToken,
) -> anyhow::Result<bool> {
    // Notifications that came meanwhile, without waiting.
    while let Ok(Some(n)) = projected.try_recv().now_or_never().transpose() {
        if let Some(n) = n {
            *known = (*known).max(n.payload().trim().parse().unwrap_or(0));
        }
    }
    loop {
        if *known >= position {
            return Ok(true);
        }
        let at: i64 = sqlx::query_scalar("select jeanus_projected_position()")
            .fetch_one(pool)
            .await
            .context("failed to read the projector's position")?;
        *known = (*known).max(at);
        if *known >= position {
            return Ok(true);
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(false),
            n = projected.recv() => {
                let n = n.context("lost the projector's notifications")?;
                *known = (*known).max(n.payload().trim().parse().unwrap_or(0));
            }
            _ = tokio::time::sleep(PROJECTED_POLL) => {}
        }
    }
}
