//! UserKeyService over gRPC: the life of a key, ownership, statuses, what storage holds.

use keyhouse_domain::caller::Role;
use keyhouse_proto::v1 as pb;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use tonic::Code;

use crate::on_both_databases;
use crate::support::{Backend, TestServer};

on_both_databases!(
    a_key_goes_through_create_list_get_revoke_and_regenerate,
    another_users_key_is_not_found_for_every_operation,
    statuses_are_active_expired_and_revoked,
    the_full_key_is_stored_nowhere_and_the_stored_hash_verifies_it,
    after_regenerate_only_the_new_secret_matches,
    a_revoked_key_cannot_be_regenerated,
    lists_are_paginated_newest_first,
    every_change_writes_an_audit_event,
);

async fn create(client: &mut crate::support::UserClient, name: &str) -> pb::IssuedKey {
    client
        .create_key(pb::CreateKeyRequest {
            name: name.into(),
            ..Default::default()
        })
        .await
        .expect("create a key")
        .into_inner()
}

async fn a_key_goes_through_create_list_get_revoke_and_regenerate(backend: Backend) {
    let server = TestServer::start(backend).await;
    let token = server.session("alice", Role::User).await;
    let mut client = server.user_client(Some(&token)).await;

    let created = client
        .create_key(pb::CreateKeyRequest {
            name: "  laptop  ".into(),
            expires_in_days: Some(30),
            permissions: vec!["llm:inference".into(), "keys:read".into()],
            ..Default::default()
        })
        .await
        .expect("create")
        .into_inner();
    assert_eq!(created.key_name, "laptop", "the name is trimmed");
    assert!(created.api_key.starts_with("uc_") && created.api_key.len() == 67);
    assert_eq!(
        created.key_preview,
        format!("{}...{}", &created.api_key[..8], &created.api_key[63..])
    );
    assert_eq!(created.permissions, ["llm:inference", "keys:read"]);
    assert_eq!(
        created.warning,
        "Save this API key now. You won't be able to see it again."
    );
    let created_at = created.created_at.expect("created_at").seconds;
    let expires_at = created.expires_at.expect("expires_at").seconds;
    assert_eq!(expires_at - created_at, 30 * 86_400);

    let listed = client
        .list_keys(pb::ListKeysRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert_eq!(listed.keys.len(), 1);
    assert_eq!(listed.next_page_token, "");
    let item = &listed.keys[0];
    assert_eq!(item.key_id, created.key_id);
    assert_eq!(
        item.key_preview, created.key_preview,
        "list shows the same preview as create"
    );
    assert_eq!(item.status, "active");
    assert!(item.is_active);
    assert!(item.last_used.is_none());

    let got = client
        .get_key(pb::GetKeyRequest {
            key_id: created.key_id.clone(),
        })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(&got, item);

    let revoked = client
        .revoke_key(pb::RevokeKeyRequest {
            key_id: created.key_id.clone(),
        })
        .await
        .expect("revoke")
        .into_inner();
    assert!(revoked.success);
    assert_eq!(revoked.message, "API key revoked successfully");
    assert_eq!(revoked.key_id, created.key_id);
    let again = client
        .revoke_key(pb::RevokeKeyRequest {
            key_id: created.key_id.clone(),
        })
        .await;
    assert!(again.expect("revoking twice succeeds").into_inner().success);
    let got = client
        .get_key(pb::GetKeyRequest {
            key_id: created.key_id.clone(),
        })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(got.status, "revoked");
    assert!(!got.is_active);

    let second = create(&mut client, "server").await;
    let regenerated = client
        .regenerate_key(pb::RegenerateKeyRequest {
            key_id: second.key_id.clone(),
            expires_in_days: None,
        })
        .await
        .expect("regenerate")
        .into_inner();
    assert_eq!(regenerated.key_id, second.key_id);
    assert_eq!(regenerated.key_name, "server");
    assert_eq!(regenerated.permissions, second.permissions);
    assert_ne!(regenerated.api_key, second.api_key);
    assert_eq!(
        regenerated.warning,
        "Key regenerated! Save this new API key now. The old key is now invalid."
    );
    let new_expiry =
        regenerated.expires_at.expect("expiry").seconds - chrono::Utc::now().timestamp();
    assert!(
        (89 * 86_400..=90 * 86_400).contains(&new_expiry),
        "regenerate defaults to 90 days"
    );
    let got = client
        .get_key(pb::GetKeyRequest {
            key_id: second.key_id.clone(),
        })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(got.key_preview, regenerated.key_preview);
}

async fn another_users_key_is_not_found_for_every_operation(backend: Backend) {
    let server = TestServer::start(backend).await;
    let alice = server.session("alice", Role::User).await;
    let bob = server.session("bob", Role::User).await;
    let mut alice_client = server.user_client(Some(&alice)).await;
    let mut bob_client = server.user_client(Some(&bob)).await;
    let key = create(&mut alice_client, "alice's").await;

    let listed = bob_client
        .list_keys(pb::ListKeysRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert!(listed.keys.is_empty(), "bob sees none of alice's keys");

    let id = key.key_id.clone();
    let errors = [
        bob_client
            .get_key(pb::GetKeyRequest { key_id: id.clone() })
            .await
            .map(|_| ()),
        bob_client
            .revoke_key(pb::RevokeKeyRequest { key_id: id.clone() })
            .await
            .map(|_| ()),
        bob_client
            .regenerate_key(pb::RegenerateKeyRequest {
                key_id: id.clone(),
                expires_in_days: None,
            })
            .await
            .map(|_| ()),
    ];
    for result in errors {
        let status = result.expect_err("bob may not touch alice's key");
        assert_eq!(status.code(), Code::NotFound);
        assert_eq!(status.message(), "API key not found");
    }
    // And the same answer as for a key that does not exist at all.
    let status = bob_client
        .get_key(pb::GetKeyRequest {
            key_id: uuid::Uuid::new_v4().to_string(),
        })
        .await
        .expect_err("unknown");
    assert_eq!(
        (status.code(), status.message()),
        (Code::NotFound, "API key not found")
    );

    let still = alice_client
        .get_key(pb::GetKeyRequest { key_id: id })
        .await
        .expect("alice's key")
        .into_inner();
    assert_eq!(still.status, "active", "bob's attempts changed nothing");
}

async fn statuses_are_active_expired_and_revoked(backend: Backend) {
    let server = TestServer::start(backend).await;
    let token = server.session("alice", Role::User).await;
    let mut client = server.user_client(Some(&token)).await;
    let active = create(&mut client, "active").await;
    let expired = create(&mut client, "expired").await;
    let revoked = create(&mut client, "revoked").await;
    client
        .revoke_key(pb::RevokeKeyRequest {
            key_id: revoked.key_id.clone(),
        })
        .await
        .expect("revoke");
    // Time travel for one row: its expiry moves into the past.
    let past = chrono::Utc::now() - chrono::Duration::hours(1);
    keyhouse_domain::entities::user_api_keys::Entity::update_many()
        .col_expr(
            keyhouse_domain::entities::user_api_keys::Column::ExpiresAt,
            sea_orm::sea_query::Expr::value(past),
        )
        .filter(
            keyhouse_domain::entities::user_api_keys::Column::Id
                .eq(uuid::Uuid::parse_str(&expired.key_id).expect("uuid")),
        )
        .exec(server.db())
        .await
        .expect("expire the key");

    let all = client
        .list_keys(pb::ListKeysRequest::default())
        .await
        .expect("list")
        .into_inner()
        .keys;
    let status_of = |id: &str| {
        all.iter()
            .find(|k| k.key_id == id)
            .map(|k| k.status.clone())
    };
    assert_eq!(status_of(&active.key_id).as_deref(), Some("active"));
    assert_eq!(status_of(&expired.key_id).as_deref(), Some("expired"));
    assert_eq!(status_of(&revoked.key_id).as_deref(), Some("revoked"));

    for (status, expected) in [
        ("active", &active),
        ("expired", &expired),
        ("revoked", &revoked),
    ] {
        let keys = client
            .list_keys(pb::ListKeysRequest {
                status: status.into(),
                ..Default::default()
            })
            .await
            .expect("filtered list")
            .into_inner()
            .keys;
        let ids: Vec<_> = keys.iter().map(|k| k.key_id.as_str()).collect();
        assert_eq!(ids, [expected.key_id.as_str()], "filter {status}");
    }
}

async fn the_full_key_is_stored_nowhere_and_the_stored_hash_verifies_it(backend: Backend) {
    let server = TestServer::start(backend).await;
    let token = server.session("alice", Role::User).await;
    let mut client = server.user_client(Some(&token)).await;
    let key = create(&mut client, "secret").await;

    let dump = server.dump_all_tables().await;
    assert!(
        dump.contains(&key.api_key[..15]),
        "the dump holds the stored lookup prefix, so it saw the row"
    );
    assert!(!dump.contains(&key.api_key), "the full key is in storage");
    assert!(
        !dump.contains(&key.api_key[15..]),
        "the secret part of the key is in storage"
    );
    assert!(!dump.contains(&token), "the session token is in storage");

    let row = stored(&server, &key.key_id).await;
    assert!(bcrypt::verify(&key.api_key, &row.key_hash).expect("a bcrypt hash"));
    assert_eq!(row.key_prefix, &key.api_key[..15]);
}

async fn after_regenerate_only_the_new_secret_matches(backend: Backend) {
    let server = TestServer::start(backend).await;
    let token = server.session("alice", Role::User).await;
    let mut client = server.user_client(Some(&token)).await;
    let old = create(&mut client, "rotating").await;
    let new = client
        .regenerate_key(pb::RegenerateKeyRequest {
            key_id: old.key_id.clone(),
            expires_in_days: Some(7),
        })
        .await
        .expect("regenerate")
        .into_inner();
    let row = stored(&server, &old.key_id).await;
    assert!(
        !bcrypt::verify(&old.api_key, &row.key_hash).expect("hash"),
        "the old secret still matches"
    );
    assert!(bcrypt::verify(&new.api_key, &row.key_hash).expect("hash"));
    assert_eq!(row.key_prefix, &new.api_key[..15]);
    let days = (new.expires_at.expect("expiry").seconds - chrono::Utc::now().timestamp()) as f64
        / 86_400.0;
    assert!(
        (6.9..=7.0).contains(&days),
        "expires_in_days applies to the new secret: {days}"
    );
}

async fn a_revoked_key_cannot_be_regenerated(backend: Backend) {
    let server = TestServer::start(backend).await;
    let token = server.session("alice", Role::User).await;
    let mut client = server.user_client(Some(&token)).await;
    let key = create(&mut client, "gone").await;
    client
        .revoke_key(pb::RevokeKeyRequest {
            key_id: key.key_id.clone(),
        })
        .await
        .expect("revoke");
    let status = client
        .regenerate_key(pb::RegenerateKeyRequest {
            key_id: key.key_id.clone(),
            expires_in_days: None,
        })
        .await
        .expect_err("regenerating a revoked key");
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert_eq!(
        status.message(),
        "Cannot regenerate a revoked key. Generate a new key instead."
    );
    let row = stored(&server, &key.key_id).await;
    assert!(
        bcrypt::verify(&key.api_key, &row.key_hash).expect("hash"),
        "the row is untouched"
    );
}

async fn lists_are_paginated_newest_first(backend: Backend) {
    let server = TestServer::start(backend).await;
    let token = server.session("alice", Role::User).await;
    let mut client = server.user_client(Some(&token)).await;
    let mut made = Vec::new();
    for i in 0..5 {
        made.push(create(&mut client, &format!("key {i}")).await.key_id);
    }
    made.reverse();

    let mut seen = Vec::new();
    let mut page_token = String::new();
    let mut pages = 0;
    loop {
        let page = client
            .list_keys(pb::ListKeysRequest {
                page_size: 2,
                page_token: page_token.clone(),
                ..Default::default()
            })
            .await
            .expect("page")
            .into_inner();
        pages += 1;
        assert!(page.keys.len() <= 2);
        seen.extend(page.keys.into_iter().map(|k| k.key_id));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, made, "every key once, newest first");
}

async fn every_change_writes_an_audit_event(backend: Backend) {
    use keyhouse_domain::entities::audit_events;
    let server = TestServer::start(backend).await;
    let token = server.session("alice", Role::User).await;
    let mut client = server.user_client(Some(&token)).await;
    let key = create(&mut client, "audited").await;
    client
        .regenerate_key(pb::RegenerateKeyRequest {
            key_id: key.key_id.clone(),
            expires_in_days: None,
        })
        .await
        .expect("regenerate");
    client
        .revoke_key(pb::RevokeKeyRequest {
            key_id: key.key_id.clone(),
        })
        .await
        .expect("revoke");
    client
        .revoke_key(pb::RevokeKeyRequest {
            key_id: key.key_id.clone(),
        })
        .await
        .expect("revoke again");

    let events = audit_events::Entity::find()
        .filter(audit_events::Column::Target.eq(key.key_id.clone()))
        .all(server.db())
        .await
        .expect("audit events");
    let mut actions: Vec<_> = events.iter().map(|e| e.action.as_str()).collect();
    actions.sort_unstable();
    assert_eq!(
        actions,
        ["user_key.create", "user_key.regenerate", "user_key.revoke"],
        "a repeated revoke changes nothing"
    );
    assert!(
        events
            .iter()
            .all(|e| e.actor == "alice" && !e.request_id.is_empty())
    );
}

async fn stored(
    server: &TestServer,
    key_id: &str,
) -> keyhouse_domain::entities::user_api_keys::Model {
    keyhouse_domain::entities::user_api_keys::Entity::find_by_id(
        uuid::Uuid::parse_str(key_id).expect("uuid"),
    )
    .one(server.db())
    .await
    .expect("query")
    .expect("the row exists")
}
