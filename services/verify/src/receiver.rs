//! The reference receiver: an HTTP endpoint that verifies each webhook, drops repeated
//! `webhook-id`s, counts what it saw and can append every request to a JSON-lines file. Herald's
//! demo and end-to-end tests use it, and it shows integrators the checks a receiver should make.

use std::collections::HashSet;
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{HeaderMap, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::{Verifier, VerifyError};

/// The largest request body read, in bytes.
const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// One request as the receiver saw it.
#[derive(Debug, Clone)]
pub struct ReceivedRequest {
    pub headers: HeaderMap,
    pub body: Bytes,
    /// The verification result; `Ok` contains the `webhook-id`.
    pub verification: Result<String, VerifyError>,
    /// True when this `webhook-id` had already been received, verified and accepted.
    pub duplicate: bool,
    /// The status the receiver returned.
    pub status: StatusCode,
    pub received_at: std::time::Instant,
}

/// A summary of one request, passed to the hook after the response status is chosen.
#[derive(Debug, Clone, Copy)]
pub struct RequestSummary<'a> {
    pub receiver: &'a str,
    /// The `webhook-id` of a verified request.
    pub webhook_id: Option<&'a str>,
    pub status: StatusCode,
    pub duplicate: bool,
}

/// A function called for every request, such as a load test's accounting.
pub type RequestHook = Arc<dyn Fn(RequestSummary<'_>) + Send + Sync>;

/// Counts of what the receiver saw.
#[derive(Debug, Default)]
pub struct Counts {
    pub requests: AtomicU64,
    pub verified: AtomicU64,
    pub invalid: AtomicU64,
    pub duplicates: AtomicU64,
    /// Verified requests given a failure status on purpose (see [`Receiver::fail_first`]).
    pub failed: AtomicU64,
    /// Requests read and not yet responded to, delayed ones included.
    pub in_progress: AtomicU64,
    /// The maximum number of requests in progress at the same time.
    pub max_in_progress: AtomicU64,
}

/// Counts a request as in progress while it lives.
struct InProgress<'a>(&'a Counts);

impl<'a> InProgress<'a> {
    fn enter(counts: &'a Counts) -> Self {
        let now = counts.in_progress.fetch_add(1, Ordering::AcqRel) + 1;
        counts.max_in_progress.fetch_max(now, Ordering::AcqRel);
        Self(counts)
    }
}

impl Drop for InProgress<'_> {
    fn drop(&mut self) {
        self.0.in_progress.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A line of the JSON-lines log.
#[derive(Serialize)]
struct LogLine<'a> {
    receiver: &'a str,
    #[serde(rename = "webhookId")]
    webhook_id: Option<&'a str>,
    verified: bool,
    error: Option<String>,
    status: u16,
    duplicate: bool,
    body: std::borrow::Cow<'a, str>,
}

struct State {
    name: String,
    verifier: Verifier,
    status: AtomicU16,
    delay_ms: AtomicU64,
    /// A body of this many bytes, one per interval, for every accepted request.
    slow_body: Mutex<Option<(usize, std::time::Duration)>>,
    /// Extra random delay, uniform from zero to this, in milliseconds.
    delay_spread_ms: AtomicU64,
    /// Requests per thousand given `random_failure_status`.
    failure_per_mille: AtomicU64,
    random_failure_status: AtomicU16,
    random: std::collections::hash_map::RandomState,
    draws: AtomicU64,
    failure_plan: Mutex<Option<FailurePlan>>,
    attempts_by_id: Mutex<std::collections::HashMap<String, u32>>,
    counts: Counts,
    seen: Mutex<HashSet<String>>,
    requests: Mutex<Vec<ReceivedRequest>>,
    keep_requests: bool,
    hook: Option<RequestHook>,
    log: Option<Mutex<std::fs::File>>,
}

/// A running receiver; it stops when dropped.
pub struct Receiver {
    address: SocketAddr,
    state: Arc<State>,
    task: JoinHandle<()>,
}

/// Settings of a receiver.
pub struct ReceiverOptions {
    /// Its name in the JSON-lines log.
    pub name: String,
    pub verifier: Verifier,
    /// Keep every request in memory for [`Receiver::requests`]; for tests.
    pub keep_requests: bool,
    /// Append each request to this JSON-lines file.
    pub log_file: Option<std::path::PathBuf>,
    /// Called for every request.
    pub hook: Option<RequestHook>,
}

impl Receiver {
    /// Starts serving on `listener`, responding 204 to verified requests.
    pub fn start(listener: TcpListener, options: ReceiverOptions) -> std::io::Result<Self> {
        let address = listener.local_addr()?;
        let log = match &options.log_file {
            Some(path) => Some(Mutex::new(open_append(path)?)),
            None => None,
        };
        let state = Arc::new(State {
            name: options.name,
            verifier: options.verifier,
            status: AtomicU16::new(StatusCode::NO_CONTENT.as_u16()),
            delay_ms: AtomicU64::new(0),
            delay_spread_ms: AtomicU64::new(0),
            slow_body: Mutex::new(None),
            failure_per_mille: AtomicU64::new(0),
            random_failure_status: AtomicU16::new(StatusCode::SERVICE_UNAVAILABLE.as_u16()),
            random: std::collections::hash_map::RandomState::new(),
            draws: AtomicU64::new(0),
            failure_plan: Mutex::new(None),
            attempts_by_id: Mutex::new(std::collections::HashMap::new()),
            counts: Counts::default(),
            seen: Mutex::new(HashSet::new()),
            requests: Mutex::new(Vec::new()),
            keep_requests: options.keep_requests,
            hook: options.hook,
            log,
        });
        let task = tokio::spawn(accept_loop(listener, Arc::clone(&state)));
        Ok(Self {
            address,
            state,
            task,
        })
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    pub fn counts(&self) -> &Counts {
        &self.state.counts
    }

    /// Sets the status returned to verified requests from now on, to imitate a failing endpoint.
    pub fn respond_with(&self, status: StatusCode) {
        self.state.status.store(status.as_u16(), Ordering::Relaxed);
    }

    /// Responds to the first `attempts` requests for each `webhook-id` with `status` (and a
    /// `Retry-After` header when given), then as usual: an endpoint that recovers.
    pub fn fail_first(&self, attempts: u32, status: StatusCode, retry_after: Option<&str>) {
        *lock(&self.state.failure_plan) = Some(FailurePlan {
            attempts,
            status,
            retry_after: retry_after.map(str::to_owned),
        });
    }

    /// Delays every response from now on, to imitate a slow endpoint.
    pub fn delay_responses(&self, delay: std::time::Duration) {
        self.state
            .delay_ms
            .store(delay.as_millis() as u64, Ordering::Relaxed);
    }

    /// Responds to accepted requests at once but sends the body one byte per `interval`, `bytes`
    /// bytes in all: an endpoint that responds slowly byte by byte.
    pub fn respond_slowly(&self, bytes: usize, interval: std::time::Duration) {
        *lock(&self.state.slow_body) = Some((bytes, interval));
    }

    /// Delays each response by a random time between `min` and `max`, drawn uniformly.
    pub fn delay_responses_between(&self, min: std::time::Duration, max: std::time::Duration) {
        self.delay_responses(min);
        let spread = max.saturating_sub(min).as_millis() as u64;
        self.state.delay_spread_ms.store(spread, Ordering::Relaxed);
    }

    /// Responds to a random `fraction` of verified requests with `status`, independently of their id.
    pub fn fail_randomly(&self, fraction: f64, status: StatusCode) {
        let per_mille = (fraction.clamp(0.0, 1.0) * 1000.0).round() as u64;
        self.state
            .failure_per_mille
            .store(per_mille, Ordering::Relaxed);
        self.state
            .random_failure_status
            .store(status.as_u16(), Ordering::Relaxed);
    }

    /// Returns a copy of every request kept so far.
    pub fn requests(&self) -> Vec<ReceivedRequest> {
        lock(&self.state.requests).clone()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn open_append(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

async fn accept_loop(listener: TcpListener, state: Arc<State>) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                eprintln!("herald-receiver {}: accept failed: {error}", state.name);
                continue;
            }
        };
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            let service = service_fn(move |request| handle(Arc::clone(&state), request));
            // A connection error is the client's business: the next connection is served as usual.
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn handle(
    state: Arc<State>,
    request: Request<Incoming>,
) -> Result<Response<ResponseBody>, std::convert::Infallible> {
    let (parts, body) = request.into_parts();
    let Ok(body) = Limited::new(body, MAX_BODY_BYTES)
        .collect()
        .await
        .map(|collected| collected.to_bytes())
    else {
        return Ok(respond(StatusCode::PAYLOAD_TOO_LARGE));
    };
    let _in_progress = InProgress::enter(&state.counts);
    let spread = state.delay_spread_ms.load(Ordering::Relaxed);
    let extra = if spread > 0 {
        state.draw() % (spread + 1)
    } else {
        0
    };
    let delay_ms = state.delay_ms.load(Ordering::Relaxed) + extra;
    if delay_ms > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(delay_ms)).await;
    }
    state.counts.requests.fetch_add(1, Ordering::Relaxed);

    let verification = state
        .verifier
        .verify(&parts.headers, &body)
        .map(|verified| verified.id);
    let (status, retry_after) = match &verification {
        Err(_) => (StatusCode::UNAUTHORIZED, None),
        Ok(id) => state.planned_response(id),
    };
    // Only an accepted request marks its id as seen: a retry after a failure is not a duplicate.
    let duplicate = match &verification {
        Ok(id) if status.is_success() => !lock(&state.seen).insert(id.clone()),
        _ => false,
    };
    let counter = match (&verification, status.is_success(), duplicate) {
        (Err(_), _, _) => &state.counts.invalid,
        (Ok(_), false, _) => &state.counts.failed,
        (Ok(_), true, true) => &state.counts.duplicates,
        (Ok(_), true, false) => &state.counts.verified,
    };
    counter.fetch_add(1, Ordering::Relaxed);
    if let Some(hook) = &state.hook {
        hook(RequestSummary {
            receiver: &state.name,
            webhook_id: verification.as_ref().ok().map(String::as_str),
            status,
            duplicate,
        });
    }

    if let Some(log) = &state.log {
        let line = LogLine {
            receiver: &state.name,
            webhook_id: verification.as_ref().ok().map(String::as_str),
            verified: verification.is_ok(),
            error: verification.as_ref().err().map(ToString::to_string),
            status: status.as_u16(),
            duplicate,
            body: String::from_utf8_lossy(&body),
        };
        if let Ok(mut text) = serde_json::to_vec(&line) {
            text.push(b'\n');
            // A failed log write loses a log line, not a webhook: the request is still answered.
            let _ = lock(log).write_all(&text);
        }
    }

    if state.keep_requests {
        lock(&state.requests).push(ReceivedRequest {
            headers: parts.headers,
            body,
            verification,
            duplicate,
            status,
            received_at: std::time::Instant::now(),
        });
    }
    let slow_body = *lock(&state.slow_body);
    let mut response = match slow_body {
        Some((bytes, interval)) if status.is_success() => {
            let mut response = Response::new(
                SlowBody {
                    remaining: bytes,
                    interval,
                    sleep: Box::pin(tokio::time::sleep(interval)),
                }
                .boxed(),
            );
            // 204 cannot carry a body, so a slow body goes with 200.
            *response.status_mut() = if status == StatusCode::NO_CONTENT {
                StatusCode::OK
            } else {
                status
            };
            response
        }
        _ => respond(status),
    };
    if let Some(value) =
        retry_after.and_then(|value| hyper::header::HeaderValue::from_str(&value).ok())
    {
        response
            .headers_mut()
            .insert(hyper::header::RETRY_AFTER, value);
    }
    Ok(response)
}

/// The body of a receiver's response: empty, or trickled out slowly.
type ResponseBody = BoxBody<Bytes, std::convert::Infallible>;

fn respond(status: StatusCode) -> Response<ResponseBody> {
    let mut response = Response::new(Full::new(Bytes::new()).boxed());
    *response.status_mut() = status;
    response
}

/// A response body that sends one byte per `interval`, like an endpoint on a very slow link.
struct SlowBody {
    remaining: usize,
    interval: std::time::Duration,
    sleep: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl hyper::body::Body for SlowBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        context: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        if self.remaining == 0 {
            return std::task::Poll::Ready(None);
        }
        if self.sleep.as_mut().poll(context).is_pending() {
            return std::task::Poll::Pending;
        }
        let next = tokio::time::Instant::now() + self.interval;
        self.sleep.as_mut().reset(next);
        self.remaining -= 1;
        std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(Bytes::from_static(b".")))))
    }
}

/// Failures planned for the first attempts of each id.
struct FailurePlan {
    attempts: u32,
    status: StatusCode,
    retry_after: Option<String>,
}

impl State {
    /// Returns the status (and `Retry-After`) for a verified request with this id.
    fn planned_response(&self, id: &str) -> (StatusCode, Option<String>) {
        if let Some(plan) = lock(&self.failure_plan).as_ref() {
            let mut attempts = lock(&self.attempts_by_id);
            let count = attempts.entry(id.to_owned()).or_default();
            *count += 1;
            if *count <= plan.attempts {
                return (plan.status, plan.retry_after.clone());
            }
        }
        let per_mille = self.failure_per_mille.load(Ordering::Relaxed);
        if per_mille > 0 && self.draw() % 1000 < per_mille {
            let status = StatusCode::from_u16(self.random_failure_status.load(Ordering::Relaxed))
                .unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            return (status, None);
        }
        let status = StatusCode::from_u16(self.status.load(Ordering::Relaxed))
            .unwrap_or(StatusCode::NO_CONTENT);
        (status, None)
    }

    /// Returns a pseudo-random number; each receiver seeds its own sequence.
    fn draw(&self) -> u64 {
        use std::hash::BuildHasher;
        self.random
            .hash_one(self.draws.fetch_add(1, Ordering::Relaxed))
    }
}
