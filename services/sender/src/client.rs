//! The HTTP client for webhook requests: hyper with rustls, pooled connections per host, HTTP/2
//! where the endpoint offers it, bounded connect and total time, a bounded read of the response.
//! Redirects are not followed: hyper's client never follows them, and a 3xx is a failed attempt.

use std::time::{Duration, SystemTime};

use bytes::Bytes;

use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use herald_core::logging::error_chain;

use crate::attempt::AttemptError;
use herald_core::address::AddressGuard;

use crate::guard::{GuardedConnector, blocked_address};

/// The longest time spent reading a response body once the status has arrived. A body that
/// takes longer is abandoned with its connection, so a slowly streaming endpoint does not keep
/// its concurrency slots for the whole attempt timeout.
const MAX_BODY_READ: Duration = Duration::from_secs(1);

/// A client shared by every attempt of one sender.
#[derive(Clone)]
pub struct WebhookClient {
    client: Client<HttpsConnector<GuardedConnector>, Full<Bytes>>,
    max_response_bytes: usize,
}

impl WebhookClient {
    /// Builds the client. Certificates are checked against the Mozilla root store (webpki-roots),
    /// and every connection goes to an address `guard` allows.
    pub fn new(connect_timeout: Duration, max_response_bytes: usize, guard: AddressGuard) -> Self {
        let http = GuardedConnector::new(std::sync::Arc::new(guard), |http| {
            http.enforce_http(false);
            http.set_connect_timeout(Some(connect_timeout));
            http.set_nodelay(true);
        });
        // Plain http:// is refused earlier, when subscriptions are checked, unless configuration
        // allows it; the connector itself can speak both.
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Self {
            client,
            max_response_bytes,
        }
    }

    /// Sends one request and reads at most `max_response_bytes` of the response, within `timeout`
    /// for the whole exchange. Once the status has arrived it decides the outcome: a body that is
    /// still arriving at the deadline is abandoned, not turned into a failed attempt.
    pub async fn send(
        &self,
        request: Request<Full<Bytes>>,
        timeout: Duration,
    ) -> Result<HttpResponse, AttemptError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let response = match tokio::time::timeout_at(deadline, self.client.request(request)).await {
            Ok(response) => response.map_err(classify)?,
            Err(_) => return Err(AttemptError::Timeout),
        };
        let status = response.status();
        let retry_after = retry_after(response.headers(), SystemTime::now());
        // The body is read only so the connection can be reused; its content is discarded. A body
        // over the limit, past the deadline or slower than MAX_BODY_READ ends the read, and the
        // connection is not reused.
        let body = Limited::new(response.into_body(), self.max_response_bytes).collect();
        let body_deadline = deadline.min(tokio::time::Instant::now() + MAX_BODY_READ);
        let _ = tokio::time::timeout_at(body_deadline, body).await;
        Ok(HttpResponse {
            status,
            retry_after,
        })
    }
}

/// The parts of an endpoint's response that decide the outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpResponse {
    pub status: StatusCode,
    /// How long the endpoint asked to wait, from a valid `Retry-After` header.
    pub retry_after: Option<Duration>,
}

/// Reads `Retry-After` as seconds or as an HTTP date (RFC 9110, section 10.2.3). A malformed
/// value is ignored, and a date in the past means no wait.
pub fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let text = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(seconds) = text.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let date = httpdate::parse_http_date(text).ok()?;
    Some(date.duration_since(now).unwrap_or(Duration::ZERO))
}

fn classify(error: hyper_util::client::legacy::Error) -> AttemptError {
    if let Some(refusal) = blocked_address(&error) {
        return AttemptError::BlockedAddress(refusal.to_string());
    }
    let detail = error_chain(&error);
    if error.is_connect() {
        AttemptError::Connect(detail)
    } else {
        AttemptError::Request(detail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::RETRY_AFTER,
            value.parse().expect("valid header"),
        );
        headers
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let now = httpdate::parse_http_date("Fri, 04 Dec 2026 10:00:00 GMT").expect("valid date");
        assert_eq!(
            retry_after(&headers("3"), now),
            Some(Duration::from_secs(3))
        );
        assert_eq!(
            retry_after(&headers("Fri, 04 Dec 2026 10:01:00 GMT"), now),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            retry_after(&headers("Fri, 04 Dec 2026 09:00:00 GMT"), now),
            Some(Duration::ZERO)
        );
    }

    #[tokio::test]
    async fn slow_body_after_2xx_is_still_delivered() {
        slow_body_read_ends_by(Duration::from_millis(300), Duration::from_millis(300)).await;
    }

    #[tokio::test]
    async fn slow_body_read_is_capped() {
        // The attempt may last 20 s, but the body is given MAX_BODY_READ only.
        slow_body_read_ends_by(Duration::from_secs(20), MAX_BODY_READ).await;
    }

    /// Sends to an endpoint whose body takes five seconds and checks the read ends after
    /// `expected` (and well before the body would be complete).
    async fn slow_body_read_ends_by(timeout: Duration, expected: Duration) {
        use herald_verify::receiver::{Receiver, ReceiverOptions};

        let secret = herald_verify::Secret::from_bytes(vec![1; 32]).expect("valid secret");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let receiver = Receiver::start(
            listener,
            ReceiverOptions {
                name: "slow".into(),
                verifier: herald_verify::Verifier::new(vec![secret.clone()]).expect("verifier"),
                keep_requests: false,
                log_file: None,
                hook: None,
            },
        )
        .expect("receiver");
        // 100 bytes at 50 ms each: five seconds.
        receiver.respond_slowly(100, Duration::from_millis(50));
        let timestamp = herald_core::time::unix_seconds(SystemTime::now());
        let request = Request::post(format!("http://{}/hook", receiver.address()))
            .header("webhook-id", "evt_1")
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", secret.sign("evt_1", timestamp, b"{}"))
            .body(Full::new(Bytes::from_static(b"{}")))
            .expect("valid request");

        let guard = AddressGuard::new(&["127.0.0.1".into()]).expect("valid network");
        let client = WebhookClient::new(Duration::from_secs(1), 16 * 1024, guard);
        let started = std::time::Instant::now();
        let result = client.send(request, timeout).await;
        assert_eq!(result.map(|response| response.status), Ok(StatusCode::OK));
        let elapsed = started.elapsed();
        assert!(
            elapsed >= expected,
            "the body was not read at all: {elapsed:?}"
        );
        assert!(
            elapsed < expected + Duration::from_millis(1_500),
            "the body was read past the deadline: {elapsed:?}"
        );
    }

    #[tokio::test]
    async fn guard_refuses_loopback_before_any_request() {
        use herald_verify::receiver::{Receiver, ReceiverOptions};

        let start = |listener| {
            Receiver::start(
                listener,
                ReceiverOptions {
                    name: "guarded".into(),
                    verifier: herald_verify::Verifier::new(vec![
                        herald_verify::Secret::from_bytes(vec![1; 32]).expect("valid secret"),
                    ])
                    .expect("verifier"),
                    keep_requests: true,
                    log_file: None,
                    hook: None,
                },
            )
            .expect("receiver")
        };
        let v4 = start(
            tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind"),
        );
        let v4_port = v4.address().port();
        let mut urls = vec![
            format!("http://127.0.0.1:{v4_port}/hook"),
            format!("http://[::ffff:127.0.0.1]:{v4_port}/hook"),
            format!("http://localhost:{v4_port}/hook"),
        ];
        // IPv6 loopback may be missing in a container; the refusal is checked either way.
        let v6 = match tokio::net::TcpListener::bind("[::1]:0").await {
            Ok(listener) => Some(start(listener)),
            Err(_) => None,
        };
        let v6_port = v6.as_ref().map_or(9, |receiver| receiver.address().port());
        urls.push(format!("http://[::1]:{v6_port}/hook"));

        let client = WebhookClient::new(Duration::from_secs(1), 1024, AddressGuard::default());
        for url in &urls {
            let request = Request::post(url.as_str())
                .body(Full::new(Bytes::from_static(b"{}")))
                .expect("valid request");
            let result = client.send(request, Duration::from_secs(5)).await;
            match result {
                Err(AttemptError::BlockedAddress(detail)) => {
                    assert!(detail.contains("loopback"), "{url}: {detail}");
                }
                other => panic!("{url} was not refused: {other:?}"),
            }
        }
        assert_eq!(
            v4.requests().len(),
            0,
            "a request reached the IPv4 receiver"
        );
        assert_eq!(
            v6.map_or(0, |receiver| receiver.requests().len()),
            0,
            "a request reached the IPv6 receiver"
        );
    }

    #[tokio::test]
    async fn redirects_are_not_followed() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        // The redirect target counts the connections it gets.
        let target = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let target_address = target.local_addr().expect("address");
        let reached = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = std::sync::Arc::clone(&reached);
        tokio::spawn(async move {
            if target.accept().await.is_ok() {
                flag.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        });
        let redirecting = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = redirecting.local_addr().expect("address");
        tokio::spawn(async move {
            let Ok((mut stream, _)) = redirecting.accept().await else {
                return;
            };
            let mut request = [0u8; 4096];
            let _ = stream.read(&mut request).await;
            let response = format!(
                "HTTP/1.1 307 Temporary Redirect\r\nlocation: http://{target_address}/hook\r\ncontent-length: 0\r\n\r\n"
            );
            let _ = stream.write_all(response.as_bytes()).await;
        });

        let guard = AddressGuard::new(&["127.0.0.1".into()]).expect("valid network");
        let client = WebhookClient::new(Duration::from_secs(1), 1024, guard);
        let request = Request::post(format!("http://{address}/hook"))
            .body(Full::new(Bytes::from_static(b"{}")))
            .expect("valid request");
        let response = client
            .send(request, Duration::from_secs(5))
            .await
            .expect("a response");
        assert_eq!(response.status, StatusCode::TEMPORARY_REDIRECT);
        assert!(
            !reached.load(std::sync::atomic::Ordering::SeqCst),
            "the redirect was followed"
        );
    }

    #[test]
    fn malformed_retry_after_is_ignored() {
        let now = SystemTime::now();
        for value in ["soon", "-5", "1.5", ""] {
            assert_eq!(retry_after(&headers(value), now), None, "{value:?}");
        }
        assert_eq!(retry_after(&HeaderMap::new(), now), None);
    }
}
