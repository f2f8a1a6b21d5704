//! Connecting to PostgreSQL and NATS at start-up, shared by every service: an
//! unreachable server fails with one line naming the variable and the address
//! tried, and a password in a URL is never printed.

use std::io::ErrorKind;
use std::str::FromStr;
use std::time::Duration;

use anyhow::anyhow;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgPool};

/// How long one start-up connection attempt may take before we give up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Opens a pool on `DATABASE_URL`. A first connection is made up front (and
/// closed) so that a wrong address fails here with its real cause; the pool
/// would only say that it timed out. Once running, the pool replaces broken
/// connections by itself, so a restarted PostgreSQL is picked up again.
pub async fn postgres(url: &str, max_connections: u32) -> anyhow::Result<PgPool> {
    let shown = redact_url(url, false);
    let options = PgConnectOptions::from_str(url).map_err(|e| {
        anyhow!(
            "DATABASE_URL is not a valid PostgreSQL URL (postgres://user@host:port/database): {e}"
        )
    })?;

    let probe = tokio::time::timeout(CONNECT_TIMEOUT, sqlx::PgConnection::connect_with(&options))
        .await
        .map_err(|_| {
            anyhow!(
                "cannot reach PostgreSQL at DATABASE_URL={shown}: no answer within {} s",
                CONNECT_TIMEOUT.as_secs()
            )
        })?
        .map_err(|e| postgres_error(&shown, e))?;
    // Closing is a courtesy to the server; the connection is of no further use.
    let _ = probe.close().await;

    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(CONNECT_TIMEOUT)
        .connect_with(options)
        .await
        .map_err(|e| postgres_error(&shown, e))
}

fn postgres_error(shown: &str, error: sqlx::Error) -> anyhow::Error {
    match error {
        sqlx::Error::Io(e) => anyhow!(
            "cannot reach PostgreSQL at DATABASE_URL={shown}: {}",
            io_reason(&e)
        ),
        sqlx::Error::PoolTimedOut => anyhow!(
            "cannot reach PostgreSQL at DATABASE_URL={shown}: no answer within {} s",
            CONNECT_TIMEOUT.as_secs()
        ),
        sqlx::Error::Database(e) => anyhow!(
            "PostgreSQL at DATABASE_URL={shown} refused the connection: {}",
            e.message()
        ),
        other => anyhow!("cannot connect to PostgreSQL at DATABASE_URL={shown}: {other}"),
    }
}

/// Connects to `NATS_URL`, once: start-up does not wait for a server that is
/// not there. After that the client reconnects by itself, without limit,
/// while `/readyz` reports the connection as down (async-nats logs each
/// connection event itself).
pub async fn nats(url: &str, client_name: &str) -> anyhow::Result<async_nats::Client> {
    let shown = redact_url(url, true);
    async_nats::ConnectOptions::new()
        .name(client_name)
        .connection_timeout(CONNECT_TIMEOUT)
        .max_reconnects(None)
        .connect(url)
        .await
        .map_err(|e| {
            let reason = std::error::Error::source(&e)
                .and_then(|s| s.downcast_ref::<std::io::Error>())
                .map(io_reason)
                .unwrap_or_else(|| e.to_string());
            anyhow!("cannot reach NATS at NATS_URL={shown}: {reason}")
        })
}

/// Turns a small set of common socket errors into plain words; anything else
/// keeps the operating system's text.
fn io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        ErrorKind::ConnectionRefused => "connection refused".to_owned(),
        ErrorKind::ConnectionReset => "connection reset".to_owned(),
        ErrorKind::TimedOut => "timed out".to_owned(),
        _ => e.to_string(),
    }
}

/// `url` as it may be printed: the password (or, with `userinfo_is_secret`,
/// the whole user part, as a NATS token is) and any `password=` or `pass=`
/// query parameter are dropped, and ` (password hidden)` says so. A comma-separated
/// list (NATS accepts one) is redacted URL by URL.
pub fn redact_url(url: &str, userinfo_is_secret: bool) -> String {
    let mut hidden = false;
    let shown: Vec<String> = url
        .split(',')
        .map(|one| redact_one(one.trim(), userinfo_is_secret, &mut hidden))
        .collect();
    let note = if hidden { " (password hidden)" } else { "" };
    format!("{}{note}", shown.join(","))
}

fn redact_one(url: &str, userinfo_is_secret: bool, hidden: &mut bool) -> String {
    // NATS also takes a bare `host:port`.
    let scheme_end = url.find("://").map_or(0, |i| i + 3);
    let (scheme, rest) = url.split_at(scheme_end);
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);

    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            *hidden |= userinfo_is_secret || userinfo.contains(':');
            match userinfo.split_once(':') {
                Some(("", _)) if !userinfo_is_secret => host.to_owned(),
                Some((user, _)) if !userinfo_is_secret => format!("{user}@{host}"),
                _ if userinfo_is_secret => host.to_owned(),
                _ => format!("{userinfo}@{host}"),
            }
        }
        None => authority.to_owned(),
    };

    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let kept: Vec<&str> = query
                .split('&')
                .filter(|pair| {
                    let pair = pair.to_ascii_lowercase();
                    // `pass=`: a Redis URL's password, for a Unix socket.
                    let secret = pair.starts_with("password=") || pair.starts_with("pass=");
                    *hidden |= secret;
                    !secret
                })
                .collect();
            if kept.is_empty() {
                path.to_owned()
            } else {
                format!("{path}?{}", kept.join("&"))
            }
        }
        None => tail.to_owned(),
    };

    format!("{scheme}{authority}{tail}")
}

/// One PostgreSQL connection, held by one writer that sends one batch at a
/// time, instead of a pool of one: a pool tests each connection as it comes
/// back (`sqlx` sends a `Sync` and waits for the server's answer), so every
/// batch cost two round trips, and the next batch waited for the second.
/// A held connection is checked out for a batch ([`Held::checkout`]) and
/// given back only when the batch succeeded ([`Checkout::keep`]); one that
/// failed, or whose batch was dropped mid-statement, is dropped with it, so
/// that no connection is reused in an unknown state. The next checkout
/// connects anew.
pub struct Held {
    options: PgConnectOptions,
    slot: tokio::sync::Mutex<Option<sqlx::PgConnection>>,
}

impl Held {
    /// Connects lazily, on the first checkout, with `options`.
    pub fn new(options: PgConnectOptions) -> Self {
        Self {
            options,
            slot: tokio::sync::Mutex::new(None),
        }
    }

    /// The held connection, or a new one (within [`CONNECT_TIMEOUT`]) when
    /// none is held. Waits while another checkout is out.
    pub async fn checkout(&self) -> Result<Checkout<'_>, sqlx::Error> {
        let mut slot = self.slot.lock().await;
        let conn = match slot.take() {
            Some(conn) => conn,
            None => tokio::time::timeout(
                CONNECT_TIMEOUT,
                sqlx::PgConnection::connect_with(&self.options),
            )
            .await
            .map_err(|_| {
                sqlx::Error::Io(std::io::Error::new(
                    ErrorKind::TimedOut,
                    format!("no connection within {} s", CONNECT_TIMEOUT.as_secs()),
                ))
            })??,
        };
        Ok(Checkout { slot, conn })
    }

    /// Closes the held connection, if any (at shutdown).
    pub async fn close(&self) {
        if let Some(conn) = self.slot.lock().await.take() {
            // A courtesy to the server: there is nothing left to do with it.
            let _ = conn.close().await;
        }
    }
}

/// A connection out of its [`Held`] for one batch.
pub struct Checkout<'a> {
    slot: tokio::sync::MutexGuard<'a, Option<sqlx::PgConnection>>,
    conn: sqlx::PgConnection,
}

impl Checkout<'_> {
    pub fn conn(&mut self) -> &mut sqlx::PgConnection {
        &mut self.conn
    }

    /// The batch succeeded: the connection is held for the next one.
    pub fn keep(self) {
        let Checkout { mut slot, conn } = self;
        *slot = Some(conn);
    }
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn passwords_are_never_shown() {
        assert_eq!(
            redact_url("postgres://postgres:s3cret@127.0.0.1:5432/jeanus", false),
            "postgres://postgres@127.0.0.1:5432/jeanus (password hidden)"
        );
        assert_eq!(
            redact_url("postgres://u@h/db?sslmode=disable&password=s3cret", false),
            "postgres://u@h/db?sslmode=disable (password hidden)"
        );
        assert_eq!(
            redact_url("postgres://postgres@127.0.0.1:5432/jeanus", false),
            "postgres://postgres@127.0.0.1:5432/jeanus"
        );
    }

    #[test]
    fn a_redis_password_is_never_shown() {
        assert_eq!(
            redact_url("redis://:s3cret@127.0.0.1:6379/2", false),
            "redis://127.0.0.1:6379/2 (password hidden)"
        );
        assert_eq!(
            redact_url("redis+unix:///run/redis.sock?db=1&pass=s3cret", false),
            "redis+unix:///run/redis.sock?db=1 (password hidden)"
        );
    }

    #[test]
    fn a_nats_token_is_hidden_with_its_user_part() {
        assert_eq!(
            redact_url("nats://t0ken@127.0.0.1:4222", true),
            "nats://127.0.0.1:4222 (password hidden)"
        );
        assert_eq!(
            redact_url("nats://127.0.0.1:4222", true),
            "nats://127.0.0.1:4222"
        );
        assert_eq!(
            redact_url("nats://a:4222,nats://u:p@b:4222", true),
            "nats://a:4222,nats://b:4222 (password hidden)"
        );
    }

    #[test]
    fn a_url_without_a_scheme_is_redacted_too() {
        assert_eq!(redact_url("127.0.0.1:4222", true), "127.0.0.1:4222");
        assert_eq!(
            redact_url("t0ken@127.0.0.1:4222", true),
            "127.0.0.1:4222 (password hidden)"
        );
    }
}
