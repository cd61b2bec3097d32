//! PlatformKeyService over gRPC: the catalog, environment fallback, versions and rollback,
//! audited reads, encryption at rest, live tests against a local stub, and the role matrix.

use keyhouse_domain::caller::Role;
use keyhouse_domain::platform_keys::EnvFallback;
use keyhouse_proto::v1 as pb;
use tonic::Code;

use crate::on_both_databases;
use crate::support::{Backend, PlatformClient, TestServer};

on_both_databases!(
    every_rpc_is_for_admins_only,
    the_database_wins_over_the_environment_and_delete_falls_back,
    each_catalog_entry_enforces_its_format,
    versions_are_kept_and_a_rollback_is_a_new_version,
    a_decrypt_is_audited_with_its_actor_and_the_audit_trail_is_filterable,
    stored_ciphertext_does_not_contain_the_secret,
    test_platform_key_reports_what_the_provider_answers,
    no_audit_event_means_no_secret,
    concurrent_updates_of_one_key_succeed_or_abort_and_never_fail_inside,
);

const OPENROUTER: &str = "sk-or-v1-0123456789abcdef0123456789abcdef";

async fn admin(server: &TestServer) -> PlatformClient {
    let token = server.session("root", Role::Admin).await;
    server.platform_client(Some(&token)).await
}

fn update(name: &str, key: &str) -> pb::UpdatePlatformKeyRequest {
    pb::UpdatePlatformKeyRequest {
        name: name.into(),
        api_key: key.into(),
    }
}

fn name_of(name: &str) -> String {
    name.to_owned()
}

async fn every_rpc_is_for_admins_only(backend: Backend) {
    let server = TestServer::start(backend).await;
    let user = server.session("dave", Role::User).await;
    for (who, token, code, message) in [
        (
            "anonymous",
            None,
            Code::Unauthenticated,
            "not authenticated: no session token",
        ),
        (
            "a user",
            Some(user.as_str()),
            Code::PermissionDenied,
            "Admin access required",
        ),
    ] {
        let mut c = server.platform_client(token).await;
        let n = name_of("openrouter");
        let results = [
            c.list_platform_keys(pb::ListPlatformKeysRequest {})
                .await
                .map(|_| ()),
            c.update_platform_key(update("openrouter", OPENROUTER))
                .await
                .map(|_| ()),
            c.delete_platform_key(pb::DeletePlatformKeyRequest { name: n.clone() })
                .await
                .map(|_| ()),
            c.get_decrypted_platform_key(pb::GetDecryptedPlatformKeyRequest {
                name: n.clone(),
                reason: String::new(),
            })
            .await
            .map(|_| ()),
            c.list_platform_key_versions(pb::ListPlatformKeyVersionsRequest { name: n.clone() })
                .await
                .map(|_| ()),
            c.rollback_platform_key(pb::RollbackPlatformKeyRequest {
                name: n.clone(),
                version: 1,
            })
            .await
            .map(|_| ()),
            c.test_platform_key(pb::TestPlatformKeyRequest {
                name: n.clone(),
                api_key: None,
            })
            .await
            .map(|_| ()),
            c.watch_platform_keys(pb::WatchPlatformKeysRequest {
                include_secret: true,
            })
            .await
            .map(|_| ()),
            c.list_audit_events(pb::ListAuditEventsRequest::default())
                .await
                .map(|_| ()),
        ];
        for (i, result) in results.into_iter().enumerate() {
            let status = result.expect_err(who);
            assert_eq!(
                (status.code(), status.message()),
                (code, message),
                "{who}, RPC #{i}"
            );
        }
    }
    let listed = server.dump_all_tables().await;
    assert!(
        !listed.contains("sk-or-v1"),
        "a refused update stored something"
    );

    // The admin gets through each of them.
    let mut c = admin(&server).await;
    c.list_platform_keys(pb::ListPlatformKeysRequest {})
        .await
        .expect("list");
    c.update_platform_key(update("openrouter", OPENROUTER))
        .await
        .expect("update");
    c.list_platform_key_versions(pb::ListPlatformKeyVersionsRequest {
        name: name_of("openrouter"),
    })
    .await
    .expect("versions");
    c.rollback_platform_key(pb::RollbackPlatformKeyRequest {
        name: name_of("openrouter"),
        version: 1,
    })
    .await
    .expect("rollback");
    c.get_decrypted_platform_key(pb::GetDecryptedPlatformKeyRequest {
        name: name_of("openrouter"),
        reason: "test".into(),
    })
    .await
    .expect("decrypt");
    c.watch_platform_keys(pb::WatchPlatformKeysRequest {
        include_secret: false,
    })
    .await
    .expect("watch");
    c.list_audit_events(pb::ListAuditEventsRequest::default())
        .await
        .expect("audit");
    c.delete_platform_key(pb::DeletePlatformKeyRequest {
        name: name_of("openrouter"),
    })
    .await
    .expect("delete");
}

async fn the_database_wins_over_the_environment_and_delete_falls_back(backend: Backend) {
    let env_value = "sk-or-v1-from-the-environment-0000";
    let server = TestServer::start_with(backend, |s| {
        s.domain.platform_env = Some(EnvFallback::from_lookup(|var| {
            (var == "OPENROUTER_API_KEY").then(|| env_value.to_owned())
        }));
    })
    .await;
    let mut c = admin(&server).await;
    let find = |keys: &[pb::PlatformKey], name: &str| {
        keys.iter()
            .find(|k| k.name == name)
            .cloned()
            .expect("in the list")
    };

    let keys = c
        .list_platform_keys(pb::ListPlatformKeysRequest {})
        .await
        .expect("list")
        .into_inner()
        .keys;
    assert_eq!(keys.len(), 9, "every catalog entry is listed");
    let openrouter = find(&keys, "openrouter");
    assert_eq!(
        (
            openrouter.source.as_str(),
            openrouter.has_key,
            openrouter.version
        ),
        ("environment", true, 0)
    );
    assert_eq!(openrouter.key_preview, "sk-or-v1...0000");
    assert_eq!(openrouter.display_name, "OpenRouter");
    assert_eq!(openrouter.env_var, "OPENROUTER_API_KEY");
    let openai = find(&keys, "openai");
    assert_eq!(
        (
            openai.source.as_str(),
            openai.has_key,
            openai.key_preview.as_str()
        ),
        ("not_set", false, "")
    );

    let updated = c
        .update_platform_key(update("openrouter", OPENROUTER))
        .await
        .expect("update")
        .into_inner();
    assert!(updated.success);
    assert_eq!(updated.message, "OpenRouter updated successfully");
    assert_eq!(updated.key_preview, "sk-or-v1...cdef");
    assert_eq!(updated.version, 1);
    assert!(!updated.next_steps.is_empty());

    let keys = c
        .list_platform_keys(pb::ListPlatformKeysRequest {})
        .await
        .expect("list")
        .into_inner()
        .keys;
    let openrouter = find(&keys, "openrouter");
    assert_eq!(
        (openrouter.source.as_str(), openrouter.version),
        ("database", 1)
    );
    assert_eq!(openrouter.key_preview, "sk-or-v1...cdef");
    assert!(openrouter.last_updated.is_some());

    let secret = c
        .get_decrypted_platform_key(pb::GetDecryptedPlatformKeyRequest {
            name: name_of("openrouter"),
            reason: "rotate LiteLLM".into(),
        })
        .await
        .expect("decrypt")
        .into_inner();
    assert_eq!(
        (secret.api_key.as_str(), secret.source.as_str()),
        (OPENROUTER, "database")
    );
    assert_eq!(secret.warning, "This is the full API key. Keep it secure.");

    let deleted = c
        .delete_platform_key(pb::DeletePlatformKeyRequest {
            name: name_of("openrouter"),
        })
        .await
        .expect("delete")
        .into_inner();
    assert_eq!(deleted.source, "environment");
    let secret = c
        .get_decrypted_platform_key(pb::GetDecryptedPlatformKeyRequest {
            name: name_of("openrouter"),
            reason: String::new(),
        })
        .await
        .expect("decrypt the environment value")
        .into_inner();
    assert_eq!(
        (secret.api_key.as_str(), secret.source.as_str()),
        (env_value, "environment")
    );

    let status = c
        .get_decrypted_platform_key(pb::GetDecryptedPlatformKeyRequest {
            name: name_of("openai"),
            reason: String::new(),
        })
        .await
        .expect_err("not configured");
    assert_eq!(
        (status.code(), status.message()),
        (Code::NotFound, "OpenAI not configured")
    );
    let status = c
        .delete_platform_key(pb::DeletePlatformKeyRequest {
            name: name_of("openai"),
        })
        .await
        .expect_err("nothing stored");
    assert_eq!(status.code(), Code::NotFound);
    let status = c
        .update_platform_key(update("no-such-provider", OPENROUTER))
        .await
        .expect_err("unknown name");
    assert_eq!(status.code(), Code::NotFound);
    assert!(status.message().contains("no-such-provider"));
}

async fn each_catalog_entry_enforces_its_format(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut c = admin(&server).await;
    let cases = [
        (
            "openrouter",
            "sk-or-v1-abcdefghij",
            "sk-abcdefghijklmn",
            "sk-or-v1-...",
        ),
        (
            "provisioning",
            "mu-prov-abcdefghij",
            "prov-abcdefghijkl",
            "mu-prov-...",
        ),
        (
            "litellm",
            "sk-litellm-master-1",
            "master-key-123456",
            "sk-...",
        ),
        (
            "openai",
            "sk-proj-abcdefghij",
            "sk-or-v1-abcdefghij",
            "sk-...",
        ),
        (
            "anthropic",
            "sk-ant-api03-abcdef",
            "sk-abcdefghijklmn",
            "sk-ant-...",
        ),
        (
            "huggingface",
            "hf_abcdefghijklmn",
            "hug_abcdefghijklm",
            "hf_...",
        ),
        (
            "groq",
            "gsk_abcdefghijklmn",
            "gsk-abcdefghijklmn",
            "gsk_...",
        ),
        ("xai", "xai-abcdefghijklmn", "grok-abcdefghijklm", "xai-..."),
        (
            "google",
            "AIzaSyAbcdefghijkl",
            "AIZAsyAbcdefghijkl",
            "AIza...",
        ),
    ];
    for (name, good, bad, hint) in cases {
        let status = c
            .update_platform_key(update(name, bad))
            .await
            .expect_err(bad);
        assert_eq!(status.code(), Code::InvalidArgument, "{name}: {bad}");
        assert!(
            status.message().starts_with("Invalid ")
                && status
                    .message()
                    .contains(&format!("Expected format: {hint}")),
            "{name}: {}",
            status.message()
        );
        let short = &good[..9];
        let status = c
            .update_platform_key(update(name, short))
            .await
            .expect_err(short);
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "{name}: 9 characters are too few"
        );
        let ok = c
            .update_platform_key(update(name, good))
            .await
            .expect(good)
            .into_inner();
        assert_eq!(ok.version, 1, "{name}: only the good value was stored");
    }
    let status = c
        .update_platform_key(update("openrouter", ""))
        .await
        .expect_err("empty");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        status.message(),
        "Invalid OpenRouter API key format. Expected format: sk-or-v1-... (at least 10 characters)"
    );
    let status = c
        .update_platform_key(update("", OPENROUTER))
        .await
        .expect_err("no name");
    assert_eq!(
        (status.code(), status.message()),
        (Code::InvalidArgument, "name is required")
    );
}

async fn versions_are_kept_and_a_rollback_is_a_new_version(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut c = admin(&server).await;
    let values = [
        "sk-or-v1-first-000000001",
        "sk-or-v1-second-00000002",
        "sk-or-v1-third-000000003",
    ];
    for v in values {
        c.update_platform_key(update("openrouter", v))
            .await
            .expect("update");
    }
    let versions = c
        .list_platform_key_versions(pb::ListPlatformKeyVersionsRequest {
            name: name_of("openrouter"),
        })
        .await
        .expect("versions")
        .into_inner()
        .versions;
    let numbers: Vec<_> = versions
        .iter()
        .map(|v| (v.version, v.is_current, v.key_preview.as_str()))
        .collect();
    assert_eq!(
        numbers,
        [
            (3, true, "sk-or-v1...0003"),
            (2, false, "sk-or-v1...0002"),
            (1, false, "sk-or-v1...0001")
        ]
    );
    assert!(
        versions
            .iter()
            .all(|v| v.created_by == "root" && v.created_at.is_some())
    );

    let rolled = c
        .rollback_platform_key(pb::RollbackPlatformKeyRequest {
            name: name_of("openrouter"),
            version: 1,
        })
        .await
        .expect("rollback")
        .into_inner();
    assert_eq!(
        (rolled.version, rolled.key_preview.as_str()),
        (4, "sk-or-v1...0001")
    );
    let secret = c
        .get_decrypted_platform_key(pb::GetDecryptedPlatformKeyRequest {
            name: name_of("openrouter"),
            reason: String::new(),
        })
        .await
        .expect("decrypt")
        .into_inner();
    assert_eq!(secret.api_key, values[0]);
    let versions = c
        .list_platform_key_versions(pb::ListPlatformKeyVersionsRequest {
            name: name_of("openrouter"),
        })
        .await
        .expect("versions")
        .into_inner()
        .versions;
    assert_eq!(
        (
            versions[0].version,
            versions[0].rolled_back_from,
            versions[0].is_current
        ),
        (4, 1, true)
    );
    assert_eq!(versions.len(), 4);

    let status = c
        .rollback_platform_key(pb::RollbackPlatformKeyRequest {
            name: name_of("openrouter"),
            version: 99,
        })
        .await
        .expect_err("no such version");
    assert_eq!(status.code(), Code::NotFound);
}

async fn a_decrypt_is_audited_with_its_actor_and_the_audit_trail_is_filterable(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut c = admin(&server).await;
    c.update_platform_key(update("openrouter", OPENROUTER))
        .await
        .expect("update");
    c.get_decrypted_platform_key(pb::GetDecryptedPlatformKeyRequest {
        name: name_of("openrouter"),
        reason: "configure LiteLLM".into(),
    })
    .await
    .expect("decrypt");

    let events = c
        .list_audit_events(pb::ListAuditEventsRequest {
            action: "platform_key.decrypt".into(),
            ..Default::default()
        })
        .await
        .expect("audit")
        .into_inner()
        .events;
    assert_eq!(events.len(), 1);
    let event = &events[0];
    assert_eq!(
        (event.actor.as_str(), event.target.as_str()),
        ("root", "openrouter")
    );
    assert!(!event.request_id.is_empty());
    let details: serde_json::Value =
        serde_json::from_str(&event.details_json).expect("JSON details");
    assert_eq!(details["reason"], "configure LiteLLM");
    assert_eq!(details["source"], "database");

    let all = c
        .list_audit_events(pb::ListAuditEventsRequest::default())
        .await
        .expect("audit")
        .into_inner()
        .events;
    assert!(
        all.iter().all(|e| !e.details_json.contains(OPENROUTER)),
        "an audit event holds the secret"
    );
    let actions: Vec<_> = all.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(
        actions,
        ["platform_key.decrypt", "platform_key.update"],
        "newest first"
    );

    let page = c
        .list_audit_events(pb::ListAuditEventsRequest {
            page_size: 1,
            ..Default::default()
        })
        .await
        .expect("page")
        .into_inner();
    assert_eq!(page.events.len(), 1);
    let next = c
        .list_audit_events(pb::ListAuditEventsRequest {
            page_size: 1,
            page_token: page.next_page_token,
            ..Default::default()
        })
        .await
        .expect("next page")
        .into_inner();
    assert_eq!(next.events[0].action, "platform_key.update");
    assert!(next.next_page_token.is_empty());

    let none = c
        .list_audit_events(pb::ListAuditEventsRequest {
            actor: "someone-else".into(),
            ..Default::default()
        })
        .await
        .expect("audit");
    assert!(none.into_inner().events.is_empty());
    let future = prost_types::Timestamp {
        seconds: chrono::Utc::now().timestamp() + 3600,
        nanos: 0,
    };
    let none = c
        .list_audit_events(pb::ListAuditEventsRequest {
            since: Some(future),
            ..Default::default()
        })
        .await
        .expect("audit");
    assert!(none.into_inner().events.is_empty());
}

async fn stored_ciphertext_does_not_contain_the_secret(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut c = admin(&server).await;
    c.update_platform_key(update("openrouter", OPENROUTER))
        .await
        .expect("update");
    c.update_platform_key(update("anthropic", "sk-ant-api03-secretsecretsecret"))
        .await
        .expect("update");
    let dump = server.dump_all_tables().await;
    assert!(
        dump.contains("sk-or-v1...cdef"),
        "the dump holds the stored preview, so it saw the rows"
    );
    assert!(!dump.contains(OPENROUTER));
    assert!(!dump.contains("secretsecretsecret"));
}

async fn test_platform_key_reports_what_the_provider_answers(backend: Backend) {
    let stub = crate::stub::Provider::start("sk-or-v1-good-key-000000").await;
    let url = stub.url.clone();
    let server = TestServer::start_with(backend, move |s| {
        s.domain.provider_base_urls = vec![format!("openrouter={url}")];
        s.domain.outbound_allowed_networks = vec![crate::stub::NETWORK.into()];
    })
    .await;
    let mut c = admin(&server).await;

    let status = c
        .test_platform_key(pb::TestPlatformKeyRequest {
            name: name_of("openrouter"),
            api_key: None,
        })
        .await
        .expect_err("nothing set");
    assert_eq!(
        (status.code(), status.message()),
        (Code::NotFound, "OpenRouter not configured")
    );

    c.update_platform_key(update("openrouter", "sk-or-v1-good-key-000000"))
        .await
        .expect("update");
    let ok = c
        .test_platform_key(pb::TestPlatformKeyRequest {
            name: name_of("openrouter"),
            api_key: None,
        })
        .await
        .expect("test")
        .into_inner();
    assert!(ok.ok, "{ok:?}");
    assert_eq!(ok.status_code, 200);
    assert_eq!(
        stub.last_path().as_deref(),
        Some("/api/v1/key"),
        "OpenRouter's key endpoint was called"
    );

    c.update_platform_key(update("openrouter", "sk-or-v1-revoked-key-0000"))
        .await
        .expect("update");
    let rejected = c
        .test_platform_key(pb::TestPlatformKeyRequest {
            name: name_of("openrouter"),
            api_key: None,
        })
        .await
        .expect("test")
        .into_inner();
    assert!(!rejected.ok);
    assert_eq!(rejected.status_code, 401);
    assert!(rejected.detail.contains("rejected"), "{}", rejected.detail);

    c.update_platform_key(update("provisioning", "mu-prov-0123456789"))
        .await
        .expect("update");
    let status = c
        .test_platform_key(pb::TestPlatformKeyRequest {
            name: name_of("provisioning"),
            api_key: None,
        })
        .await
        .expect_err("no live test");
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(status.message().contains("no live test"));
}

async fn no_audit_event_means_no_secret(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut c = admin(&server).await;
    c.update_platform_key(update("openrouter", OPENROUTER))
        .await
        .expect("update");
    // The audit trail becomes unwritable.
    server.exec("DROP TABLE audit_events").await;
    let status = c
        .get_decrypted_platform_key(pb::GetDecryptedPlatformKeyRequest {
            name: name_of("openrouter"),
            reason: String::new(),
        })
        .await
        .expect_err("the read cannot be audited");
    assert_eq!(
        (status.code(), status.message()),
        (Code::Internal, "internal error")
    );
    let status = c
        .update_platform_key(update("openrouter", "sk-or-v1-never-stored-000"))
        .await
        .expect_err("nor a change");
    assert_eq!(status.code(), Code::Internal);
    let versions = c
        .list_platform_key_versions(pb::ListPlatformKeyVersionsRequest {
            name: name_of("openrouter"),
        })
        .await
        .expect("versions");
    assert_eq!(
        versions.into_inner().versions.len(),
        1,
        "the unaudited change was rolled back"
    );
}

async fn concurrent_updates_of_one_key_succeed_or_abort_and_never_fail_inside(backend: Backend) {
    let server = TestServer::start(backend).await;
    let client = admin(&server).await;
    let updates: Vec<_> = (0..8)
        .map(|i| {
            let mut c = client.clone();
            tokio::spawn(async move {
                c.update_platform_key(update(
                    "openrouter",
                    &format!("sk-or-v1-concurrent-{i:04}-0123456789abcdef"),
                ))
                .await
            })
        })
        .collect();
    let mut stored = 0;
    for u in updates {
        match u.await.expect("join") {
            Ok(_) => stored += 1,
            Err(status) => assert_eq!(
                status.code(),
                Code::Aborted,
                "a lost race is ABORTED, not an internal error: {status:?}"
            ),
        }
    }
    assert!(stored >= 1, "at least one update wins");
    let versions = client
        .clone()
        .list_platform_key_versions(pb::ListPlatformKeyVersionsRequest {
            name: "openrouter".into(),
        })
        .await
        .expect("versions")
        .into_inner()
        .versions;
    assert_eq!(
        versions.len(),
        stored,
        "one version per acknowledged update"
    );
}
