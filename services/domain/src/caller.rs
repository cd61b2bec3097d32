//! Who is calling, as every capability sees it: a principal with a role, where that identity came
//! from, and the request id that ties the call's log lines and audit events together. Every kind
//! of credential resolves to this one type; how the credential is read from a request is the
//! server's business (`identity` resolves session tokens for it).

use std::fmt;

use chrono::{DateTime, Utc};
use ipnet::IpNet;
use uuid::Uuid;

pub use crate::error::AuthFailure;
use crate::error::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Admin,
    User,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::User => "user",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "admin" => Ok(Role::Admin),
            "user" => Ok(Role::User),
            other => Err(format!("unknown role '{other}': expected admin or user")),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    pub user_id: String,
    pub email: String,
    pub role: Role,
}

/// What the `uc_` key that authenticated a call holds: all that a key it makes may hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyBounds {
    pub key_id: Uuid,
    pub scopes: Vec<String>,
    /// `None`: the key never expires.
    pub expires_at: Option<DateTime<Utc>>,
    /// Requests a minute; `None`: unlimited.
    pub rate_limit: Option<u32>,
    /// `None`: usable from anywhere.
    pub allowed: Option<Vec<IpNet>>,
}

/// Where a caller's identity came from: recorded on every audit event, so an action can be traced
/// back to the kind of credential behind it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdentitySource {
    /// A session in keyhouse's own table (`keyhouse session create`).
    Session,
    /// A session Ops-Center's login keeps in Redis.
    OpsCenterSession,
    /// A bearer token from an OpenID provider.
    Oidc,
    /// An internal service's token (`KEYHOUSE_SERVICE_TOKENS`).
    ServiceToken,
    /// A `uc_` key acting for its owner.
    ApiKey,
    /// keyhouse itself, in a background task (scheduled health checks).
    System,
}

impl IdentitySource {
    /// The name stored on audit events and shown by ListAuditEvents.
    pub fn as_str(self) -> &'static str {
        match self {
            IdentitySource::Session => "session",
            IdentitySource::OpsCenterSession => "ops_center_session",
            IdentitySource::Oidc => "oidc",
            IdentitySource::ServiceToken => "service_token",
            IdentitySource::ApiKey => "api_key",
            IdentitySource::System => "system",
        }
    }
}

impl fmt::Display for IdentitySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An authenticated request: who, where that identity came from, the key it came through if
/// any, and the id that ties its log lines and audit events together.
#[derive(Clone, Debug)]
pub struct Caller {
    pub principal: Principal,
    pub source: IdentitySource,
    pub request_id: String,
    /// Set when a `uc_` key, not a session, authenticated the call.
    pub via_key: Option<KeyBounds>,
}

impl Caller {
    /// keyhouse acting on its own (`task`, e.g. `health-check`): the actor of the audit events
    /// a background task writes. Never the result of authenticating a request.
    pub fn system(task: &str) -> Self {
        Self {
            principal: Principal {
                user_id: format!("keyhouse:{task}"),
                email: String::new(),
                role: Role::Admin,
            },
            source: IdentitySource::System,
            request_id: Uuid::new_v4().simple().to_string(),
            via_key: None,
        }
    }

    pub fn user_id(&self) -> &str {
        &self.principal.user_id
    }

    /// An admin, or an internal service where the authorization table let its token through.
    pub fn require_admin_or_service(&self) -> Result<()> {
        match self.source {
            IdentitySource::ServiceToken => Ok(()),
            _ => self.require_admin(),
        }
    }

    /// An internal service's token and nothing else.
    pub fn require_service(&self) -> Result<()> {
        match self.source {
            IdentitySource::ServiceToken => Ok(()),
            _ => Err(Error::PermissionDenied(
                "a service token is required".into(),
            )),
        }
    }

    pub fn require_admin(&self) -> Result<()> {
        match self.principal.role {
            Role::Admin => Ok(()),
            Role::User => Err(Error::PermissionDenied("Admin access required".into())),
        }
    }
}
