//! The Jeanus REST API: the router with its layers ([`app`]) and the server
//! that connects, starts the event store and the relay, and serves ([`run`]).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::http::{header, Response};
use axum::middleware::{self, Next};
use axum::response::IntoResponse;
use axum::Router;
use schema::store::EventStore;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceBuilder;
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;
use tower_http::trace::TraceLayer;
use tracing::Span;

pub mod audit;
pub mod auth;
pub mod config;
pub mod consistency;
pub mod error;
pub mod extract;
pub mod gate;
pub mod idempotency;
pub mod lists;
pub mod openapi;
pub mod ratelimit;
pub mod request_id;
pub mod resources;
pub mod routes;
pub mod state;
pub mod tenancy;
pub mod views;
pub mod webhooks;

use config::Config;
use error::ApiError;
use state::AppState;

/// The largest request body accepted.
pub const BODY_LIMIT: usize = 1024 * 1024;
/// A request still unanswered after this is cut short with 503 `timeout`.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// PostgreSQL connections per api process.
const MAX_DB_CONNECTIONS: u32 = 32;

/// Every route, the fallbacks and the layers, in one place. Outermost first:
/// - sensitive headers, so nothing below can log `Authorization`;
/// - request id, so the span, the handlers, the error envelope and the audit
///   log all see it (and every response carries `X-Request-Id`);
/// - client address (the socket's, or `X-Forwarded-For` from a trusted proxy);
/// - trace;
/// - audit (`/api/v1` and `/admin/v1`): outside the security layers, so that
///   a 401, 403 or 429 is logged too, and the response waits for its entry;
/// - for `/api/v1` only (but its public `GET /api/v1/openapi.json`):
///   authenticate (401) → IP allowlist (403) → rate limit (429, and the
///   quota headers);
/// - timeout, inside the span so that a timeout is logged (and audited)
///   with its request;
/// - body limit.
///
/// Each layer holds only the handle it needs (cloned for every request),
/// never the whole [`AppState`].
pub fn app(state: AppState) -> Router {
    let trusted: Arc<[ipnet::IpNet]> = state.config.trusted_proxies.clone().into();
    routes::router(&state)
        .method_not_allowed_fallback(error::method_not_allowed)
        .fallback(error::not_found)
        .layer(
            ServiceBuilder::new()
                .layer(SetSensitiveRequestHeadersLayer::new([
                    header::AUTHORIZATION,
                ]))
                .layer(middleware::from_fn(request_id::middleware))
                .layer(middleware::from_fn_with_state(
                    trusted,
                    auth::client_ip::middleware,
                ))
                .layer(
                    TraceLayer::new_for_http()
                        .make_span_with(request_span)
                        .on_response(record_response)
                        // A 5xx is logged once, by `ApiError`, with its cause.
                        .on_failure(()),
                )
                .layer(middleware::from_fn_with_state(
                    state.audit.clone(),
                    audit::middleware,
                ))
                .layer(middleware::from_fn_with_state(
                    state.keys.clone(),
                    auth::authenticate::middleware,
                ))
                .layer(middleware::from_fn_with_state(
                    state.limiter.clone(),
                    auth::client_ip::allowlist,
                ))
                .layer(middleware::from_fn_with_state(
                    state.limiter.clone(),
                    ratelimit::middleware,
                ))
                .layer(middleware::from_fn(timeout))
                .layer(DefaultBodyLimit::max(BODY_LIMIT)),
        )
        .with_state(state)
}

fn request_span(request: &Request) -> Span {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(MatchedPath::as_str);
    let request_id = request
        .headers()
        .get(&request_id::HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    tracing::info_span!(
        "request",
        request_id,
        method = %request.method(),
        route,
        status = tracing::field::Empty,
        duration_ms = tracing::field::Empty,
    )
}

fn record_response<B>(response: &Response<B>, latency: Duration, span: &Span) {
    span.record("status", response.status().as_u16());
    span.record("duration_ms", latency.as_micros() as f64 / 1000.0);
    tracing::info!("request finished");
}

async fn timeout(request: Request, next: Next) -> axum::response::Response {
    match tokio::time::timeout(REQUEST_TIMEOUT, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::Timeout.into_response(),
    }
}

/// Connects to PostgreSQL and NATS. An unreachable server fails with one line
/// naming the variable and the address tried (password hidden).
pub async fn connect(config: &Config) -> anyhow::Result<(PgPool, async_nats::Client)> {
    let db = schema::connect::postgres(&config.database_url, MAX_DB_CONNECTIONS).await?;
    let nats = schema::connect::nats(&config.nats_url, "jeanus-api").await?;
    Ok((db, nats))
}

/// Applies every migration in `schema::MIGRATOR` (`jeanus-api migrate`).
pub async fn migrate(config: &Config) -> anyhow::Result<()> {
    let db = schema::connect::postgres(&config.database_url, 2).await?;
    schema::MIGRATOR
        .run(&db)
        .await
        .context("failed to apply the migrations")?;
    db.close().await;
    Ok(())
}

/// Serves the api on `listener` until `shutdown` completes, then finishes the
/// requests in flight and stops the relay. Events committed but not yet
/// published are safe: the next relay to run (here or in another api
/// process) publishes them.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    // Webhook subscriptions cannot seal their secrets without it: refuse to
    // start rather than fail on the first subscription.
    config.sealing_key()?;
    let (db, nats) = connect(&config).await?;
    let limits = ratelimit::Store::connect(&config.redis_url, config.nats_prefix.prefix())
        .await
        .map_err(|e| {
            let shown = schema::connect::redact_url(&config.redis_url, false);
            anyhow::anyhow!(
                "cannot reach Redis, the rate limiter's store, at REDIS_URL={shown}: {e}"
            )
        })?;
    let js = async_nats::jetstream::new(nats.clone());
    let names = config.nats_prefix.clone();

    let stop_relay = CancellationToken::new();
    let relay = schema::relay::spawn(db.clone(), js.clone(), names.clone(), stop_relay.clone());
    let stop_watcher = CancellationToken::new();
    let (projected, watcher) = consistency::Projected::spawn(db.clone(), stop_watcher.clone());
    let projected = projected.with_read_timeout(config.read_catch_up_timeout);
    let keys = auth::authenticate::KeyCache::new(db.clone());
    let revocations = keys.watch_revocations(&nats, &names).await?;
    // Closed after the server has finished its last request.
    let gate = gate::Gate::spawn(&db, limits, config.rate_limit_window);
    let limiter = ratelimit::RateLimiter::new(gate.clone());
    let audit = audit::AuditLog::new(gate.clone());
    let stop_sweeper = CancellationToken::new();
    let sweeper = idempotency::spawn_sweeper(db.clone(), stop_sweeper.clone());
    let state = AppState::new(state::Shared {
        keys,
        limiter,
        audit,
        store: EventStore::spawn(db.clone()),
        db: db.clone(),
        nats: nats.clone(),
        js,
        names,
        config: Arc::new(config),
        projected,
    });

    let addr = listener
        .local_addr()
        .context("the listener has no local address")?;
    tracing::info!(%addr, "api listening");
    let served = axum::serve(
        listener,
        app(state).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
    .context("the HTTP server failed");

    stop_relay.cancel();
    stop_watcher.cancel();
    stop_sweeper.cancel();
    if let Err(e) = sweeper.await {
        tracing::error!(error = %e, "the idempotency key sweeper ended abnormally");
    }
    if let Err(e) = watcher.await {
        tracing::error!(error = %e, "the projection watcher ended abnormally");
    }
    if let Err(e) = relay.await {
        tracing::error!(error = %e, "the event relay ended abnormally");
    }
    if let Err(e) = nats.drain().await {
        tracing::warn!(error = %e, "failed to drain the NATS connection");
    }
    revocations.abort();
    gate.close().await;
    db.close().await;
    tracing::info!("api stopped");
    served
}
