//! The `/v1/subscriptions` operations.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use serde::Deserialize;
use serde_json::{Value, json};

use herald_core::encryption::{generate_secret, random_hex};
use herald_core::filter::ConditionSpec;
use herald_core::registry::{self, StoredSubscription};
use herald_core::subscription::SubscriptionSpec;

use super::input::{self, FieldError};
use super::{ApiError, ApiState, json_response, query_pairs};
use crate::subscriptions::{
    TEST_EVENT_TYPE, check_fields, parse_overlap, patched, rotated, send_test_event, view,
};

const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 500;
const DEFAULT_OVERLAP: Duration = Duration::from_secs(24 * 60 * 60);

/// The body of `POST /v1/subscriptions`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewSubscription {
    /// Generated (`sub_` and 16 random hex digits) when absent.
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    description: String,
    url: String,
    event_types: Vec<String>,
    /// A `whsec_` secret to use; generated when absent.
    #[serde(default)]
    secret: Option<String>,
    #[serde(default = "enabled_by_default")]
    enabled: bool,
    #[serde(default)]
    timeout_ms: Option<u64>,
    #[serde(default)]
    rate_limit_per_second: Option<u32>,
    #[serde(default)]
    rate_limit_burst: Option<u32>,
    #[serde(default)]
    max_concurrency: Option<u32>,
    #[serde(default)]
    filter: Vec<ConditionSpec>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    client_certificate: Option<String>,
    #[serde(default)]
    client_key: Option<String>,
}

/// The fields of [`NewSubscription`], for reporting every unknown field at once.
const NEW_SUBSCRIPTION_FIELDS: &[&str] = &[
    "id",
    "description",
    "url",
    "event_types",
    "secret",
    "enabled",
    "timeout_ms",
    "rate_limit_per_second",
    "rate_limit_burst",
    "max_concurrency",
    "filter",
    "headers",
    "client_certificate",
    "client_key",
];

fn enabled_by_default() -> bool {
    true
}

/// The body of `POST /v1/subscriptions/{id}/rotate-secret`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Rotation {
    /// How long the old secrets keep signing, such as `24h`; `0s` drops them at once.
    #[serde(default)]
    overlap: Option<String>,
}

pub fn list(state: &ApiState, query: &str) -> Result<Response<Full<Bytes>>, ApiError> {
    let mut limit = DEFAULT_PAGE;
    let mut after: Option<String> = None;
    let mut problems = Vec::new();
    for (name, value) in query_pairs(query) {
        match name.as_str() {
            "limit" => match value.parse::<usize>() {
                Ok(parsed) if (1..=MAX_PAGE).contains(&parsed) => limit = parsed,
                _ => problems.push(FieldError {
                    path: "limit".into(),
                    message: format!("must be a whole number from 1 to {MAX_PAGE}"),
                }),
            },
            "after" => after = Some(value),
            _ => problems.push(FieldError {
                path: name,
                message: "is not a known query parameter; use limit and after".into(),
            }),
        }
    }
    if !problems.is_empty() {
        return Err(ApiError::invalid(problems));
    }
    let all = state.subscriptions.stored_all();
    let mut page: Vec<Value> = all
        .iter()
        .filter(|(id, _)| {
            after
                .as_ref()
                .is_none_or(|after| id.as_str() > after.as_str())
        })
        .take(limit + 1)
        .map(|(_, stored)| view(stored))
        .collect();
    let next_after = if page.len() > limit {
        page.truncate(limit);
        page.last()
            .and_then(|last| last["id"].as_str())
            .map(str::to_owned)
    } else {
        None
    };
    Ok(json_response(
        StatusCode::OK,
        &json!({"data": page, "next_after": next_after}),
    ))
}

pub fn get(state: &ApiState, id: &str) -> Result<Response<Full<Bytes>>, ApiError> {
    let stored = existing(state, id)?;
    Ok(json_response(StatusCode::OK, &view(&stored)))
}

pub async fn create(state: &ApiState, body: &[u8]) -> Result<Response<Full<Bytes>>, ApiError> {
    let new: NewSubscription =
        input::parse_object(body, NEW_SUBSCRIPTION_FIELDS, &["url", "event_types"])
            .map_err(ApiError::invalid)?;
    let id = match new.id {
        Some(id) => id,
        None => format!(
            "sub_{}",
            random_hex(8).map_err(|e| ApiError::unavailable("generating an id failed", &e))?
        ),
    };
    let generated = new.secret.is_none();
    let secret = match new.secret {
        Some(secret) => secret,
        None => generate_secret()
            .map_err(|error| ApiError::unavailable("generating a secret failed", &error))?,
    };
    let spec = SubscriptionSpec {
        id: id.clone(),
        description: new.description,
        url: new.url,
        event_types: new.event_types,
        secrets: vec![secret.clone()],
        enabled: new.enabled,
        timeout_ms: new.timeout_ms,
        rate_limit_per_second: new.rate_limit_per_second,
        rate_limit_burst: new.rate_limit_burst,
        max_concurrency: new.max_concurrency,
        filter: new.filter,
        retiring_secrets: Vec::new(),
        headers: new.headers,
        client_certificate: new.client_certificate,
        client_key: new.client_key,
    };
    check_fields(&spec, &state.config.sender, &[("secrets[0]", "secret")])
        .map_err(ApiError::invalid)?;

    let _change = state.changes.lock().await;
    if state.subscriptions.stored(&id).is_some() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!("subscription {id:?} already exists"),
        ));
    }
    let now = herald_core::time::rfc3339(SystemTime::now());
    let stored = write(state, &spec, &now, &now).await?;
    tracing::info!(subscription_id = %id, "subscription created through the admin API");
    let mut body = json!({ "subscription": view(&stored) });
    if generated {
        body["secret"] = secret.into();
    }
    Ok(json_response(StatusCode::CREATED, &body))
}

pub async fn update(
    state: &ApiState,
    id: &str,
    body: &[u8],
) -> Result<Response<Full<Bytes>>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::invalid(vec![FieldError {
            path: String::new(),
            message: "the body must be a JSON object of the fields to change".into(),
        }]));
    }
    let patch: Value = input::parse(body).map_err(ApiError::invalid)?;
    let _change = state.changes.lock().await;
    let stored = existing(state, id)?;
    let opened = open(state, &stored)?;
    let spec = patched(&opened, &patch, &state.config.sender).map_err(ApiError::invalid)?;
    if spec == opened {
        return Ok(json_response(StatusCode::OK, &view(&stored)));
    }
    let now = herald_core::time::rfc3339(SystemTime::now());
    let written = write(state, &spec, &stored.created_at, &now).await?;
    tracing::info!(subscription_id = %id, "subscription updated through the admin API");
    Ok(json_response(StatusCode::OK, &view(&written)))
}

pub async fn delete(state: &ApiState, id: &str) -> Result<Response<Full<Bytes>>, ApiError> {
    let _change = state.changes.lock().await;
    existing(state, id)?;
    state
        .subscriptions
        .write(id, None)
        .await
        .map_err(|error| ApiError::unavailable("deleting the subscription failed", &error))?;
    tracing::info!(subscription_id = %id, "subscription deleted through the admin API");
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::NO_CONTENT;
    Ok(response)
}

pub async fn set_enabled(
    state: &ApiState,
    id: &str,
    enabled: bool,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let _change = state.changes.lock().await;
    let mut stored = existing(state, id)?;
    if stored.subscription.enabled != enabled {
        stored.subscription.enabled = enabled;
        stored.updated_at = herald_core::time::rfc3339(SystemTime::now());
        state
            .subscriptions
            .write(id, Some(&stored))
            .await
            .map_err(|error| ApiError::unavailable("writing the subscription failed", &error))?;
        tracing::info!(subscription_id = %id, enabled, "subscription switched through the admin API");
    }
    Ok(json_response(StatusCode::OK, &view(&stored)))
}

pub async fn rotate(
    state: &ApiState,
    id: &str,
    body: &[u8],
) -> Result<Response<Full<Bytes>>, ApiError> {
    let rotation: Rotation = input::parse(body).map_err(ApiError::invalid)?;
    let overlap = match rotation.overlap {
        None => DEFAULT_OVERLAP,
        Some(text) => parse_overlap(&text).map_err(|message| {
            ApiError::invalid(vec![FieldError {
                path: "overlap".into(),
                message,
            }])
        })?,
    };
    let secret = generate_secret()
        .map_err(|error| ApiError::unavailable("generating a secret failed", &error))?;

    let _change = state.changes.lock().await;
    let stored = existing(state, id)?;
    let opened = open(state, &stored)?;
    let spec = rotated(&opened, secret.clone(), overlap, SystemTime::now());
    let now = herald_core::time::rfc3339(SystemTime::now());
    let written = write(state, &spec, &stored.created_at, &now).await?;
    tracing::info!(
        subscription_id = %id,
        overlap = %humantime::format_duration(overlap),
        "subscription secret rotated through the admin API"
    );
    Ok(json_response(
        StatusCode::OK,
        &json!({"subscription": view(&written), "secret": secret}),
    ))
}

pub async fn send_test(state: &ApiState, id: &str) -> Result<Response<Full<Bytes>>, ApiError> {
    let stored = existing(state, id)?;
    if !stored.subscription.enabled {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!("subscription {id:?} is disabled: enable it first"),
        ));
    }
    let event_id = send_test_event(&state.config, &state.producer, id)
        .await
        .map_err(|error| ApiError::unavailable("publishing the test event failed", &error))?;
    tracing::info!(subscription_id = %id, %event_id, "test event sent through the admin API");
    Ok(json_response(
        StatusCode::ACCEPTED,
        &json!({
            "event_id": event_id,
            "event_type": TEST_EVENT_TYPE,
            "delivery_id": format!("{id}:{event_id}"),
        }),
    ))
}

fn existing(state: &ApiState, id: &str) -> Result<StoredSubscription, ApiError> {
    state
        .subscriptions
        .stored(id)
        .ok_or_else(|| ApiError::not_found(format!("no subscription {id:?}")))
}

fn open(state: &ApiState, stored: &StoredSubscription) -> Result<SubscriptionSpec, ApiError> {
    registry::open(&stored.subscription, &state.keys)
        .map_err(|error| ApiError::unavailable("opening the subscription's secrets failed", &error))
}

/// Seals and writes a spec, and returns the record as stored.
async fn write(
    state: &ApiState,
    spec: &SubscriptionSpec,
    created_at: &str,
    updated_at: &str,
) -> Result<StoredSubscription, ApiError> {
    let sealed = registry::seal(spec, &state.keys)
        .map_err(|error| ApiError::unavailable("sealing the secrets failed", &error))?;
    let stored = StoredSubscription {
        subscription: sealed,
        created_at: created_at.to_owned(),
        updated_at: updated_at.to_owned(),
    };
    state
        .subscriptions
        .write(&spec.id, Some(&stored))
        .await
        .map_err(|error| ApiError::unavailable("writing the subscription failed", &error))?;
    Ok(stored)
}
