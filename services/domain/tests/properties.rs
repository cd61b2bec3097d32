//! Properties of what callers type: API keys, IP networks and page tokens, over generated input.
//! Each must parse what it made, refuse what it did not, and never panic.

use std::net::IpAddr;

use chrono::DateTime;
use keyhouse_domain::Error;
use keyhouse_domain::crypto::api_key::{ApiKey, KEY_LEN};
use keyhouse_domain::paging::Cursor;
use keyhouse_domain::verify::parse_network;
use proptest::prelude::*;

/// A key as `ApiKey::generate` makes it, from generated random hex: `uc_`, 56 hex, CRC32.
fn key_from(random_hex: &str) -> String {
    let head = format!("uc_{random_hex}");
    format!("{head}{:08x}", crc32(head.as_bytes()))
}

/// CRC-32 (IEEE), as the key format defines it, written out here so that the test does not
/// share the implementation it checks.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 512,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn every_well_formed_key_parses(random in "[0-9a-f]{56}") {
        let key = key_from(&random);
        prop_assert_eq!(key.len(), KEY_LEN);
        let parsed = ApiKey::parse(&key);
        prop_assert!(parsed.is_some());
        prop_assert_eq!(parsed.map(|k| k.expose().to_owned()), Some(key));
    }

    #[test]
    fn a_key_with_any_one_character_changed_never_parses(
        random in "[0-9a-f]{56}",
        at in 0..KEY_LEN,
        replacement in prop_oneof![
            proptest::sample::select("0123456789abcdefABCDEF_uc".chars().collect::<Vec<_>>()),
            any::<char>(),
        ],
    ) {
        let key = key_from(&random);
        let mut chars: Vec<char> = key.chars().collect();
        prop_assume!(chars[at] != replacement);
        chars[at] = replacement;
        let changed: String = chars.into_iter().collect();
        prop_assert!(ApiKey::parse(&changed).is_none(), "{changed:?} parsed");
    }

    #[test]
    fn any_string_is_judged_without_a_panic(text in any::<String>()) {
        // Almost no string is a key; the few that are must be exactly the key's shape.
        if let Some(key) = ApiKey::parse(&text) {
            prop_assert_eq!(key.expose(), text.as_str());
        }
    }

    #[test]
    fn key_shaped_strings_parse_only_with_their_checksum(text in "uc_[0-9a-fA-F]{60,68}") {
        let parsed = ApiKey::parse(&text).is_some();
        let well_formed = text.len() == KEY_LEN
            && !text[3..].bytes().any(|b| b.is_ascii_uppercase())
            && key_from(&text[3..59]) == text;
        prop_assert_eq!(parsed, well_formed);
    }

    #[test]
    fn any_string_is_judged_as_a_network_without_a_panic(text in any::<String>()) {
        if let Some(net) = parse_network(&text) {
            let canonical = net.to_string();
            prop_assert_eq!(parse_network(&canonical), Some(net));
        }
    }

    #[test]
    fn network_like_strings_round_trip(text in "[ \t]{0,2}[0-9a-f.:]{1,40}(/[0-9]{1,3})?[ \t]{0,2}") {
        if let Some(net) = parse_network(&text) {
            let canonical = net.to_string();
            prop_assert_eq!(parse_network(&canonical), Some(net), "{:?} -> {}", text, canonical);
            prop_assert_eq!(parse_network(&canonical).map(|n| n.to_string()), Some(canonical));
        }
    }

    #[test]
    fn every_network_and_address_is_accepted_and_round_trips(
        addr in any::<IpAddr>(),
        prefix in 0u8..=128,
        padding in "[ \t]{0,2}",
    ) {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = prefix % (max + 1);
        for (text, want) in [
            (format!("{padding}{addr}/{prefix}{padding}"), prefix),
            (format!("{padding}{addr}{padding}"), max),
        ] {
            let net = parse_network(&text);
            prop_assert!(net.is_some(), "{:?} refused", text);
            let net = net.expect("checked");
            prop_assert_eq!((net.addr(), net.prefix_len()), (addr, want));
            prop_assert_eq!(parse_network(&net.to_string()), Some(net));
        }
    }

    #[test]
    fn page_tokens_round_trip(
        micros in DateTime::<chrono::Utc>::MIN_UTC.timestamp_micros()..=DateTime::<chrono::Utc>::MAX_UTC.timestamp_micros(),
        id in any::<u128>(),
    ) {
        let cursor = Cursor {
            at: DateTime::from_timestamp_micros(micros).expect("in range"),
            id: uuid::Uuid::from_u128(id),
        };
        let token = cursor.encode();
        prop_assert_eq!(Cursor::decode(&token).ok().flatten(), Some(cursor));
    }

    #[test]
    fn any_string_as_a_page_token_is_a_cursor_or_an_error_naming_page_token(
        text in prop_oneof![any::<String>(), "[0-9a-fA-F]{0,80}", any::<Vec<u8>>().prop_map(hex::encode)],
    ) {
        match Cursor::decode(&text) {
            Ok(None) => prop_assert!(text.is_empty()),
            // Only a token that names a time and an id is a cursor; it reads the same again.
            Ok(Some(cursor)) => prop_assert_eq!(Cursor::decode(&cursor.encode()).ok().flatten(), Some(cursor)),
            Err(Error::InvalidArgument { field, .. }) => prop_assert_eq!(field, "page_token"),
            Err(other) => prop_assert!(false, "{text:?}: {other}"),
        }
    }

    #[test]
    fn a_page_token_that_is_not_hex_is_refused(text in ".*[^0-9a-fA-F].*") {
let refused = matches!(
            Cursor::decode(&text),
            Err(Error::InvalidArgument { field: "page_token", .. })
        );
        prop_assert!(refused, "{:?} was not refused naming page_token", text);
    }
}
