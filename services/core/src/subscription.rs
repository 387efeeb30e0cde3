//! Subscriptions and the index that matches an event type to them. Matching costs one map look-up
//! per dot in the event type plus the matches themselves, whatever the number of subscriptions.
//!
//! Subscriptions are loaded from a YAML file. They are checked as a whole at start-up, and every
//! problem is reported with its place in the file.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::config::Problems;
use crate::filter::{ConditionSpec, Filter};
use crate::signing::Secret;

/// The request timeout when a subscription sets none, in milliseconds.
pub const DEFAULT_TIMEOUT_MS: u64 = 10_000;
/// The maximum request timeout a subscription may set, in milliseconds.
pub const MAX_TIMEOUT_MS: u64 = 60_000;
const MAX_SUBSCRIPTION_ID_BYTES: usize = 128;

/// A subscription as written in the YAML file, and on the subscriptions topic with its secrets
/// sealed.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionSpec {
    /// Stable id: the Kafka key of its deliveries and part of every delivery id.
    pub id: String,
    /// Free text for operators.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// The endpoint that receives the POST requests.
    pub url: String,
    /// Exact event types, `prefix.*` wildcards, or `*` for every event.
    pub event_types: Vec<String>,
    /// Signing secrets as `whsec_<base64>`; every one signs each request.
    pub secrets: Vec<String>,
    /// A disabled subscription gets no new deliveries.
    #[serde(default = "enabled_by_default")]
    pub enabled: bool,
    /// Total time allowed for one attempt, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Requests per second; the sender's `default_rate_limit_per_second` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit_per_second: Option<u32>,
    /// Requests that may go at once above the steady rate; the sender's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit_burst: Option<u32>,
    /// Requests open at once; the sender's `default_max_concurrency` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<u32>,
    /// Conditions on the payload, all of which an event must meet (see [`crate::filter`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filter: Vec<ConditionSpec>,
    /// Secrets being replaced: each still signs every request until its time, so receivers can
    /// move to the new secret without a gap.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retiring_secrets: Vec<RetiringSecret>,
    /// Extra request headers, such as a routing key the receiver's gateway expects. Herald's own
    /// headers cannot be replaced.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// A PEM certificate chain presented to endpoints that require mutual TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificate: Option<String>,
    /// The PEM private key of `client_certificate`; sealed on the topic like the secrets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key: Option<String>,
}

/// A secret that signs until `until` (RFC 3339).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RetiringSecret {
    pub secret: String,
    pub until: String,
}

impl SubscriptionSpec {
    /// Returns an enabled spec with these essentials and every optional setting left out.
    pub fn new(id: &str, url: &str, event_types: &[&str], secrets: Vec<String>) -> Self {
        Self {
            id: id.to_owned(),
            description: String::new(),
            url: url.to_owned(),
            event_types: event_types.iter().map(|t| (*t).to_owned()).collect(),
            secrets,
            enabled: true,
            timeout_ms: None,
            rate_limit_per_second: None,
            rate_limit_burst: None,
            max_concurrency: None,
            filter: Vec::new(),
            retiring_secrets: Vec::new(),
            headers: BTreeMap::new(),
            client_certificate: None,
            client_key: None,
        }
    }
}

fn enabled_by_default() -> bool {
    true
}

/// A checked subscription, ready for the router and the sender.
#[derive(Debug, Clone)]
pub struct Subscription {
    pub id: String,
    pub description: String,
    pub url: http::Uri,
    pub event_types: Vec<EventTypePattern>,
    pub secrets: Vec<Secret>,
    pub enabled: bool,
    pub timeout_ms: u64,
    pub rate_limit_per_second: Option<u32>,
    pub rate_limit_burst: Option<u32>,
    pub max_concurrency: Option<u32>,
    /// `None` when the subscription has no conditions on the payload.
    pub filter: Option<Filter>,
    /// Secrets being replaced, with the time each stops signing.
    pub retiring_secrets: Vec<(Secret, std::time::SystemTime)>,
    /// Extra request headers, checked to be valid and not to replace Herald's own.
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
    /// The client certificate for mutual TLS, when the endpoint requires one.
    pub client_identity: Option<Arc<ClientIdentity>>,
}

/// A certificate chain and its private key, for endpoints that require mutual TLS.
pub struct ClientIdentity {
    pub chain: Vec<rustls_pki_types::CertificateDer<'static>>,
    pub key: rustls_pki_types::PrivateKeyDer<'static>,
    /// A digest of chain and key, which distinguishes identities without showing the key.
    pub fingerprint: String,
}

impl std::fmt::Debug for ClientIdentity {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("ClientIdentity")
            .field("certificates", &self.chain.len())
            .field("fingerprint", &self.fingerprint)
            .finish()
    }
}

impl ClientIdentity {
    /// Reads a PEM certificate chain and a PEM private key (PKCS #8, PKCS #1 or SEC1).
    pub fn parse(certificate: &str, key: &str) -> Result<Self, (&'static str, String)> {
        use rustls_pki_types::pem::PemObject;

        let chain: Vec<_> =
            rustls_pki_types::CertificateDer::pem_slice_iter(certificate.as_bytes())
                .collect::<Result<_, _>>()
                .map_err(|error| ("client_certificate", format!("is not valid PEM: {error}")))?;
        if chain.is_empty() {
            return Err((
                "client_certificate",
                "holds no CERTIFICATE block".to_owned(),
            ));
        }
        let key =
            rustls_pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes()).map_err(|_| {
                (
                    "client_key",
                    "must be one PEM private key (PKCS #8, PKCS #1 or SEC1)".to_owned(),
                )
            })?;
        let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
        for certificate in &chain {
            digest.update(certificate.as_ref());
        }
        digest.update(key.secret_der());
        let fingerprint = digest
            .finish()
            .as_ref()
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect();
        Ok(Self {
            chain,
            key,
            fingerprint,
        })
    }
}

impl Subscription {
    /// Returns the secrets that sign a request made at `now`: the current ones, then the
    /// retiring ones whose time has not passed.
    pub fn signing_secrets(&self, now: std::time::SystemTime) -> Vec<Secret> {
        self.secrets
            .iter()
            .cloned()
            .chain(
                self.retiring_secrets
                    .iter()
                    .filter(|(_, until)| *until > now)
                    .map(|(secret, _)| secret.clone()),
            )
            .collect()
    }
}

/// One entry of a subscription's event types.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventTypePattern {
    /// `*`: every event.
    All,
    /// `payment.*`: every type that starts with `payment.`; stored with the trailing dot.
    Prefix(String),
    /// `payment.settled`: that type only.
    Exact(String),
}

impl EventTypePattern {
    /// Parses one pattern; `*` is allowed only as the whole last segment.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text == "*" {
            return Ok(Self::All);
        }
        let (body, wildcard) = match text.strip_suffix(".*") {
            Some(prefix) => (prefix, true),
            None => (text, false),
        };
        let valid_segments = body.split('.').all(|segment| {
            !segment.is_empty() && segment.bytes().all(|b| b.is_ascii_graphic() && b != b'*')
        });
        if !valid_segments {
            return Err(format!(
                "invalid event type pattern {text:?}: use an exact type, \"prefix.*\" or \"*\""
            ));
        }
        Ok(if wildcard {
            Self::Prefix(format!("{body}."))
        } else {
            Self::Exact(body.to_owned())
        })
    }
}

/// Checks a spec, reporting each problem under `key` (such as `subscriptions[2]`).
pub fn check_spec(
    spec: &SubscriptionSpec,
    key: &str,
    allow_plain_http: bool,
    problems: &mut Problems,
) -> Option<Subscription> {
    let before = problems.len();

    if spec.id.is_empty()
        || spec.id.len() > MAX_SUBSCRIPTION_ID_BYTES
        || !spec
            .id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        problems.add(
            format!("{key}.id"),
            format!("must be 1 to {MAX_SUBSCRIPTION_ID_BYTES} characters of A-Z, a-z, 0-9, '-', '_' or '.'"),
        );
    }

    let url = check_url(&spec.url, allow_plain_http)
        .map_err(|message| problems.add(format!("{key}.url"), message))
        .ok();

    if spec.event_types.is_empty() {
        problems.add(
            format!("{key}.event_types"),
            "must name at least one event type",
        );
    }
    let mut event_types = Vec::new();
    for (position, text) in spec.event_types.iter().enumerate() {
        match EventTypePattern::parse(text) {
            Ok(pattern) => event_types.push(pattern),
            Err(message) => problems.add(format!("{key}.event_types[{position}]"), message),
        }
    }

    if spec.secrets.is_empty() {
        problems.add(
            format!("{key}.secrets"),
            "must hold at least one whsec_ secret",
        );
    }
    let mut secrets = Vec::new();
    for (position, text) in spec.secrets.iter().enumerate() {
        match Secret::parse(text) {
            Ok(secret) => secrets.push(secret),
            Err(error) => problems.add(format!("{key}.secrets[{position}]"), error.to_string()),
        }
    }

    let timeout_ms = spec.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS);
    if !(1..=MAX_TIMEOUT_MS).contains(&timeout_ms) {
        problems.add(
            format!("{key}.timeout_ms"),
            format!("must be between 1 and {MAX_TIMEOUT_MS}"),
        );
    }

    for (field, value) in [
        ("rate_limit_per_second", spec.rate_limit_per_second),
        ("rate_limit_burst", spec.rate_limit_burst),
        ("max_concurrency", spec.max_concurrency),
    ] {
        if value == Some(0) {
            problems.add(
                format!("{key}.{field}"),
                "must be at least 1; leave it out for the sender's default",
            );
        }
    }

    let mut retiring_secrets = Vec::new();
    for (position, retiring) in spec.retiring_secrets.iter().enumerate() {
        let secret = Secret::parse(&retiring.secret).map_err(|error| {
            problems.add(
                format!("{key}.retiring_secrets[{position}].secret"),
                error.to_string(),
            )
        });
        let until = humantime::parse_rfc3339(&retiring.until).map_err(|_| {
            problems.add(
                format!("{key}.retiring_secrets[{position}].until"),
                "must be an RFC 3339 time such as 2026-12-05T10:00:00Z",
            )
        });
        if let (Ok(secret), Ok(until)) = (secret, until) {
            retiring_secrets.push((secret, until));
        }
    }

    let filter = match Filter::parse(&spec.filter) {
        Ok(filter) => (!spec.filter.is_empty()).then_some(filter),
        Err(errors) => {
            for (place, message) in errors {
                problems.add(format!("{key}.filter{place}"), message);
            }
            None
        }
    };

    let headers = check_headers(&spec.headers, key, problems);
    let client_identity = match (&spec.client_certificate, &spec.client_key) {
        (None, None) => None,
        (Some(certificate), Some(private_key)) => {
            match ClientIdentity::parse(certificate, private_key) {
                Ok(identity) => Some(Arc::new(identity)),
                Err((field, message)) => {
                    problems.add(format!("{key}.{field}"), message);
                    None
                }
            }
        }
        (Some(_), None) => {
            problems.add(
                format!("{key}.client_key"),
                "is required with client_certificate",
            );
            None
        }
        (None, Some(_)) => {
            problems.add(
                format!("{key}.client_certificate"),
                "is required with client_key",
            );
            None
        }
    };

    if problems.len() > before {
        return None;
    }
    Some(Subscription {
        id: spec.id.clone(),
        description: spec.description.clone(),
        url: url?,
        event_types,
        secrets,
        enabled: spec.enabled,
        timeout_ms,
        rate_limit_per_second: spec.rate_limit_per_second,
        rate_limit_burst: spec.rate_limit_burst,
        max_concurrency: spec.max_concurrency,
        filter,
        retiring_secrets,
        headers,
        client_identity,
    })
}

/// Headers a subscription may not set: Herald's own, those the HTTP client manages, and
/// credentials, which would sit unsealed on the subscriptions topic.
const RESERVED_HEADERS: [&str; 13] = [
    "content-type",
    "content-length",
    "user-agent",
    "host",
    "connection",
    "transfer-encoding",
    "te",
    "upgrade",
    "traceparent",
    "tracestate",
    "authorization",
    "proxy-authorization",
    "cookie",
];
const MAX_HEADERS: usize = 20;
const MAX_HEADER_VALUE_BYTES: usize = 1_024;

/// Checks extra headers: valid names that Herald does not set itself, and values of visible
/// ASCII (so no value can end a header line and start another).
fn check_headers(
    headers: &BTreeMap<String, String>,
    key: &str,
    problems: &mut Problems,
) -> Vec<(http::HeaderName, http::HeaderValue)> {
    if headers.len() > MAX_HEADERS {
        problems.add(
            format!("{key}.headers"),
            format!("must hold at most {MAX_HEADERS} headers"),
        );
    }
    let mut checked = Vec::new();
    for (name, value) in headers {
        let place = format!("{key}.headers.{name}");
        let Ok(header_name) = http::HeaderName::from_bytes(name.as_bytes()) else {
            problems.add(place, "is not a valid header name");
            continue;
        };
        let lower = header_name.as_str();
        if RESERVED_HEADERS.contains(&lower) || lower.starts_with("webhook-") {
            problems.add(place, "is set by Herald and cannot be replaced");
            continue;
        }
        if value.len() > MAX_HEADER_VALUE_BYTES {
            problems.add(
                place,
                format!("must be at most {MAX_HEADER_VALUE_BYTES} bytes"),
            );
            continue;
        }
        match http::HeaderValue::from_str(value) {
            Ok(header_value) if !value.contains('\t') => checked.push((header_name, header_value)),
            _ => problems.add(
                place,
                "must be printable ASCII: no line breaks or control characters",
            ),
        }
    }
    checked
}

/// Checks an endpoint URL: absolute, HTTPS unless plain HTTP is allowed, no credentials, no
/// fragment, a valid host name or IP address, and a port from 1 to 65535 when one is given.
pub fn check_url(text: &str, allow_plain_http: bool) -> Result<http::Uri, String> {
    if !text.is_ascii() {
        return Err("must be ASCII: write an international domain name in its xn-- (punycode) form, such as https://xn--bcher-kva.example/".to_owned());
    }
    if text.contains('#') {
        return Err("must not contain a fragment (#…): receivers never see it".to_owned());
    }
    if !text.contains("://") {
        return Err("must start with https://".to_owned());
    }
    let url: http::Uri = text
        .parse()
        .map_err(|_| "is not a valid absolute URL".to_owned())?;
    match url.scheme_str() {
        Some("https") => {}
        Some("http") if allow_plain_http => {}
        Some("http") => {
            return Err("uses plain http; use https, or set sender.allow_plain_http = true for local testing".to_owned());
        }
        _ if allow_plain_http => return Err("must be an https:// or http:// URL".to_owned()),
        _ => return Err("must be an https:// URL".to_owned()),
    }
    let Some(authority) = url.authority() else {
        return Err("has no host".to_owned());
    };
    if authority.as_str().contains('@') {
        return Err("must not contain credentials (user:password@): receivers authenticate Herald by its signature".to_owned());
    }
    if authority.host().is_empty() {
        return Err("has no host".to_owned());
    }
    // http::Uri drops a port it cannot read as a number, so the text after the host is read here.
    let port = authority
        .as_str()
        .strip_prefix(authority.host())
        .and_then(|rest| rest.strip_prefix(':'));
    if let Some(port) = port
        && !port.parse::<u16>().is_ok_and(|number| number > 0)
    {
        return Err(format!("has port {port}; use 1 to 65535"));
    }
    check_host(authority.host())?;
    Ok(url)
}

/// Checks a URL's host: an IP address (IPv6 in brackets), or a DNS name of labels of letters,
/// digits and hyphens, each 1 to 63 characters and not starting or ending with a hyphen.
fn check_host(host: &str) -> Result<(), String> {
    if let Some(inner) = host
        .strip_prefix('[')
        .and_then(|rest| rest.strip_suffix(']'))
    {
        return inner
            .parse::<std::net::Ipv6Addr>()
            .map(|_| ())
            .map_err(|_| format!("has an invalid IPv6 address {host}"));
    }
    if host.parse::<std::net::Ipv4Addr>().is_ok() {
        return Ok(());
    }
    let name = host.strip_suffix('.').unwrap_or(host);
    let valid = name.len() <= 253
        && name.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if valid {
        Ok(())
    } else {
        Err(format!("has an invalid host name {host:?}"))
    }
}

/// The file that lists subscriptions.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SubscriptionFile {
    subscriptions: Vec<SubscriptionSpec>,
}

/// Errors loading the subscriptions file.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read subscriptions file {path}")]
    Read {
        path: String,
        #[source]
        source: config::ConfigError,
    },
    #[error("invalid subscriptions in {path}:\n{problems}")]
    Invalid { path: String, problems: Problems },
}

/// All subscriptions, by id, with the index of the enabled ones.
#[derive(Debug, Default)]
pub struct SubscriptionTable {
    subscriptions: Vec<Arc<Subscription>>,
    by_id: HashMap<String, usize>,
    index: SubscriptionIndex,
}

impl SubscriptionTable {
    /// Loads and checks the YAML file at `path`.
    pub fn load(path: &Path, allow_plain_http: bool) -> Result<Self, LoadError> {
        let specs = Self::read_file(path, allow_plain_http)?;
        Self::from_specs(&specs, allow_plain_http).map_err(|problems| LoadError::Invalid {
            path: path.display().to_string(),
            problems,
        })
    }

    /// Reads and checks the YAML file at `path`, and returns its specs as written.
    pub fn read_file(
        path: &Path,
        allow_plain_http: bool,
    ) -> Result<Vec<SubscriptionSpec>, LoadError> {
        let path_text = path.display().to_string();
        let file: SubscriptionFile = config::Config::builder()
            .add_source(config::File::from(path).format(config::FileFormat::Yaml))
            .build()
            .and_then(config::Config::try_deserialize)
            .map_err(|source| LoadError::Read {
                path: path_text.clone(),
                source,
            })?;
        Self::from_specs(&file.subscriptions, allow_plain_http).map_err(|problems| {
            LoadError::Invalid {
                path: path_text,
                problems,
            }
        })?;
        Ok(file.subscriptions)
    }

    /// Checks specs and builds the table; ids must be unique.
    pub fn from_specs(
        specs: &[SubscriptionSpec],
        allow_plain_http: bool,
    ) -> Result<Self, Problems> {
        let mut problems = Problems::default();
        let mut table = Self::default();
        for (position, spec) in specs.iter().enumerate() {
            let key = format!("subscriptions[{position}]");
            let Some(subscription) = check_spec(spec, &key, allow_plain_http, &mut problems) else {
                continue;
            };
            if table.by_id.contains_key(&subscription.id) {
                problems.add(
                    format!("{key}.id"),
                    format!("duplicate id {:?}", subscription.id),
                );
                continue;
            }
            table.insert(subscription);
        }
        if problems.is_empty() {
            Ok(table)
        } else {
            Err(problems)
        }
    }

    /// Builds a table from subscriptions already checked one by one; a later duplicate id
    /// replaces an earlier one.
    pub fn from_checked(subscriptions: impl IntoIterator<Item = Subscription>) -> Self {
        let mut unique: Vec<Subscription> = Vec::new();
        let mut positions: HashMap<String, usize> = HashMap::new();
        for subscription in subscriptions {
            match positions.get(&subscription.id) {
                Some(&position) => unique[position] = subscription,
                None => {
                    positions.insert(subscription.id.clone(), unique.len());
                    unique.push(subscription);
                }
            }
        }
        let mut table = Self::default();
        for subscription in unique {
            table.insert(subscription);
        }
        table
    }

    fn insert(&mut self, subscription: Subscription) {
        let position = self.subscriptions.len();
        self.by_id.insert(subscription.id.clone(), position);
        if subscription.enabled {
            self.index.add(position, &subscription.event_types);
        }
        self.subscriptions.push(Arc::new(subscription));
    }

    pub fn get(&self, id: &str) -> Option<&Arc<Subscription>> {
        self.by_id
            .get(id)
            .map(|&position| &self.subscriptions[position])
    }

    /// Returns the enabled subscriptions that want `event_type`, each once.
    pub fn matching(&self, event_type: &str) -> Vec<&Arc<Subscription>> {
        self.index
            .matching(event_type)
            .into_iter()
            .map(|position| &self.subscriptions[position])
            .collect()
    }

    pub fn len(&self) -> usize {
        self.subscriptions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.subscriptions.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Subscription>> {
        self.subscriptions.iter()
    }
}

/// Positions of subscriptions by exact type, by wildcard prefix, and those that want everything.
#[derive(Debug, Default)]
struct SubscriptionIndex {
    exact: HashMap<String, Vec<usize>>,
    prefixes: HashMap<String, Vec<usize>>,
    all: Vec<usize>,
}

impl SubscriptionIndex {
    fn add(&mut self, position: usize, patterns: &[EventTypePattern]) {
        for pattern in patterns {
            match pattern {
                EventTypePattern::All => self.all.push(position),
                EventTypePattern::Prefix(prefix) => self
                    .prefixes
                    .entry(prefix.clone())
                    .or_default()
                    .push(position),
                EventTypePattern::Exact(name) => {
                    self.exact.entry(name.clone()).or_default().push(position)
                }
            }
        }
    }

    fn matching(&self, event_type: &str) -> Vec<usize> {
        let mut found: Vec<usize> = self.all.clone();
        if let Some(positions) = self.exact.get(event_type) {
            found.extend(positions);
        }
        // Every prefix of the type that ends at a dot: "a.b.c" looks up "a." and "a.b.".
        for (dot, _) in event_type.match_indices('.') {
            if let Some(positions) = self.prefixes.get(&event_type[..=dot]) {
                found.extend(positions);
            }
        }
        // A subscription whose patterns overlap ("payment.*" and "payment.settled") gets one delivery.
        found.sort_unstable();
        found.dedup();
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    fn spec(id: &str, types: &[&str]) -> SubscriptionSpec {
        SubscriptionSpec::new(
            id,
            &format!("https://example.com/{id}"),
            types,
            vec![SECRET.into()],
        )
    }

    fn matched_ids(table: &SubscriptionTable, event_type: &str) -> Vec<String> {
        table
            .matching(event_type)
            .iter()
            .map(|s| s.id.clone())
            .collect()
    }

    #[test]
    fn urls_are_checked() {
        let valid = [
            "https://hooks.example.com/in",
            "https://hooks.example.com:8443/in?tenant=a",
            "https://xn--bcher-kva.example/",
            "https://203.0.113.7/in",
            "https://[2001:db8::7]:8443/in",
            "https://hooks.example.com./in",
        ];
        for url in valid {
            assert!(check_url(url, false).is_ok(), "{url}");
        }
        let invalid = [
            ("http://hooks.example.com/", "plain http"),
            ("ftp://hooks.example.com/", "https://"),
            ("https://user:pw@hooks.example.com/", "credentials"),
            ("https://bücher.example/", "punycode"),
            ("https://hooks.example.com/#section", "fragment"),
            ("https://hooks.example.com:0/", "port 0"),
            ("https://hooks.example.com:70000/", "port 70000"),
            ("https://-hooks.example.com/", "invalid host name"),
            ("https://hooks..example.com/", "invalid host name"),
            ("https://hooks_1.example.com/", "invalid host name"),
            ("/relative/path", "https://"),
            ("hooks.example.com:8443/in", "must start with https://"),
        ];
        for (url, expected) in invalid {
            let message = check_url(url, false).expect_err(url);
            assert!(message.contains(expected), "{url}: {message}");
        }
        assert!(check_url("http://hooks.example.com/", true).is_ok());
    }

    #[test]
    fn extra_headers_are_checked() {
        let mut bad = spec("ledger", &["*"]);
        for (name, value) in [
            ("X-Tenant", "acme"),
            ("Webhook-Signature", "v1,forged"),
            ("content-type", "text/plain"),
            ("bad name", "x"),
            ("X-Split", "a\r\nX-Injected: 1"),
        ] {
            bad.headers.insert(name.into(), value.into());
        }
        let mut problems = Problems::default();
        assert!(check_spec(&bad, "s", false, &mut problems).is_none());
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "s.headers.Webhook-Signature",
                "s.headers.X-Split",
                "s.headers.bad name",
                "s.headers.content-type"
            ]
        );

        let mut good = spec("ledger", &["*"]);
        good.headers.insert("X-Tenant".into(), "acme".into());
        let checked = check_spec(&good, "s", false, &mut Problems::default()).expect("valid");
        assert_eq!(checked.headers.len(), 1);
        assert_eq!(checked.headers[0].0.as_str(), "x-tenant");
    }

    #[test]
    fn matches_exact_prefix_and_all() {
        let table = SubscriptionTable::from_specs(
            &[
                spec("ledger", &["payment.*"]),
                spec("settled", &["payment.settled"]),
                spec("audit", &["*"]),
                spec("kyc", &["kyc.*", "aml.*"]),
            ],
            false,
        )
        .expect("valid subscriptions");
        assert_eq!(
            matched_ids(&table, "payment.settled"),
            ["ledger", "settled", "audit"]
        );
        assert_eq!(
            matched_ids(&table, "payment.initiated"),
            ["ledger", "audit"]
        );
        assert_eq!(matched_ids(&table, "aml.alert.raised"), ["audit", "kyc"]);
        assert_eq!(matched_ids(&table, "payment"), ["audit"]);
        assert_eq!(matched_ids(&table, "paymentx.settled"), ["audit"]);
    }

    #[test]
    fn overlapping_patterns_match_once() {
        let table = SubscriptionTable::from_specs(
            &[spec("ledger", &["payment.*", "payment.settled", "*"])],
            false,
        )
        .expect("valid subscriptions");
        assert_eq!(matched_ids(&table, "payment.settled"), ["ledger"]);
    }

    #[test]
    fn disabled_subscription_matches_nothing() {
        let mut disabled = spec("ledger", &["payment.*"]);
        disabled.enabled = false;
        let table = SubscriptionTable::from_specs(&[disabled], false).expect("valid subscriptions");
        assert!(matched_ids(&table, "payment.settled").is_empty());
        assert!(table.get("ledger").is_some());
    }

    #[test]
    fn reports_every_problem_with_its_key() {
        let mut bad = spec("bad id!", &["pay*ment", "ok.*"]);
        bad.url = "http://example.com/hook".into();
        bad.secrets = vec!["whsec_c2hvcnQ=".into()];
        bad.max_concurrency = Some(0);
        bad.filter = vec![crate::filter::ConditionSpec {
            path: "/data/amount".into(),
            gt: Some(serde_json::json!("a lot")),
            ..Default::default()
        }];
        let problems = SubscriptionTable::from_specs(&[spec("fine", &["a"]), bad], false)
            .expect_err("invalid");
        let keys: Vec<&str> = problems
            .iter()
            .map(|problem| problem.key.as_str())
            .collect();
        assert_eq!(
            keys,
            [
                "subscriptions[1].id",
                "subscriptions[1].url",
                "subscriptions[1].event_types[0]",
                "subscriptions[1].secrets[0]",
                "subscriptions[1].max_concurrency",
                "subscriptions[1].filter[0].gt"
            ]
        );
    }

    #[test]
    fn rejects_duplicate_ids() {
        let problems =
            SubscriptionTable::from_specs(&[spec("a", &["x"]), spec("a", &["y"])], false)
                .expect_err("duplicate");
        assert_eq!(
            problems.iter().next().map(|p| p.key.as_str()),
            Some("subscriptions[1].id")
        );
    }

    #[test]
    fn url_rules() {
        assert!(check_url("https://hooks.example.com/in", false).is_ok());
        assert!(check_url("http://127.0.0.1:8080/in", true).is_ok());
        assert!(check_url("http://hooks.example.com/in", false).is_err());
        assert!(check_url("ftp://hooks.example.com/in", true).is_err());
        assert!(check_url("https://user:pass@hooks.example.com/in", false).is_err());
        assert!(check_url("/relative", false).is_err());
    }
}
