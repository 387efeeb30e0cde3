//! A client for the admin HTTP API of a `herald admin` process started by a test.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use crate::process::HeraldProcess;
use crate::scenario::Scenario;
use crate::wait;

/// An admin token for tests; real tokens come from the deployment's secrets.
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789abcdef";
/// A read-only token for tests.
pub const READ_TOKEN: &str = "test-read-token-0123456789abcdef";

/// A running `herald admin` and a client for it.
pub struct AdminApi {
    pub process: HeraldProcess,
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    client: Client<HttpConnector, Full<Bytes>>,
}

/// One response: the status and the body as JSON (`Value::Null` when empty or not JSON).
#[derive(Debug)]
pub struct ApiResponse {
    pub status: u16,
    pub body: Value,
}

impl ApiResponse {
    /// Returns the paths of the bad fields of a 400 response.
    pub fn field_paths(&self) -> Vec<String> {
        self.body["error"]["fields"]
            .as_array()
            .map(|fields| {
                fields
                    .iter()
                    .filter_map(|field| field["path"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl AdminApi {
    /// Starts `herald admin` on a free loopback port with both test tokens, and waits until it
    /// listens. `environment` adds `HERALD__…` settings, such as the encryption keys.
    pub async fn start(scenario: &Scenario, environment: &[(&str, &str)]) -> anyhow::Result<Self> {
        let tokens = format!("admin:{ADMIN_TOKEN},read:{READ_TOKEN}");
        let mut all: Vec<(&str, &str)> = vec![
            ("HERALD__ADMIN__LISTEN", "127.0.0.1:0"),
            ("HERALD__ADMIN__TOKENS", tokens.as_str()),
        ];
        all.extend_from_slice(environment);
        let mut process = scenario.start_with("admin", &all)?;
        wait::until("the admin API listens", Duration::from_secs(60), || {
            process.log_contains("admin API listening")
        })
        .await?;
        process.check_running()?;
        let address = process
            .logged_address("admin API listening")
            .ok_or_else(|| {
                anyhow::anyhow!("no address in the admin log:\n{}", process.log_tail())
            })?;
        Ok(Self {
            process,
            base: format!("http://{address}"),
            client: Client::builder(TokioExecutor::new()).build_http(),
        })
    }

    /// Sends one request with `token` (none when `None`) and a JSON body when given.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> anyhow::Result<ApiResponse> {
        let bytes = body.map(Value::to_string).unwrap_or_default();
        self.send(method, path, token, bytes.into_bytes()).await
    }

    /// Sends raw body bytes, for requests that are not valid JSON.
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Vec<u8>,
    ) -> anyhow::Result<ApiResponse> {
        let mut request = http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("content-type", "application/json");
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let response = self
            .client
            .request(request.body(Full::new(Bytes::from(body)))?)
            .await?;
        let status = response.status().as_u16();
        let bytes = response.into_body().collect().await?.to_bytes();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Ok(ApiResponse { status, body })
    }

    /// Sends a request with the admin token.
    pub async fn admin(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<ApiResponse> {
        self.call(method, path, Some(ADMIN_TOKEN), body.as_ref())
            .await
    }
}
