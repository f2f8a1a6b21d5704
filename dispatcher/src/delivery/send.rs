//! One HTTP attempt: the signed request and what came of it, as the
//! delivery log records it (status, latency, error class, the beginning of
//! the response body).

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use super::client::{classify, describe, literal_is_refused};
use super::{Claimed, MAX_RESPONSE_BYTES};
use crate::signing::{self, SigningKey};

/// The most of a response body kept in the delivery log.
const EXCERPT_BYTES: usize = 1024;

/// The outcome of one attempt, as the delivery log records it.
#[derive(Debug)]
pub struct AttemptOutcome {
    pub status_code: Option<u16>,
    pub error_class: Option<&'static str>,
    pub excerpt: Option<String>,
    pub retry_after: Option<String>,
    pub latency: Duration,
}

impl AttemptOutcome {
    /// No request was made (or none got an answer): `class` and why.
    pub fn failed(class: &'static str, message: String, latency: Duration) -> Self {
        Self {
            status_code: None,
            error_class: Some(class),
            excerpt: Some(message),
            retry_after: None,
            latency,
        }
    }

    pub fn delivered(&self) -> bool {
        self.status_code.is_some_and(|c| (200..300).contains(&c))
    }
}

/// POST the delivery's body to its endpoint, signed with `keys` at `at`.
pub async fn send(
    client: &reqwest::Client,
    allow_private: bool,
    delivery: &Claimed,
    keys: &[SigningKey],
    at: DateTime<Utc>,
) -> AttemptOutcome {
    let started = Instant::now();
    let failed = |class, message| AttemptOutcome::failed(class, message, started.elapsed());
    let url = match reqwest::Url::parse(&delivery.url) {
        Ok(url) => url,
        Err(e) => return failed("http", format!("invalid URL: {e}")),
    };
    if literal_is_refused(&url, allow_private) {
        return failed("blocked", "the target address is not global".into());
    }
    let Some(body) = delivery.body_bytes() else {
        return failed("http", "the delivery's body is missing".into());
    };
    let id = delivery.event_id.to_string();
    let timestamp = at.timestamp();
    let signature = signing::signature_header(keys, &id, timestamp, &body);
    let request = client
        .post(url)
        .header("content-type", "application/json")
        .header("webhook-id", &id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .body(body);
    let response = match request.send().await {
        Ok(response) => response,
        Err(e) => return failed(classify(&e), describe(&e)),
    };
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let (excerpt, read_error) = read_excerpt(response).await;
    if let Some(e) = read_error {
        tracing::debug!(error = %e, "the response body was cut short");
    }
    AttemptOutcome {
        status_code: Some(status),
        error_class: (!(200..300).contains(&status)).then_some("http"),
        excerpt,
        retry_after,
        latency: started.elapsed(),
    }
}

/// Read the body up to [`MAX_RESPONSE_BYTES`]; keep its beginning.
async fn read_excerpt(mut response: reqwest::Response) -> (Option<String>, Option<reqwest::Error>) {
    let mut read = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                read.extend_from_slice(&chunk);
                if read.len() >= MAX_RESPONSE_BYTES {
                    read.truncate(MAX_RESPONSE_BYTES);
                    break;
                }
            }
            Ok(None) => break,
            Err(e) => return (excerpt_of(&read), Some(e)),
        }
    }
    (excerpt_of(&read), None)
}

fn excerpt_of(bytes: &[u8]) -> Option<String> {
    if bytes.is_empty() {
        return None;
    }
    let cut = &bytes[..bytes.len().min(EXCERPT_BYTES)];
    Some(String::from_utf8_lossy(cut).into_owned())
}
