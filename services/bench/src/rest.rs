//! Benchmark 9, the REST paths the Ops-Center front end calls, called as it calls them:
//! HTTP/1.1 over loopback with keep-alive (one connection per client, requests back to back),
//! against `keyhouse serve` on a fresh PostgreSQL database.

use std::sync::Arc;

use keyhouse_domain::caller::Role;
use reqwest::{Client, StatusCode};
use sea_orm::{ConnectionTrait, DatabaseConnection};

use crate::load::{self, CallOn, Outcome, ms};
use crate::{Args, breakdown, fill, setup};

/// The listed user's keys, read in pages of `PAGE`: one call is the whole listing.
const KEYS: u64 = 1000;
const PAGE: u64 = 500;
const USER: &str = "rest-user";
const ADMIN: &str = "rest-admin";
/// Platform keys stored before measuring (the other six are not set).
const STORED: [(&str, &str); 3] = [
    ("openrouter", "sk-or-v1-0123456789abcdef"),
    ("anthropic", "sk-ant-api03-0123456789abcdef"),
    ("groq", "gsk_0123456789abcdef0123"),
];

type Call = CallOn<Client>;

struct Measured {
    name: &'static str,
    /// The goal for the median with one client, in ms.
    goal_ms: f64,
    /// Ops-Center's measured medians for the same call on this kind of machine.
    ops_center: &'static str,
    call: Call,
}

pub async fn run(args: &Args, rt: &tokio::runtime::Handle) -> anyhow::Result<()> {
    let url = setup::postgres_database(&args.postgres_url).await?;
    let outcome = measure(args, rt, &url).await;
    setup::drop_postgres_database(&args.postgres_url, &url).await?;
    outcome
}

async fn measure(args: &Args, rt: &tokio::runtime::Handle, url: &str) -> anyhow::Result<()> {
    let server = setup::start(setup::settings(url.to_owned(), args.bulk_bcrypt_cost), rt).await?;
    let conn = keyhouse_domain::db::connect(url).await?;
    fill::user_keys(&conn, USER, KEYS, KEYS).await?;
    fill::settle(&conn).await?;
    let user = server.session(USER, Role::User).await?;
    let admin = server.session(ADMIN, Role::Admin).await?;
    let base = format!("http://{}", server.addr);
    let http = Client::new();
    for (name, value) in STORED {
        let stored = http
            .put(format!("{base}/api/v1/admin/platform-keys/{name}"))
            .bearer_auth(&admin)
            .json(&serde_json::json!({ "api_key": value }))
            .send()
            .await?;
        anyhow::ensure!(stored.status().is_success(), "storing {name}: {stored:?}");
    }
    check(&http, &base, &user, &admin).await?;

    let measured = [
        Measured {
            name: "list one user's 1,000 keys (2 pages of 500)",
            goal_ms: 6.4,
            ops_center: "12.8–18.2 ms",
            call: listing(&base, &user),
        },
        Measured {
            name: "platform-key list (3 of 9 stored)",
            goal_ms: 1.5,
            ops_center: "7.7–12.5 ms",
            call: get(format!("{base}/api/v1/admin/platform-keys"), &admin),
        },
        Measured {
            name: "one decrypted platform key, audited",
            goal_ms: 1.3,
            ops_center: "1.3–2.4 ms",
            call: get(
                format!("{base}/api/v1/admin/platform-keys/openrouter/decrypted?reason=bench"),
                &admin,
            ),
        },
    ];
    let seconds = args.seconds.clamp(1, 5);
    let audited_before = decrypt_events(&conn).await?;
    let mut answered = Vec::new();
    let mut results = Vec::new();
    for m in &measured {
        let warm = load::closed(&clients(1)?, m.call.clone(), 1, 1).await;
        let one = load::closed(&clients(1)?, m.call.clone(), 1, seconds).await;
        let eight = load::closed(&clients(8)?, m.call.clone(), 8, seconds).await;
        answered.push(warm.count + one.count + eight.count);
        results.push((one, eight));
    }
    let decrypted = answered[2];
    let audited = decrypt_events(&conn).await? - audited_before;
    conn.close().await?;

    println!("## 9. REST: listing, platform keys, a decrypted key (PostgreSQL)\n");
    println!(
        "HTTP/1.1 over loopback with keep-alive, one connection per client, each client's requests back to back for {seconds} s (after 1 s of warm-up).\n"
    );
    println!(
        "| call | goal: p50, 1 client | 1 client: p50 | p99 | calls/s | 8 clients: p50 | p99 | calls/s | failures |\n|---|---|---|---|---|---|---|---|---|"
    );
    for (m, (one, eight)) in measured.iter().zip(&results) {
        println!(
            "| {} | ≤ {:.1} ms | **{}** | {} | {:.0} | {} | {} | {:.0} | {} |",
            m.name,
            m.goal_ms,
            ms(one.p50),
            ms(one.p99),
            one.per_second,
            ms(eight.p50),
            ms(eight.p99),
            eight.per_second,
            one.failures + eight.failures
        );
    }
    println!();
    for (m, (one, _)) in measured.iter().zip(&results) {
        println!("{}", verdict(m, one));
    }
    println!(
        "\nAudit rows written by the decrypted-key calls: {audited} for {decrypted} answered (goal: one each).\n"
    );
    breakdown::run(&server, USER, &user, &admin).await?;
    server.stop().await;
    Ok(())
}

fn verdict(m: &Measured, one: &Outcome) -> String {
    let p50 = one.p50.as_secs_f64() * 1000.0;
    let met = if p50 <= m.goal_ms {
        "met"
    } else {
        "**missed**"
    };
    format!(
        "- {}: p50 {p50:.3} ms against the goal of {:.1} ms — {met}; Ops-Center's medians: {}.",
        m.name, m.goal_ms, m.ops_center
    )
}

/// One HTTP client per concurrent caller, so each keeps its own keep-alive connection.
fn clients(n: usize) -> anyhow::Result<Vec<Client>> {
    (0..n)
        .map(|_| Ok(Client::builder().pool_max_idle_per_host(1).build()?))
        .collect()
}

/// A GET whose answer must be 200, its body read in full.
fn get(url: String, token: &str) -> Call {
    let token = token.to_owned();
    Arc::new(move |http: Client| {
        let request = http.get(&url).bearer_auth(&token);
        Box::pin(async move {
            match request.send().await {
                Ok(answer) if answer.status() == StatusCode::OK => answer.bytes().await.is_ok(),
                _ => false,
            }
        })
    })
}

/// The whole listing, page after page, as one call.
fn listing(base: &str, token: &str) -> Call {
    let (base, token) = (base.to_owned(), token.to_owned());
    Arc::new(move |http: Client| {
        let (base, token) = (base.clone(), token.clone());
        Box::pin(async move {
            list_all(&http, &base, &token)
                .await
                .is_ok_and(|pages| pages.len() as u64 == KEYS / PAGE)
        })
    })
}

/// Every page of the caller's keys, following `X-Next-Page-Token`.
async fn list_all(http: &Client, base: &str, token: &str) -> anyhow::Result<Vec<String>> {
    let mut pages = Vec::new();
    let mut next = String::new();
    loop {
        let answer = http
            .get(format!(
                "{base}/api/v1/account/uc-api-keys?page_size={PAGE}&page_token={next}"
            ))
            .bearer_auth(token)
            .send()
            .await?;
        anyhow::ensure!(answer.status() == StatusCode::OK, "listing: {answer:?}");
        let following = answer
            .headers()
            .get("x-next-page-token")
            .map(|v| v.to_str().map(str::to_owned))
            .transpose()?;
        pages.push(answer.text().await?);
        match following {
            Some(token) => next = token,
            None => return Ok(pages),
        }
    }
}

/// The answers are the ones the front end needs, checked once before measuring.
async fn check(http: &Client, base: &str, user: &str, admin: &str) -> anyhow::Result<()> {
    let mut listed = 0;
    for page in list_all(http, base, user).await? {
        listed += serde_json::from_str::<Vec<serde_json::Value>>(&page)?.len() as u64;
    }
    anyhow::ensure!(listed == KEYS, "listed {listed} keys, not {KEYS}");
    let list: serde_json::Value = http
        .get(format!("{base}/api/v1/admin/platform-keys"))
        .bearer_auth(admin)
        .send()
        .await?
        .json()
        .await?;
    anyhow::ensure!(list["total"] == 9, "platform-key list: {list}");
    let key: serde_json::Value = http
        .get(format!(
            "{base}/api/v1/admin/platform-keys/openrouter/decrypted?reason=bench"
        ))
        .bearer_auth(admin)
        .send()
        .await?
        .json()
        .await?;
    anyhow::ensure!(key["api_key"] == STORED[0].1, "decrypted: {key}");
    Ok(())
}

async fn decrypt_events(conn: &DatabaseConnection) -> anyhow::Result<u64> {
    let row = conn
        .query_one_raw(sea_orm::Statement::from_string(
            conn.get_database_backend(),
            "SELECT count(*) AS n FROM audit_events WHERE action = 'platform_key.decrypt'",
        ))
        .await?
        .ok_or_else(|| anyhow::anyhow!("no count"))?;
    Ok(row.try_get::<i64>("", "n")? as u64)
}
