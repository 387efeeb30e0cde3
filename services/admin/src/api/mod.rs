//! The admin HTTP API (`herald admin`): subscriptions and dead letters over JSON, described by
//! `schemas/admin-api.openapi.json`.
//!
//! Every `/v1` request needs `Authorization: Bearer <token>` with a token from `admin.tokens`:
//! a `read` token may only read, an `admin` token may do everything. The API reads subscriptions
//! from the topic it follows, and a change returns only once this process has read it back, so
//! the next request reads it.

mod dead_letters;
pub mod input;
mod subscriptions;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{ALLOW, AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use ring::digest;
use serde_json::{Value, json};
use tokio::net::TcpListener;

use herald_core::config::{AdminRole, HeraldConfig};
use herald_core::encryption::KeyRing;
use herald_core::logging::error_chain;
use herald_core::registry::Subscriptions;

use input::FieldError;

/// The OpenAPI 3.1 document of this API, served at `/v1/openapi.json`.
pub const OPENAPI: &str = include_str!("../../../../schemas/admin-api.openapi.json");

/// State shared by every request handler.
pub struct ApiState {
    pub config: HeraldConfig,
    pub keys: KeyRing,
    pub subscriptions: Subscriptions,
    pub producer: herald_core::kafka::Producer,
    /// SHA-256 digests of the tokens, so that comparing them takes the same time for any guess.
    tokens: Vec<(AdminRole, digest::Digest)>,
    /// One change at a time from this process, so that a read-modify-write starts from the last one.
    changes: tokio::sync::Mutex<()>,
}

impl ApiState {
    pub fn new(
        config: HeraldConfig,
        keys: KeyRing,
        subscriptions: Subscriptions,
        producer: herald_core::kafka::Producer,
        tokens: Vec<(AdminRole, String)>,
    ) -> Self {
        let tokens = tokens
            .into_iter()
            .map(|(role, token)| (role, digest::digest(&digest::SHA256, token.as_bytes())))
            .collect();
        Self {
            config,
            keys,
            subscriptions,
            producer,
            tokens,
            changes: tokio::sync::Mutex::new(()),
        }
    }

    /// Returns the role of the request's bearer token, and its place in `admin.tokens` for logs.
    fn caller(&self, request: &Request<Incoming>) -> Option<(AdminRole, usize)> {
        let header = request.headers().get(AUTHORIZATION)?.to_str().ok()?;
        let (scheme, token) = header.split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return None;
        }
        let offered = digest::digest(&digest::SHA256, token.trim().as_bytes());
        self.tokens
            .iter()
            .position(|(_, known)| known.as_ref() == offered.as_ref())
            .map(|position| (self.tokens[position].0, position))
    }
}

/// An error response: `{"error": {"code", "message", "fields"}}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    fields: Vec<FieldError>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            fields: Vec::new(),
        }
    }

    pub fn invalid(fields: Vec<FieldError>) -> Self {
        let message = match fields.as_slice() {
            [only] if only.path.is_empty() => only.message.clone(),
            _ => "the request has invalid fields".to_owned(),
        };
        Self {
            fields,
            ..Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
        }
    }

    pub fn not_found(what: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", what)
    }

    /// Builds the error for a failure of Kafka or of this process, and logs the detail, which
    /// the caller does not get.
    pub fn unavailable(context: &str, error: &dyn std::error::Error) -> Self {
        tracing::error!(error = %error_chain(error), "{context}");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            format!("{context}; see the admin API's log and try again"),
        )
    }

    fn response(&self) -> Response<Full<Bytes>> {
        let mut error = json!({"code": self.code, "message": self.message});
        if !self.fields.is_empty() {
            error["fields"] = json!(self.fields);
        }
        json_response(self.status, &json!({ "error": error }))
    }
}

pub fn json_response(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// The operations of the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Operation {
    Health,
    Ready,
    OpenApi,
    ListSubscriptions,
    CreateSubscription,
    GetSubscription,
    UpdateSubscription,
    DeleteSubscription,
    EnableSubscription,
    DisableSubscription,
    RotateSecret,
    SendTestEvent,
    ListDeadLetters,
    RedriveDeadLetters,
}

impl Operation {
    /// Returns the role an operation needs, or `None` when it needs no token.
    fn role(self) -> Option<AdminRole> {
        match self {
            Self::Health | Self::Ready | Self::OpenApi => None,
            Self::ListSubscriptions | Self::GetSubscription | Self::ListDeadLetters => {
                Some(AdminRole::Read)
            }
            _ => Some(AdminRole::Admin),
        }
    }
}

/// Finds the operation for a method and path, with the subscription id when the path has one.
/// A known path with another method gives the methods it allows.
fn route<'a>(method: &Method, path: &'a str) -> Result<(Operation, Option<&'a str>), RouteError> {
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    let (allowed, operation, id): (&[Method], Option<Operation>, Option<&str>) =
        match segments.as_slice() {
            ["healthz"] => (&[Method::GET], get(method, Operation::Health), None),
            ["readyz"] => (&[Method::GET], get(method, Operation::Ready), None),
            ["v1", "openapi.json"] => (&[Method::GET], get(method, Operation::OpenApi), None),
            ["v1", "subscriptions"] => (
                &[Method::GET, Method::POST],
                match *method {
                    Method::GET => Some(Operation::ListSubscriptions),
                    Method::POST => Some(Operation::CreateSubscription),
                    _ => None,
                },
                None,
            ),
            ["v1", "subscriptions", id] if !id.is_empty() => (
                &[Method::GET, Method::PATCH, Method::DELETE],
                match *method {
                    Method::GET => Some(Operation::GetSubscription),
                    Method::PATCH => Some(Operation::UpdateSubscription),
                    Method::DELETE => Some(Operation::DeleteSubscription),
                    _ => None,
                },
                Some(*id),
            ),
            ["v1", "subscriptions", id, action] if !id.is_empty() => {
                let operation = match *action {
                    "enable" => Operation::EnableSubscription,
                    "disable" => Operation::DisableSubscription,
                    "rotate-secret" => Operation::RotateSecret,
                    "test" => Operation::SendTestEvent,
                    _ => return Err(RouteError::NotFound),
                };
                (
                    &[Method::POST],
                    (*method == Method::POST).then_some(operation),
                    Some(*id),
                )
            }
            ["v1", "dead-letters"] => (
                &[Method::GET],
                get(method, Operation::ListDeadLetters),
                None,
            ),
            ["v1", "dead-letters", "redrive"] => (
                &[Method::POST],
                (*method == Method::POST).then_some(Operation::RedriveDeadLetters),
                None,
            ),
            _ => return Err(RouteError::NotFound),
        };
    match operation {
        Some(operation) => Ok((operation, id)),
        None => Err(RouteError::MethodNotAllowed(allowed)),
    }
}

fn get(method: &Method, operation: Operation) -> Option<Operation> {
    (*method == Method::GET).then_some(operation)
}

#[derive(Debug, PartialEq, Eq)]
enum RouteError {
    NotFound,
    MethodNotAllowed(&'static [Method]),
}

/// Serves the API on `listener` until `shutdown` resolves.
pub async fn serve(
    state: Arc<ApiState>,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "accepting an admin API connection failed");
                    continue;
                }
            },
            () = &mut shutdown => return Ok(()),
        };
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let state = Arc::clone(&state);
                async move { Ok::<_, std::convert::Infallible>(handle(&state, request, peer).await) }
            });
            if let Err(error) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%peer, %error, "admin API connection ended with an error");
            }
        });
    }
}

/// Returns the route of `path` with the subscription id left out, a bounded attribute value.
fn route_of(path: &str) -> &'static str {
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    match segments.as_slice() {
        ["healthz"] => "/healthz",
        ["readyz"] => "/readyz",
        ["v1", "openapi.json"] => "/v1/openapi.json",
        ["v1", "subscriptions"] => "/v1/subscriptions",
        ["v1", "subscriptions", _] => "/v1/subscriptions/{id}",
        ["v1", "subscriptions", _, "enable"] => "/v1/subscriptions/{id}/enable",
        ["v1", "subscriptions", _, "disable"] => "/v1/subscriptions/{id}/disable",
        ["v1", "subscriptions", _, "rotate-secret"] => "/v1/subscriptions/{id}/rotate-secret",
        ["v1", "subscriptions", _, "test"] => "/v1/subscriptions/{id}/test",
        ["v1", "dead-letters"] => "/v1/dead-letters",
        ["v1", "dead-letters", "redrive"] => "/v1/dead-letters/redrive",
        _ => "other",
    }
}

/// Records one request in `http.server.request.duration`, as the HTTP conventions name it.
fn record_request(method: &Method, path: &str, status: u16, took: std::time::Duration) {
    static DURATION: std::sync::LazyLock<opentelemetry::metrics::Histogram<f64>> =
        std::sync::LazyLock::new(|| {
            opentelemetry::global::meter(herald_core::telemetry::METER)
                .f64_histogram("http.server.request.duration")
                .with_unit("s")
                .with_description("Admin API requests, by method, route and status")
                .build()
        });
    let method = match *method {
        Method::GET | Method::POST | Method::PATCH | Method::DELETE | Method::PUT => {
            method.as_str().to_owned()
        }
        _ => "_OTHER".to_owned(),
    };
    let mut attributes = vec![
        opentelemetry::KeyValue::new("http.request.method", method),
        opentelemetry::KeyValue::new("http.route", route_of(path)),
        opentelemetry::KeyValue::new("http.response.status_code", i64::from(status)),
    ];
    if status >= 500 {
        attributes.push(opentelemetry::KeyValue::new(
            "error.type",
            status.to_string(),
        ));
    }
    DURATION.record(took.as_secs_f64(), &attributes);
}

/// Handles one request and logs it: method, path, status, the caller's token and the time taken.
async fn handle(
    state: &ApiState,
    request: Request<Incoming>,
    peer: SocketAddr,
) -> Response<Full<Bytes>> {
    let started = Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let caller = state.caller(&request);
    let response = match dispatch(state, request, caller).await {
        Ok(response) => response,
        Err(error) => error.response(),
    };
    let status = response.status().as_u16();
    record_request(&method, &path, status, started.elapsed());
    let caller = match caller {
        Some((AdminRole::Admin, position)) => format!("admin.tokens[{position}] (admin)"),
        Some((AdminRole::Read, position)) => format!("admin.tokens[{position}] (read)"),
        None => "none".to_owned(),
    };
    if path != "/healthz" && path != "/readyz" {
        tracing::info!(
            %method,
            %path,
            status,
            %caller,
            %peer,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "admin API request"
        );
    }
    response
}

async fn dispatch(
    state: &ApiState,
    request: Request<Incoming>,
    caller: Option<(AdminRole, usize)>,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let (operation, id) = match route(request.method(), request.uri().path()) {
        Ok(found) => found,
        Err(RouteError::NotFound) => {
            return Err(ApiError::not_found(format!(
                "no such path: {}",
                request.uri().path()
            )));
        }
        Err(RouteError::MethodNotAllowed(allowed)) => {
            let allowed: Vec<&str> = allowed.iter().map(Method::as_str).collect();
            let mut response = ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!("use {}", list_of(&allowed)),
            )
            .response();
            if let Ok(value) = HeaderValue::from_str(&allowed.join(", ")) {
                response.headers_mut().insert(ALLOW, value);
            }
            return Ok(response);
        }
    };
    if let Some(needed) = operation.role() {
        match caller {
            None => {
                let mut response = ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "send Authorization: Bearer <token> with a token from admin.tokens",
                )
                .response();
                response
                    .headers_mut()
                    .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                return Ok(response);
            }
            Some((role, _)) if role < needed => {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    "this token may only read; changes need an admin token",
                ));
            }
            Some(_) => {}
        }
    }
    let id = id.map(str::to_owned);
    let query = request.uri().query().unwrap_or_default().to_owned();
    let body = read_body(request, state.config.admin.max_body_bytes).await?;
    match operation {
        Operation::Health => Ok(json_response(StatusCode::OK, &json!({"status": "ok"}))),
        // The API serves only once the subscriptions topic is read; after that it is ready
        // while a Kafka broker is reachable.
        Operation::Ready if herald_core::telemetry::is_ready() => {
            Ok(json_response(StatusCode::OK, &json!({"status": "ok"})))
        }
        Operation::Ready => Ok(json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"status": "not ready"}),
        )),
        Operation::OpenApi => {
            let mut response = Response::new(Full::new(Bytes::from_static(OPENAPI.as_bytes())));
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            Ok(response)
        }
        Operation::ListSubscriptions => subscriptions::list(state, &query),
        Operation::CreateSubscription => subscriptions::create(state, &body).await,
        Operation::GetSubscription => subscriptions::get(state, &required(id)?),
        Operation::UpdateSubscription => subscriptions::update(state, &required(id)?, &body).await,
        Operation::DeleteSubscription => subscriptions::delete(state, &required(id)?).await,
        Operation::EnableSubscription => {
            subscriptions::set_enabled(state, &required(id)?, true).await
        }
        Operation::DisableSubscription => {
            subscriptions::set_enabled(state, &required(id)?, false).await
        }
        Operation::RotateSecret => subscriptions::rotate(state, &required(id)?, &body).await,
        Operation::SendTestEvent => subscriptions::send_test(state, &required(id)?).await,
        Operation::ListDeadLetters => dead_letters::list(state, &query).await,
        Operation::RedriveDeadLetters => dead_letters::redrive(state, &body).await,
    }
}

/// Joins names as `A`, `A or B`, or `A, B or C`.
fn list_of(names: &[&str]) -> String {
    match names {
        [] => String::new(),
        [only] => (*only).to_owned(),
        [rest @ .., last] => format!("{} or {last}", rest.join(", ")),
    }
}

fn required(id: Option<String>) -> Result<String, ApiError> {
    id.ok_or_else(|| ApiError::not_found("no subscription id in the path"))
}

async fn read_body(request: Request<Incoming>, limit: usize) -> Result<Bytes, ApiError> {
    match Limited::new(request.into_body(), limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.is::<http_body_util::LengthLimitError>() => Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the body is over admin.max_body_bytes ({limit} bytes)"),
        )),
        Err(error) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            format!("reading the body failed: {error}"),
        )),
    }
}

/// Reads `name=value` pairs of a query string, decoding `%XX` and `+`.
pub fn query_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(name), percent_decode(value))
        })
        .collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut position = 0;
    while position < bytes.len() {
        match bytes[position] {
            b'+' => decoded.push(b' '),
            b'%' if position + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[position + 1..position + 3]).ok();
                match hex.and_then(|hex| u8::from_str_radix(hex, 16).ok()) {
                    Some(byte) => {
                        decoded.push(byte);
                        position += 2;
                    }
                    None => decoded.push(b'%'),
                }
            }
            byte => decoded.push(byte),
        }
        position += 1;
    }
    String::from_utf8_lossy(&decoded).into_owned()
}

#[cfg(test)]
mod tests {
    #[test]
    fn routes_leave_subscription_ids_out() {
        assert_eq!(
            super::route_of("/v1/subscriptions/ledger-7"),
            "/v1/subscriptions/{id}"
        );
        assert_eq!(
            super::route_of("/v1/subscriptions/ledger-7/rotate-secret"),
            "/v1/subscriptions/{id}/rotate-secret"
        );
        assert_eq!(super::route_of("/v1/subscriptions/"), "/v1/subscriptions");
        assert_eq!(super::route_of("/v1/anything/else"), "other");
    }

    use super::*;

    #[test]
    fn routes_paths_and_methods() {
        assert_eq!(
            route(&Method::GET, "/v1/subscriptions/ledger"),
            Ok((Operation::GetSubscription, Some("ledger")))
        );
        assert_eq!(
            route(&Method::POST, "/v1/subscriptions/ledger/rotate-secret"),
            Ok((Operation::RotateSecret, Some("ledger")))
        );
        assert_eq!(
            route(&Method::PUT, "/v1/subscriptions/ledger"),
            Err(RouteError::MethodNotAllowed(&[
                Method::GET,
                Method::PATCH,
                Method::DELETE
            ]))
        );
        assert_eq!(
            route(&Method::GET, "/v1/subscriptions/ledger/nothing"),
            Err(RouteError::NotFound)
        );
        assert_eq!(
            route(&Method::GET, "/v2/subscriptions"),
            Err(RouteError::NotFound)
        );
    }

    #[test]
    fn reads_only_with_a_read_token() {
        assert_eq!(Operation::ListSubscriptions.role(), Some(AdminRole::Read));
        assert_eq!(Operation::DeleteSubscription.role(), Some(AdminRole::Admin));
        assert_eq!(Operation::SendTestEvent.role(), Some(AdminRole::Admin));
        assert_eq!(Operation::OpenApi.role(), None);
    }

    #[test]
    fn decodes_query_strings() {
        assert_eq!(
            query_pairs("event_type=payment.%2A&after=a+b&limit=5&%zz"),
            [
                ("event_type".to_owned(), "payment.*".to_owned()),
                ("after".to_owned(), "a b".to_owned()),
                ("limit".to_owned(), "5".to_owned()),
                ("%zz".to_owned(), String::new())
            ]
        );
    }
}
