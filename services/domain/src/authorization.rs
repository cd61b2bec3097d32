//! Who may call what: one row per RPC, one column per kind of caller. The services read the
//! scope an API key needs from here, the README's authorization table is checked against it,
//! and an RPC without a row fails the tests. A session is judged by its role alone, wherever it
//! came from (keyhouse's own table or Ops-Center's Redis); a session whose Ops-Center role and
//! groups map to no role reaches nothing.

/// What a signed-in caller may reach through an RPC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reach {
    /// Refused.
    None,
    /// Only the caller's own records; another user's are not found.
    Own,
    /// Any record.
    All,
}

impl Reach {
    fn label(self) -> &'static str {
        match self {
            Reach::None => "no",
            Reach::Own => "own",
            Reach::All => "all",
        }
    }
}

/// One RPC's row.
#[derive(Clone, Copy, Debug)]
pub struct Rule {
    /// `package.Service/Method`.
    pub rpc: &'static str,
    /// No credential at all: the request carries its own proof (VerifyKey's key).
    pub anonymous: bool,
    /// A session of a user: keyhouse's own with role user, or Ops-Center's with role
    /// power_user, user or viewer (or a group the operator maps to users).
    pub user: Reach,
    /// A session of an admin: keyhouse's own, or Ops-Center's with role admin (or an admin group).
    pub admin: Reach,
    /// A `uc_` API key acting for its owner, when it holds this scope; `None` refuses keys.
    pub api_key_scope: Option<&'static str>,
    /// An internal service's token (`KEYHOUSE_SERVICE_TOKENS`).
    pub service_token: bool,
}

const USER_OWN: Rule = Rule {
    rpc: "",
    anonymous: false,
    user: Reach::Own,
    admin: Reach::Own,
    api_key_scope: None,
    service_token: false,
};

const ADMIN_ONLY: Rule = Rule {
    rpc: "",
    anonymous: false,
    user: Reach::None,
    admin: Reach::All,
    api_key_scope: None,
    service_token: false,
};

const fn own(rpc: &'static str, scope: &'static str) -> Rule {
    Rule {
        rpc,
        api_key_scope: Some(scope),
        ..USER_OWN
    }
}

const fn admin(rpc: &'static str) -> Rule {
    Rule { rpc, ..ADMIN_ONLY }
}

pub static TABLE: &[Rule] = &[
    own("keyhouse.v1.UserKeyService/CreateKey", "keys:manage"),
    own("keyhouse.v1.UserKeyService/ListKeys", "keys:read"),
    own("keyhouse.v1.UserKeyService/GetKey", "keys:read"),
    own("keyhouse.v1.UserKeyService/RevokeKey", "keys:manage"),
    own("keyhouse.v1.UserKeyService/RegenerateKey", "keys:manage"),
    Rule {
        rpc: "keyhouse.v1.UserKeyService/VerifyKey",
        anonymous: true,
        user: Reach::All,
        admin: Reach::All,
        api_key_scope: None,
        service_token: true,
    },
    Rule {
        admin: Reach::All,
        ..own("keyhouse.v1.UserKeyService/GetKeyUsage", "usage:read")
    },
    own("keyhouse.v1.UserKeyService/ListProviders", "byok:manage"),
    own("keyhouse.v1.UserKeyService/PutProviderKey", "byok:manage"),
    own("keyhouse.v1.UserKeyService/ListProviderKeys", "byok:manage"),
    own(
        "keyhouse.v1.UserKeyService/DeleteProviderKey",
        "byok:manage",
    ),
    own("keyhouse.v1.UserKeyService/TestProviderKey", "byok:manage"),
    Rule {
        rpc: "keyhouse.v1.UserKeyService/GetProviderKeyForUser",
        anonymous: false,
        user: Reach::None,
        admin: Reach::None,
        api_key_scope: None,
        service_token: true,
    },
    own("keyhouse.v1.UserKeyService/GetKeyOptions", "keys:read"),
    admin("keyhouse.v1.PlatformKeyService/ListPlatformKeys"),
    admin("keyhouse.v1.PlatformKeyService/UpdatePlatformKey"),
    admin("keyhouse.v1.PlatformKeyService/DeletePlatformKey"),
    admin("keyhouse.v1.PlatformKeyService/GetDecryptedPlatformKey"),
    admin("keyhouse.v1.PlatformKeyService/ListPlatformKeyVersions"),
    admin("keyhouse.v1.PlatformKeyService/RollbackPlatformKey"),
    admin("keyhouse.v1.PlatformKeyService/TestPlatformKey"),
    // The LiteLLM sync agent watches with a service token; the subscription is audited.
    Rule {
        service_token: true,
        ..admin("keyhouse.v1.PlatformKeyService/WatchPlatformKeys")
    },
    Rule {
        rpc: "keyhouse.v1.PlatformKeyService/ReportPlatformKeySync",
        anonymous: false,
        user: Reach::None,
        admin: Reach::None,
        api_key_scope: None,
        service_token: true,
    },
    admin("keyhouse.v1.PlatformKeyService/ListAuditEvents"),
    admin("keyhouse.v1.PlatformKeyService/ListPlatformKeyHealth"),
    // Envoy's external authorization: like VerifyKey, the key in the request Envoy describes is
    // the credential, so Envoy calls it with none of its own.
    Rule {
        rpc: "envoy.service.auth.v3.Authorization/Check",
        anonymous: true,
        user: Reach::All,
        admin: Reach::All,
        api_key_scope: None,
        service_token: true,
    },
];

/// The row of `service`'s `method`. Every RPC has one (a test checks it), so a miss is a bug.
pub fn rule(service: &str, method: &str) -> crate::Result<&'static Rule> {
    TABLE
        .iter()
        .find(|r| {
            r.rpc
                .split_once('/')
                .is_some_and(|(s, m)| s == service && m == method)
        })
        .ok_or_else(|| {
            crate::Error::internal(anyhow::anyhow!(
                "no authorization rule for {service}/{method}"
            ))
        })
}

/// The table as Markdown, as the README shows it.
pub fn markdown() -> String {
    let mut out = String::from(
        "| RPC | no credential | user (keyhouse or Ops-Center session) | admin (keyhouse or Ops-Center session) | `uc_` key (its owner's, with scope) | service token |\n|---|---|---|---|---|---|\n",
    );
    let yes = |b: bool| if b { "yes" } else { "no" };
    for r in TABLE {
        out.push_str(&format!(
            "| `{}` | {} | {} | {} | {} | {} |\n",
            r.rpc,
            yes(r.anonymous),
            r.user.label(),
            r.admin.label(),
            r.api_key_scope
                .map_or("no".to_owned(), |s| format!("`{s}`")),
            yes(r.service_token),
        ));
    }
    out
}
