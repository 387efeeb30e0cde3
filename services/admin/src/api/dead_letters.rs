//! The `/v1/dead-letters` operations: list and redrive, as `herald dlq` does.

use std::time::SystemTime;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use serde::Deserialize;
use serde_json::json;

use super::input::{self, FieldError};
use super::{ApiError, ApiState, json_response, query_pairs};
use crate::dlq::{self, DeadLetter, Filter, REASONS};

const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 1_000;

/// The body of `POST /v1/dead-letters/redrive`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Redrive {
    #[serde(default)]
    subscription_id: Option<String>,
    #[serde(default)]
    event_type: Option<String>,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    since: Option<String>,
    #[serde(default)]
    until: Option<String>,
    #[serde(default)]
    dry_run: bool,
    /// Required when no filter is given, so an empty request cannot redrive everything.
    #[serde(default)]
    all: bool,
}

pub async fn list(state: &ApiState, query: &str) -> Result<Response<Full<Bytes>>, ApiError> {
    let mut selection = Redrive::default();
    let mut limit = DEFAULT_PAGE;
    let mut after: Option<(i32, i64)> = None;
    let mut problems = Vec::new();
    for (name, value) in query_pairs(query) {
        match name.as_str() {
            "subscription_id" => selection.subscription_id = Some(value),
            "event_type" => selection.event_type = Some(value),
            "reason" => selection.reason = Some(value),
            "since" => selection.since = Some(value),
            "until" => selection.until = Some(value),
            "limit" => match value.parse::<usize>() {
                Ok(parsed) if (1..=MAX_PAGE).contains(&parsed) => limit = parsed,
                _ => problems.push(field(
                    "limit",
                    format!("must be a whole number from 1 to {MAX_PAGE}"),
                )),
            },
            "after" => match parse_cursor(&value) {
                Some(cursor) => after = Some(cursor),
                None => problems.push(field(
                    "after",
                    "must be <partition>/<offset>, as next_after gives",
                )),
            },
            _ => problems.push(field(&name, "is not a known query parameter")),
        }
    }
    let filter = filter_of(&selection, &mut problems);
    if !problems.is_empty() {
        return Err(ApiError::invalid(problems));
    }
    let config = state.config.clone();
    let found = tokio::task::spawn_blocking(move || dlq::list(&config, &filter))
        .await
        .map_err(|error| ApiError::unavailable("listing dead letters failed", &error))?
        .map_err(|error| ApiError::unavailable("listing dead letters failed", &error))?;
    let mut found: Vec<DeadLetter> = found
        .into_iter()
        .filter(|letter| after.is_none_or(|after| (letter.partition, letter.offset) > after))
        .collect();
    found.sort_by_key(|letter| (letter.partition, letter.offset));
    let next_after = (found.len() > limit).then(|| {
        let last = &found[limit - 1];
        format!("{}/{}", last.partition, last.offset)
    });
    found.truncate(limit);
    Ok(json_response(
        StatusCode::OK,
        &json!({"data": found, "next_after": next_after}),
    ))
}

pub async fn redrive(state: &ApiState, body: &[u8]) -> Result<Response<Full<Bytes>>, ApiError> {
    let selection: Redrive = input::parse(body).map_err(ApiError::invalid)?;
    let mut problems = Vec::new();
    let filter = filter_of(&selection, &mut problems);
    if filter.is_empty() && !selection.all {
        problems.push(field(
            "",
            "give at least one filter (subscription_id, event_type, reason, since, until), or \"all\": true to redrive every dead letter",
        ));
    }
    if !problems.is_empty() {
        return Err(ApiError::invalid(problems));
    }
    let redriven = dlq::redrive(&state.config, &filter, selection.dry_run)
        .await
        .map_err(|error| ApiError::unavailable("redriving dead letters failed", &error))?;
    tracing::info!(
        count = redriven.len(),
        dry_run = selection.dry_run,
        subscription_id = selection.subscription_id.as_deref().unwrap_or("*"),
        "dead letters redriven through the admin API"
    );
    Ok(json_response(
        StatusCode::OK,
        &json!({"dry_run": selection.dry_run, "count": redriven.len()}),
    ))
}

fn filter_of(selection: &Redrive, problems: &mut Vec<FieldError>) -> Filter {
    if let Some(reason) = &selection.reason
        && !REASONS.contains(&reason.as_str())
    {
        problems.push(field(
            "reason",
            format!("must be one of {}", REASONS.join(", ")),
        ));
    }
    let mut time = |name: &str, text: &Option<String>| -> Option<SystemTime> {
        let text = text.as_ref()?;
        humantime::parse_rfc3339_weak(text)
            .map_err(|_| {
                problems.push(field(
                    name,
                    "must be an RFC 3339 time, such as 2026-12-04T10:00:00Z",
                ))
            })
            .ok()
    };
    Filter {
        subscription_id: selection.subscription_id.clone(),
        event_type: selection.event_type.clone(),
        reason: selection.reason.clone(),
        since: time("since", &selection.since),
        until: time("until", &selection.until),
    }
}

/// Reads `<partition>/<offset>`, the position `herald dlq list` shows; `:` is accepted too.
fn parse_cursor(text: &str) -> Option<(i32, i64)> {
    let (partition, offset) = text.split_once(['/', ':'])?;
    Some((partition.parse().ok()?, offset.parse().ok()?))
}

fn field(path: &str, message: impl Into<String>) -> FieldError {
    FieldError {
        path: path.to_owned(),
        message: message.into(),
    }
}
