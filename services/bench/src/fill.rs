//! Rows in bulk, written with SQL (`generate_series`) straight into a migrated PostgreSQL
//! database: user keys shaped like the ones CreateKey stores, and audit events from several
//! actors about many targets. A million rows take one statement each.

use sea_orm::{ConnectionTrait, DatabaseConnection};

/// Actors of the bulk audit events: `actor-0` .. `actor-7`, one event in eight each.
pub const AUDIT_ACTORS: u64 = 8;

/// `total` keys, `owned` of them (spread evenly through the table, as a user's keys are when
/// many users create keys over time) held by `user`; the rest belong to users `user-N`, about
/// 20 keys each. Key `i` was created `i` seconds ago, so `user`'s newest key is its first. The
/// hashes are not real: these keys are listed, never verified.
pub async fn user_keys(
    conn: &DatabaseConnection,
    user: &str,
    owned: u64,
    total: u64,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        owned > 0 && total.is_multiple_of(owned),
        "{total} keys do not spread evenly over {owned}"
    );
    anyhow::ensure!(user.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
    let stride = total / owned;
    let others = (total / 20).max(1);
    conn.execute_unprepared(&format!(
        "INSERT INTO user_api_keys (id, user_id, key_name, key_hash, key_prefix, key_last4, \
           permissions, created_at, last_used, expires_at, is_active, revoked_at, metadata, \
           rate_limit_per_minute, allowed_ips) \
         SELECT gen_random_uuid(), \
           CASE WHEN i % {stride} = 0 THEN '{user}' ELSE 'user-' || (i % {others}) END, \
           'bulk key ' || i, \
           '$2b$04$' || substr(md5(i::text) || md5((-i)::text), 1, 53), \
           'uc_' || substr(md5('prefix' || i), 1, 12), \
           substr(md5('last4' || i), 1, 4), \
           '[\"llm:inference\", \"llm:models\"]'::json, \
           now() - make_interval(secs => i), \
           CASE WHEN i % 3 = 0 THEN now() - make_interval(secs => i / 2) END, \
           now() + interval '90 days', \
           i % 50 <> 0, \
           CASE WHEN i % 50 = 0 THEN now() END, \
           '{{}}'::json, \
           CASE WHEN i % 4 = 0 THEN 600 END, \
           NULL \
         FROM generate_series(1, {total}) AS i"
    ))
    .await?;
    Ok(())
}

/// `total` audit events, newest first one second apart, by `actor-0` .. `actor-7`, about
/// 1,000 targets and four actions.
pub async fn audit_events(conn: &DatabaseConnection, total: u64) -> anyhow::Result<()> {
    conn.execute_unprepared(&format!(
        "INSERT INTO audit_events (id, occurred_at, actor, action, target, request_id, details) \
         SELECT gen_random_uuid(), \
           now() - make_interval(secs => i), \
           'actor-' || (i % {AUDIT_ACTORS}), \
           (ARRAY['user_key.create', 'user_key.revoke', 'platform_key.update', \
                  'platform_key.decrypt'])[1 + i % 4], \
           'target-' || (i % 1000), \
           md5('request' || i), \
           json_build_object('reason', 'bulk', 'n', i) \
         FROM generate_series(1, {total}) AS i"
    ))
    .await?;
    Ok(())
}

/// What autovacuum would do after a bulk load: visibility map and planner statistics.
pub async fn settle(conn: &DatabaseConnection) -> anyhow::Result<()> {
    conn.execute_unprepared("VACUUM ANALYZE user_api_keys, audit_events")
        .await?;
    Ok(())
}
