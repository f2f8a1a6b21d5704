//! Liveness and readiness: `/healthz` says the process answers, `/readyz`
//! that PostgreSQL, NATS and Redis are reachable and every migration is
//! applied.

use std::collections::HashMap;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use sqlx::PgPool;
use utoipa::ToSchema;

use crate::state::AppState;

/// How long `/readyz` waits for PostgreSQL (and Redis) before calling it down.
const DATABASE_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

const OK: &str = "ok";

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
}

#[derive(Serialize, ToSchema)]
pub struct Health {
    /// Always `ok`.
    #[schema(example = "ok")]
    status: &'static str,
}

/// Liveness: the process answers.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "health",
    responses((status = 200, description = "The process is up", body = Health))
)]
pub async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

#[derive(Serialize, ToSchema)]
pub struct Readiness {
    /// `ready` or `not_ready`.
    #[schema(example = "ready")]
    status: &'static str,
    checks: Checks,
}

/// Each check is "ok" or a short reason; details go to the log, not here.
#[derive(Serialize, ToSchema)]
pub struct Checks {
    /// `ok`, `timeout` or `unreachable`.
    #[schema(example = "ok")]
    postgres: &'static str,
    /// `ok`, `connecting` or `disconnected`.
    #[schema(example = "ok")]
    nats: &'static str,
    /// The rate limiter's store: `ok`, `timeout` or `unreachable`.
    #[schema(example = "ok")]
    redis: &'static str,
    /// `ok`, `pending`, `failed`, `checksum_mismatch`, or `unknown` while
    /// PostgreSQL is down.
    #[schema(example = "ok")]
    migrations: &'static str,
}

/// Readiness: PostgreSQL, NATS and Redis reachable, every migration applied.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "health",
    responses(
        (status = 200, description = "Ready to serve", body = Readiness),
        (status = 503, description = "Not ready: `checks` says what is not `ok` (this body, not the error envelope)", body = Readiness),
    )
)]
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Readiness>) {
    let nats = match state.nats.connection_state() {
        async_nats::connection::State::Connected => OK,
        async_nats::connection::State::Pending => "connecting",
        async_nats::connection::State::Disconnected => "disconnected",
    };
    let (redis, (postgres, migrations)) = tokio::join!(
        async {
            let store = state.limiter.store();
            store.ping(DATABASE_CHECK_TIMEOUT).await.err().unwrap_or(OK)
        },
        check_database(&state.db)
    );
    let checks = Checks {
        postgres,
        nats,
        redis,
        migrations,
    };
    if [postgres, nats, redis, migrations].iter().all(|c| *c == OK) {
        let ready = Readiness {
            status: "ready",
            checks,
        };
        (StatusCode::OK, Json(ready))
    } else {
        let not_ready = Readiness {
            status: "not_ready",
            checks,
        };
        (StatusCode::SERVICE_UNAVAILABLE, Json(not_ready))
    }
}

/// (postgres, migrations): the migrations cannot be checked without the
/// database, so they are "unknown" when it is down.
async fn check_database(db: &PgPool) -> (&'static str, &'static str) {
    let ping =
        tokio::time::timeout(DATABASE_CHECK_TIMEOUT, sqlx::query("select 1").execute(db)).await;
    match ping {
        Err(_) => {
            tracing::warn!(
                timeout_ms = DATABASE_CHECK_TIMEOUT.as_millis() as u64,
                "readiness: PostgreSQL did not answer"
            );
            return ("timeout", "unknown");
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "readiness: PostgreSQL is unreachable");
            return ("unreachable", "unknown");
        }
        Ok(Ok(_)) => {}
    }
    match tokio::time::timeout(DATABASE_CHECK_TIMEOUT, applied_migrations(db)).await {
        Ok(Ok(applied)) => (OK, compare_migrations(&applied)),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "readiness: cannot read the applied migrations");
            (OK, "pending")
        }
        Err(_) => ("timeout", "unknown"),
    }
}

#[derive(sqlx::FromRow)]
struct AppliedMigration {
    version: i64,
    checksum: Vec<u8>,
    success: bool,
}

/// sqlx's own bookkeeping table; absent until the first `migrate`.
async fn applied_migrations(db: &PgPool) -> Result<HashMap<i64, AppliedMigration>, sqlx::Error> {
    let rows: Vec<AppliedMigration> =
        sqlx::query_as("select version, checksum, success from _sqlx_migrations")
            .fetch_all(db)
            .await?;
    Ok(rows.into_iter().map(|m| (m.version, m)).collect())
}

/// "ok" when every migration this binary knows is recorded as applied with
/// the same checksum. Versions the database has and we do not (a newer
/// deployment's expansions) are fine.
fn compare_migrations(applied: &HashMap<i64, AppliedMigration>) -> &'static str {
    let mut verdict = OK;
    for migration in schema::MIGRATOR.iter() {
        if migration.migration_type.is_down_migration() {
            continue;
        }
        let found = match applied.get(&migration.version) {
            None => "pending",
            Some(m) if !m.success => return "failed",
            Some(m) if m.checksum != *migration.checksum => "checksum_mismatch",
            Some(_) => OK,
        };
        if found != OK {
            tracing::warn!(
                migration.version = migration.version,
                state = found,
                "readiness: migration not applied as shipped"
            );
            verdict = found;
        }
    }
    verdict
}
