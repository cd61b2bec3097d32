//! Sessions: missing, unknown and expired tokens are refused before anything else happens.

use keyhouse_domain::caller::Role;
use keyhouse_proto::v1 as pb;
use tonic::Code;

use crate::on_both_databases;
use crate::support::{Backend, TestServer};

on_both_databases!(
    calls_without_a_session_are_unauthenticated,
    unknown_and_expired_sessions_are_refused,
    the_session_cookie_works_like_a_bearer_token,
    a_deleted_session_ends_at_once_without_the_cache_and_when_its_entry_lapses_with_it,
);

async fn a_deleted_session_ends_at_once_without_the_cache_and_when_its_entry_lapses_with_it(
    backend: Backend,
) {
    let uncached = TestServer::start_with(backend, |s| s.session_cache_secs = 0).await;
    let token = uncached.session("alice", Role::User).await.to_string();
    assert_eq!(list(&uncached, &token).await, Ok(()));
    uncached.exec("DELETE FROM sessions").await;
    assert_eq!(
        list(&uncached, &token).await,
        Err(Code::Unauthenticated),
        "without the cache a deleted session ends at once"
    );

    let cached = TestServer::start_with(backend, |s| s.session_cache_secs = 1).await;
    let token = cached.session("bob", Role::User).await.to_string();
    assert_eq!(list(&cached, &token).await, Ok(()));
    cached.exec("DELETE FROM sessions").await;
    assert_eq!(
        list(&cached, &token).await,
        Ok(()),
        "remembered for its entry's second, as the README says"
    );
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(list(&cached, &token).await, Err(Code::Unauthenticated));
}

async fn calls_without_a_session_are_unauthenticated(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut client = server.user_client(None).await;
    let results = [
        client
            .create_key(pb::CreateKeyRequest {
                name: "k".into(),
                ..Default::default()
            })
            .await
            .map(|_| ()),
        client
            .list_keys(pb::ListKeysRequest::default())
            .await
            .map(|_| ()),
        client
            .get_key(pb::GetKeyRequest {
                key_id: uuid::Uuid::new_v4().to_string(),
            })
            .await
            .map(|_| ()),
        client
            .revoke_key(pb::RevokeKeyRequest { key_id: "x".into() })
            .await
            .map(|_| ()),
        client
            .regenerate_key(pb::RegenerateKeyRequest::default())
            .await
            .map(|_| ()),
    ];
    for result in results {
        let status = result.expect_err("no session");
        assert_eq!(
            (status.code(), status.message()),
            (Code::Unauthenticated, "not authenticated: no session token")
        );
    }
}

async fn unknown_and_expired_sessions_are_refused(backend: Backend) {
    let server = TestServer::start(backend).await;
    let expired = server.session("alice", Role::User).await;
    server
        .exec("UPDATE sessions SET expires_at = created_at")
        .await;
    for token in ["ks_not_a_real_session", expired.as_str()] {
        let mut client = server.user_client(Some(token)).await;
        let status = client
            .list_keys(pb::ListKeysRequest::default())
            .await
            .expect_err("refused");
        assert_eq!(
            (status.code(), status.message()),
            (Code::Unauthenticated, "invalid or expired session")
        );
        let status = client
            .create_key(pb::CreateKeyRequest {
                name: "k".into(),
                ..Default::default()
            })
            .await
            .expect_err("refused");
        assert_eq!(status.code(), Code::Unauthenticated);
    }
    let rows = server.dump_all_tables().await;
    assert!(!rows.contains("uc_"), "a refused create stored a key");
}

async fn the_session_cookie_works_like_a_bearer_token(backend: Backend) {
    let server = TestServer::start(backend).await;
    let token = server.session("carol", Role::User).await;
    let mut client = keyhouse_proto::v1::user_key_service_client::UserKeyServiceClient::new(
        server.channel().await,
    );
    let mut req = tonic::Request::new(pb::CreateKeyRequest {
        name: "from a browser".into(),
        ..Default::default()
    });
    let cookie = format!("csrf_token=abc; session_token={token}");
    req.metadata_mut()
        .insert("cookie", cookie.parse().expect("ascii"));
    req.metadata_mut()
        .insert("x-csrf-token", "abc".parse().expect("ascii"));
    let key = client
        .create_key(req)
        .await
        .expect("cookie session")
        .into_inner();
    assert_eq!(key.key_name, "from a browser");

    // A cookie-authenticated call without the CSRF header, or with another value, is refused
    // before it runs: another site's page cannot act with the browser's cookie.
    for presented in [None, Some("not-abc")] {
        let mut req = tonic::Request::new(pb::CreateKeyRequest {
            name: "forged".into(),
            ..Default::default()
        });
        req.metadata_mut()
            .insert("cookie", cookie.parse().expect("ascii"));
        if let Some(value) = presented {
            req.metadata_mut()
                .insert("x-csrf-token", value.parse().expect("ascii"));
        }
        let refused = client.create_key(req).await.expect_err("no CSRF token");
        assert_eq!(refused.code(), Code::PermissionDenied);
        assert!(refused.message().contains("X-CSRF-Token"), "{refused:?}");
    }
    let listed = server
        .user_client(Some(&token))
        .await
        .list_keys(pb::ListKeysRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert_eq!(listed.keys.len(), 1, "a refused call made a key");
}

/// ListKeys with a session token: Ok, or the status code it failed with.
async fn list(server: &TestServer, token: &str) -> Result<(), Code> {
    server
        .user_client(Some(token))
        .await
        .list_keys(pb::ListKeysRequest::default())
        .await
        .map(|_| ())
        .map_err(|s| s.code())
}
