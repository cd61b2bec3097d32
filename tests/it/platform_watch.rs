//! Change propagation and key rotation: WatchPlatformKeys on one server and across replicas,
//! and `keyhouse encryption rotate` with two keys, interrupted and resumed.

use std::time::Duration;

use keyhouse_domain::caller::Role;
use keyhouse_domain::config::Secret;
use keyhouse_domain::crypto::fernet_ring::KeyRing;
use keyhouse_domain::rotation;
use keyhouse_proto::v1 as pb;

use crate::on_both_databases;
use crate::support::{Backend, TestServer};

on_both_databases!(
    a_watcher_gets_the_current_state_then_each_change,
    rotation_with_two_keys_can_be_interrupted_and_resumed,
);

const WAIT: Duration = Duration::from_secs(1);

async fn next(stream: &mut tonic::Streaming<pb::PlatformKeyEvent>) -> pb::PlatformKeyEvent {
    tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("an event within one second")
        .expect("the stream is healthy")
        .expect("the stream is open")
}

async fn a_watcher_gets_the_current_state_then_each_change(backend: Backend) {
    let server = TestServer::start(backend).await;
    let token = server.session("root", Role::Admin).await;
    let mut watcher = server.platform_client(Some(&token)).await;
    let mut admin = server.platform_client(Some(&token)).await;
    let mut stream = watcher
        .watch_platform_keys(pb::WatchPlatformKeysRequest {
            include_secret: true,
        })
        .await
        .expect("watch")
        .into_inner();
    let mut initial = Vec::new();
    for _ in 0..9 {
        initial.push(next(&mut stream).await);
    }
    assert!(
        initial
            .iter()
            .all(|e| e.initial && e.source == "not_set" && e.api_key.is_empty())
    );

    let value = "sk-litellm-rotated-000001";
    admin
        .update_platform_key(pb::UpdatePlatformKeyRequest {
            name: "litellm".into(),
            api_key: value.into(),
        })
        .await
        .expect("update");
    let event = next(&mut stream).await;
    assert_eq!(
        (event.name.as_str(), event.version, event.source.as_str()),
        ("litellm", 1, "database")
    );
    assert_eq!(
        event.api_key, value,
        "include_secret hands the new value to the watcher"
    );
    assert!(!event.initial);

    admin
        .delete_platform_key(pb::DeletePlatformKeyRequest {
            name: "litellm".into(),
        })
        .await
        .expect("delete");
    let event = next(&mut stream).await;
    assert_eq!(
        (event.name.as_str(), event.version, event.source.as_str()),
        ("litellm", 0, "not_set")
    );

    // The subscription with secrets was audited.
    let audit = admin
        .list_audit_events(pb::ListAuditEventsRequest {
            action: "platform_key.watch".into(),
            ..Default::default()
        })
        .await
        .expect("audit")
        .into_inner()
        .events;
    assert_eq!(audit.len(), 1);
    assert!(audit[0].details_json.contains("\"include_secret\":true"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_change_on_another_replica_reaches_a_watcher_within_a_second() {
    let first = TestServer::start(Backend::Postgres).await;
    let second = first.replica().await;
    let token = first.session("root", Role::Admin).await;
    let mut stream = first
        .platform_client(Some(&token))
        .await
        .watch_platform_keys(pb::WatchPlatformKeysRequest {
            include_secret: false,
        })
        .await
        .expect("watch on the first replica")
        .into_inner();
    for _ in 0..9 {
        next(&mut stream).await;
    }
    second
        .platform_client(Some(&token))
        .await
        .update_platform_key(pb::UpdatePlatformKeyRequest {
            name: "openrouter".into(),
            api_key: "sk-or-v1-from-replica-two".into(),
        })
        .await
        .expect("update on the second replica");
    let event = next(&mut stream).await;
    assert_eq!(
        (event.name.as_str(), event.version, event.source.as_str()),
        ("openrouter", 1, "database")
    );
    assert!(event.api_key.is_empty(), "no secret without include_secret");
}

async fn rotation_with_two_keys_can_be_interrupted_and_resumed(backend: Backend) {
    let old_key = KeyRing::generate_key();
    let new_key = KeyRing::generate_key();
    let old = old_key.clone();
    let stub = crate::stub::Provider::start("sk-proj-byok-rotation-01").await;
    let url = stub.url.clone();
    let server = TestServer::start_with(backend, move |s| {
        s.domain.encryption_keys = Some(Secret::new(old));
        s.domain.provider_base_urls = vec![format!("openai={url}")];
        s.domain.outbound_allowed_networks = vec![crate::stub::NETWORK.into()];
    })
    .await;
    // A user's own provider key is rotated with the platform's secrets.
    let user = server.session("alice", Role::User).await;
    server
        .user_client(Some(&user))
        .await
        .put_provider_key(pb::PutProviderKeyRequest {
            provider: "openai".into(),
            key: "sk-proj-byok-rotation-01".into(),
            ..Default::default()
        })
        .await
        .expect("a BYOK key");
    let token = server.session("root", Role::Admin).await;
    let mut admin = server.platform_client(Some(&token)).await;
    let values = [
        ("openrouter", "sk-or-v1-rotation-0001"),
        ("openrouter", "sk-or-v1-rotation-0002"),
        ("anthropic", "sk-ant-rotation-0001"),
    ];
    for (name, value) in values {
        admin
            .update_platform_key(pb::UpdatePlatformKeyRequest {
                name: name.into(),
                api_key: value.into(),
            })
            .await
            .expect("update");
    }
    // Six secrets at rest: two current values, three versions and the BYOK key.
    let both = KeyRing::parse(&format!("{new_key},{old_key}"), "test").expect("ring");
    let first = rotation::rotate(server.db(), &both, 2, Some(2), |_| {})
        .await
        .expect("first, interrupted run");
    assert_eq!(first.iter().map(|p| p.rotated).sum::<usize>(), 2);

    // Mid-rotation, a replica with both keys reads everything.
    let mut during = server.settings.clone();
    during.domain.encryption_keys = Some(Secret::new(format!("{new_key},{old_key}")));
    let replica = TestServer::serve(during, None).await;
    let mut c = replica.platform_client(Some(&token)).await;
    for name in ["openrouter", "anthropic"] {
        c.get_decrypted_platform_key(pb::GetDecryptedPlatformKeyRequest {
            name: name.into(),
            reason: String::new(),
        })
        .await
        .expect("readable during the rotation");
    }

    let rest = rotation::rotate(server.db(), &both, 2, None, |_| {})
        .await
        .expect("resumed run");
    assert_eq!(
        rest.iter().map(|p| p.rotated).sum::<usize>(),
        4,
        "the resumed run does the rest"
    );
    let again = rotation::rotate(server.db(), &both, 2, None, |_| {})
        .await
        .expect("a third run");
    assert_eq!(
        again.iter().map(|p| p.rotated).sum::<usize>(),
        0,
        "nothing is left to rotate"
    );
    assert_eq!(again.iter().map(|p| p.current).sum::<usize>(), 6);

    // With only the new key, every secret and every version still reads.
    let mut after = server.settings.clone();
    after.domain.encryption_keys = Some(Secret::new(new_key));
    let only_new = TestServer::serve(after, None).await;
    let mut c = only_new.platform_client(Some(&token)).await;
    let secret = c
        .get_decrypted_platform_key(pb::GetDecryptedPlatformKeyRequest {
            name: "anthropic".into(),
            reason: String::new(),
        })
        .await
        .expect("readable with only the new key")
        .into_inner();
    assert_eq!(secret.api_key, "sk-ant-rotation-0001");
    c.rollback_platform_key(pb::RollbackPlatformKeyRequest {
        name: "openrouter".into(),
        version: 1,
    })
    .await
    .expect("old versions too");
    let secret = c
        .get_decrypted_platform_key(pb::GetDecryptedPlatformKeyRequest {
            name: "openrouter".into(),
            reason: String::new(),
        })
        .await
        .expect("decrypt")
        .into_inner();
    assert_eq!(secret.api_key, "sk-or-v1-rotation-0001");
    let tested = only_new
        .user_client(Some(&user))
        .await
        .test_provider_key(pb::TestProviderKeyRequest {
            provider: "openai".into(),
        })
        .await
        .expect("the BYOK key decrypts with only the new key")
        .into_inner();
    assert_eq!(tested.status, "valid");
}
