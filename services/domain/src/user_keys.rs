//! The user API key operations behind UserKeyService: validation, the rules of the issue
//! tracker's contract, storage and audit in one transaction. Transports only translate.

use chrono::{DateTime, Duration, Utc};
use keyhouse_proto::v1 as pb;
use sea_orm::{DatabaseConnection, Set};
use serde_json::json;
use uuid::Uuid;

use crate::caller::{Caller, Role};
use crate::change_feed::{Change, ChangeFeed};
use crate::config::{DEFAULT_EXPIRY_DAYS, DEFAULT_KEY_PERMISSIONS, KeyPolicy, MAX_EXPIRY_DAYS};
use crate::crypto::api_key::ApiKey;
use crate::crypto::mask;
use crate::entities::user_api_keys;
use crate::error::{Error, Result};
use crate::paging::{self, Cursor};
use crate::storage::user_keys::{self as store, Listed, NewSecret, Status};
use crate::storage::{audit, now};
use crate::timestamp;
use crate::verify::{Verifier, parse_network};

pub const CREATE_WARNING: &str = "Save this API key now. You won't be able to see it again.";
pub const REGENERATE_WARNING: &str =
    "Key regenerated! Save this new API key now. The old key is now invalid.";

const MAX_RATE_LIMIT: i32 = 1_000_000;
const MAX_ALLOWED_NETWORKS: usize = 100;

#[derive(Clone)]
pub struct UserKeys {
    db: DatabaseConnection,
    policy: KeyPolicy,
    feed: ChangeFeed,
    verifier: Verifier,
}

impl UserKeys {
    pub fn new(
        db: DatabaseConnection,
        policy: KeyPolicy,
        feed: ChangeFeed,
        verifier: Verifier,
    ) -> Self {
        Self {
            db,
            policy,
            feed,
            verifier,
        }
    }

    #[tracing::instrument(skip_all, fields(user_id = %caller.user_id(), request_id = %caller.request_id))]
    pub async fn create(
        &self,
        caller: &Caller,
        req: pb::CreateKeyRequest,
    ) -> Result<pb::IssuedKey> {
        let name = validate_name(&req.name)?;
        let now = now();
        let expires_at = self.expiry(caller, req.expires_in_days, now)?;
        let permissions = self.permissions(req.permissions)?;
        let rate_limit = match req.rate_limit_per_minute {
            None => None,
            Some(n @ 1..=MAX_RATE_LIMIT) => Some(n),
            Some(n) => {
                return Err(Error::invalid(
                    "rate_limit_per_minute",
                    format!(
                        "rate_limit_per_minute must be between 1 and {MAX_RATE_LIMIT}, got {n}"
                    ),
                ));
            }
        };
        let allowed_ips = allowed_networks(&req.allowed_ips)?;
        within_bounds(
            caller,
            &permissions,
            expires_at,
            rate_limit,
            allowed_ips.as_deref(),
        )?;
        crate::db::guarded(&self.db, self.within_limits(&self.db, caller, now, true)).await?;
        let key = ApiKey::generate()?;
        let key_hash = key.hash(self.policy.bcrypt_cost).await?;

        let id = Uuid::new_v4();
        let txn = crate::db::begin(&self.db).await?;
        // Counted again where it is written, with the user's other creations held off: the
        // bcrypt above gave them time to run.
        store::lock_owner(&txn, caller.user_id()).await?;
        self.within_limits(&txn, caller, now, true).await?;
        let row = store::insert(
            &txn,
            user_api_keys::ActiveModel {
                id: Set(id),
                user_id: Set(caller.user_id().to_owned()),
                key_name: Set(name),
                key_hash: Set(key_hash),
                key_prefix: Set(key.lookup_prefix().to_owned()),
                key_last4: Set(key.last4().to_owned()),
                permissions: Set(json!(permissions)),
                created_at: Set(now),
                last_used: Set(None),
                expires_at: Set(expires_at),
                is_active: Set(true),
                revoked_at: Set(None),
                metadata: Set(json!({})),
                rate_limit_per_minute: Set(rate_limit),
                allowed_ips: Set(allowed_ips.map(|a| json!(a))),
                key_tag: Set(Some(self.verifier.tag(&key))),
            },
        )
        .await?;
        audit::record(
            &txn,
            caller,
            "user_key.create",
            &id.to_string(),
            json!({
                "key_name": row.key_name, "permissions": permissions, "key_preview": key.preview(),
            }),
        )
        .await?;
        txn.commit().await?;
        tracing::info!(key_id = %id, "API key created");
        Ok(issued(&row, &key, CREATE_WARNING))
    }

    #[tracing::instrument(skip_all, fields(user_id = %caller.user_id()))]
    pub async fn list(
        &self,
        caller: &Caller,
        req: pb::ListKeysRequest,
    ) -> Result<pb::ListKeysResponse> {
        let limit = paging::page_size(req.page_size)?;
        let status = match req.status.trim() {
            "" => None,
            s => Some(Status::parse(s).ok_or_else(|| {
                Error::invalid("status", "status must be one of active, expired, revoked")
            })?),
        };
        let after = Cursor::decode(&req.page_token)?;
        let now = now();
        let rows = crate::db::guarded(
            &self.db,
            store::list_page(&self.db, caller.user_id(), status, after, limit, now),
        )
        .await?;
        let (rows, next_page_token) = paging::split_page(rows, limit, |r| Cursor {
            at: r.created_at,
            id: r.id,
        });
        Ok(pb::ListKeysResponse {
            keys: rows.into_iter().map(|r| listed(r, now)).collect(),
            next_page_token,
        })
    }

    #[tracing::instrument(skip_all, fields(user_id = %caller.user_id()))]
    pub async fn get(&self, caller: &Caller, req: pb::GetKeyRequest) -> Result<pb::ApiKey> {
        let id = parse_key_id(&req.key_id)?;
        let row = self.find(caller, id).await?;
        Ok(listed(row.into(), now()))
    }

    #[tracing::instrument(skip_all, fields(user_id = %caller.user_id(), request_id = %caller.request_id))]
    pub async fn revoke(
        &self,
        caller: &Caller,
        req: pb::RevokeKeyRequest,
    ) -> Result<pb::RevokeKeyResponse> {
        let id = parse_key_id(&req.key_id)?;
        let txn = crate::db::begin(&self.db).await?;
        if store::find_owned(&txn, caller.user_id(), id)
            .await?
            .is_none()
        {
            return Err(not_found());
        }
        if store::revoke(&txn, caller.user_id(), id, now()).await? {
            audit::record(&txn, caller, "user_key.revoke", &id.to_string(), json!({})).await?;
            self.commit_change(txn, id).await?;
            tracing::info!(key_id = %id, "API key revoked");
        } else {
            txn.commit().await?;
        }
        Ok(pb::RevokeKeyResponse {
            success: true,
            message: "API key revoked successfully".into(),
            key_id: id.to_string(),
        })
    }

    #[tracing::instrument(skip_all, fields(user_id = %caller.user_id(), request_id = %caller.request_id))]
    pub async fn regenerate(
        &self,
        caller: &Caller,
        req: pb::RegenerateKeyRequest,
    ) -> Result<pb::IssuedKey> {
        let id = parse_key_id(&req.key_id)?;
        let now = now();
        let expires_at = self.expiry(caller, req.expires_in_days, now)?;
        let current = self.find(caller, id).await?;
        if !current.is_active {
            return Err(revoked());
        }
        let allowed = current.allowed_ips.as_ref().map(strings);
        within_bounds(
            caller,
            &permissions_of(&current),
            expires_at,
            current.rate_limit_per_minute,
            allowed.as_deref(),
        )?;
        let key = ApiKey::generate()?;
        let secret = NewSecret {
            key_tag: self.verifier.tag(&key),
            key_hash: key.hash(self.policy.bcrypt_cost).await?,
            key_prefix: key.lookup_prefix().to_owned(),
            key_last4: key.last4().to_owned(),
            expires_at,
        };
        let txn = crate::db::begin(&self.db).await?;
        // An expired key made active again counts against the active-keys limit.
        if Status::of(current.is_active, current.expires_at, now) == Status::Expired {
            store::lock_owner(&txn, caller.user_id()).await?;
            self.within_limits(&txn, caller, now, false).await?;
        }
        // A revoke that landed while bcrypt ran wins: the update only touches an active key.
        let row = store::replace_secret(&txn, caller.user_id(), id, secret)
            .await?
            .ok_or_else(revoked)?;
        audit::record(
            &txn,
            caller,
            "user_key.regenerate",
            &id.to_string(),
            json!({
                "key_preview": key.preview(),
            }),
        )
        .await?;
        self.commit_change(txn, id).await?;
        tracing::info!(key_id = %id, "API key regenerated");
        Ok(issued(&row, &key, REGENERATE_WARNING))
    }

    /// Verification counts per hour of a key: the owner's, or any key for an admin.
    #[tracing::instrument(skip_all, fields(user_id = %caller.user_id()))]
    pub async fn usage(
        &self,
        caller: &Caller,
        req: pb::GetKeyUsageRequest,
    ) -> Result<pb::GetKeyUsageResponse> {
        let id = parse_key_id(&req.key_id)?;
        let to = match &req.to {
            Some(t) => crate::from_timestamp(t, "to")?,
            None => now(),
        };
        let from = match &req.from {
            Some(t) => crate::from_timestamp(t, "from")?,
            None => to - Duration::days(30),
        };
        if from >= to {
            return Err(Error::invalid("from", "from must be before to"));
        }
        // Counts before the key's row: a flush that lands in between then shows in both.
        let hours = crate::db::guarded(&self.db, store::usage(&self.db, id, from, to)).await?;
        let row = match caller.principal.role {
            Role::Admin => crate::db::guarded(&self.db, store::find(&self.db, id))
                .await?
                .ok_or_else(not_found)?,
            Role::User => self.find(caller, id).await?,
        };
        Ok(pb::GetKeyUsageResponse {
            key_id: id.to_string(),
            total_requests: hours.iter().map(|h| h.requests).sum(),
            hours: hours
                .iter()
                .map(|h| pb::HourlyUsage {
                    hour: Some(timestamp(h.hour)),
                    requests: h.requests,
                })
                .collect(),
            last_used: row.last_used.map(timestamp),
        })
    }

    /// Commits a change to a key and makes every replica forget its cached verdict: this one
    /// at once, the others through the change feed.
    async fn commit_change(&self, txn: sea_orm::DatabaseTransaction, id: Uuid) -> Result<()> {
        self.feed.commit(txn, &[Change::UserKey(id)]).await?;
        self.verifier.invalidate(id);
        Ok(())
    }

    /// The user's active keys, and for a create this minute's creates, against the policy.
    async fn within_limits(
        &self,
        conn: &impl sea_orm::ConnectionTrait,
        caller: &Caller,
        now: DateTime<Utc>,
        creating: bool,
    ) -> Result<()> {
        let max = self.policy.max_active_keys_per_user;
        if store::count_active(conn, caller.user_id(), now, max).await? >= max {
            return Err(Error::ResourceExhausted(format!(
                "a user may hold at most {max} active API keys (KEYHOUSE_MAX_ACTIVE_KEYS_PER_USER); revoke one first"
            )));
        }
        if !creating {
            return Ok(());
        }
        let max = self.policy.max_key_creates_per_minute;
        let since = now - Duration::minutes(1);
        if store::count_created_since(conn, caller.user_id(), since, max).await? >= max {
            return Err(Error::ResourceExhausted(format!(
                "a user may create at most {max} API keys a minute (KEYHOUSE_MAX_KEY_CREATES_PER_MINUTE); try again shortly"
            )));
        }
        Ok(())
    }

    /// What CreateKey accepts on this server, for a client to build its form from. The same
    /// for every caller: a key's own bounds are checked when it creates, not shown here.
    pub fn options(&self, _caller: &Caller) -> pb::KeyOptions {
        pb::KeyOptions {
            scopes: self.policy.scopes.clone(),
            default_scopes: DEFAULT_KEY_PERMISSIONS
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
            default_expires_in_days: DEFAULT_EXPIRY_DAYS,
            max_expires_in_days: MAX_EXPIRY_DAYS,
            allows_non_expiring: self.policy.allow_non_expiring_keys,
            max_rate_limit_per_minute: MAX_RATE_LIMIT,
            max_active_keys: i64::try_from(self.policy.max_active_keys_per_user)
                .unwrap_or(i64::MAX),
        }
    }

    async fn find(&self, caller: &Caller, id: Uuid) -> Result<user_api_keys::Model> {
        crate::db::guarded(&self.db, store::find_owned(&self.db, caller.user_id(), id))
            .await?
            .ok_or_else(not_found)
    }

    /// The expiry asked for. Unasked, it is the default, or the calling key's own expiry when
    /// that comes sooner: a key made through a key may not outlive it.
    fn expiry(
        &self,
        caller: &Caller,
        days: Option<i32>,
        now: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>> {
        let limit = caller.via_key.as_ref().and_then(|k| k.expires_at);
        if let (None, Some(limit)) = (days, limit)
            && limit < now + Duration::days(i64::from(DEFAULT_EXPIRY_DAYS))
        {
            return Ok(Some(limit));
        }
        match days.unwrap_or(DEFAULT_EXPIRY_DAYS) {
            0 if self.policy.allow_non_expiring_keys => Ok(None),
            0 => Err(Error::invalid(
                "expires_in_days",
                format!(
                    "expires_in_days must be between 1 and {MAX_EXPIRY_DAYS}: keys that never expire are not allowed on this server"
                ),
            )),
            d @ 1..=MAX_EXPIRY_DAYS => Ok(Some(now + Duration::days(i64::from(d)))),
            d => Err(Error::invalid(
                "expires_in_days",
                format!("expires_in_days must be between 1 and {MAX_EXPIRY_DAYS}, got {d}"),
            )),
        }
    }

    fn permissions(&self, requested: Vec<String>) -> Result<Vec<String>> {
        if requested.is_empty() {
            return Ok(DEFAULT_KEY_PERMISSIONS
                .iter()
                .map(|s| (*s).to_owned())
                .collect());
        }
        let mut granted: Vec<String> = Vec::with_capacity(requested.len());
        for scope in requested {
            if scope.trim().is_empty() {
                return Err(Error::invalid(
                    "permissions",
                    "permissions must not contain an empty scope",
                ));
            }
            if !self.policy.scopes.contains(&scope) {
                return Err(Error::invalid(
                    "permissions",
                    format!(
                        "permissions: unknown scope '{scope}'; known scopes: {}",
                        self.policy.scopes.join(", ")
                    ),
                ));
            }
            if granted.contains(&scope) {
                return Err(Error::invalid(
                    "permissions",
                    format!("permissions: duplicate scope '{scope}'"),
                ));
            }
            granted.push(scope);
        }
        Ok(granted)
    }
}

fn validate_name(name: &str) -> Result<String> {
    let name = name.trim();
    let len = name.chars().count();
    if !(1..=255).contains(&len) {
        return Err(Error::invalid(
            "name",
            format!("name must be 1-255 characters after trimming, got {len}"),
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(Error::invalid(
            "name",
            "name must not contain control characters",
        ));
    }
    Ok(name.to_owned())
}

pub fn parse_key_id(key_id: &str) -> Result<Uuid> {
    Uuid::parse_str(key_id.trim()).map_err(|_| Error::invalid("key_id", "invalid key_id format"))
}

fn allowed_networks(requested: &[String]) -> Result<Option<Vec<String>>> {
    if requested.is_empty() {
        return Ok(None);
    }
    if requested.len() > MAX_ALLOWED_NETWORKS {
        return Err(Error::invalid(
            "allowed_ips",
            format!("allowed_ips may hold at most {MAX_ALLOWED_NETWORKS} networks"),
        ));
    }
    requested
        .iter()
        .map(|cidr| {
            parse_network(cidr)
                .map(|net| net.to_string())
                .ok_or_else(|| {
                    Error::invalid(
                        "allowed_ips",
                        format!("allowed_ips: '{cidr}' is not an IP network (CIDR) or address"),
                    )
                })
        })
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

/// A key that makes (or regenerates) a key hands on no more than it holds: no scope it lacks, no
/// later expiry, no higher rate limit, no network outside its own allowlist. A session caller
/// has no such bound.
fn within_bounds(
    caller: &Caller,
    scopes: &[String],
    expires_at: Option<DateTime<Utc>>,
    rate_limit: Option<i32>,
    allowed: Option<&[String]>,
) -> Result<()> {
    let Some(via) = &caller.via_key else {
        return Ok(());
    };
    let exceeds = |what: String| {
        Err(Error::PermissionDenied(format!(
            "the API key making this call cannot give more than it holds: {what}"
        )))
    };
    if let Some(extra) = scopes.iter().find(|s| !via.scopes.contains(s)) {
        return exceeds(format!(
            "permissions: '{extra}' is not one of its scopes ({})",
            via.scopes.join(", ")
        ));
    }
    if let Some(limit) = via.expires_at
        && expires_at.is_none_or(|at| at > limit)
    {
        return exceeds(format!(
            "expires_in_days: it expires at {}, and a key it makes may not outlive it (leave \
             expires_in_days out to take its expiry)",
            limit.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        ));
    }
    if let Some(limit) = via.rate_limit
        && rate_limit.is_none_or(|n| i64::from(n) > i64::from(limit))
    {
        return exceeds(format!(
            "rate_limit_per_minute: it is limited to {limit} requests a minute, and so must be a key it makes"
        ));
    }
    if let Some(own) = &via.allowed {
        let inside = |cidr: &String| {
            parse_network(cidr).is_some_and(|net| own.iter().any(|o| o.contains(&net)))
        };
        let own_list = own
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        match allowed {
            None => {
                return exceeds(format!(
                    "allowed_ips: it may only be used from {own_list}, and so must be a key it makes"
                ));
            }
            Some(list) => {
                if let Some(outside) = list.iter().find(|c| !inside(c)) {
                    return exceeds(format!(
                        "allowed_ips: {outside} is not within its own networks ({own_list})"
                    ));
                }
            }
        }
    }
    Ok(())
}

fn not_found() -> Error {
    Error::NotFound("API key not found".into())
}

fn revoked() -> Error {
    Error::FailedPrecondition("Cannot regenerate a revoked key. Generate a new key instead.".into())
}

fn permissions_of(row: &user_api_keys::Model) -> Vec<String> {
    strings(&row.permissions)
}

/// A stored JSON array of strings (scopes, networks), read without copying the JSON first.
fn strings(json: &serde_json::Value) -> Vec<String> {
    json.as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn issued(row: &user_api_keys::Model, key: &ApiKey, warning: &str) -> pb::IssuedKey {
    pb::IssuedKey {
        key_id: row.id.to_string(),
        api_key: key.expose().to_owned(),
        key_name: row.key_name.clone(),
        key_preview: key.preview(),
        permissions: permissions_of(row),
        created_at: Some(timestamp(row.created_at)),
        expires_at: row.expires_at.map(timestamp),
        warning: warning.to_owned(),
    }
}

fn listed(row: Listed, now: DateTime<Utc>) -> pb::ApiKey {
    pb::ApiKey {
        key_id: row.id.to_string(),
        key_preview: mask::preview_parts(
            &row.key_prefix,
            &row.key_last4,
            crate::crypto::api_key::KEY_LEN,
        ),
        key_name: row.key_name,
        permissions: strings(&row.permissions),
        created_at: Some(timestamp(row.created_at)),
        last_used: row.last_used.map(timestamp),
        expires_at: row.expires_at.map(timestamp),
        is_active: row.is_active,
        status: Status::of(row.is_active, row.expires_at, now)
            .as_str()
            .to_owned(),
        rate_limit_per_minute: row.rate_limit_per_minute,
        allowed_ips: row.allowed_ips.as_ref().map(strings).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::caller::{IdentitySource, KeyBounds, Principal};

    fn through(bounds: KeyBounds) -> Caller {
        Caller {
            principal: Principal {
                user_id: "alice".into(),
                email: String::new(),
                role: Role::User,
            },
            source: IdentitySource::ApiKey,
            request_id: "test".into(),
            via_key: Some(bounds),
        }
    }

    fn key(expires_in_days: Option<i64>, rate_limit: Option<u32>, allowed: &[&str]) -> KeyBounds {
        KeyBounds {
            key_id: Uuid::nil(),
            scopes: vec!["keys:manage".into(), "llm:inference".into()],
            expires_at: expires_in_days.map(|d| Utc::now() + Duration::days(d)),
            rate_limit,
            allowed: (!allowed.is_empty())
                .then(|| allowed.iter().filter_map(|c| parse_network(c)).collect()),
        }
    }

    fn refused_for(result: Result<()>) -> String {
        match result {
            Err(Error::PermissionDenied(m)) => m,
            other => panic!("expected PERMISSION_DENIED, got {other:?}"),
        }
    }

    fn strings(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn a_session_is_not_bounded() {
        let session = Caller {
            source: IdentitySource::Session,
            via_key: None,
            ..through(key(Some(1), Some(1), &["10.0.0.0/8"]))
        };
        assert!(within_bounds(&session, &strings(&["usage:read"]), None, None, None).is_ok());
    }

    #[test]
    fn scopes_expiry_and_rate_must_stay_within_the_calling_key() {
        let caller = through(key(Some(10), Some(50), &[]));
        let soon = Some(Utc::now() + Duration::days(5));
        let scopes = strings(&["llm:inference"]);
        assert!(within_bounds(&caller, &scopes, soon, Some(50), None).is_ok());
        let m = refused_for(within_bounds(
            &caller,
            &strings(&["usage:read"]),
            soon,
            Some(5),
            None,
        ));
        assert!(m.contains("permissions: 'usage:read'"), "{m}");
        let later = Some(Utc::now() + Duration::days(11));
        assert!(
            refused_for(within_bounds(&caller, &scopes, later, Some(5), None))
                .contains("expires_in_days")
        );
        assert!(
            refused_for(within_bounds(&caller, &scopes, None, Some(5), None))
                .contains("expires_in_days")
        );
        assert!(
            refused_for(within_bounds(&caller, &scopes, soon, None, None))
                .contains("rate_limit_per_minute")
        );
        assert!(
            refused_for(within_bounds(&caller, &scopes, soon, Some(51), None))
                .contains("rate_limit_per_minute")
        );
        // A key that never expires and has no limit bounds neither.
        let open = through(key(None, None, &[]));
        assert!(within_bounds(&open, &scopes, None, None, None).is_ok());
    }

    #[test]
    fn networks_must_lie_inside_one_of_the_calling_keys_networks() {
        let caller = through(key(None, None, &["10.0.0.0/8", "2001:db8::/32"]));
        let scopes = strings(&["llm:inference"]);
        let inside = strings(&["10.1.0.0/16", "2001:db8:1::/48", "10.2.3.4"]);
        assert!(within_bounds(&caller, &scopes, None, None, Some(&inside)).is_ok());
        for outside in [
            &["10.0.0.0/7"][..],
            &["192.168.0.1"],
            &["2001:db9::/32"],
            &["::ffff:10.0.0.1/128"],
        ] {
            let m = refused_for(within_bounds(
                &caller,
                &scopes,
                None,
                None,
                Some(&strings(outside)),
            ));
            assert!(m.contains("allowed_ips"), "{outside:?}: {m}");
        }
        let m = refused_for(within_bounds(&caller, &scopes, None, None, None));
        assert!(m.contains("allowed_ips"), "{m}");
    }
}
