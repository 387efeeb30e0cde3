//! Interoperability with the official Standard Webhooks library for Python (`standardwebhooks`),
//! in both directions, and the fixed test vectors in `tests/interop/vectors.json`:
//! - Herald's signing reproduces every vector, and herald-verify accepts each;
//! - requests that Herald's sender actually made, as a receiver got them, verify with the library,
//!   and a tampered one does not;
//! - requests the library signs verify with herald-verify.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use http::HeaderMap;
use serde::Deserialize;
use serde_json::json;

use herald_core::config::Problems;
use herald_core::subscription::{SubscriptionSpec, check_spec};
use herald_verify::receiver::{Receiver, ReceiverOptions};
use herald_verify::{Inbox, Secret, Verifier};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/interop/check.py");
const VECTORS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/interop/vectors.json");

#[derive(Deserialize)]
struct Vectors {
    vectors: Vec<Vector>,
}

#[derive(Deserialize)]
struct Vector {
    name: String,
    secret: String,
    id: String,
    timestamp: u64,
    body_base64: String,
    signature: String,
}

fn python() -> String {
    std::env::var("HERALD_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// Runs the check script in `mode` with `input` on standard input; returns its output, failing
/// the test with that output when the script fails.
fn run_script(arguments: &[&str], input: &str) -> anyhow::Result<String> {
    let mut child = Command::new(python())
        .arg(SCRIPT)
        .args(arguments)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input.as_bytes())?;
    }
    let output = child.wait_with_output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    anyhow::ensure!(
        output.status.success(),
        "check.py {arguments:?} failed:\n{text}"
    );
    Ok(text)
}

fn headers(id: &str, timestamp: u64, signature: &str) -> anyhow::Result<HeaderMap> {
    let mut headers = HeaderMap::new();
    headers.insert("webhook-id", id.parse()?);
    headers.insert("webhook-timestamp", timestamp.to_string().parse()?);
    headers.insert("webhook-signature", signature.parse()?);
    Ok(headers)
}

#[test]
fn herald_reproduces_the_fixed_vectors() -> anyhow::Result<()> {
    let vectors: Vectors = serde_json::from_str(&std::fs::read_to_string(VECTORS)?)?;
    assert!(vectors.vectors.len() >= 8);
    for vector in &vectors.vectors {
        let secret = Secret::parse(&vector.secret)?;
        let body = STANDARD.decode(&vector.body_base64)?;
        assert_eq!(
            herald_core::signing::signature_header(
                std::slice::from_ref(&secret),
                &vector.id,
                vector.timestamp,
                &body
            ),
            vector.signature,
            "{}",
            vector.name
        );
        let verifier = Verifier::new(vec![secret])?;
        let at = UNIX_EPOCH + Duration::from_secs(vector.timestamp);
        let verified = verifier.verify_at(
            &headers(&vector.id, vector.timestamp, &vector.signature)?,
            &body,
            at,
        );
        assert!(verified.is_ok(), "{}: {verified:?}", vector.name);
    }
    // The same vectors, checked by the library itself.
    let report = run_script(&["vectors", VECTORS], "")?;
    assert_eq!(report.matches("ok  vector").count(), vectors.vectors.len());
    Ok(())
}

#[tokio::test]
async fn python_library_verifies_herald_requests() -> anyhow::Result<()> {
    let current = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let retiring = "whsec_QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo0NTY3";
    let receiver = Receiver::start(
        tokio::net::TcpListener::bind("127.0.0.1:0").await?,
        ReceiverOptions {
            name: "interop".into(),
            verifier: Verifier::new(vec![Secret::parse(current)?])?,
            keep_requests: true,
            log_file: None,
            hook: None,
        },
    )?;
    // A subscription in the middle of a rotation: both secrets sign.
    let until = herald_core::time::rfc3339(SystemTime::now() + Duration::from_secs(3_600));
    let spec: SubscriptionSpec = serde_json::from_value(json!({
        "id": "interop",
        "url": format!("http://{}/webhooks", receiver.address()),
        "event_types": ["*"],
        "secrets": [current],
        "retiring_secrets": [{"secret": retiring, "until": until}],
    }))?;
    let subscription = check_spec(&spec, "interop", true, &mut Problems::default())
        .ok_or_else(|| anyhow::anyhow!("invalid subscription"))?;
    let client = herald_sender::WebhookClient::new(herald_sender::ClientSettings {
        connect_timeout: Duration::from_secs(2),
        max_response_bytes: 1024,
        guard: herald_sender::AddressGuard::new(&["127.0.0.1".into()])
            .map_err(|problem| anyhow::anyhow!(problem))?,
        extra_roots: Vec::new(),
    })?;
    let bodies: [&[u8]; 3] = [
        br#"{"eventId":"evt_i1","eventType":"payment.settled","data":{"amount":"10.00"}}"#,
        "{\"eventId\":\"evt_i2\",\"data\":{\"name\":\"Zoë\"}}".as_bytes(),
        b"{ \"eventId\" : \"evt_i3\" }\n",
    ];
    for (position, body) in bodies.iter().enumerate() {
        let input = herald_sender::AttemptInput {
            webhook_id: &format!("evt_i{}", position + 1),
            body: Bytes::copy_from_slice(body),
            traceparent: None,
            tracestate: None,
        };
        let response = herald_sender::attempt(&client, &subscription, input).await?;
        assert!(response.status.is_success());
    }

    let mut lines = String::new();
    for request in receiver.requests() {
        let header = |name: &str| {
            request.headers[name]
                .to_str()
                .map(str::to_owned)
                .unwrap_or_default()
        };
        let signature = header("webhook-signature");
        assert_eq!(signature.split(' ').count(), 2, "one signature per secret");
        for (secret, tampered) in [(current, false), (retiring, false), (current, true)] {
            let mut body = request.body.to_vec();
            if tampered {
                body.push(b' ');
            }
            let line = json!({
                "secret": secret,
                "id": header("webhook-id"),
                "timestamp": header("webhook-timestamp").parse::<u64>()?,
                "signature": signature,
                "body_base64": STANDARD.encode(&body),
                "tampered": tampered,
            });
            lines.push_str(&format!("{line}\n"));
        }
    }
    let report = run_script(&["verify"], &lines)?;
    assert_eq!(report.matches("ok  request").count(), 9, "{report}");
    Ok(())
}

#[test]
fn herald_verify_accepts_python_signatures() -> anyhow::Result<()> {
    let first = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let second = "whsec_QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo0NTY3";
    let messages = [
        ("msg_1", br#"{"eventId":"msg_1","data":{}}"#.as_slice()),
        ("msg_2", "{\"city\":\"Zürich\"}".as_bytes()),
        ("msg_3", b"".as_slice()),
    ];
    let mut lines = String::new();
    for (id, body) in messages {
        let line =
            json!({"id": id, "secrets": [first, second], "body_base64": STANDARD.encode(body)});
        lines.push_str(&format!("{line}\n"));
    }
    let signed = run_script(&["sign"], &lines)?;
    // Each verifier holds only one of the two secrets, as receivers do during a rotation.
    let inboxes = [
        Inbox::new(Verifier::new(vec![Secret::parse(first)?])?),
        Inbox::new(Verifier::new(vec![Secret::parse(second)?])?),
    ];
    let mut checked = 0;
    for line in signed.lines() {
        let request: serde_json::Value = serde_json::from_str(line)?;
        let id = request["id"].as_str().unwrap_or_default();
        let timestamp = request["timestamp"].as_u64().unwrap_or_default();
        let signature = request["signature"].as_str().unwrap_or_default();
        let body = STANDARD.decode(request["body_base64"].as_str().unwrap_or_default())?;
        let headers = headers(id, timestamp, signature)?;
        for inbox in &inboxes {
            let accepted = inbox.receive(&http::Method::POST, &headers, &body, None);
            assert!(accepted.is_ok(), "{id}: {accepted:?}");
        }
        let mut changed = body.clone();
        changed.push(b'\n');
        assert!(
            inboxes[0]
                .receive(&http::Method::POST, &headers, &changed, None)
                .is_err(),
            "{id}: a changed body must fail"
        );
        checked += 1;
    }
    assert_eq!(checked, messages.len());
    Ok(())
}
