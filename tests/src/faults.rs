//! Faults injected into a test's servers: a table the services need,
//! renamed away (so that every statement on it fails) and back; a relay in
//! front of Redis, cut and restored.

use std::net::SocketAddr;

use sqlx::PgPool;
use tokio::io::copy_bidirectional;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// `table`, renamed to `<table>_away` until [`TableAway::restore`].
#[must_use = "restore the table, or the rest of the test runs without it"]
pub struct TableAway {
    pool: PgPool,
    table: String,
}

impl TableAway {
    pub async fn take(pool: &PgPool, table: &str) -> Self {
        rename(pool, table, &format!("{table}_away")).await;
        Self {
            pool: pool.clone(),
            table: table.to_owned(),
        }
    }

    pub async fn restore(self) {
        rename(&self.pool, &format!("{}_away", self.table), &self.table).await;
    }
}

async fn rename(pool: &PgPool, from: &str, to: &str) {
    // Identifiers of our own tests, never input.
    sqlx::query(&format!("alter table {from} rename to {to}"))
        .execute(pool)
        .await
        .unwrap_or_else(|e| panic!("rename {from} to {to}: {e}"));
}

/// A TCP relay in front of a server (the test's Redis), for what happens
/// when the server goes away: [`Relay::cut`] drops every connection and
/// closes new ones at once, as a stopped server's port would; [`Relay::sever`]
/// drops the connections of the moment only, as a restarted server does;
/// [`Relay::stall`] forwards nothing more on any connection, old or new,
/// while keeping them open, as a host that vanished from the network.
pub struct Relay {
    addr: SocketAddr,
    state: watch::Sender<Link>,
    accepting: JoinHandle<()>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
struct Link {
    cut: bool,
    /// New connections are held open and never forwarded; the connections
    /// of the moment stop forwarding for good.
    stalled: bool,
    /// Bumped to drop the connections of the moment.
    generation: u64,
}

impl Relay {
    /// A relay on a loopback port of its own, to `upstream` (`host:port`).
    pub async fn to(upstream: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port for the relay");
        let addr = listener.local_addr().expect("the relay's address");
        let (state, _) = watch::channel(Link {
            cut: false,
            stalled: false,
            generation: 0,
        });
        let links = state.clone();
        let accepting = tokio::spawn(async move {
            while let Ok((mut down, _)) = listener.accept().await {
                let mut link = links.subscribe();
                let at = *link.borrow_and_update();
                if at.cut {
                    continue;
                }
                let ended = move |now: &Link| now.cut || now.generation != at.generation;
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    if !at.stalled {
                        let Ok(mut up) = TcpStream::connect(&upstream).await else {
                            return;
                        };
                        tokio::select! {
                            _ = copy_bidirectional(&mut down, &mut up) => return,
                            _ = link.wait_for(|now| ended(now) || now.stalled) => {}
                        }
                    }
                    // Stalled: hold the connection open, forwarding nothing.
                    let _ = link.wait_for(ended).await;
                    drop(down);
                });
            }
        });
        Self {
            addr,
            state,
            accepting,
        }
    }

    /// The relay's address, `127.0.0.1:<port>`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn cut(&self) {
        self.state.send_modify(|link| link.cut = true);
    }

    /// Ends a [`Relay::cut`] or a [`Relay::stall`]: new connections are
    /// forwarded again.
    pub fn restore(&self) {
        self.state.send_modify(|link| {
            link.cut = false;
            link.stalled = false;
        });
    }

    pub fn stall(&self) {
        self.state.send_modify(|link| link.stalled = true);
    }

    pub fn sever(&self) {
        self.state.send_modify(|link| link.generation += 1);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.accepting.abort();
        self.cut();
    }
}

/// `host:port` of the Redis the tests use.
pub fn redis_address() -> String {
    let url = api::config::redis_url_from_env();
    let info = redis::Client::open(url.as_str())
        .expect("REDIS_URL is a Redis URL")
        .get_connection_info()
        .addr()
        .clone();
    match info {
        redis::ConnectionAddr::Tcp(host, port) => format!("{host}:{port}"),
        other => panic!("the tests need Redis over plain TCP, not {other:?}"),
    }
}

/// The tests' Redis URL with its address replaced by `relay`'s: the same
/// password and database, through the relay.
pub fn redis_url_through(relay: &Relay) -> String {
    let url = api::config::redis_url_from_env();
    let (scheme, rest) = url.split_once("://").expect("REDIS_URL has a scheme");
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let user = authority.rfind('@').map_or("", |at| &authority[..=at]);
    format!("{scheme}://{user}{}{tail}", relay.addr())
}
