//! Where the time of benchmark 9's REST calls goes: the same work timed piece by piece, from the
//! database calls the server makes (through the same domain functions, on a pool of the same
//! kind) to the whole RPC over gRPC and the whole REST request. One client, every piece once per
//! round, in turns, so that the machine's drift falls on all alike.

use std::future::Future;
use std::time::{Duration, Instant};

use keyhouse_domain::caller::{Caller, IdentitySource, Principal, Role};
use keyhouse_domain::crypto::session_token;
use keyhouse_domain::storage::{audit, platform_keys, sessions, user_keys};
use keyhouse_proto::v1 as pb;
use keyhouse_proto::v1::platform_key_service_client::PlatformKeyServiceClient;
use keyhouse_proto::v1::user_key_service_client::UserKeyServiceClient;
use reqwest::StatusCode;
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement};

use crate::load;
use crate::setup::{Server, authorized};

const ROUNDS: usize = 300;

/// Samples of each piece, by name, in the order first timed.
#[derive(Default)]
struct Pieces(Vec<(&'static str, &'static str, Vec<Duration>)>);

impl Pieces {
    /// Times `call` as the piece `name`, which holds `holds`.
    async fn time<T, E: Into<anyhow::Error>>(
        &mut self,
        name: &'static str,
        holds: &'static str,
        call: impl Future<Output = Result<T, E>>,
    ) -> anyhow::Result<T> {
        let started = Instant::now();
        let out = call.await.map_err(Into::into)?;
        self.record(name, holds, started.elapsed());
        Ok(out)
    }

    fn record(&mut self, name: &'static str, holds: &'static str, took: Duration) {
        match self.0.iter_mut().find(|(n, _, _)| *n == name) {
            Some((_, _, samples)) => samples.push(took),
            None => self.0.push((name, holds, vec![took])),
        }
    }
}

/// PostgreSQL's own execution time of `sql` (EXPLAIN ANALYZE), without the trip to it.
async fn executed(db: &DatabaseConnection, sql: &str) -> anyhow::Result<Duration> {
    let plan = db
        .query_all_raw(Statement::from_string(
            DbBackend::Postgres,
            format!("EXPLAIN (ANALYZE, TIMING OFF) {sql}"),
        ))
        .await?;
    for row in plan {
        let line: String = row.try_get_by_index(0)?;
        if let Some(ms) = line.strip_prefix("Execution Time: ") {
            let ms: f64 = ms.trim_end_matches(" ms").parse()?;
            return Ok(Duration::from_secs_f64(ms / 1000.0));
        }
    }
    anyhow::bail!("no execution time in the plan of {sql}")
}

/// The same database without TLS.
fn no_tls(url: &str) -> String {
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}sslmode=disable")
}

/// A REST GET read to its end; anything but 200 is an error.
async fn get(http: &reqwest::Client, url: &str, token: &str) -> anyhow::Result<()> {
    let answer = http.get(url).bearer_auth(token).send().await?;
    anyhow::ensure!(answer.status() == StatusCode::OK, "{url}: {answer:?}");
    answer.bytes().await?;
    Ok(())
}

pub async fn run(server: &Server, owner: &str, user: &str, admin: &str) -> anyhow::Result<()> {
    let db = keyhouse_domain::db::connect(&server.settings.domain.database_url).await?;
    let channel = server.channel().await?;
    let mut keys = UserKeyServiceClient::new(channel.clone());
    let mut platform = PlatformKeyServiceClient::new(channel);
    let http = reqwest::Client::new();
    let base = format!("http://{}", server.addr);
    let (page, list, decrypted) = (
        format!("{base}/api/v1/account/uc-api-keys?page_size=500"),
        format!("{base}/api/v1/admin/platform-keys"),
        format!("{base}/api/v1/admin/platform-keys/openrouter/decrypted?reason=bench"),
    );
    let caller = Caller {
        principal: Principal {
            user_id: "bench-admin".into(),
            email: String::new(),
            role: Role::Admin,
        },
        source: IdentitySource::Session,
        request_id: "bench".into(),
        via_key: None,
    };
    let details = serde_json::json!({ "source": "database", "version": 1, "reason": "bench" });
    let plain = keyhouse_domain::db::connect(&no_tls(&server.settings.domain.database_url)).await?;
    let raw_page = Statement::from_sql_and_values(
        DbBackend::Postgres,
        "SELECT * FROM user_api_keys WHERE user_id = $1 ORDER BY created_at DESC, id DESC LIMIT $2",
        [owner.into(), 501i64.into()],
    );
    let page_sql = format!(
        "SELECT * FROM user_api_keys WHERE user_id = '{owner}' \
         ORDER BY created_at DESC, id DESC LIMIT 501"
    );
    let mut p = Pieces::default();
    for _ in 0..ROUNDS {
        p.time(
            "a database round trip",
            "`SELECT 1` on a pool like the server's (TLS, as sqlx prefers)",
            db.execute_unprepared("SELECT 1"),
        )
        .await?;
        p.time(
            "a database round trip, no TLS",
            "`SELECT 1` with `sslmode=disable`",
            plain.execute_unprepared("SELECT 1"),
        )
        .await?;
        p.time(
            "session lookup",
            "`sessions::find` uncached: what a call pays when its session is not remembered",
            sessions::find(&db, &session_token::digest(user)),
        )
        .await?;
        let took = executed(&db, &page_sql).await?;
        p.record(
            "page query, 501 rows, in PostgreSQL",
            "its execution time inside PostgreSQL (EXPLAIN ANALYZE)",
            took,
        );
        p.time(
            "page query, 501 rows, not decoded",
            "the same query, prepared; rows left as sqlx rows",
            db.query_all_raw(raw_page.clone()),
        )
        .await?;
        let now = keyhouse_domain::storage::now();
        let rows = p
            .time(
                "page query, 501 rows",
                "`user_keys::list_page`: the query and its rows decoded into models",
                user_keys::list_page(&db, owner, None, None, 500, now),
            )
            .await?;
        anyhow::ensure!(rows.len() == 501, "a page of {} rows", rows.len());
        let request = pb::ListKeysRequest {
            page_size: 500,
            ..Default::default()
        };
        p.time(
            "ListKeys over gRPC, page of 500",
            "the whole RPC: session, query, protobuf",
            keys.list_keys(authorized(request, user)?),
        )
        .await?;
        p.time(
            "REST page of 500",
            "the whole request: the RPC's work and JSON",
            get(&http, &page, user),
        )
        .await?;
        p.time(
            "current platform keys",
            "`all_current` and `previews`: two queries",
            async {
                let current = platform_keys::all_current(&db).await?;
                platform_keys::previews(&db, &current).await
            },
        )
        .await?;
        let request = authorized(pb::ListPlatformKeysRequest {}, admin)?;
        p.time(
            "ListPlatformKeys over gRPC",
            "the whole RPC",
            platform.list_platform_keys(request),
        )
        .await?;
        p.time(
            "REST platform-key list",
            "the whole request",
            get(&http, &list, admin),
        )
        .await?;
        p.time(
            "stored key read",
            "`platform_keys::current`",
            platform_keys::current(&db, "openrouter"),
        )
        .await?;
        p.time(
            "audit transaction",
            "begin, insert the audit row, commit: three round trips",
            async {
                let txn = keyhouse_domain::db::begin(&db).await?;
                audit::record(&txn, &caller, "bench.audit", "openrouter", details.clone()).await?;
                Ok::<_, anyhow::Error>(txn.commit().await?)
            },
        )
        .await?;
        p.time(
            "audit row alone",
            "the same insert outside a transaction: one round trip",
            audit::record(&db, &caller, "bench.audit", "openrouter", details.clone()),
        )
        .await?;
        let request = pb::GetDecryptedPlatformKeyRequest {
            name: "openrouter".into(),
            reason: "bench".into(),
        };
        p.time(
            "GetDecryptedPlatformKey over gRPC",
            "the whole RPC: session, read, decrypt, audit",
            platform.get_decrypted_platform_key(authorized(request, admin)?),
        )
        .await?;
        p.time(
            "REST decrypted key",
            "the whole request",
            get(&http, &decrypted, admin),
        )
        .await?;
    }
    db.close().await?;
    plain.close().await?;
    println!("### Where the time goes (one client, p50 of {ROUNDS} rounds, pieces in turns)\n");
    println!("| piece | p50 | p99 | what it holds |\n|---|---|---|---|");
    for (name, holds, mut samples) in p.0 {
        samples.sort_unstable();
        println!(
            "| {name} | {:.3} ms | {:.3} ms | {holds} |",
            load::quantile(&samples, 0.5).as_secs_f64() * 1000.0,
            load::quantile(&samples, 0.99).as_secs_f64() * 1000.0
        );
    }
    println!();
    Ok(())
}
