//! The generated `Debug` of a message with a secret shows every field but the secret.

use keyhouse_proto::v1::{self as pb, FILE_DESCRIPTOR_SET, SECRET_FIELDS};
use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, FieldDescriptor, Kind, Value};

#[test]
fn an_issued_key_prints_without_its_secret() {
    let key = pb::IssuedKey {
        key_id: "0b6f3c1e-key-id".into(),
        api_key: "uc_secret".into(),
        key_name: "ci deploys".into(),
        key_preview: "uc_1a2b3...9f0e".into(),
        permissions: vec!["llm:inference".into()],
        warning: "Save this API key now.".into(),
        ..Default::default()
    };
    let shown = format!("{key:?}");
    assert!(!shown.contains("uc_secret"), "{shown}");
    assert!(shown.contains("api_key: <redacted>"), "{shown}");
    for visible in [
        "0b6f3c1e-key-id",
        "ci deploys",
        "uc_1a2b3...9f0e",
        "llm:inference",
        "created_at: None",
        "Save this API key now.",
    ] {
        assert!(shown.contains(visible), "{visible} missing from {shown}");
    }
}

#[test]
fn an_empty_secret_prints_as_empty() {
    let event = pb::PlatformKeyEvent {
        name: "openrouter".into(),
        ..Default::default()
    };
    let shown = format!("{event:?}");
    assert!(shown.contains(r#"api_key: """#), "{shown}");
}

/// Every message listed in `SECRET_FIELDS`, filled from its descriptor: each string field holds
/// its own name, so the output must name every field but the secret ones.
#[test]
fn every_secret_field_is_masked() {
    let pool = DescriptorPool::decode(FILE_DESCRIPTOR_SET).expect("descriptor set");
    for secret in SECRET_FIELDS {
        let (message_name, _) = secret.rsplit_once('.').expect("a full field name");
        let descriptor = pool.get_message_by_name(message_name).expect("a message");
        let strings: Vec<_> = descriptor
            .fields()
            .filter(|f| f.kind() == Kind::String && !f.is_list())
            .collect();
        let value_of = |field: &FieldDescriptor| format!("value-of-{}", field.full_name());
        let mut message = DynamicMessage::new(descriptor.clone());
        for field in &strings {
            message.set_field(field, Value::String(value_of(field)));
        }
        let shown = debug_of(message_name, &message.encode_to_vec())
            .unwrap_or_else(|| panic!("add {message_name} to debug_of"));
        for field in &strings {
            let is_secret = SECRET_FIELDS.contains(&field.full_name());
            let value = value_of(field);
            match (is_secret, shown.contains(&value)) {
                (true, true) => panic!("the secret {value} is shown: {shown}"),
                (false, false) => panic!("{value} is missing: {shown}"),
                _ => {}
            }
        }
    }
}

/// Reflection serves the marks too, and they are exactly `SECRET_FIELDS`.
#[test]
fn the_descriptor_set_carries_the_marks() {
    let pool = DescriptorPool::decode(FILE_DESCRIPTOR_SET).expect("descriptor set");
    let option = pool
        .get_extension_by_name("keyhouse.v1.secret")
        .expect("the option is in the set");
    let marked: Vec<String> = pool
        .all_messages()
        .flat_map(|m| m.fields().collect::<Vec<_>>())
        .filter(|f| f.options().get_extension(&option).as_bool() == Some(true))
        .map(|f| f.full_name().to_owned())
        .collect();
    assert_eq!(marked, SECRET_FIELDS);
}

/// The `Debug` output of the message `name` decoded from `bytes`.
fn debug_of(name: &str, bytes: &[u8]) -> Option<String> {
    fn show<M: Message + Default + std::fmt::Debug>(bytes: &[u8]) -> Option<String> {
        Some(format!("{:?}", M::decode(bytes).expect("decodes")))
    }
    match name.strip_prefix("keyhouse.v1.")? {
        "IssuedKey" => show::<pb::IssuedKey>(bytes),
        "VerifyKeyRequest" => show::<pb::VerifyKeyRequest>(bytes),
        "PutProviderKeyRequest" => show::<pb::PutProviderKeyRequest>(bytes),
        "GetProviderKeyForUserResponse" => show::<pb::GetProviderKeyForUserResponse>(bytes),
        "UpdatePlatformKeyRequest" => show::<pb::UpdatePlatformKeyRequest>(bytes),
        "TestPlatformKeyRequest" => show::<pb::TestPlatformKeyRequest>(bytes),
        "GetDecryptedPlatformKeyResponse" => show::<pb::GetDecryptedPlatformKeyResponse>(bytes),
        "PlatformKeyEvent" => show::<pb::PlatformKeyEvent>(bytes),
        _ => None,
    }
}
