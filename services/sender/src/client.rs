//! The HTTP client for webhook requests: hyper with rustls, pooled connections per host, HTTP/2
//! where the endpoint offers it, bounded connect and total time, a bounded read of the response.
//! Redirects are not followed: hyper's client never follows them, and a 3xx is a failed attempt.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;

use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rustls::RootCertStore;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use herald_core::logging::error_chain;

use crate::attempt::AttemptError;
use herald_core::address::AddressGuard;
use herald_core::subscription::ClientIdentity;

use crate::guard::{GuardedConnector, blocked_address};

/// The longest time spent reading a response body once the status has arrived. A body that
/// takes longer is abandoned with its connection, so a slowly streaming endpoint does not keep
/// its concurrency slots for the whole attempt timeout.
const MAX_BODY_READ: Duration = Duration::from_secs(1);

type HttpClient = Client<HttpsConnector<GuardedConnector>, Full<Bytes>>;

/// Connection settings of the client.
pub struct ClientSettings {
    pub connect_timeout: Duration,
    pub max_response_bytes: usize,
    /// Every connection goes to an address this guard allows.
    pub guard: AddressGuard,
    /// Certificate authorities trusted beside the Mozilla root store, such as a bank's own.
    pub extra_roots: Vec<CertificateDer<'static>>,
}

/// A client shared by every attempt of one sender.
#[derive(Clone)]
pub struct WebhookClient {
    default: HttpClient,
    parts: Arc<ClientParts>,
    max_response_bytes: usize,
}

/// The settings for building a client per mutual TLS identity, and the clients built so far.
struct ClientParts {
    connect_timeout: Duration,
    guard: Arc<AddressGuard>,
    roots: Arc<RootCertStore>,
    /// One client per client certificate, by the identity's fingerprint.
    by_identity: Mutex<HashMap<String, HttpClient>>,
}

impl ClientParts {
    fn build(&self, identity: Option<&ClientIdentity>) -> Result<HttpClient, rustls::Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(Arc::clone(&self.roots));
        let tls = match identity {
            Some(identity) => {
                builder.with_client_auth_cert(identity.chain.clone(), identity.key.clone_key())?
            }
            None => builder.with_no_client_auth(),
        };
        let connect_timeout = self.connect_timeout;
        let http = GuardedConnector::new(Arc::clone(&self.guard), |http| {
            http.enforce_http(false);
            http.set_connect_timeout(Some(connect_timeout));
            http.set_nodelay(true);
        });
        // Plain http:// is refused earlier, when subscriptions are checked, unless configuration
        // allows it; the connector itself can speak both. ALPN offers HTTP/2 and HTTP/1.1.
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        Ok(Client::builder(TokioExecutor::new()).build(connector))
    }
}

impl WebhookClient {
    /// Builds the client. TLS 1.2 or 1.3 only; certificates are checked against the Mozilla root
    /// store (webpki-roots) and `extra_roots`.
    pub fn new(settings: ClientSettings) -> Result<Self, rustls::Error> {
        let mut roots = RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        for root in settings.extra_roots {
            roots.add(root)?;
        }
        let parts = Arc::new(ClientParts {
            connect_timeout: settings.connect_timeout,
            guard: Arc::new(settings.guard),
            roots: Arc::new(roots),
            by_identity: Mutex::new(HashMap::new()),
        });
        Ok(Self {
            default: parts.build(None)?,
            parts,
            max_response_bytes: settings.max_response_bytes,
        })
    }

    /// Returns the client that presents `identity`, building it on first use.
    fn client_for(&self, identity: Option<&ClientIdentity>) -> Result<HttpClient, AttemptError> {
        let Some(identity) = identity else {
            return Ok(self.default.clone());
        };
        let mut clients = self
            .parts
            .by_identity
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(client) = clients.get(&identity.fingerprint) {
            return Ok(client.clone());
        }
        let client = self
            .parts
            .build(Some(identity))
            .map_err(|error| AttemptError::Tls(format!("client certificate: {error}")))?;
        clients.insert(identity.fingerprint.clone(), client.clone());
        Ok(client)
    }

    /// Sends one request and reads at most `max_response_bytes` of the response, within `timeout`
    /// for the whole exchange. Once the status has arrived it decides the outcome: a body that is
    /// still arriving at the deadline is abandoned, not turned into a failed attempt.
    /// With `identity`, the connection presents that client certificate.
    pub async fn send(
        &self,
        request: Request<Full<Bytes>>,
        timeout: Duration,
        identity: Option<&ClientIdentity>,
    ) -> Result<HttpResponse, AttemptError> {
        let client = self.client_for(identity)?;
        let deadline = tokio::time::Instant::now() + timeout;
        let response = match tokio::time::timeout_at(deadline, client.request(request)).await {
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

/// Returns a client for tests: 1 s to connect, 16 KiB of response read, no extra roots.
#[cfg(test)]
pub(crate) fn test_client(guard: AddressGuard) -> WebhookClient {
    WebhookClient::new(ClientSettings {
        connect_timeout: Duration::from_secs(1),
        max_response_bytes: 16 * 1024,
        guard,
        extra_roots: Vec::new(),
    })
    .expect("a client")
}

/// Starts a reference receiver on `listener` for tests, verifying with `secret`.
#[cfg(test)]
pub(crate) fn test_receiver(
    listener: tokio::net::TcpListener,
    name: &str,
    secret: herald_verify::Secret,
    keep_requests: bool,
) -> herald_verify::receiver::Receiver {
    herald_verify::receiver::Receiver::start(
        listener,
        herald_verify::receiver::ReceiverOptions {
            name: name.to_owned(),
            verifier: herald_verify::Verifier::new(vec![secret]).expect("verifier"),
            keep_requests,
            log_file: None,
            hook: None,
        },
    )
    .expect("receiver")
}

/// Returns whether a TLS error (a certificate or handshake failure) is among the sources.
fn tls_failure(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(error) = current {
        if is_tls(error) {
            return true;
        }
        current = error.source();
    }
    false
}

/// Returns whether `error` is a rustls error, possibly wrapped in I/O errors, whose `source`
/// skips the error they wrap.
fn is_tls(error: &(dyn std::error::Error + 'static)) -> bool {
    if error.is::<rustls::Error>() {
        return true;
    }
    error
        .downcast_ref::<std::io::Error>()
        .and_then(std::io::Error::get_ref)
        .is_some_and(|inner| is_tls(inner))
}

/// Reads the PEM certificates of `sender.extra_ca_file`.
pub fn read_ca_file(path: &std::path::Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certificates: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|error| format!("cannot read {}: {error}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|error| format!("{} is not valid PEM: {error}", path.display()))?;
    if certificates.is_empty() {
        return Err(format!("{} holds no CERTIFICATE block", path.display()));
    }
    Ok(certificates)
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
    if tls_failure(&error) {
        return AttemptError::Tls(detail);
    }
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
        let secret = herald_verify::Secret::from_bytes(vec![1; 32]).expect("valid secret");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let receiver = test_receiver(listener, "slow", secret.clone(), false);
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
        let client = test_client(guard);
        let started = std::time::Instant::now();
        let result = client.send(request, timeout, None).await;
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
        let start = |listener| {
            let secret = herald_verify::Secret::from_bytes(vec![1; 32]).expect("valid secret");
            test_receiver(listener, "guarded", secret, true)
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

        let client = test_client(AddressGuard::default());
        for url in &urls {
            let request = Request::post(url.as_str())
                .body(Full::new(Bytes::from_static(b"{}")))
                .expect("valid request");
            let result = client.send(request, Duration::from_secs(5), None).await;
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

    /// Posts `{}` to `http://<address>/hook` with a client that may reach 127.0.0.1.
    async fn post_to(
        address: std::net::SocketAddr,
        timeout: Duration,
    ) -> Result<HttpResponse, AttemptError> {
        let guard = AddressGuard::new(&["127.0.0.1".into()]).expect("valid network");
        let request = Request::post(format!("http://{address}/hook"))
            .body(Full::new(Bytes::from_static(b"{}")))
            .expect("valid request");
        test_client(guard).send(request, timeout, None).await
    }

    #[tokio::test]
    async fn oversized_response_is_cut_off() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        // An endpoint that responds 200 with 64 MiB of body as fast as the socket takes it.
        const BODY_BYTES: usize = 64 * 1024 * 1024;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        let server = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.expect("a connection");
            let mut request = [0u8; 4096];
            let _ = stream.read(&mut request).await;
            let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {BODY_BYTES}\r\n\r\n");
            stream
                .write_all(head.as_bytes())
                .await
                .expect("head written");
            let chunk = vec![b'x'; 64 * 1024];
            let mut written = 0;
            while written < BODY_BYTES {
                if stream.write_all(&chunk).await.is_err() {
                    break;
                }
                written += chunk.len();
            }
            written
        });

        let response = post_to(address, Duration::from_secs(30))
            .await
            .expect("a response");
        assert_eq!(response.status, StatusCode::OK);
        let written = server.await.expect("the server task");
        assert!(
            written < BODY_BYTES,
            "the whole body was read: {written} bytes"
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

        let response = post_to(address, Duration::from_secs(5))
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
