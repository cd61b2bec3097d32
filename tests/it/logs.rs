//! The README's walkthroughs against the real `keyhouse` binary with trace-level logging: the
//! log must hold no API key, no session token and no platform secret.

use keyhouse_proto::v1 as pb;
use pb::platform_key_service_client::PlatformKeyServiceClient;
use pb::user_key_service_client::UserKeyServiceClient;

use crate::binary::{self, Keyhouse};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_walkthrough_at_trace_level_logs_no_key_no_token_and_no_secret() {
    let kh = Keyhouse::on_sqlite();
    kh.run(&["migrate"]);
    let token = kh.session("alice", "user");
    assert!(
        token.starts_with("ks_") && !token.contains('\n'),
        "stdout is only the token: {token:?}"
    );
    let admin = kh.session("root", "admin");

    let (server, addr) = kh.serve().await;
    let mut client = UserKeyServiceClient::with_interceptor(
        binary::channel(&addr).await,
        binary::bearer(&token),
    );
    let key = client
        .create_key(pb::CreateKeyRequest {
            name: "walkthrough".into(),
            ..Default::default()
        })
        .await
        .expect("create")
        .into_inner();
    client
        .list_keys(pb::ListKeysRequest::default())
        .await
        .expect("list");
    client
        .get_key(pb::GetKeyRequest {
            key_id: key.key_id.clone(),
        })
        .await
        .expect("get");
    let new = client
        .regenerate_key(pb::RegenerateKeyRequest {
            key_id: key.key_id.clone(),
            expires_in_days: Some(30),
        })
        .await
        .expect("regenerate")
        .into_inner();
    client
        .revoke_key(pb::RevokeKeyRequest {
            key_id: key.key_id.clone(),
        })
        .await
        .expect("revoke");

    let platform_secret = "sk-or-v1-trace-level-secret-0001";
    let mut platform = PlatformKeyServiceClient::with_interceptor(
        binary::channel(&addr).await,
        binary::bearer(&admin),
    );
    platform
        .update_platform_key(pb::UpdatePlatformKeyRequest {
            name: "openrouter".into(),
            api_key: platform_secret.into(),
        })
        .await
        .expect("update");
    let read = platform
        .get_decrypted_platform_key(pb::GetDecryptedPlatformKeyRequest {
            name: "openrouter".into(),
            reason: "walkthrough".into(),
        })
        .await
        .expect("decrypt")
        .into_inner();
    assert_eq!(read.api_key, platform_secret);
    binary::stop(server).await;

    let text = kh.log_text();
    assert!(
        text.contains("\"level\":\"TRACE\""),
        "the log is at trace level"
    );
    assert!(
        text.contains("API key created") && text.contains("platform key decrypted"),
        "the log covers the walkthrough"
    );
    for (what, secret) in [
        ("the first key", key.api_key.as_str()),
        ("the regenerated key", new.api_key.as_str()),
        ("the user's session token", token.as_str()),
        ("the admin's session token", admin.as_str()),
        ("the platform secret", platform_secret),
    ] {
        assert!(!text.contains(secret), "{what} is in the log");
        assert!(
            !text.contains(&secret[12..]),
            "part of {what} is in the log"
        );
    }
}
