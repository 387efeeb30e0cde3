//! Property tests: the envelope reader and the URL check take any input without panicking, and
//! what the reader accepts keeps its id and type exactly.

use proptest::prelude::*;

use herald_core::envelope::{parse_value, read_event};
use herald_core::subscription::check_url;

proptest! {
    #[test]
    fn envelope_reader_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = read_event(Some(&bytes), 900_000);
        let _ = parse_value(Some(&bytes));
    }

    #[test]
    fn envelope_reader_never_panics_on_json_like_text(text in r#"[{}\[\]":,a-zA-Z0-9 .\\\-]{0,200}"#) {
        let _ = read_event(Some(text.as_bytes()), 900_000);
    }

    #[test]
    fn envelope_fields_round_trip(
        id in "[!#-~]{1,64}",
        event_type in "[a-z]{1,10}(\\.[a-z]{1,10}){0,3}",
        amount in 0u64..1_000_000_000,
    ) {
        let value = serde_json::json!({
            "eventId": id,
            "eventType": event_type,
            "data": {"amount": amount.to_string()},
        });
        let bytes = serde_json::to_vec(&value).expect("serializable");
        let event = read_event(Some(&bytes), 900_000).expect("a valid envelope");
        prop_assert_eq!(event.id, id);
        prop_assert_eq!(event.event_type, event_type);
    }

    #[test]
    fn url_check_never_panics(text in "\\PC{0,120}") {
        let _ = check_url(&text, false);
        let _ = check_url(&text, true);
    }

    #[test]
    fn url_check_accepts_plain_https_names(
        labels in proptest::collection::vec("[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", 1..4),
        port in 1u16..,
        path in "(/[a-zA-Z0-9._~-]{0,12}){0,3}",
    ) {
        let url = format!("https://{}.example:{port}{path}", labels.join("."));
        prop_assert!(check_url(&url, false).is_ok(), "{}", url);
    }
}
