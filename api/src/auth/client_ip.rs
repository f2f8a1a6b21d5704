//! The client's address and the per-key IP allowlist.
//!
//! The client is the socket's peer. `X-Forwarded-For` is believed only when
//! that peer is one of `JEANUS_TRUSTED_PROXIES`: the header is then walked
//! from the right (each proxy appends the address it saw), skipping trusted
//! proxies, and the first address that is not a trusted proxy is the client.
//! Whatever a client writes into the header itself sits to the left of what
//! our proxies appended, so it is never reached while an untrusted address
//! stands to its right. `Forwarded` (RFC 7239) is not read.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use ipnet::IpNet;

use crate::auth::Principal;
use crate::error::ApiError;
use crate::ratelimit::{self, Consume, RateLimiter};

pub const X_FORWARDED_FOR: &str = "x-forwarded-for";

/// The client's address, in the request's extensions for every request
/// (absent only when the server was started without connect info, as in
/// router unit tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIp(pub IpAddr);

/// Resolves [`ClientIp`] for every request, before anything else needs it.
pub async fn middleware(
    State(trusted): State<Arc<[IpNet]>>,
    mut request: Request,
    next: Next,
) -> Response {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip());
    if let Some(peer) = peer {
        let client = resolve(peer, request.headers(), &trusted);
        request.extensions_mut().insert(ClientIp(client));
    }
    next.run(request).await
}

/// The client's address given the socket's `peer` and the request headers.
pub fn resolve(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let peer = peer.to_canonical();
    if !is_trusted(peer, trusted) {
        return peer;
    }
    // Several X-Forwarded-For lines are one list, in order (RFC 9110 §5.3).
    let hops: Vec<&str> = headers
        .get_all(X_FORWARDED_FOR)
        .iter()
        .flat_map(|value| value.to_str().unwrap_or("\u{0}").split(','))
        .map(str::trim)
        .collect();
    // The nearest address we know for sure: so far, the peer.
    let mut client = peer;
    for hop in hops.iter().rev() {
        match parse_hop(hop) {
            Some(ip) if is_trusted(ip, trusted) => client = ip,
            Some(ip) => return ip,
            // An entry we cannot read: what lies to its left came through
            // someone we cannot vouch for, so stop at the last known hop.
            None => return client,
        }
    }
    // Every hop is a trusted proxy (or the header is absent): the farthest
    // one is the best we know.
    client
}

fn is_trusted(ip: IpAddr, trusted: &[IpNet]) -> bool {
    trusted.iter().any(|net| net.contains(&ip))
}

/// `192.0.2.1`, `2001:db8::1`, and the forms some proxies write with a port:
/// `192.0.2.1:443`, `[2001:db8::1]:443`.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let ip = hop
        .parse::<IpAddr>()
        .ok()
        .or_else(|| hop.parse::<SocketAddr>().ok().map(|s| s.ip()))
        .or_else(|| {
            hop.strip_prefix('[')
                .and_then(|h| h.strip_suffix(']'))
                .and_then(|h| h.parse::<IpAddr>().ok())
        })?;
    Some(ip.to_canonical())
}

/// Whether `client` may use a key limited to `allowed` (empty: anywhere).
/// An unknown address is allowed only by an empty list.
pub fn allowed(allowed: &[IpNet], client: Option<IpAddr>) -> bool {
    allowed.is_empty() || client.is_some_and(|ip| allowed.iter().any(|net| net.contains(&ip)))
}

/// The IP allowlist: 403 `ip_not_allowed` when the key has CIDRs and the
/// client is outside them. The refusal carries the rate-limit headers (read,
/// not consumed: a request from outside the allowlist does not spend the
/// key's quota). Requests without a [`Principal`] pass through.
pub async fn allowlist(
    State(limiter): State<RateLimiter>,
    request: Request,
    next: Next,
) -> Response {
    let Some(principal) = request.extensions().get::<Principal>() else {
        return next.run(request).await;
    };
    let client = request.extensions().get::<ClientIp>().map(|c| c.0);
    if allowed(&principal.allowed_ips, client) {
        return next.run(request).await;
    }
    tracing::info!(
        key.id = %principal.key_id,
        client_ip = client.map(|ip| ip.to_string()),
        "request refused: client outside the key's IP allowlist"
    );
    let quota = limiter
        .check(
            principal.key_id,
            principal.rate_limit_per_minute,
            Consume::No,
        )
        .await;
    let mut response = ApiError::IpNotAllowed.into_response();
    match quota {
        Ok(quota) => ratelimit::write_headers(&quota, response.headers_mut()),
        Err(e) => {
            tracing::warn!(error = %e, "rate limit headers unavailable for a refused request")
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("an IP")
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().expect("a CIDR")).collect()
    }

    fn xff(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append(X_FORWARDED_FOR, HeaderValue::from_str(v).expect("value"));
        }
        headers
    }

    const PROXIES: &[&str] = &["10.0.0.0/8", "fd00::/8"];

    #[test]
    fn without_trusted_proxies_the_socket_is_the_client() {
        let h = xff(&["203.0.113.9"]);
        assert_eq!(resolve(ip("198.51.100.1"), &h, &[]), ip("198.51.100.1"));
    }

    #[test]
    fn an_untrusted_peer_cannot_spoof_its_address() {
        let h = xff(&["192.0.2.1"]);
        assert_eq!(
            resolve(ip("198.51.100.1"), &h, &nets(PROXIES)),
            ip("198.51.100.1")
        );
    }

    #[test]
    fn a_trusted_proxy_names_the_client() {
        let h = xff(&["203.0.113.9"]);
        assert_eq!(
            resolve(ip("10.1.2.3"), &h, &nets(PROXIES)),
            ip("203.0.113.9")
        );
    }

    #[test]
    fn chained_trusted_proxies_are_skipped_from_the_right() {
        let h = xff(&["203.0.113.9, 10.0.0.7, 10.0.0.8"]);
        assert_eq!(
            resolve(ip("10.1.2.3"), &h, &nets(PROXIES)),
            ip("203.0.113.9")
        );
    }

    #[test]
    fn addresses_a_client_prepends_are_ignored() {
        // The client sent "X-Forwarded-For: 192.0.2.1" hoping to pass an
        // allowlist; our proxy appended the address it really saw.
        let h = xff(&["192.0.2.1, 203.0.113.9"]);
        assert_eq!(
            resolve(ip("10.1.2.3"), &h, &nets(PROXIES)),
            ip("203.0.113.9")
        );
        // Even when it pretends to be one of our proxies.
        let h = xff(&["192.0.2.1, 10.0.0.1, 203.0.113.9"]);
        assert_eq!(
            resolve(ip("10.1.2.3"), &h, &nets(PROXIES)),
            ip("203.0.113.9")
        );
    }

    #[test]
    fn several_header_lines_form_one_list() {
        let h = xff(&["192.0.2.1", "203.0.113.9, 10.0.0.7"]);
        assert_eq!(
            resolve(ip("10.1.2.3"), &h, &nets(PROXIES)),
            ip("203.0.113.9")
        );
    }

    #[test]
    fn garbage_stops_the_walk_at_the_last_known_hop() {
        let h = xff(&["192.0.2.1, not-an-ip, 10.0.0.7"]);
        assert_eq!(resolve(ip("10.1.2.3"), &h, &nets(PROXIES)), ip("10.0.0.7"));
        let h = xff(&["192.0.2.1, "]);
        assert_eq!(resolve(ip("10.1.2.3"), &h, &nets(PROXIES)), ip("10.1.2.3"));
        let mut h = HeaderMap::new();
        h.append(
            X_FORWARDED_FOR,
            HeaderValue::from_bytes(b"192.0.2.1\xff").expect("opaque bytes"),
        );
        assert_eq!(resolve(ip("10.1.2.3"), &h, &nets(PROXIES)), ip("10.1.2.3"));
    }

    #[test]
    fn only_proxies_means_the_farthest_proxy() {
        let h = xff(&["10.0.0.5, 10.0.0.6"]);
        assert_eq!(resolve(ip("10.1.2.3"), &h, &nets(PROXIES)), ip("10.0.0.5"));
        assert_eq!(
            resolve(ip("10.1.2.3"), &HeaderMap::new(), &nets(PROXIES)),
            ip("10.1.2.3")
        );
    }

    #[test]
    fn ipv6_and_ports_are_understood() {
        let h = xff(&["[2001:db8::1]:4711, fd00::2"]);
        assert_eq!(
            resolve(ip("fd00::1"), &h, &nets(PROXIES)),
            ip("2001:db8::1")
        );
        let h = xff(&["203.0.113.9:1234"]);
        assert_eq!(
            resolve(ip("10.1.2.3"), &h, &nets(PROXIES)),
            ip("203.0.113.9")
        );
        let h = xff(&["[2001:db8::2]"]);
        assert_eq!(
            resolve(ip("10.1.2.3"), &h, &nets(PROXIES)),
            ip("2001:db8::2")
        );
    }

    #[test]
    fn ipv4_mapped_addresses_count_as_ipv4() {
        // A dual-stack socket reports an IPv4 peer as ::ffff:a.b.c.d.
        let h = xff(&["::ffff:203.0.113.9"]);
        assert_eq!(
            resolve(ip("::ffff:10.1.2.3"), &h, &nets(PROXIES)),
            ip("203.0.113.9")
        );
        assert_eq!(
            resolve(ip("::ffff:198.51.100.1"), &HeaderMap::new(), &[]),
            ip("198.51.100.1")
        );
    }

    #[test]
    fn the_allowlist_matches_cidrs_of_both_families() {
        let list = nets(&["203.0.113.0/24", "2001:db8::/32"]);
        assert!(allowed(&list, Some(ip("203.0.113.200"))));
        assert!(!allowed(&list, Some(ip("203.0.114.1"))));
        assert!(allowed(&list, Some(ip("2001:db8:1::5"))));
        assert!(!allowed(&list, Some(ip("2001:db9::1"))));
        assert!(!allowed(&list, None));
        assert!(allowed(&[], None));
        assert!(allowed(&[], Some(ip("192.0.2.1"))));
    }
}
