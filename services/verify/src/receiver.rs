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
    /// True when this `webhook-id` had already been received and verified.
    pub duplicate: bool,
}

/// Counts of what the receiver saw.
#[derive(Debug, Default)]
pub struct Counts {
    pub requests: AtomicU64,
    pub verified: AtomicU64,
    pub invalid: AtomicU64,
    pub duplicates: AtomicU64,
}

/// A line of the JSON-lines log.
#[derive(Serialize)]
struct LogLine<'a> {
    receiver: &'a str,
    #[serde(rename = "webhookId")]
    webhook_id: Option<&'a str>,
    verified: bool,
    error: Option<String>,
    duplicate: bool,
    body: std::borrow::Cow<'a, str>,
}

struct State {
    name: String,
    verifier: Verifier,
    status: AtomicU16,
    delay_ms: AtomicU64,
    counts: Counts,
    seen: Mutex<HashSet<String>>,
    requests: Mutex<Vec<ReceivedRequest>>,
    keep_requests: bool,
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
            counts: Counts::default(),
            seen: Mutex::new(HashSet::new()),
            requests: Mutex::new(Vec::new()),
            keep_requests: options.keep_requests,
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

    /// Delays every response from now on, to imitate a slow endpoint.
    pub fn delay_responses(&self, delay: std::time::Duration) {
        self.state
            .delay_ms
            .store(delay.as_millis() as u64, Ordering::Relaxed);
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
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let (parts, body) = request.into_parts();
    let Ok(body) = Limited::new(body, MAX_BODY_BYTES)
        .collect()
        .await
        .map(|collected| collected.to_bytes())
    else {
        return Ok(respond(StatusCode::PAYLOAD_TOO_LARGE));
    };
    let delay_ms = state.delay_ms.load(Ordering::Relaxed);
    if delay_ms > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(delay_ms)).await;
    }
    state.counts.requests.fetch_add(1, Ordering::Relaxed);

    let verification = state
        .verifier
        .verify(&parts.headers, &body)
        .map(|verified| verified.id);
    let duplicate = match &verification {
        Ok(id) => !lock(&state.seen).insert(id.clone()),
        Err(_) => false,
    };
    match (&verification, duplicate) {
        (Err(_), _) => state.counts.invalid.fetch_add(1, Ordering::Relaxed),
        (Ok(_), true) => state.counts.duplicates.fetch_add(1, Ordering::Relaxed),
        (Ok(_), false) => state.counts.verified.fetch_add(1, Ordering::Relaxed),
    };

    if let Some(log) = &state.log {
        let line = LogLine {
            receiver: &state.name,
            webhook_id: verification.as_ref().ok().map(String::as_str),
            verified: verification.is_ok(),
            error: verification.as_ref().err().map(ToString::to_string),
            duplicate,
            body: String::from_utf8_lossy(&body),
        };
        if let Ok(mut text) = serde_json::to_vec(&line) {
            text.push(b'\n');
            // A failed log write loses a log line, not a webhook: the request is still answered.
            let _ = lock(log).write_all(&text);
        }
    }

    let status = if verification.is_err() {
        StatusCode::UNAUTHORIZED
    } else {
        StatusCode::from_u16(state.status.load(Ordering::Relaxed)).unwrap_or(StatusCode::NO_CONTENT)
    };
    if state.keep_requests {
        lock(&state.requests).push(ReceivedRequest {
            headers: parts.headers,
            body,
            verification,
            duplicate,
        });
    }
    Ok(respond(status))
}

fn respond(status: StatusCode) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = status;
    response
}
