//! The services started in-process for end-to-end tests: [`spawn_stack`]
//! runs `api::run` on a listener bound to 127.0.0.1:0, `projector::run` and
//! `dispatcher::run`, all against the test's own database and NATS prefix
//! (the api and the dispatcher with the same `JEANUS_SECRET_KEY`), and gives
//! an HTTP client and helpers for the operator API. More api instances on the same
//! database ([`Stack::spawn_api`]) make multi-instance tests.
//!
//! Stop it with [`Stack::shutdown`] at the end of a test, so that every
//! connection to the test database is closed before sqlx drops it; dropping
//! a `Stack` only asks the services to stop.

use std::net::SocketAddr;
use std::time::Duration;

use api::config::{Config as ApiConfig, Secret};
use dispatcher::config::Config as DispatcherConfig;
use reqwest::{Method, RequestBuilder, StatusCode};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::env::TestEnv;
use crate::poll::eventually;

/// The operator token every stack is configured with (unless a test's
/// `configure` clears it).
pub const ADMIN_TOKEN: &str = "test-operator-token-0123456789";

/// How long a service may take to become ready.
const READY_WITHIN: Duration = Duration::from_secs(20);

/// One running api instance.
pub struct Api {
    pub base_url: String,
    pub addr: SocketAddr,
    stop: CancellationToken,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Api {
    /// Stops this instance gracefully and waits until it has closed its
    /// connections.
    pub async fn shutdown(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            match task.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => panic!("the api failed: {e:#}"),
                Err(e) => panic!("the api task panicked: {e}"),
            }
        }
    }
}

impl Drop for Api {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The api (one instance, more on demand), the projector and the dispatcher.
pub struct Stack {
    /// The first api instance's base URL, e.g. `http://127.0.0.1:41234`.
    pub base_url: String,
    pub client: reqwest::Client,
    /// The operator token the api was started with; `None` if unset.
    pub admin_token: Option<String>,
    /// The configuration the instances were started with.
    pub api_config: ApiConfig,
    pub api: Api,
    extra: Vec<Api>,
    stop_projector: CancellationToken,
    projector: Option<JoinHandle<anyhow::Result<()>>>,
    projector_config: projector::config::Config,
    /// The dispatcher's configuration; its secret key is the api's.
    pub dispatcher_config: DispatcherConfig,
    stop_dispatcher: CancellationToken,
    dispatcher: Option<JoinHandle<anyhow::Result<()>>>,
}

/// The api (with `ADMIN_TOKEN`), the projector and the dispatcher, ready to serve.
pub async fn spawn_stack(env: &TestEnv) -> Stack {
    spawn_stack_with(env, |_| {}).await
}

/// As [`spawn_stack`], with the api's configuration adjusted first (clear
/// `admin_token`, set `trusted_proxies`, …).
pub async fn spawn_stack_with(env: &TestEnv, configure: impl FnOnce(&mut ApiConfig)) -> Stack {
    spawn_stack_configured(env, configure, |_| {}).await
}

/// As [`spawn_stack_with`], with the dispatcher's configuration adjusted
/// too (a short retry schedule, private addresses refused, …). Its secret
/// key is set to the api's afterwards.
pub async fn spawn_stack_configured(
    env: &TestEnv,
    configure: impl FnOnce(&mut ApiConfig),
    configure_dispatcher: impl FnOnce(&mut DispatcherConfig),
) -> Stack {
    let mut config = ApiConfig::for_test(&env.database_url, &env.nats_url, env.prefix())
        .expect("a valid prefix");
    config.admin_token = Some(Secret::new(ADMIN_TOKEN));
    configure(&mut config);
    let mut dispatcher_config =
        DispatcherConfig::for_test(&env.database_url, &env.nats_url, env.prefix())
            .expect("a valid prefix");
    configure_dispatcher(&mut dispatcher_config);
    if let Some(key) = &config.secret_key {
        dispatcher_config = dispatcher_config.with_secret_key(key.clone());
    }

    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("an HTTP client");

    let stop_projector = CancellationToken::new();
    let projector_config =
        projector::config::Config::for_test(&env.database_url, &env.nats_url, env.prefix())
            .expect("a valid prefix");
    let projector = spawn_projector(projector_config.clone(), stop_projector.clone());

    let stop_dispatcher = CancellationToken::new();
    let dispatcher = spawn_dispatcher(dispatcher_config.clone(), stop_dispatcher.clone());

    let api = start_api(config.clone(), &client).await;
    Stack {
        base_url: api.base_url.clone(),
        client,
        admin_token: config.admin_token.as_ref().map(|t| t.expose().to_owned()),
        api_config: config,
        api,
        extra: Vec::new(),
        stop_projector,
        projector: Some(projector),
        projector_config,
        dispatcher_config,
        stop_dispatcher,
        dispatcher: Some(dispatcher),
    }
}

fn spawn_dispatcher(
    config: DispatcherConfig,
    stop: CancellationToken,
) -> JoinHandle<anyhow::Result<()>> {
    tokio::spawn(async move { dispatcher::run(config, stop.cancelled_owned()).await })
}

fn spawn_projector(
    config: projector::config::Config,
    stop: CancellationToken,
) -> JoinHandle<anyhow::Result<()>> {
    tokio::spawn(async move { projector::run(config, stop.cancelled_owned()).await })
}

async fn start_api(config: ApiConfig, client: &reqwest::Client) -> Api {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind an ephemeral port");
    let addr = listener.local_addr().expect("a local address");
    let base_url = format!("http://{addr}");
    let stop = CancellationToken::new();
    let task = tokio::spawn(api::run(config, listener, stop.clone().cancelled_owned()));
    let api = Api {
        base_url,
        addr,
        stop,
        task: Some(task),
    };
    let ready = format!("{}/readyz", api.base_url);
    eventually("the api to be ready", READY_WITHIN, || async {
        let response = client.get(&ready).send().await.ok()?;
        (response.status() == StatusCode::OK).then_some(())
    })
    .await;
    api
}

impl Stack {
    /// Another api instance on the same database and NATS prefix, with the
    /// same configuration; it is stopped with the stack. Returns its base URL.
    pub async fn spawn_api(&mut self) -> String {
        let api = start_api(self.api_config.clone(), &self.client).await;
        let url = api.base_url.clone();
        self.extra.push(api);
        url
    }

    /// The base URLs of every api instance, the first one first.
    pub fn api_urls(&self) -> Vec<String> {
        std::iter::once(self.base_url.clone())
            .chain(self.extra.iter().map(|a| a.base_url.clone()))
            .collect()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    /// A request to the first instance, with no credentials.
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.client.request(method, self.url(path))
    }

    /// A request with the operator token.
    pub fn admin(&self, method: Method, path: &str) -> RequestBuilder {
        let token = self
            .admin_token
            .as_deref()
            .expect("this stack has no operator token");
        self.request(method, path).bearer_auth(token)
    }

    /// A request authenticated with an API key.
    pub fn with_key(&self, method: Method, path: &str, key: &str) -> RequestBuilder {
        self.request(method, path).bearer_auth(key)
    }

    /// `POST /admin/v1/tenants`; the new tenant's id.
    pub async fn create_tenant(&self, name: &str) -> Uuid {
        let body = self
            .send_ok(
                self.admin(Method::POST, "/admin/v1/tenants")
                    .json(&json!({ "name": name })),
                StatusCode::CREATED,
            )
            .await;
        parse_id(&body["data"]["id"])
    }

    /// `POST /admin/v1/tenants/{tenant}/keys` with `scopes` and a label;
    /// the new key.
    pub async fn mint_key(&self, tenant: Uuid, scopes: &[&str]) -> MintedKey {
        self.mint_key_with(
            tenant,
            json!({ "label": format!("test {}", scopes.join("+")), "scopes": scopes }),
        )
        .await
    }

    /// `POST /admin/v1/tenants/{tenant}/keys` with the whole request body.
    pub async fn mint_key_with(&self, tenant: Uuid, request: Value) -> MintedKey {
        let body = self
            .send_ok(
                self.admin(Method::POST, &format!("/admin/v1/tenants/{tenant}/keys"))
                    .json(&request),
                StatusCode::CREATED,
            )
            .await;
        MintedKey {
            id: parse_id(&body["data"]["id"]),
            key: body["data"]["key"]
                .as_str()
                .expect("the plaintext key")
                .to_owned(),
            tenant_id: tenant,
        }
    }

    /// A tenant and one key with `scopes` for it.
    pub async fn tenant_with_key(&self, name: &str, scopes: &[&str]) -> MintedKey {
        let tenant = self.create_tenant(name).await;
        self.mint_key(tenant, scopes).await
    }

    /// A tenant and a read+write key whose rate limit no test reaches, for
    /// tests that send many requests.
    pub async fn busy_tenant(&self, name: &str) -> MintedKey {
        let tenant = self.create_tenant(name).await;
        self.mint_key_with(
            tenant,
            json!({"label": "busy", "scopes": ["read", "write"], "rate_limit_per_minute": 10000}),
        )
        .await
    }

    /// Sends, asserts the status, and returns the JSON body (null if none).
    pub async fn send_ok(&self, request: RequestBuilder, expected: StatusCode) -> Value {
        let (status, body) = send(request).await;
        assert_eq!(status, expected, "unexpected answer: {body}");
        body
    }

    /// Aborts the projector as a crash would: its task is dropped at its
    /// next await, mid-transaction or not, with no graceful shutdown; its
    /// connections close (PostgreSQL rolls back what was not committed and
    /// frees the leader lock).
    pub async fn kill_projector(&mut self) {
        if let Some(projector) = self.projector.take() {
            projector.abort();
            let _ = projector.await;
        }
    }

    /// Starts a new projector (after [`Stack::kill_projector`]).
    pub fn restart_projector(&mut self) {
        assert!(self.projector.is_none(), "the projector is running");
        self.stop_projector = CancellationToken::new();
        self.projector = Some(spawn_projector(
            self.projector_config.clone(),
            self.stop_projector.clone(),
        ));
    }

    /// Aborts the in-process dispatcher as a crash would (see
    /// [`Stack::kill_projector`]).
    pub async fn kill_dispatcher(&mut self) {
        if let Some(dispatcher) = self.dispatcher.take() {
            dispatcher.abort();
            let _ = dispatcher.await;
        }
    }

    /// Starts a new in-process dispatcher (after [`Stack::kill_dispatcher`]).
    pub fn restart_dispatcher(&mut self) {
        assert!(self.dispatcher.is_none(), "the dispatcher is running");
        self.stop_dispatcher = CancellationToken::new();
        self.dispatcher = Some(spawn_dispatcher(
            self.dispatcher_config.clone(),
            self.stop_dispatcher.clone(),
        ));
    }

    /// The api's `JEANUS_SECRET_KEY`, as a process would be given it (for a
    /// `jeanus-dispatcher` process that must open the api's sealed secrets).
    pub fn secret_key_base64(&self) -> String {
        self.api_config
            .secret_key
            .as_ref()
            .expect("the test api has a secret key")
            .to_base64()
    }

    /// Stops every api instance, the projector and the dispatcher, and waits
    /// until they have closed their connections.
    pub async fn shutdown(mut self) {
        for api in self.extra.drain(..) {
            api.shutdown().await;
        }
        // The fields are moved out one by one: `Stack` implements Drop.
        let api = std::mem::replace(
            &mut self.api,
            Api {
                base_url: String::new(),
                addr: SocketAddr::from(([127, 0, 0, 1], 0)),
                stop: CancellationToken::new(),
                task: None,
            },
        );
        api.shutdown().await;
        self.stop_dispatcher.cancel();
        if let Some(dispatcher) = self.dispatcher.take() {
            match dispatcher.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => panic!("the dispatcher failed: {e:#}"),
                Err(e) => panic!("the dispatcher task panicked: {e}"),
            }
        }
        self.stop_projector.cancel();
        if let Some(projector) = self.projector.take() {
            match projector.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => panic!("the projector failed: {e:#}"),
                Err(e) => panic!("the projector task panicked: {e}"),
            }
        }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.stop_dispatcher.cancel();
        self.stop_projector.cancel();
    }
}

/// A key minted through the operator API.
#[derive(Debug, Clone)]
pub struct MintedKey {
    pub id: Uuid,
    /// The plaintext, as the mint response gave it.
    pub key: String,
    pub tenant_id: Uuid,
}

/// Sends a request; its status and JSON body (`Value::Null` when empty or
/// not JSON).
pub async fn send(request: RequestBuilder) -> (StatusCode, Value) {
    let response = request.send().await.expect("the request is answered");
    let status = response.status();
    let bytes = response.bytes().await.expect("the body is read");
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, body)
}

fn parse_id(value: &Value) -> Uuid {
    value
        .as_str()
        .and_then(|s| Uuid::parse_str(s).ok())
        .unwrap_or_else(|| panic!("{value} is not an id"))
}
