//! The authorization matrix: `authorization_matrix.csv` says, for every RPC of the contract, which
//! gRPC code each kind of caller gets. The test makes every one of those calls on a server where
//! each caller really exists, over gRPC and again over REST where the RPC has a path, and
//! compares. A refused call must also leave every row of every table as it was.
//!
//! Where an RPC addresses a user's resource, every caller aims at alice's. The columns:
//! - `key_scope`: the scope a `uc_` key needs (`authorization::TABLE`), `-` where keys are refused;
//! - `anonymous`: no credential; `bad_token`: a well-formed session token nobody issued;
//! - `expired_session`, `revoked_session`: alice's sessions, one past its end, one deleted;
//! - `user_own`: alice's session; `user_other`: bob's session (`-` where the RPC addresses no
//!   user's resource); `admin`: an admin's session;
//! - `service_token`: an internal service's token (`KEYHOUSE_SERVICE_TOKENS`);
//! - `key_without_scope`: alice's key holding only `llm:inference`; `key_with_scope`: alice's key
//!   holding only the row's scope (every scope where the row names none);
//! - `key_revoked`: alice's revoked key with every scope; `key_ip_limited`: alice's key with
//!   every scope, allowed only from a network the test never calls from;
//! - `ops_center_user`: alice signed in through Ops-Center (a session in its Redis, role
//!   `viewer`); `ops_center_admin`: an admin signed in through Ops-Center (no `role`, a Keycloak
//!   realm role the operator maps to admins); `ops_center_no_role`: an Ops-Center user whose
//!   groups map to nothing;
//! - `oidc_user`: alice with a token from the OIDC issuer (role `keyhouse-user`); `oidc_admin`: an
//!   admin's token (`keyhouse-admin`); `oidc_no_role`: alice's token whose role the operator
//!   mapped to nothing.
//!
//! Over REST a code is the status `RestError` gives it, and OK is any 2xx.

use keyhouse_domain::authorization;
use keyhouse_domain::caller::Role;
use keyhouse_domain::crypto::api_key::ApiKey;
use keyhouse_domain::crypto::session_token;
use keyhouse_domain::entities::user_api_keys;
use keyhouse_domain::storage;
use keyhouse_proto::v1 as pb;
use reqwest::StatusCode;
use sea_orm::{EntityTrait, Set};
use serde_json::{Value, json};
use sha2::Digest;
use tonic::Code;

use crate::on_both_databases;
use crate::ops_center::OpsCenter;
use crate::support::{Backend, TestServer};

on_both_databases!(every_rpc_answers_every_caller_as_the_matrix_says_and_a_refusal_changes_nothing);

const MATRIX: &str = include_str!("authorization_matrix.csv");

const GATEWAY_TOKEN: &str = "svc_gateway_matrix_0123456789abcdef";
const ALICE_OPENAI: &str = "sk-proj-alice-matrix-0123456789";
/// TEST-NET-1: no test ever calls from there.
const ELSEWHERE: &str = "192.0.2.0/24";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Caller {
    Anonymous,
    BadToken,
    ExpiredSession,
    RevokedSession,
    UserOwn,
    UserOther,
    Admin,
    ServiceToken,
    KeyWithoutScope,
    KeyWithScope,
    KeyRevoked,
    KeyIpLimited,
    OpsCenterUser,
    OpsCenterAdmin,
    OpsCenterNoRole,
    OidcUser,
    OidcAdmin,
    OidcNoRole,
}

/// The file's caller columns, in order.
const CALLERS: [(&str, Caller); 18] = [
    ("anonymous", Caller::Anonymous),
    ("bad_token", Caller::BadToken),
    ("expired_session", Caller::ExpiredSession),
    ("revoked_session", Caller::RevokedSession),
    ("user_own", Caller::UserOwn),
    ("user_other", Caller::UserOther),
    ("admin", Caller::Admin),
    ("service_token", Caller::ServiceToken),
    ("key_without_scope", Caller::KeyWithoutScope),
    ("key_with_scope", Caller::KeyWithScope),
    ("key_revoked", Caller::KeyRevoked),
    ("key_ip_limited", Caller::KeyIpLimited),
    ("ops_center_user", Caller::OpsCenterUser),
    ("ops_center_admin", Caller::OpsCenterAdmin),
    ("ops_center_no_role", Caller::OpsCenterNoRole),
    ("oidc_user", Caller::OidcUser),
    ("oidc_admin", Caller::OidcAdmin),
    ("oidc_no_role", Caller::OidcNoRole),
];

impl Caller {
    fn name(self) -> &'static str {
        CALLERS
            .iter()
            .find(|(_, c)| *c == self)
            .map(|(n, _)| *n)
            .expect("every caller has a column")
    }
}

const CODES: [(&str, Code); 9] = [
    ("OK", Code::Ok),
    ("INVALID_ARGUMENT", Code::InvalidArgument),
    ("UNAUTHENTICATED", Code::Unauthenticated),
    ("PERMISSION_DENIED", Code::PermissionDenied),
    ("NOT_FOUND", Code::NotFound),
    ("FAILED_PRECONDITION", Code::FailedPrecondition),
    ("RESOURCE_EXHAUSTED", Code::ResourceExhausted),
    ("UNAVAILABLE", Code::Unavailable),
    ("INTERNAL", Code::Internal),
];

fn code_name(code: Code) -> String {
    CODES
        .iter()
        .find(|(_, c)| *c == code)
        .map_or_else(|| format!("{code:?}"), |(n, _)| (*n).to_owned())
}

/// The HTTP status REST answers for a code (`services/server/src/rest/error.rs`); `None` for
/// OK, which is any 2xx.
fn http_status(code: Code) -> Option<StatusCode> {
    match code {
        Code::Ok => None,
        Code::InvalidArgument => Some(StatusCode::UNPROCESSABLE_ENTITY),
        Code::Unauthenticated => Some(StatusCode::UNAUTHORIZED),
        Code::PermissionDenied => Some(StatusCode::FORBIDDEN),
        Code::NotFound => Some(StatusCode::NOT_FOUND),
        Code::FailedPrecondition => Some(StatusCode::CONFLICT),
        Code::ResourceExhausted => Some(StatusCode::TOO_MANY_REQUESTS),
        Code::Unavailable => Some(StatusCode::SERVICE_UNAVAILABLE),
        _ => Some(StatusCode::INTERNAL_SERVER_ERROR),
    }
}

/// One line of the file.
struct Row {
    service: String,
    method: String,
    scope: Option<String>,
    /// `None` where the file says `-`: the cell does not apply.
    cells: Vec<(Caller, Option<Code>)>,
}

impl Row {
    fn rpc(&self) -> String {
        format!("{}/{}", self.service, self.method)
    }
}

fn matrix() -> Vec<Row> {
    let mut lines = MATRIX.lines().filter(|l| !l.trim().is_empty());
    let header: Vec<&str> = lines
        .next()
        .expect("a header")
        .split(',')
        .map(str::trim)
        .collect();
    let columns: Vec<&str> = ["rpc", "key_scope"]
        .into_iter()
        .chain(CALLERS.iter().map(|(n, _)| *n))
        .collect();
    assert_eq!(header, columns, "the columns of authorization_matrix.csv");
    lines
        .map(|line| {
            let fields: Vec<&str> = line.split(',').map(str::trim).collect();
            assert_eq!(fields.len(), columns.len(), "one value per column: {line}");
            let (service, method) = fields[0]
                .split_once('/')
                .unwrap_or_else(|| panic!("{} is not package.Service/Method", fields[0]));
            let cells = CALLERS
                .iter()
                .zip(&fields[2..])
                .map(|((name, caller), text)| {
                    let code = match *text {
                        "-" => None,
                        text => Some(
                            CODES
                                .iter()
                                .find(|(n, _)| *n == text)
                                .unwrap_or_else(|| {
                                    panic!("{}, {name}: '{text}' is no gRPC code", fields[0])
                                })
                                .1,
                        ),
                    };
                    (*caller, code)
                })
                .collect();
            Row {
                service: service.to_owned(),
                method: method.to_owned(),
                scope: (fields[1] != "-").then(|| fields[1].to_owned()),
                cells,
            }
        })
        .collect()
}

/// What an RPC's request addresses; every RPC needs an entry here, or the test cannot call it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Subject {
    /// The caller's own account, or nothing in particular.
    Nothing,
    /// One of alice's API keys, by id.
    AlicesKey,
    /// The key in the request (VerifyKey): alice's.
    PresentedKey,
    /// Alice's OpenAI key (BYOK).
    AlicesProviderKey,
    /// The platform's OpenAI key.
    PlatformKey,
}

fn subject(method: &str) -> Subject {
    match method {
        "CreateKey" | "ListKeys" | "ListProviders" | "PutProviderKey" | "ListProviderKeys"
        | "GetKeyOptions" | "ListPlatformKeys" | "WatchPlatformKeys" | "ListAuditEvents" => {
            Subject::Nothing
        }
        "GetKey" | "RevokeKey" | "RegenerateKey" | "GetKeyUsage" => Subject::AlicesKey,
        "VerifyKey" => Subject::PresentedKey,
        "DeleteProviderKey" | "TestProviderKey" | "GetProviderKeyForUser" => {
            Subject::AlicesProviderKey
        }
        "UpdatePlatformKey"
        | "DeletePlatformKey"
        | "GetDecryptedPlatformKey"
        | "ListPlatformKeyVersions"
        | "RollbackPlatformKey"
        | "TestPlatformKey"
        | "ReportPlatformKeySync"
        | "ListPlatformKeyHealth" => Subject::PlatformKey,
        other => panic!("authorization_matrix.rs does not know how to call {other}: add it"),
    }
}

impl Subject {
    fn belongs_to_a_user(self) -> bool {
        matches!(
            self,
            Subject::AlicesKey | Subject::PresentedKey | Subject::AlicesProviderKey
        )
    }
}

#[test]
fn the_matrix_has_one_row_per_rpc_and_a_dash_only_where_a_cell_cannot_apply() {
    checked_matrix();
}

/// The file's rows, once they are known to cover every RPC exactly, name the right scopes and
/// skip only cells that cannot apply.
fn checked_matrix() -> Vec<Row> {
    let rows = matrix();
    let rpcs: Vec<String> = crate::architecture::rpcs()
        .iter()
        .map(|(s, m)| format!("{s}/{m}"))
        .collect();
    for rpc in &rpcs {
        assert_eq!(
            rows.iter().filter(|r| &r.rpc() == rpc).count(),
            1,
            "{rpc} needs exactly one row in tests/it/authorization_matrix.csv"
        );
    }
    for row in &rows {
        let rpc = row.rpc();
        assert!(
            rpcs.contains(&rpc),
            "authorization_matrix.csv has a row for {rpc}, which is no RPC"
        );
        let rule = authorization::rule(&row.service, &row.method).expect("a rule");
        assert_eq!(
            row.scope.as_deref(),
            rule.api_key_scope,
            "{rpc}: key_scope is the scope authorization::TABLE names, or -"
        );
        for (caller, code) in &row.cells {
            let applies = *caller != Caller::UserOther || subject(&row.method).belongs_to_a_user();
            assert_eq!(
                code.is_some(),
                applies,
                "{rpc}, {}: `-` marks exactly the cells that cannot apply (another user's \
                 resource where the RPC addresses none)",
                caller.name()
            );
        }
    }
    rows
}

/// A server where every kind of caller exists, and alice owns what the calls aim at.
struct World {
    server: TestServer,
    _provider: crate::stub::Provider,
    ops_center: OpsCenterCallers,
    oidc: OidcCallers,
    _issuer: crate::oidc::Provider,
    alice: String,
    bob: String,
    admin: String,
    expired: String,
    revoked: String,
    bad: String,
    keys: Keys,
}

/// Session tokens in Ops-Center's Redis, one per kind of Ops-Center caller.
struct OpsCenterCallers {
    alice: String,
    admin: String,
    no_role: String,
}

/// Bearer tokens from the OIDC issuer, one per kind of OIDC caller.
struct OidcCallers {
    alice: String,
    admin: String,
    no_role: String,
}

/// Alice's `uc_` keys, one per kind of key caller.
struct Keys {
    without_scope: String,
    /// (scope, a key holding only it) for every scope a row names.
    with_scope: Vec<(String, String)>,
    every_scope: String,
    revoked: String,
    ip_limited: String,
}

/// What one call aims at, made fresh before it.
#[derive(Default)]
struct Target {
    key_id: String,
    /// The full key: the target key's, or the key VerifyKey is asked about.
    key: String,
    /// A key row made for this call alone, removed after it.
    inserted: Option<uuid::Uuid>,
}

#[derive(Debug, PartialEq, Eq)]
struct Verdict {
    valid: bool,
    reason: String,
}

/// One of alice's keys, written to storage as CreateKey writes it. The matrix needs a fresh key
/// for every call that changes one, more than CreateKey's limits on keys per user allow; the
/// CreateKey path itself is a row of the matrix.
struct NewKey {
    permissions: Vec<String>,
    allowed_ips: Vec<String>,
    days: i64,
    revoked: bool,
}

/// A key that a caller of the matrix presents: valid for 30 days, from anywhere.
fn caller_key(permissions: &[String]) -> NewKey {
    NewKey {
        permissions: permissions.to_vec(),
        allowed_ips: Vec::new(),
        days: 30,
        revoked: false,
    }
}

async fn store_alices_key(server: &TestServer, new: NewKey) -> (uuid::Uuid, String) {
    let key = ApiKey::generate().expect("a key");
    let id = uuid::Uuid::new_v4();
    let now = chrono::Utc::now();
    let cost = server.settings.domain.keys.bcrypt_cost;
    storage::user_keys::insert(
        server.db(),
        user_api_keys::ActiveModel {
            id: Set(id),
            user_id: Set("alice".into()),
            key_name: Set("matrix".into()),
            key_hash: Set(key.hash(cost).await.expect("hash")),
            key_prefix: Set(key.lookup_prefix().into()),
            key_last4: Set(key.last4().into()),
            permissions: Set(json!(new.permissions)),
            created_at: Set(now),
            expires_at: Set(Some(now + chrono::Duration::days(new.days))),
            is_active: Set(!new.revoked),
            revoked_at: Set(new.revoked.then_some(now)),
            metadata: Set(json!({})),
            rate_limit_per_minute: Set(None),
            allowed_ips: Set((!new.allowed_ips.is_empty()).then(|| json!(new.allowed_ips))),
            ..Default::default()
        },
    )
    .await
    .expect("alice's key is stored");
    (id, key.expose().to_owned())
}

/// A token the issuer's own key signs, for `sub` holding `role`, valid longer than the test runs.
fn oidc_token(issuer: &crate::oidc::Provider, sub: &str, role: &str) -> String {
    let now = chrono::Utc::now().timestamp();
    issuer.sign(&json!({
        "iss": issuer.issuer,
        "aud": crate::oidc::AUDIENCE,
        "sub": sub,
        "iat": now,
        "exp": now + 3_600,
        "realm_access": {"roles": [role]},
    }))
}

fn verify(key: &str, scopes: &[String], client_ip: &str) -> pb::VerifyKeyRequest {
    pb::VerifyKeyRequest {
        api_key: key.to_owned(),
        required_scopes: scopes.to_vec(),
        client_ip: client_ip.to_owned(),
    }
}

impl World {
    async fn new(backend: Backend) -> Self {
        let provider = crate::stub::Provider::start(ALICE_OPENAI).await;
        let url = provider.url.clone();
        let digest = hex::encode(sha2::Sha256::digest(GATEWAY_TOKEN.as_bytes()));
        let ops = OpsCenter::new().await;
        // Longer than the test runs.
        let day = 86_400;
        let ops_center = OpsCenterCallers {
            alice: ops
                .login(json!({ "user_id": "alice", "role": "viewer" }), day)
                .await,
            admin: ops
                .login(
                    json!({ "sub": "ops-root", "realm_access": { "roles": ["ops-center-admin"] } }),
                    day,
                )
                .await,
            no_role: ops
                .login(json!({ "user_id": "alice", "groups": ["admins"] }), day)
                .await,
        };
        let issuer = crate::oidc::Provider::start().await;
        let oidc = OidcCallers {
            alice: oidc_token(&issuer, "alice", "keyhouse-user"),
            admin: oidc_token(&issuer, "sso-root", "keyhouse-admin"),
            no_role: oidc_token(&issuer, "alice", "billing-viewer"),
        };
        let issuer_url = issuer.issuer.clone();
        let server = TestServer::start_with(backend, move |s| {
            ops.configure(s);
            s.oidc.issuer = Some(issuer_url);
            s.oidc.audience = Some(crate::oidc::AUDIENCE.into());
            s.oidc.admin_roles = vec!["keyhouse-admin".into()];
            s.oidc.user_roles = vec!["keyhouse-user".into()];
            s.service_tokens = vec![format!("gateway={digest}")];
            s.domain.provider_base_urls = vec![format!("openai={url}")];
            // Usage is written in the background: a write between two snapshots would be
            // blamed on a refused call. A day is longer than the test runs.
            s.domain.verify.usage_flush_millis = 86_400_000;
        })
        .await;
        let expired = server.session("alice", Role::User).await;
        server
            .exec(&format!(
                "UPDATE sessions SET expires_at = created_at WHERE token_hash = '{}'",
                session_token::digest(&expired)
            ))
            .await;
        let revoked = server.session("alice", Role::User).await;
        server
            .exec(&format!(
                "DELETE FROM sessions WHERE token_hash = '{}'",
                session_token::digest(&revoked)
            ))
            .await;
        let alice = server.session("alice", Role::User).await;
        let bob = server.session("bob", Role::User).await;
        let admin = server.session("root", Role::Admin).await;

        let every: Vec<String> = server.settings.domain.keys.scopes.clone();
        let mut scopes: Vec<String> = authorization::TABLE
            .iter()
            .filter_map(|r| r.api_key_scope.map(str::to_owned))
            .collect();
        scopes.sort();
        scopes.dedup();
        let inference = ["llm:inference".to_owned()];
        let mut with_scope = Vec::new();
        for scope in scopes {
            let (_, key) =
                store_alices_key(&server, caller_key(std::slice::from_ref(&scope))).await;
            with_scope.push((scope, key));
        }
        let keys = Keys {
            without_scope: store_alices_key(&server, caller_key(&inference)).await.1,
            with_scope,
            every_scope: store_alices_key(&server, caller_key(&every)).await.1,
            revoked: store_alices_key(
                &server,
                NewKey {
                    revoked: true,
                    ..caller_key(&every)
                },
            )
            .await
            .1,
            ip_limited: store_alices_key(
                &server,
                NewKey {
                    allowed_ips: vec![ELSEWHERE.to_owned()],
                    ..caller_key(&every)
                },
            )
            .await
            .1,
        };

        // Each key is refused for its one reason only: used from where it may, with the scopes
        // it holds, it is valid (the revoked one excepted). Whatever a first verification
        // stores is stored here, before any snapshot.
        let mut anyone = server.user_client(None).await;
        let mut checks = vec![
            (&keys.without_scope, &inference[..], "VALID"),
            (&keys.every_scope, &every, "VALID"),
            (&keys.revoked, &every, "REVOKED"),
            (&keys.ip_limited, &every, "VALID"),
        ];
        for (scope, key) in &keys.with_scope {
            checks.push((key, std::slice::from_ref(scope), "VALID"));
        }
        for (key, scopes, reason) in checks {
            let verdict = anyone
                .verify_key(verify(key, scopes, "192.0.2.7"))
                .await
                .expect("verify")
                .into_inner();
            assert_eq!(verdict.reason().as_str_name(), reason);
        }
        Self {
            server,
            _provider: provider,
            ops_center,
            oidc,
            _issuer: issuer,
            alice,
            bob,
            admin,
            expired,
            revoked,
            bad: session_token::generate().expect("a token").to_string(),
            keys,
        }
    }

    fn bearer(&self, caller: Caller, row: &Row) -> Option<String> {
        let keys = &self.keys;
        let token = match caller {
            Caller::Anonymous => return None,
            Caller::BadToken => &self.bad,
            Caller::ExpiredSession => &self.expired,
            Caller::RevokedSession => &self.revoked,
            Caller::UserOwn => &self.alice,
            Caller::UserOther => &self.bob,
            Caller::Admin => &self.admin,
            Caller::ServiceToken => GATEWAY_TOKEN,
            Caller::KeyWithoutScope => &keys.without_scope,
            Caller::KeyWithScope => match &row.scope {
                Some(scope) => {
                    &keys
                        .with_scope
                        .iter()
                        .find(|(s, _)| s == scope)
                        .expect("a key for every scope a row names")
                        .1
                }
                None => &keys.every_scope,
            },
            Caller::KeyRevoked => &keys.revoked,
            Caller::KeyIpLimited => &keys.ip_limited,
            Caller::OpsCenterUser => &self.ops_center.alice,
            Caller::OpsCenterAdmin => &self.ops_center.admin,
            Caller::OpsCenterNoRole => &self.ops_center.no_role,
            Caller::OidcUser => &self.oidc.alice,
            Caller::OidcAdmin => &self.oidc.admin,
            Caller::OidcNoRole => &self.oidc.no_role,
        };
        Some(token.to_owned())
    }

    /// Makes what the call aims at exist as it should before the call.
    async fn prepare(&self, method: &str, caller: Caller, bearer: Option<&str>) -> Target {
        let db = self.server.db();
        match subject(method) {
            Subject::Nothing => Target::default(),
            Subject::AlicesKey => {
                // Within what alice's `keys:manage` key may regenerate.
                let new = NewKey {
                    days: 7,
                    ..caller_key(&["keys:manage".to_owned()])
                };
                let (id, key) = store_alices_key(&self.server, new).await;
                Target {
                    key_id: id.to_string(),
                    key,
                    inserted: Some(id),
                }
            }
            Subject::PresentedKey => {
                let key = match caller {
                    Caller::KeyWithoutScope
                    | Caller::KeyWithScope
                    | Caller::KeyRevoked
                    | Caller::KeyIpLimited => bearer.expect("a key caller's key"),
                    _ => &self.keys.every_scope,
                };
                Target {
                    key: key.to_owned(),
                    ..Target::default()
                }
            }
            Subject::AlicesProviderKey => {
                let stored = storage::provider_keys::find(db, "alice", "openai")
                    .await
                    .expect("read");
                if stored.is_none() {
                    self.server
                        .user_client(Some(&self.alice))
                        .await
                        .put_provider_key(pb::PutProviderKeyRequest {
                            provider: "openai".into(),
                            key: ALICE_OPENAI.into(),
                            ..Default::default()
                        })
                        .await
                        .expect("alice stores her OpenAI key");
                }
                Target::default()
            }
            Subject::PlatformKey => {
                let stored = storage::platform_keys::current(db, "openai")
                    .await
                    .expect("read");
                if stored.is_none() {
                    self.server
                        .platform_client(Some(&self.admin))
                        .await
                        .update_platform_key(update_platform_key())
                        .await
                        .expect("the admin stores the platform's OpenAI key");
                }
                Target::default()
            }
        }
    }

    async fn clean(&self, target: Target) {
        if let Some(id) = target.inserted {
            user_api_keys::Entity::delete_by_id(id)
                .exec(self.server.db())
                .await
                .expect("remove the call's key");
        }
    }

    /// After a refused RevokeKey, RegenerateKey or DeleteProviderKey: what of alice's no longer
    /// works, if anything.
    async fn what_alice_lost(&self, method: &str, target: &Target) -> Option<String> {
        match method {
            "RevokeKey" | "RegenerateKey" => {
                let verdict = self
                    .server
                    .user_client(None)
                    .await
                    .verify_key(verify(&target.key, &[], ""))
                    .await
                    .expect("verify")
                    .into_inner();
                (!verdict.valid).then(|| {
                    format!(
                        "alice's key no longer verifies: {}",
                        verdict.reason().as_str_name()
                    )
                })
            }
            "DeleteProviderKey" => {
                let mut gateway =
                    keyhouse_proto::v1::user_key_service_client::UserKeyServiceClient::new(
                        self.server.channel().await,
                    );
                let mut req = tonic::Request::new(pb::GetProviderKeyForUserRequest {
                    user_id: "alice".into(),
                    provider: "openai".into(),
                });
                req.metadata_mut().insert(
                    "authorization",
                    format!("Bearer {GATEWAY_TOKEN}").parse().expect("ascii"),
                );
                match gateway.get_provider_key_for_user(req).await {
                    Ok(r) if r.get_ref().api_key == ALICE_OPENAI => None,
                    Ok(_) => Some("alice's OpenAI key was replaced".into()),
                    Err(s) => Some(format!(
                        "alice's OpenAI key is gone: {} {}",
                        code_name(s.code()),
                        s.message()
                    )),
                }
            }
            _ => None,
        }
    }

    async fn over_grpc(
        &self,
        row: &Row,
        bearer: Option<&str>,
        t: &Target,
    ) -> Result<Option<Verdict>, tonic::Status> {
        fn done<T>(
            r: Result<tonic::Response<T>, tonic::Status>,
        ) -> Result<Option<Verdict>, tonic::Status> {
            r.map(|_| None)
        }
        let key_id = || t.key_id.clone();
        let openai = || "openai".to_owned();
        if row.service == keyhouse_platform_keys::SERVICE_NAME {
            let mut c = self.server.platform_client(bearer).await;
            return match row.method.as_str() {
                "ListPlatformKeys" => {
                    done(c.list_platform_keys(pb::ListPlatformKeysRequest {}).await)
                }
                "UpdatePlatformKey" => done(c.update_platform_key(update_platform_key()).await),
                "DeletePlatformKey" => done(
                    c.delete_platform_key(pb::DeletePlatformKeyRequest { name: openai() })
                        .await,
                ),
                "GetDecryptedPlatformKey" => done(
                    c.get_decrypted_platform_key(pb::GetDecryptedPlatformKeyRequest {
                        name: openai(),
                        reason: "matrix".into(),
                    })
                    .await,
                ),
                "ListPlatformKeyVersions" => done(
                    c.list_platform_key_versions(pb::ListPlatformKeyVersionsRequest {
                        name: openai(),
                    })
                    .await,
                ),
                "RollbackPlatformKey" => done(
                    c.rollback_platform_key(pb::RollbackPlatformKeyRequest {
                        name: openai(),
                        version: 1,
                    })
                    .await,
                ),
                "TestPlatformKey" => done(
                    c.test_platform_key(pb::TestPlatformKeyRequest {
                        name: openai(),
                        api_key: None,
                    })
                    .await,
                ),
                // A stream: its first message, or the status it ends with, is the answer.
                "WatchPlatformKeys" => {
                    let mut events = c
                        .watch_platform_keys(pb::WatchPlatformKeysRequest {
                            include_secret: false,
                        })
                        .await?
                        .into_inner();
                    match events.message().await? {
                        Some(_) => Ok(None),
                        None => Err(tonic::Status::unknown("the stream ended without a message")),
                    }
                }
                "ListAuditEvents" => done(
                    c.list_audit_events(pb::ListAuditEventsRequest::default())
                        .await,
                ),
                "ReportPlatformKeySync" => done(
                    c.report_platform_key_sync(pb::ReportPlatformKeySyncRequest {
                        name: openai(),
                        version: 1,
                        target: "litellm".into(),
                        source: "database".into(),
                    })
                    .await,
                ),
                "ListPlatformKeyHealth" => done(
                    c.list_platform_key_health(pb::ListPlatformKeyHealthRequest {
                        name: openai(),
                        ..Default::default()
                    })
                    .await,
                ),
                other => panic!("authorization_matrix.rs has no gRPC request for {other}"),
            };
        }
        let mut c = self.server.user_client(bearer).await;
        match row.method.as_str() {
            "CreateKey" => done(c.create_key(create_key()).await),
            "ListKeys" => done(c.list_keys(pb::ListKeysRequest::default()).await),
            "GetKey" => done(c.get_key(pb::GetKeyRequest { key_id: key_id() }).await),
            "RevokeKey" => done(
                c.revoke_key(pb::RevokeKeyRequest { key_id: key_id() })
                    .await,
            ),
            "RegenerateKey" => done(
                c.regenerate_key(pb::RegenerateKeyRequest {
                    key_id: key_id(),
                    expires_in_days: Some(7),
                })
                .await,
            ),
            "VerifyKey" => {
                let v = c.verify_key(verify(&t.key, &[], "")).await?.into_inner();
                Ok(Some(Verdict {
                    valid: v.valid,
                    reason: v.reason().as_str_name().to_owned(),
                }))
            }
            "GetKeyUsage" => done(
                c.get_key_usage(pb::GetKeyUsageRequest {
                    key_id: key_id(),
                    from: None,
                    to: None,
                })
                .await,
            ),
            "ListProviders" => done(c.list_providers(pb::ListProvidersRequest {}).await),
            "PutProviderKey" => done(c.put_provider_key(put_provider_key()).await),
            "ListProviderKeys" => done(c.list_provider_keys(pb::ListProviderKeysRequest {}).await),
            "DeleteProviderKey" => done(
                c.delete_provider_key(pb::DeleteProviderKeyRequest { provider: openai() })
                    .await,
            ),
            "TestProviderKey" => done(
                c.test_provider_key(pb::TestProviderKeyRequest { provider: openai() })
                    .await,
            ),
            "GetProviderKeyForUser" => done(
                c.get_provider_key_for_user(pb::GetProviderKeyForUserRequest {
                    user_id: "alice".into(),
                    provider: openai(),
                })
                .await,
            ),
            "GetKeyOptions" => done(c.get_key_options(pb::GetKeyOptionsRequest {}).await),
            other => panic!("authorization_matrix.rs has no gRPC request for {other}"),
        }
    }

    /// The same request on its REST path: the status, the body, and VerifyKey's verdict.
    async fn over_rest(
        &self,
        method: &str,
        (verb, path): (&str, &str),
        bearer: Option<&str>,
        t: &Target,
    ) -> (StatusCode, Value, Option<Verdict>) {
        let path = path
            .replace("{key_id}", &t.key_id)
            .replace("{provider}", "openai")
            .replace("{name}", "openai");
        let (body, query) = match method {
            "CreateKey" => (Some(json!(create_key_json())), ""),
            "RegenerateKey" => (Some(json!({ "expires_in_days": 7 })), ""),
            "VerifyKey" => (Some(json!({ "api_key": t.key })), ""),
            "PutProviderKey" => {
                let p = put_provider_key();
                (Some(json!({ "provider": p.provider, "key": p.key })), "")
            }
            "UpdatePlatformKey" => (
                Some(json!({ "api_key": update_platform_key().api_key })),
                "",
            ),
            "RollbackPlatformKey" => (Some(json!({ "version": 1 })), ""),
            "GetDecryptedPlatformKey" => (None, "?reason=matrix"),
            _ => (None, ""),
        };
        let url = self.server.rest(&format!("{path}{query}"));
        let http = self.server.http();
        let mut req = match verb {
            "get" => http.get(url),
            "post" => http.post(url),
            "put" => http.put(url),
            "delete" => http.delete(url),
            other => panic!("{method}: no HTTP verb {other}"),
        };
        if let Some(token) = bearer {
            req = req.bearer_auth(token);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        let response = req.send().await.expect("the server answers");
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        let verdict = (method == "VerifyKey" && status.is_success()).then(|| Verdict {
            valid: body["valid"] == json!(true),
            reason: body["reason"].as_str().unwrap_or("VALID").to_owned(),
        });
        (status, body, verdict)
    }
}

/// A key within the bounds of alice's `keys:manage` key (that scope only, a shorter expiry).
fn create_key() -> pb::CreateKeyRequest {
    pb::CreateKeyRequest {
        name: "made in the matrix".into(),
        expires_in_days: Some(7),
        permissions: vec!["keys:manage".into()],
        rate_limit_per_minute: None,
        allowed_ips: Vec::new(),
    }
}

fn create_key_json() -> Value {
    let k = create_key();
    json!({ "name": k.name, "expires_in_days": k.expires_in_days, "permissions": k.permissions })
}

/// Another provider than the one the delete and test calls aim at, so a caller that may put
/// does not give itself what those calls should not find.
fn put_provider_key() -> pb::PutProviderKeyRequest {
    pb::PutProviderKeyRequest {
        provider: "anthropic".into(),
        key: "sk-ant-matrix-0123456789".into(),
        ..Default::default()
    }
}

fn update_platform_key() -> pb::UpdatePlatformKeyRequest {
    pb::UpdatePlatformKeyRequest {
        name: "openai".into(),
        api_key: "sk-proj-platform-matrix-0123456789".into(),
    }
}

/// VerifyKey is asked about the caller's own key when the caller is a key: its verdict.
fn expected_verdict(caller: Caller) -> Verdict {
    let reason = match caller {
        Caller::KeyRevoked => "REVOKED",
        // No address to check is no pass.
        Caller::KeyIpLimited => "IP_NOT_ALLOWED",
        _ => "VALID",
    };
    Verdict {
        valid: reason == "VALID",
        reason: reason.into(),
    }
}

/// The rows one snapshot has and the other lacks.
fn difference(before: &[String], after: &[String]) -> String {
    let gone = before
        .iter()
        .filter(|r| !after.contains(r))
        .map(|r| format!("    - {r}"));
    let new = after
        .iter()
        .filter(|r| !before.contains(r))
        .map(|r| format!("    + {r}"));
    gone.chain(new).collect::<Vec<_>>().join("\n")
}

async fn every_rpc_answers_every_caller_as_the_matrix_says_and_a_refusal_changes_nothing(
    backend: Backend,
) {
    let world = World::new(backend).await;
    let mut failures = Vec::new();
    let mut calls = 0;
    for row in checked_matrix() {
        let rpc = row.rpc();
        let route = crate::architecture::rest_of(&row.service)
            .0
            .into_iter()
            .find(|r| r.0 == row.method)
            .map(|(_, verb, path)| (verb, path));
        for &(caller, expected) in &row.cells {
            // `-` in the file: the cell cannot apply to this RPC.
            let Some(expected) = expected else { continue };
            let bearer = world.bearer(caller, &row);
            let bearer = bearer.as_deref();
            // Over gRPC always, and over REST where the RPC has a path.
            for rest in std::iter::once(None).chain(route.map(Some)) {
                calls += 1;
                let target = world.prepare(&row.method, caller, bearer).await;
                let before = world.server.rows().await;
                let (transport, answered, matches, refused, verdict) = match rest {
                    None => {
                        let (code, message, verdict) =
                            match world.over_grpc(&row, bearer, &target).await {
                                Ok(verdict) => (Code::Ok, String::new(), verdict),
                                Err(s) => (s.code(), s.message().to_owned(), None),
                            };
                        (
                            "gRPC".to_owned(),
                            format!("{} {message}", code_name(code)),
                            code == expected,
                            code != Code::Ok,
                            verdict,
                        )
                    }
                    Some((verb, path)) => {
                        let (status, body, verdict) = world
                            .over_rest(&row.method, (verb, path), bearer, &target)
                            .await;
                        let matches = match http_status(expected) {
                            None => status.is_success(),
                            Some(wanted) => status == wanted,
                        };
                        (
                            format!("REST {} {path}", verb.to_uppercase()),
                            // The detail only: a successful body may hold a key.
                            format!("{status} {}", body["detail"]),
                            matches,
                            !status.is_success(),
                            verdict,
                        )
                    }
                };
                let call = format!("{rpc} as {} over {transport}", caller.name());
                if !matches {
                    failures.push(format!(
                        "{call}: the matrix says {}, keyhouse answered {answered}",
                        code_name(expected)
                    ));
                }
                if let Some(verdict) = verdict {
                    let wanted = expected_verdict(caller);
                    if verdict != wanted {
                        failures.push(format!(
                            "{call}: the verdict is {verdict:?}, it should be {wanted:?}"
                        ));
                    }
                }
                if refused {
                    let after = world.server.rows().await;
                    if before != after {
                        failures.push(format!(
                            "{call} was refused ({answered}) but changed rows:\n{}",
                            difference(&before, &after)
                        ));
                    }
                    if let Some(broken) = world.what_alice_lost(&row.method, &target).await {
                        failures.push(format!("{call} was refused, yet {broken}"));
                    }
                }
                world.clean(target).await;
            }
        }
    }
    assert!(
        failures.is_empty(),
        "of {calls} calls, these did not go as tests/it/authorization_matrix.csv says:\n{}",
        failures.join("\n")
    );
}
