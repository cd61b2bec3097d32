//! Ops-Center's sessions, read where its login writes them: Redis key `<prefix><token>`, a JSON
//! value set with SETEX. keyhouse only ever GETs (and asks the key's TTL); it never writes.
//!
//! The user is the object under `"user"`: its id is `user_id`, else `sub`, else `id`. Its role
//! is `role` when present (`admin` is an admin; `power_user`, `user` and `viewer` are users: in
//! Ops-Center a viewer manages their own API keys too); otherwise the first of the operator's
//! group mappings that matches one of `groups`, `ak_groups` or `realm_access.roles`, admin
//! groups first. Nothing matching, or an unknown role, is no access: never admin by default,
//! and never admin by username.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::Resolved;
use crate::caller::{AuthFailure, IdentitySource, Principal, Role};
use crate::config::{
    OPS_CENTER_ADMIN_GROUPS_VAR, OPS_CENTER_PREFIX_VAR, OPS_CENTER_REDIS_URL_VAR,
    OPS_CENTER_USER_GROUPS_VAR, OpsCenterSessions,
};
use crate::error::{Error, Result};

/// The most a sign-in waits for Redis: past it the caller is told the session store is
/// unavailable (never that they are signed out), and may retry.
const REDIS_TIMEOUT: Duration = Duration::from_millis(100);
/// How long the connection at start, and each reconnection after an outage, may take.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

#[derive(Clone)]
pub struct OpsCenter {
    redis: redis::aio::ConnectionManager,
    prefix: String,
    roles: GroupRoles,
}

impl OpsCenter {
    /// `None` when no Redis URL is configured.
    pub async fn connect(settings: &OpsCenterSessions) -> Result<Option<Self>> {
        let Some(url) = settings
            .redis_url
            .as_ref()
            .filter(|u| !u.expose().trim().is_empty())
        else {
            return Ok(None);
        };
        let roles = GroupRoles::new(&settings.admin_groups, &settings.user_groups)?;
        if settings.prefix.is_empty() {
            return Err(Error::FailedPrecondition(format!(
                "{OPS_CENTER_PREFIX_VAR} must not be empty: it is the prefix of Ops-Center's \
                 session keys (its default is `session:`)"
            )));
        }
        // The error's text could quote the URL, password and all: it is left out.
        let client = redis::Client::open(url.expose().trim()).map_err(|_| {
            Error::FailedPrecondition(format!(
                "{OPS_CENTER_REDIS_URL_VAR} is not a Redis URL: expected \
                 redis://[:password@]host[:port][/db] or rediss://…"
            ))
        })?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_number_of_retries(1)
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(REDIS_TIMEOUT));
        let redis = redis::aio::ConnectionManager::new_with_config(client, config)
            .await
            .map_err(|e| {
                Error::Unavailable(format!(
                    "cannot reach Ops-Center's session Redis at {OPS_CENTER_REDIS_URL_VAR}: {:?}",
                    e.kind()
                ))
            })?;
        Ok(Some(Self {
            redis,
            prefix: settings.prefix.clone(),
            roles,
        }))
    }

    /// The session stored for `token`: one round trip (GET and PTTL together), bounded by
    /// `REDIS_TIMEOUT`.
    pub async fn find(&self, token: &str) -> Result<Resolved> {
        let key = format!("{}{token}", self.prefix);
        let mut redis = self.redis.clone();
        let mut pipe = redis::pipe();
        pipe.get(&key).pttl(&key);
        let read = pipe.query_async::<(Option<Vec<u8>>, i64)>(&mut redis);
        let (value, ttl_ms) = match tokio::time::timeout(REDIS_TIMEOUT, read).await {
            Ok(Ok(read)) => read,
            // Neither the key nor the token goes to the log.
            Ok(Err(e)) => return Err(unavailable(&format!("{:?}", e.kind()))),
            Err(_) => return Err(unavailable("no answer in time")),
        };
        let now = Utc::now();
        // -2: the key expired between the two commands; -1: Ops-Center set no expiry.
        let until = match ttl_ms {
            -2 => return Err(signed_out()),
            ms if ms < 0 => DateTime::<Utc>::MAX_UTC,
            ms => now + chrono::Duration::milliseconds(ms),
        };
        let value = value.ok_or_else(signed_out)?;
        let session: Value = serde_json::from_slice(&value).map_err(|e| {
            tracing::warn!(
                error = %e,
                "an Ops-Center session in Redis is not JSON; the call is refused as signed out"
            );
            signed_out()
        })?;
        Ok(Resolved {
            principal: principal(&session, &self.roles)?,
            source: IdentitySource::OpsCenterSession,
            until,
        })
    }
}

fn unavailable(why: &str) -> Error {
    tracing::warn!(why, "Ops-Center's session Redis did not answer a sign-in");
    Error::Unavailable("Ops-Center sessions are unavailable; try again".into())
}

fn signed_out() -> Error {
    Error::Unauthenticated(AuthFailure::InvalidSession)
}

/// The operator's mapping from Ops-Center groups (and Keycloak realm roles) to keyhouse roles.
#[derive(Clone, Debug, Default)]
pub struct GroupRoles {
    admin: Vec<String>,
    user: Vec<String>,
}

impl GroupRoles {
    /// Refuses a group in both lists: which role it gives would be a guess.
    pub fn new(admin: &[String], user: &[String]) -> Result<Self> {
        let clean = |list: &[String]| -> Vec<String> {
            list.iter()
                .map(|g| g.trim().to_owned())
                .filter(|g| !g.is_empty())
                .collect()
        };
        let (admin, user) = (clean(admin), clean(user));
        if let Some(both) = admin.iter().find(|g| user.contains(g)) {
            return Err(Error::FailedPrecondition(format!(
                "the group '{both}' is in both {OPS_CENTER_ADMIN_GROUPS_VAR} and \
                 {OPS_CENTER_USER_GROUPS_VAR}; name it in one"
            )));
        }
        Ok(Self { admin, user })
    }

    fn role_of(&self, groups: &[&str]) -> Option<Role> {
        let any = |list: &[String]| groups.iter().any(|g| list.iter().any(|m| m == g));
        if any(&self.admin) {
            Some(Role::Admin)
        } else if any(&self.user) {
            Some(Role::User)
        } else {
            None
        }
    }
}

/// The principal of an Ops-Center session value. No user (`"user": null`, before login) or no
/// id is signed out; a user whose role maps to nothing is refused as such.
pub fn principal(session: &Value, roles: &GroupRoles) -> Result<Principal> {
    let user = session
        .get("user")
        .filter(|u| u.is_object())
        .ok_or_else(signed_out)?;
    let user_id = ["user_id", "sub", "id"]
        .iter()
        .find_map(|field| match user.get(*field)? {
            Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_owned()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        })
        .ok_or_else(signed_out)?;
    let email = user
        .get("email")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .trim()
        .to_owned();
    let stated = user
        .get("role")
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|r| !r.is_empty());
    let role = match stated {
        Some("admin") => Some(Role::Admin),
        Some("power_user" | "user" | "viewer") => Some(Role::User),
        Some(_) => None,
        None => roles.role_of(&groups(user)),
    };
    let role = role.ok_or_else(|| {
        Error::PermissionDenied(
            "your Ops-Center role and groups give no access to keyhouse; an operator maps \
             groups to roles"
                .into(),
        )
    })?;
    Ok(Principal {
        user_id,
        email,
        role,
    })
}

/// The user's groups and realm roles: `groups` (names, or objects with a `name`), Authentik's
/// `ak_groups`, and Keycloak's `realm_access.roles`.
fn groups(user: &Value) -> Vec<&str> {
    [
        user.get("groups"),
        user.get("ak_groups"),
        user.pointer("/realm_access/roles"),
    ]
    .into_iter()
    .flatten()
    .filter_map(Value::as_array)
    .flatten()
    .filter_map(|g| g.as_str().or_else(|| g.get("name")?.as_str()))
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn roles() -> GroupRoles {
        GroupRoles::new(
            &["admins".into(), "ops-center-admin".into()],
            &["staff".into()],
        )
        .expect("valid")
    }

    fn role_of(user: Value) -> Result<Role> {
        principal(&json!({ "user": user, "csrf_token": "x" }), &roles()).map(|p| p.role)
    }

    #[test]
    fn the_id_is_user_id_then_sub_then_id() {
        let p = |user| principal(&json!({ "user": user }), &roles()).expect("signed in");
        let all = json!({ "user_id": "u1", "sub": "s1", "id": "i1", "role": "user" });
        assert_eq!(p(all).user_id, "u1");
        assert_eq!(
            p(json!({ "sub": "s1", "id": 7, "role": "user" })).user_id,
            "s1"
        );
        assert_eq!(p(json!({ "id": 7, "role": "user" })).user_id, "7");
    }

    #[test]
    fn a_stated_role_wins_and_only_admin_is_admin() {
        assert_eq!(
            role_of(json!({ "id": "a", "role": "admin" })).ok(),
            Some(Role::Admin)
        );
        for role in ["power_user", "user", "viewer"] {
            let user = json!({ "id": "a", "role": role, "groups": ["admins"] });
            assert_eq!(role_of(user).ok(), Some(Role::User), "{role}");
        }
    }

    #[test]
    fn without_a_role_the_groups_decide_admin_first() {
        let keycloak = json!({ "id": "a", "realm_access": { "roles": ["staff", "admins"] } });
        assert_eq!(role_of(keycloak).ok(), Some(Role::Admin));
        let objects = json!({ "id": "a", "groups": [{ "name": "staff" }] });
        assert_eq!(role_of(objects).ok(), Some(Role::User));
        let authentik = json!({ "id": "a", "ak_groups": ["ops-center-admin"] });
        assert_eq!(role_of(authentik).ok(), Some(Role::Admin));
    }

    #[test]
    fn unknown_roles_and_unmatched_groups_give_no_access() {
        for user in [
            json!({ "id": "a", "role": "superuser" }),
            json!({ "id": "a", "groups": ["admin", "administrators"] }),
            json!({ "id": "admin", "username": "admin", "preferred_username": "admin" }),
        ] {
            assert!(
                matches!(role_of(user.clone()), Err(Error::PermissionDenied(_))),
                "{user}"
            );
        }
    }

    #[test]
    fn no_user_or_no_id_is_signed_out() {
        for session in [
            json!({ "user": null, "csrf_token": "x" }),
            json!({ "csrf_token": "x" }),
            json!({ "user": { "email": "a@example.com", "role": "admin" } }),
            json!({ "user": "alice" }),
        ] {
            assert!(
                matches!(
                    principal(&session, &roles()),
                    Err(Error::Unauthenticated(AuthFailure::InvalidSession))
                ),
                "{session}"
            );
        }
    }

    #[test]
    fn a_group_in_both_lists_is_refused_naming_both_settings() {
        let err = GroupRoles::new(&["ops".into()], &["ops".into()]).expect_err("refused");
        let text = err.to_string();
        assert!(
            text.contains(OPS_CENTER_ADMIN_GROUPS_VAR) && text.contains(OPS_CENTER_USER_GROUPS_VAR)
        );
    }
}
