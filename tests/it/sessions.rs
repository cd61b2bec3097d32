//! Sessions end when an operator says so and when their time is up: `keyhouse session revoke`
//! by token, by user or by id; `session list` shows them without their tokens; `session create`
//! keeps to the session limit; the server purges expired sessions and caps those that would
//! outlive the limit. The operator commands run as the real binary on the server's database.

use std::io::Write;
use std::process::{Output, Stdio};
use std::time::Duration;

use chrono::Utc;
use keyhouse_domain::crypto::session_token;
use keyhouse_domain::entities::sessions;
use keyhouse_domain::storage;
use keyhouse_proto::v1 as pb;
use sea_orm::{ActiveModelTrait, EntityTrait, Set};
use tonic::Code;

use crate::binary::Keyhouse;
use crate::on_both_databases;
use crate::support::{Backend, TempDir, TestServer};

on_both_databases!(
    revoking_a_token_ends_that_session_and_no_other,
    revoking_a_user_ends_all_of_their_sessions_and_no_one_elses,
    the_list_shows_ids_and_times_but_never_a_token,
    a_session_longer_than_the_limit_is_refused_naming_the_setting,
    the_server_purges_expired_sessions_and_caps_ones_beyond_the_limit,
);

/// A server that looks every call's session up (no session cache, so a revocation shows on
/// the next call), and the binary on the same database.
async fn setup(backend: Backend) -> (TestServer, Keyhouse) {
    let server = TestServer::start_with(backend, |s| s.session_cache_secs = 0).await;
    let kh = Keyhouse::on(TempDir::new(), server.settings.domain.database_url.clone());
    (server, kh)
}

/// What a call with `token` gets: Ok, or the gRPC code it was refused with.
async fn call_with(server: &TestServer, token: &str) -> Result<(), Code> {
    server
        .user_client(Some(token))
        .await
        .list_keys(pb::ListKeysRequest::default())
        .await
        .map(|_| ())
        .map_err(|s| s.code())
}

fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).expect("utf-8")
}

fn create(kh: &Keyhouse, user: &str, ttl: &str) -> String {
    let out = kh.run(&[
        "session", "create", "--user", user, "--role", "user", "--ttl", ttl,
    ]);
    stdout(&out).trim_end().to_owned()
}

async fn revoking_a_token_ends_that_session_and_no_other(backend: Backend) {
    let (server, kh) = setup(backend).await;
    let token = create(&kh, "alice", "1h");
    let other = create(&kh, "alice", "1h");
    assert_eq!(call_with(&server, &token).await, Ok(()));

    let out = kh.run(&["session", "revoke", &token]);
    assert_eq!(stdout(&out), "1 session revoked\n");
    assert_eq!(call_with(&server, &token).await, Err(Code::Unauthenticated));
    assert_eq!(
        call_with(&server, &other).await,
        Ok(()),
        "the user's other session lives on"
    );

    let again = kh
        .command(&["session", "revoke", &token])
        .output()
        .expect("run");
    assert!(!again.status.success(), "a second revoke finds nothing");
    assert!(kh.log_text().contains("no session has this token"));

    // `-` reads the token from stdin, so it shows in no process list.
    let mut child = kh
        .command(&["session", "revoke", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(format!("{other}\n").as_bytes())
        .expect("write the token");
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success(), "log:\n{}", kh.log_text());
    assert_eq!(stdout(&out), "1 session revoked\n");
    assert_eq!(call_with(&server, &other).await, Err(Code::Unauthenticated));
    let log = kh.log_text();
    assert!(!log.contains(&token) && !log.contains(&other));
}

async fn revoking_a_user_ends_all_of_their_sessions_and_no_one_elses(backend: Backend) {
    let (server, kh) = setup(backend).await;
    let alice = [create(&kh, "alice", "1h"), create(&kh, "alice", "2d")];
    let bob = create(&kh, "bob", "1h");

    let out = kh.run(&["session", "revoke", "--user", "alice"]);
    assert_eq!(stdout(&out), "2 session(s) of alice revoked\n");
    for token in &alice {
        assert_eq!(call_with(&server, token).await, Err(Code::Unauthenticated));
    }
    assert_eq!(call_with(&server, &bob).await, Ok(()));

    let out = kh.run(&["session", "revoke", "--user", "alice"]);
    assert_eq!(stdout(&out), "0 session(s) of alice revoked\n");
}

async fn the_list_shows_ids_and_times_but_never_a_token(backend: Backend) {
    let (server, kh) = setup(backend).await;
    let short = create(&kh, "alice", "1h");
    let long = create(&kh, "alice", "2d");
    create(&kh, "bob", "1h");

    let out = stdout(&kh.run(&["session", "list", "--user", "alice"]));
    let secrets = [
        short.clone(),
        long.clone(),
        session_token::digest(&short),
        session_token::digest(&long),
    ];
    for secret in &secrets {
        assert!(
            !out.contains(secret.as_str()),
            "the list shows a token or digest:\n{out}"
        );
    }
    let mut lines = out.lines();
    let header: Vec<&str> = lines.next().expect("a header").split_whitespace().collect();
    assert_eq!(header, ["ID", "ROLE", "CREATED", "EXPIRES"]);
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(rows.len(), 2, "alice's two sessions, not bob's:\n{out}");
    let lifetime = |row: &[&str]| {
        let at = |s: &str| chrono::DateTime::parse_from_rfc3339(s).expect("an RFC 3339 time");
        at(row[3]) - at(row[2])
    };
    // Oldest first: each row is one of alice's sessions, with its own lifetime.
    assert_eq!(
        rows[0][0],
        storage::sessions::id_of(&session_token::digest(&short))
    );
    assert_eq!(rows[0][1], "user");
    assert_eq!(lifetime(&rows[0]), chrono::Duration::hours(1));
    assert_eq!(
        rows[1][0],
        storage::sessions::id_of(&session_token::digest(&long))
    );
    assert_eq!(lifetime(&rows[1]), chrono::Duration::days(2));

    // An id from the list ends that session only.
    let out = kh.run(&["session", "revoke", "--user", "alice", "--id", rows[0][0]]);
    assert_eq!(stdout(&out), "1 session of alice revoked\n");
    assert_eq!(call_with(&server, &short).await, Err(Code::Unauthenticated));
    assert_eq!(call_with(&server, &long).await, Ok(()));
    let out = stdout(&kh.run(&["session", "list", "--user", "alice"]));
    assert_eq!(out.lines().count(), 2, "a header and one session:\n{out}");

    // Another user's session id is not this user's to end.
    let bobs = kh
        .command(&["session", "revoke", "--user", "bob", "--id", rows[1][0]])
        .output()
        .expect("run");
    assert!(!bobs.status.success());
    assert!(kh.log_text().contains("bob has no session with the id"));
    assert_eq!(call_with(&server, &long).await, Ok(()));
}

async fn a_session_longer_than_the_limit_is_refused_naming_the_setting(backend: Backend) {
    let (server, kh) = setup(backend).await;
    let refused = kh
        .command(&[
            "session", "create", "--user", "alice", "--role", "user", "--ttl", "31d",
        ])
        .output()
        .expect("run");
    assert!(!refused.status.success());
    assert!(stdout(&refused).is_empty(), "no token is printed");
    let log = kh.log_text();
    assert!(
        log.contains("ttl 31d is longer than the longest a session may live, 30d")
            && log.contains("KEYHOUSE_SESSION_MAX_TTL"),
        "{log}"
    );
    assert!(
        storage::sessions::list(server.db(), "alice")
            .await
            .expect("list")
            .is_empty(),
        "nothing was stored"
    );

    // The limit itself is allowed, and the setting raises or lowers it.
    let token = create(&kh, "alice", "30d");
    assert_eq!(call_with(&server, &token).await, Ok(()));
    let raised =
        Keyhouse::on(TempDir::new(), kh.db_url.clone()).env("KEYHOUSE_SESSION_MAX_TTL", "90d");
    let token = create(&raised, "alice", "31d");
    assert_eq!(call_with(&server, &token).await, Ok(()));
    let lowered = kh
        .command(&[
            "session",
            "create",
            "--user",
            "alice",
            "--role",
            "user",
            "--ttl",
            "1d",
            "--session-max-ttl",
            "12h",
        ])
        .output()
        .expect("run");
    assert!(!lowered.status.success());
    assert!(
        kh.log_text()
            .contains("ttl 1d is longer than the longest a session may live, 12h")
    );
}

/// Stores a session row directly, as an older keyhouse or a hand-made row could have left it.
async fn stored_session(
    server: &TestServer,
    user: &str,
    created: chrono::DateTime<Utc>,
    expires: chrono::DateTime<Utc>,
) -> String {
    let token = session_token::generate().expect("token").to_string();
    sessions::ActiveModel {
        token_hash: Set(session_token::digest(&token)),
        user_id: Set(user.into()),
        email: Set(String::new()),
        role: Set("user".into()),
        created_at: Set(created),
        expires_at: Set(expires),
    }
    .insert(server.db())
    .await
    .expect("insert a session");
    token
}

async fn the_server_purges_expired_sessions_and_caps_ones_beyond_the_limit(backend: Backend) {
    let server = TestServer::start_with(backend, |s| {
        s.session_cache_secs = 0;
        s.session_purge_secs = 1;
        s.sessions.max_ttl = chrono::Duration::days(1);
    })
    .await;
    let now = storage::now();
    let expired = stored_session(
        &server,
        "alice",
        now - chrono::Duration::hours(2),
        now - chrono::Duration::hours(1),
    )
    .await;
    let forever = stored_session(&server, "alice", now, now + chrono::Duration::days(365)).await;
    let live_until = now + chrono::Duration::hours(1);
    let live = stored_session(&server, "alice", now, live_until).await;
    let row =
        |token: &str| sessions::Entity::find_by_id(session_token::digest(token)).one(server.db());

    // Passes run every second; wait for one that saw these rows.
    let mut passes = 0;
    loop {
        let gone = row(&expired).await.expect("read").is_none();
        let capped = row(&forever)
            .await
            .expect("read")
            .expect("the long session stays")
            .expires_at
            <= Utc::now() + chrono::Duration::days(1);
        if gone && capped {
            break;
        }
        passes += 1;
        assert!(passes < 300, "no purge pass ran within 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        row(&live).await.expect("read").expect("kept").expires_at,
        live_until,
        "a session within the limit is left alone"
    );
    assert_eq!(call_with(&server, &live).await, Ok(()));
    assert_eq!(
        call_with(&server, &forever).await,
        Ok(()),
        "a capped session still works until its new end"
    );
    assert_eq!(
        call_with(&server, &expired).await,
        Err(Code::Unauthenticated)
    );
}
