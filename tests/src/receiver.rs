//! A webhook receiver for the end-to-end tests: a real HTTP server on
//! 127.0.0.1:0 that records every request (headers, raw body, when it came)
//! and answers as told: 200, fail the next N requests, hang, answer 410, or
//! take a while.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::poll::eventually;

/// How the receiver answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// 200 at once.
    Ok,
    /// Always this status.
    Status(u16),
    /// Never answer (until the client gives up).
    Hang,
    /// 200 after this long.
    Slow(Duration),
}

/// One request as received.
#[derive(Debug, Clone)]
pub struct Received {
    pub at: Instant,
    /// Lower-case names; the last value of each.
    pub headers: HashMap<String, String>,
    pub body: Bytes,
    /// The status it was answered with (`None`: it was left hanging).
    pub answered: Option<u16>,
}

impl Received {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .map(String::as_str)
            .unwrap_or_else(|| panic!("no {name} header in {:?}", self.headers))
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

#[derive(Default)]
struct Shared {
    requests: Mutex<Vec<Received>>,
    rules: Mutex<Rules>,
}

struct Rules {
    behaviour: Behaviour,
    /// Answer the next `fail_next` requests with `fail_status`.
    fail_next: usize,
    fail_status: u16,
}

impl Default for Rules {
    fn default() -> Self {
        Self {
            behaviour: Behaviour::Ok,
            fail_next: 0,
            fail_status: 500,
        }
    }
}

/// A running receiver; stopped when dropped.
pub struct Receiver {
    /// `http://127.0.0.1:<port>/hook`
    pub url: String,
    shared: Arc<Shared>,
    stop: CancellationToken,
}

impl Receiver {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind an ephemeral port");
        let addr = listener.local_addr().expect("a local address");
        let shared = Arc::new(Shared::default());
        let app = Router::new()
            .route("/hook", post(receive))
            .with_state(shared.clone());
        let stop = CancellationToken::new();
        let shutdown = stop.clone().cancelled_owned();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await;
        });
        Self {
            url: format!("http://{addr}/hook"),
            shared,
            stop,
        }
    }

    pub fn set(&self, behaviour: Behaviour) {
        self.rules().behaviour = behaviour;
    }

    /// Answer the next `n` requests with `status`, then as set.
    pub fn fail_next(&self, n: usize, status: u16) {
        let mut rules = self.rules();
        rules.fail_next = n;
        rules.fail_status = status;
    }

    fn rules(&self) -> std::sync::MutexGuard<'_, Rules> {
        self.shared.rules.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<Received> {
        self.shared
            .requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Wait until at least `n` requests have come; all of them.
    pub async fn wait_for(&self, n: usize, within: Duration) -> Vec<Received> {
        eventually(&format!("{n} requests at {}", self.url), within, || async {
            let got = self.requests();
            (got.len() >= n).then_some(got)
        })
        .await
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn receive(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let at = Instant::now();
    let (answer, wait) = {
        let mut rules = shared.rules.lock().unwrap_or_else(|p| p.into_inner());
        if rules.fail_next > 0 {
            rules.fail_next -= 1;
            (Some(rules.fail_status), None)
        } else {
            match rules.behaviour {
                Behaviour::Ok => (Some(200), None),
                Behaviour::Status(s) => (Some(s), None),
                Behaviour::Hang => (None, Some(Duration::from_secs(3600))),
                Behaviour::Slow(d) => (Some(200), Some(d)),
            }
        }
    };
    let headers = headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                v.to_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    shared
        .requests
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(Received {
            at,
            headers,
            body,
            answered: answer,
        });
    if let Some(wait) = wait {
        tokio::time::sleep(wait).await;
    }
    answer
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::OK)
}
