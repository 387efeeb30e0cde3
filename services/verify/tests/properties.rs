//! Property tests: the signature header parser and the network parser take any input without
//! panicking, and what Herald signs verifies.

use std::time::{Duration, UNIX_EPOCH};

use http::{HeaderMap, HeaderValue};
use proptest::prelude::*;

use herald_verify::network::Network;
use herald_verify::signature::signature_header;
use herald_verify::{Secret, Verifier};

const NOW: u64 = 1_764_493_200;

fn secret(seed: u8) -> Secret {
    Secret::from_bytes((0..32).map(|byte| byte ^ seed).collect()).expect("valid secret")
}

fn headers(id: &str, timestamp: &str, signature: &str) -> Option<HeaderMap> {
    let mut headers = HeaderMap::new();
    headers.insert("webhook-id", HeaderValue::from_str(id).ok()?);
    headers.insert("webhook-timestamp", HeaderValue::from_str(timestamp).ok()?);
    headers.insert("webhook-signature", HeaderValue::from_str(signature).ok()?);
    Some(headers)
}

proptest! {
    #[test]
    fn signature_headers_never_panic(
        id in "[ -~]{0,40}",
        timestamp in "[ -~]{0,24}",
        signature in "[ -~]{0,200}",
        body in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let verifier = Verifier::new(vec![secret(1)]).expect("verifier");
        if let Some(headers) = headers(&id, &timestamp, &signature) {
            let _ = verifier.verify_at(&headers, &body, UNIX_EPOCH + Duration::from_secs(NOW));
        }
    }

    #[test]
    fn what_is_signed_verifies(
        id in "[!-~]{1,64}",
        skew in 0u64..300,
        body in proptest::collection::vec(any::<u8>(), 0..256),
        seeds in proptest::collection::vec(any::<u8>(), 1..4),
    ) {
        let secrets: Vec<Secret> = seeds.iter().map(|seed| secret(*seed)).collect();
        let timestamp = NOW - skew;
        let header = signature_header(&secrets, &id, timestamp, &body);
        let headers = headers(&id, &timestamp.to_string(), &header).expect("valid headers");
        // Any one of the secrets is enough to verify.
        let verifier = Verifier::new(vec![secrets[secrets.len() - 1].clone()]).expect("verifier");
        let verified = verifier
            .verify_at(&headers, &body, UNIX_EPOCH + Duration::from_secs(NOW))
            .expect("verifies");
        prop_assert_eq!(verified.id, id);
        prop_assert_eq!(verified.timestamp, timestamp);
        let mut changed = body.clone();
        changed.push(0);
        prop_assert!(verifier.verify_at(&headers, &changed, UNIX_EPOCH + Duration::from_secs(NOW)).is_err());
    }

    #[test]
    fn secrets_parse_without_panicking(text in "\\PC{0,100}") {
        let _ = Secret::parse(&text);
    }

    #[test]
    fn networks_parse_without_panicking(text in "[0-9a-fA-F.:/ ]{0,50}") {
        let _ = Network::parse(&text);
    }

    #[test]
    fn network_contains_its_own_address(octets in any::<[u8; 4]>(), prefix in 0u8..=32) {
        let address = std::net::Ipv4Addr::from(octets);
        let network = Network::parse(&format!("{address}/{prefix}")).expect("valid network");
        prop_assert!(network.contains(address.into()));
    }
}
