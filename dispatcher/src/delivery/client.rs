//! The HTTP client every delivery goes through, and the SSRF guard: every
//! host is resolved by [`GuardedResolver`], which refuses non-global
//! addresses (unless allowed) and hands the connector only the addresses it
//! vetted, so DNS cannot be swapped between check and connect; an
//! IP-literal URL is checked directly ([`literal_is_refused`]).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use anyhow::Context as _;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

use super::{CONNECT_TIMEOUT, PER_ENDPOINT, REQUEST_TIMEOUT};

/// The HTTP client every delivery uses: no redirects (a 3xx is a failure),
/// bounded connect and total time, and the guarded resolver.
pub fn http_client(allow_private: bool) -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT)
        .pool_max_idle_per_host(PER_ENDPOINT)
        .user_agent(concat!("jeanus-webhooks/", env!("CARGO_PKG_VERSION")))
        .dns_resolver(Arc::new(GuardedResolver { allow_private }))
        .build()
        .context("failed to build the webhook HTTP client")
}

/// Resolves with the system resolver and keeps only global addresses (all
/// of them when private targets are allowed); the connector dials exactly
/// what this returns.
#[derive(Debug, Clone)]
pub struct GuardedResolver {
    pub allow_private: bool,
}

/// Every address of a host is non-global.
#[derive(Debug, thiserror::Error)]
#[error("{host} resolves only to non-global addresses")]
pub struct Blocked {
    host: String,
}

/// The host did not resolve.
#[derive(Debug, thiserror::Error)]
#[error("{host} does not resolve: {reason}")]
pub struct DnsFailed {
    host: String,
    reason: String,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow_private = self.allow_private;
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await
                .map_err(|e| DnsFailed {
                    host: host.clone(),
                    reason: e.to_string(),
                })?
                .collect();
            if found.is_empty() {
                return Err(DnsFailed {
                    host,
                    reason: "no addresses".into(),
                }
                .into());
            }
            let vetted: Vec<SocketAddr> = found
                .into_iter()
                .filter(|a| allow_private || schema::webhooks::is_global(a.ip()))
                .collect();
            if vetted.is_empty() {
                return Err(Blocked { host }.into());
            }
            let addrs: Addrs = Box::new(vetted.into_iter());
            Ok(addrs)
        })
    }
}

/// Whether `url` names a non-global IP address literally (the resolver
/// never sees those), when private targets are not allowed.
pub fn literal_is_refused(url: &reqwest::Url, allow_private: bool) -> bool {
    if allow_private {
        return false;
    }
    url.host_str()
        .map(|h| h.trim_start_matches('[').trim_end_matches(']'))
        .and_then(|h| h.parse::<IpAddr>().ok())
        .is_some_and(|ip| !schema::webhooks::is_global(ip))
}

/// The delivery log's class of a request that got no answer: `blocked`,
/// `dns`, `timeout`, `connect` or `http`.
pub fn classify(e: &reqwest::Error) -> &'static str {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if s.is::<Blocked>() {
            return "blocked";
        }
        if s.is::<DnsFailed>() {
            return "dns";
        }
        source = s.source();
    }
    if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect"
    } else {
        "http"
    }
}

/// The error and its causes, on one line.
pub fn describe(e: &reqwest::Error) -> String {
    let mut message = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(&s.to_string());
        source = s.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_private_addresses_are_refused_unless_allowed() {
        for url in [
            "http://127.0.0.1/hook",
            "http://10.1.2.3:8080/hook",
            "http://[::1]/hook",
            "http://169.254.169.254/latest",
        ] {
            let url = reqwest::Url::parse(url).expect("a URL");
            assert!(literal_is_refused(&url, false), "{url}");
            assert!(!literal_is_refused(&url, true), "{url}");
        }
        for url in ["https://93.184.215.14/hook", "https://example.com/hook"] {
            let url = reqwest::Url::parse(url).expect("a URL");
            assert!(!literal_is_refused(&url, false), "{url}");
        }
    }

    #[tokio::test]
    async fn a_name_resolving_to_loopback_is_blocked_and_a_missing_one_is_dns() {
        let client = http_client(false).expect("a client");
        let e = client
            .post("http://localhost:9/hook")
            .send()
            .await
            .expect_err("refused");
        assert_eq!(classify(&e), "blocked", "{}", describe(&e));
        let e = client
            .post("http://no-such-host.invalid/hook")
            .send()
            .await
            .expect_err("does not resolve");
        assert_eq!(classify(&e), "dns", "{}", describe(&e));
    }

    #[tokio::test]
    async fn a_refused_connection_is_connect() {
        // A port bound then closed: nothing listens there.
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
            listener.local_addr().expect("an address").port()
        };
        let e = http_client(true)
            .expect("a client")
            .post(format!("http://127.0.0.1:{port}/hook"))
            .send()
            .await
            .expect_err("refused");
        assert_eq!(classify(&e), "connect", "{}", describe(&e));
    }
}
