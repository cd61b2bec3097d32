//! Every validation rule of UserKeyService: each bad request gets INVALID_ARGUMENT naming the
//! field, and leaves nothing behind.

use keyhouse_domain::caller::Role;
use keyhouse_proto::v1 as pb;
use tonic::Code;

use crate::on_both_databases;
use crate::support::{Backend, TestServer};

on_both_databases!(
    bad_create_requests_name_the_field_and_store_nothing,
    bad_list_requests_name_the_field,
    malformed_key_ids_are_invalid_for_get_revoke_and_regenerate,
    non_expiring_keys_need_the_server_to_allow_them,
);

fn create(name: &str, days: Option<i32>, permissions: &[&str]) -> pb::CreateKeyRequest {
    pb::CreateKeyRequest {
        name: name.into(),
        expires_in_days: days,
        permissions: permissions.iter().map(|s| (*s).to_owned()).collect(),
        ..Default::default()
    }
}

async fn bad_create_requests_name_the_field_and_store_nothing(backend: Backend) {
    let server = TestServer::start(backend).await;
    let token = server.session("alice", Role::User).await;
    let mut client = server.user_client(Some(&token)).await;
    let long = "x".repeat(256);
    let cases = [
        (create("", None, &[]), "name"),
        (create("   ", None, &[]), "name"),
        (create(&long, None, &[]), "name"),
        (create("tab\tname", None, &[]), "name"),
        (create("k", Some(0), &[]), "expires_in_days"),
        (create("k", Some(-1), &[]), "expires_in_days"),
        (create("k", Some(3651), &[]), "expires_in_days"),
        (create("k", Some(i32::MAX), &[]), "expires_in_days"),
        (create("k", None, &["llm:everything"]), "permissions"),
        (
            create("k", None, &["llm:models", "llm:models"]),
            "permissions",
        ),
        (create("k", None, &[""]), "permissions"),
        (create("k", None, &["LLM:MODELS"]), "permissions"),
    ];
    for (req, field) in cases {
        let shown = format!("{req:?}");
        let status = client.create_key(req).await.expect_err(&shown);
        assert_eq!(status.code(), Code::InvalidArgument, "{shown}");
        assert!(
            status.message().contains(field),
            "{shown}: '{}' does not name {field}",
            status.message()
        );
    }
    let listed = client
        .list_keys(pb::ListKeysRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert!(listed.keys.is_empty(), "a refused create left a row");

    // The limits themselves are accepted.
    let exact = "y".repeat(255);
    for req in [
        create(&exact, Some(1), &[]),
        create("k", Some(3650), &["usage:read"]),
    ] {
        client
            .create_key(req)
            .await
            .expect("a request at the limits");
    }
}

async fn bad_list_requests_name_the_field(backend: Backend) {
    let server = TestServer::start(backend).await;
    let token = server.session("alice", Role::User).await;
    let mut client = server.user_client(Some(&token)).await;
    let cases = [
        (
            pb::ListKeysRequest {
                page_size: 501,
                ..Default::default()
            },
            "page_size",
        ),
        (
            pb::ListKeysRequest {
                page_size: -1,
                ..Default::default()
            },
            "page_size",
        ),
        (
            pb::ListKeysRequest {
                status: "deleted".into(),
                ..Default::default()
            },
            "status",
        ),
        (
            pb::ListKeysRequest {
                page_token: "not-a-token".into(),
                ..Default::default()
            },
            "page_token",
        ),
        (
            pb::ListKeysRequest {
                page_token: "7c".into(),
                ..Default::default()
            },
            "page_token",
        ),
    ];
    for (req, field) in cases {
        let shown = format!("{req:?}");
        let status = client.list_keys(req).await.expect_err(&shown);
        assert_eq!(status.code(), Code::InvalidArgument, "{shown}");
        assert!(
            status.message().contains(field),
            "{shown}: '{}'",
            status.message()
        );
    }
    let page = client
        .list_keys(pb::ListKeysRequest {
            page_size: 500,
            ..Default::default()
        })
        .await;
    assert!(page.is_ok(), "page_size 500 is allowed");
}

async fn malformed_key_ids_are_invalid_for_get_revoke_and_regenerate(backend: Backend) {
    let server = TestServer::start(backend).await;
    let token = server.session("alice", Role::User).await;
    let mut client = server.user_client(Some(&token)).await;
    for bad in [
        "",
        "123",
        "not-a-uuid",
        "uc_0000",
        "00000000-0000-0000-0000-00000000000g",
    ] {
        let results = [
            client
                .get_key(pb::GetKeyRequest { key_id: bad.into() })
                .await
                .map(|_| ()),
            client
                .revoke_key(pb::RevokeKeyRequest { key_id: bad.into() })
                .await
                .map(|_| ()),
            client
                .regenerate_key(pb::RegenerateKeyRequest {
                    key_id: bad.into(),
                    expires_in_days: None,
                })
                .await
                .map(|_| ()),
        ];
        for result in results {
            let status = result.expect_err(bad);
            assert_eq!(
                (status.code(), status.message()),
                (Code::InvalidArgument, "invalid key_id format"),
                "{bad:?}"
            );
        }
    }
    let key = client
        .create_key(create("k", None, &[]))
        .await
        .expect("create")
        .into_inner();
    for days in [0, 3651] {
        let status = client
            .regenerate_key(pb::RegenerateKeyRequest {
                key_id: key.key_id.clone(),
                expires_in_days: Some(days),
            })
            .await
            .expect_err("bad expiry");
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains("expires_in_days"));
    }
}

async fn non_expiring_keys_need_the_server_to_allow_them(backend: Backend) {
    let server =
        TestServer::start_with(backend, |s| s.domain.keys.allow_non_expiring_keys = true).await;
    let token = server.session("alice", Role::User).await;
    let mut client = server.user_client(Some(&token)).await;
    let key = client
        .create_key(create("forever", Some(0), &[]))
        .await
        .expect("allowed here")
        .into_inner();
    assert!(key.expires_at.is_none());
    let listed = client
        .get_key(pb::GetKeyRequest { key_id: key.key_id })
        .await
        .expect("get")
        .into_inner();
    assert!(listed.expires_at.is_none());
    assert_eq!(listed.status, "active");
}
