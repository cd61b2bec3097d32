//! The README's walkthrough against the real `keyhouse` binary with trace-level logging: the
//! log must hold neither an API key nor a session token.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Duration;

use keyhouse_proto::v1 as pb;

use crate::support::TempDir;

const BIN: &str = env!("CARGO_BIN_EXE_keyhouse");

fn keyhouse(db_url: &str, log: &std::path::Path) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env("DATABASE_URL", db_url)
        .env("KEYHOUSE_LOG", "trace")
        .env("KEYHOUSE_LOG_FORMAT", "json")
        .env("KEYHOUSE_BCRYPT_COST", "4")
        .env("KEYHOUSE_LISTEN", "127.0.0.1:0")
        .stdin(Stdio::null())
        .stderr(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .expect("log file"),
        );
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_walkthrough_at_trace_level_logs_no_key_and_no_session_token() {
    let dir = TempDir::new();
    let log = dir.0.join("keyhouse.log");
    let db_url = format!("sqlite://{}/keyhouse.db?mode=rwc", dir.0.display());

    let migrate = keyhouse(&db_url, &log)
        .arg("migrate")
        .output()
        .expect("keyhouse migrate");
    assert!(migrate.status.success());

    let created = keyhouse(&db_url, &log)
        .args([
            "session",
            "create",
            "--user",
            "alice",
            "--email",
            "alice@example.com",
            "--role",
            "user",
            "--ttl",
            "1h",
        ])
        .output()
        .expect("keyhouse session create");
    assert!(created.status.success());
    let stdout = String::from_utf8(created.stdout).expect("utf-8");
    let token = stdout.trim_end().to_owned();
    assert!(
        token.starts_with("ks_") && !token.contains('\n'),
        "stdout is only the token: {stdout:?}"
    );

    let mut server = keyhouse(&db_url, &log)
        .arg("serve")
        .stdout(Stdio::null())
        .spawn()
        .expect("keyhouse serve");
    let addr = wait_for_address(&log).await;

    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let auth = format!("Bearer {token}");
    let mut client = pb::user_key_service_client::UserKeyServiceClient::with_interceptor(
        channel,
        move |mut req: tonic::Request<()>| {
            req.metadata_mut()
                .insert("authorization", auth.parse().expect("ascii"));
            Ok(req)
        },
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

    // SIGTERM, as Kubernetes sends it: the server drains and exits cleanly.
    let killed = Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let status = tokio::task::spawn_blocking(move || server.wait())
        .await
        .expect("join")
        .expect("wait");
    assert!(
        status.success(),
        "keyhouse serve exits 0 on SIGTERM, got {status}"
    );

    let mut text = String::new();
    std::fs::File::open(&log)
        .expect("log")
        .read_to_string(&mut text)
        .expect("read log");
    assert!(
        text.contains("\"level\":\"TRACE\""),
        "the log is at trace level"
    );
    assert!(
        text.contains("API key created"),
        "the log covers the walkthrough"
    );
    for (what, secret) in [
        ("the first key", &key.api_key),
        ("the regenerated key", &new.api_key),
        ("the session token", &token),
    ] {
        assert!(!text.contains(secret.as_str()), "{what} is in the log");
        assert!(
            !text.contains(&secret[15..]),
            "part of {what} is in the log"
        );
    }
}

async fn wait_for_address(log: &std::path::Path) -> String {
    for _ in 0..400 {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(line) = text
            .lines()
            .find(|l| l.contains("serving gRPC, grpc-web and REST"))
        {
            let value: serde_json::Value = serde_json::from_str(line).expect("a JSON log line");
            return value["fields"]["addr"]
                .as_str()
                .expect("addr field")
                .to_owned();
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!(
        "keyhouse serve did not start; log:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}
