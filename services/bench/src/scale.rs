//! Benchmark 10, the same calls on a big PostgreSQL database and on an almost empty one:
//! ListKeys (the first page, and a page 50,000 keys deep) for a user holding 100,000 of
//! 1,000,000 keys, a cold VerifyKey, and ListAuditEvents (by actor, and unfiltered) over
//! 1,000,000 events. Each call is repeated on both in turns; a call whose cost grows with the
//! tables shows as a ratio above 1.

use std::time::{Duration, Instant};

use keyhouse_domain::caller::Role;
use keyhouse_proto::v1 as pb;
use keyhouse_proto::v1::platform_key_service_client::PlatformKeyServiceClient;
use keyhouse_proto::v1::user_key_service_client::UserKeyServiceClient;
use tonic::transport::Channel;

use crate::load::{self, ms};
use crate::setup::{self, Server, authorized};
use crate::{Args, fill};

struct Sizes {
    keys: u64,
    /// Of `keys`, held by the measured user.
    owned: u64,
    audit_events: u64,
}

const BIG: Sizes = Sizes {
    keys: 1_000_000,
    owned: 100_000,
    audit_events: 1_000_000,
};
/// Enough for every measured page to be a full one.
const SMALL: Sizes = Sizes {
    keys: 200,
    owned: 200,
    audit_events: 1_000,
};
const USER: &str = "scale-user";
const ADMIN: &str = "scale-admin";
/// Owner of the keys minted through CreateKey for the cold lookups.
const MINTER: &str = "scale-minter";
const PAGE: i32 = 50;
const WALK_PAGE: u64 = 500;
const REPEAT: usize = 500;
const COLD: usize = 200;

/// One database, its server and what the measurements need from it.
struct Side {
    server: Server,
    keys: UserKeyServiceClient<Channel>,
    audit: PlatformKeyServiceClient<Channel>,
    user: String,
    admin: String,
    /// The page token after the user's middle key.
    deep: String,
    /// Keys not yet verified, each used once.
    cold: Vec<String>,
    fill: Duration,
    walk: Duration,
    walk_pages: u64,
}

#[derive(Clone, Copy)]
enum Probe {
    FirstPage,
    DeepPage,
    Cold,
    AuditByActor,
    AuditAll,
}

impl Probe {
    const ALL: [Probe; 5] = [
        Probe::FirstPage,
        Probe::DeepPage,
        Probe::Cold,
        Probe::AuditByActor,
        Probe::AuditAll,
    ];

    /// Its name in the table, and how many times it is measured on each database.
    fn describe(self) -> (&'static str, usize) {
        match self {
            Probe::FirstPage => ("ListKeys, first page (50)", REPEAT),
            Probe::DeepPage => ("ListKeys, the page after the middle key (50)", REPEAT),
            Probe::Cold => ("VerifyKey, cold (prefix lookup + bcrypt)", COLD),
            Probe::AuditByActor => ("ListAuditEvents by actor, first page (50)", REPEAT),
            Probe::AuditAll => ("ListAuditEvents unfiltered, first page (50)", REPEAT),
        }
    }
}

pub async fn run(args: &Args, rt: &tokio::runtime::Handle) -> anyhow::Result<()> {
    let mut made = Vec::new();
    let outcome = measure(args, rt, &mut made).await;
    for url in made {
        setup::drop_postgres_database(&args.postgres_url, &url).await?;
    }
    outcome
}

async fn measure(
    args: &Args,
    rt: &tokio::runtime::Handle,
    made: &mut Vec<String>,
) -> anyhow::Result<()> {
    let mut big = side(args, rt, &BIG, made).await?;
    let mut small = side(args, rt, &SMALL, made).await?;
    let mut rows = Vec::new();
    for probe in Probe::ALL {
        let (name, times) = probe.describe();
        let (mut on_big, mut on_small) = (Vec::new(), Vec::new());
        for i in 0..times {
            on_big.push(once(&mut big, probe, i).await?);
            on_small.push(once(&mut small, probe, i).await?);
        }
        rows.push((name, times, p50(on_big), p50(on_small)));
    }
    println!(
        "## 10. Scale: 1,000,000 keys and 1,000,000 audit events vs an almost empty database (PostgreSQL)\n"
    );
    println!(
        "Big: {} keys, {} of them one user's, {} audit events by {} actors; small: that user's {} keys and {} events. \
         Filled with SQL in {:.1} s (big, with VACUUM ANALYZE) and {:.1} s (small). gRPC, one client, calls on the two in turns; \
         cold VerifyKey keys minted by CreateKey at bcrypt cost {}, each verified once.\n",
        BIG.keys,
        BIG.owned,
        BIG.audit_events,
        fill::AUDIT_ACTORS,
        SMALL.owned,
        SMALL.audit_events,
        big.fill.as_secs_f64(),
        small.fill.as_secs_f64(),
        args.bulk_bcrypt_cost
    );
    println!(
        "| call | repetitions | big: p50 | small: p50 | big / small | goal ≤ 2× |\n|---|---|---|---|---|---|"
    );
    for (name, times, on_big, on_small) in &rows {
        let ratio = on_big.as_secs_f64() / on_small.as_secs_f64();
        println!(
            "| {name} | {times} | {} | {} | **{ratio:.2}** | {} |",
            ms(*on_big),
            ms(*on_small),
            if ratio <= 2.0 { "met" } else { "**missed**" }
        );
    }
    println!(
        "\nWalking all {} of the user's keys in pages of {WALK_PAGE} (ListKeys over gRPC, {} pages): **{:.2} s** \
         (the issue measured 9.4 s before the keyset indexes); the small database's {} keys: {:.3} s ({} pages).\n",
        BIG.owned,
        big.walk_pages,
        big.walk.as_secs_f64(),
        SMALL.owned,
        small.walk.as_secs_f64(),
        small.walk_pages
    );
    for side in [big, small] {
        side.server.stop().await;
    }
    Ok(())
}

fn p50(mut latencies: Vec<Duration>) -> Duration {
    latencies.sort_unstable();
    load::quantile(&latencies, 0.5)
}

/// A fresh database filled to `sizes`, its server, sessions and unverified keys.
async fn side(
    args: &Args,
    rt: &tokio::runtime::Handle,
    sizes: &Sizes,
    made: &mut Vec<String>,
) -> anyhow::Result<Side> {
    let url = setup::postgres_database(&args.postgres_url).await?;
    made.push(url.clone());
    let server = setup::start(setup::settings(url.clone(), args.bulk_bcrypt_cost), rt).await?;
    let conn = keyhouse_domain::db::connect(&url).await?;
    let started = Instant::now();
    fill::user_keys(&conn, USER, sizes.owned, sizes.keys).await?;
    fill::audit_events(&conn, sizes.audit_events).await?;
    fill::settle(&conn).await?;
    let fill = started.elapsed();
    conn.close().await?;

    let channel = server.channel().await?;
    let mut keys = UserKeyServiceClient::new(channel.clone());
    let minter = server.session(MINTER, Role::User).await?;
    let mut cold = Vec::new();
    for i in 0..COLD {
        let request = pb::CreateKeyRequest {
            name: format!("cold {i}"),
            ..Default::default()
        };
        cold.push(
            keys.create_key(authorized(request, &minter)?)
                .await?
                .into_inner()
                .api_key,
        );
    }
    let user = server.session(USER, Role::User).await?;
    let (deep, walk, walk_pages) = walk(&mut keys, &user, sizes.owned).await?;
    Ok(Side {
        keys,
        audit: PlatformKeyServiceClient::new(channel),
        admin: server.session(ADMIN, Role::Admin).await?,
        server,
        user,
        deep,
        cold,
        fill,
        walk,
        walk_pages,
    })
}

/// Reads every key of the user, in pages of up to 500: the token after the middle key, the
/// time the walk took and its pages.
async fn walk(
    keys: &mut UserKeyServiceClient<Channel>,
    user: &str,
    owned: u64,
) -> anyhow::Result<(String, Duration, u64)> {
    let half = owned / 2;
    let size = WALK_PAGE.min(half);
    let (mut seen, mut pages, mut deep) = (0, 0, None);
    let mut page_token = String::new();
    let started = Instant::now();
    loop {
        let request = pb::ListKeysRequest {
            page_size: size as i32,
            page_token,
            status: String::new(),
        };
        let page = keys
            .list_keys(authorized(request, user)?)
            .await?
            .into_inner();
        seen += page.keys.len() as u64;
        pages += 1;
        if seen == half {
            deep = Some(page.next_page_token.clone());
        }
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    let took = started.elapsed();
    anyhow::ensure!(seen == owned, "walked {seen} keys, not {owned}");
    let deep = deep.ok_or_else(|| anyhow::anyhow!("no page ended at key {half}"))?;
    Ok((deep, took, pages))
}

/// One timed call of `probe` on `side`; `i` picks the cold key.
async fn once(side: &mut Side, probe: Probe, i: usize) -> anyhow::Result<Duration> {
    let deep = side.deep.clone();
    let started = Instant::now();
    let returned = match probe {
        Probe::FirstPage => keys_in(side, "").await?,
        Probe::DeepPage => keys_in(side, &deep).await?,
        Probe::Cold => {
            let request = pb::VerifyKeyRequest {
                api_key: side.cold[i].clone(),
                ..Default::default()
            };
            let answer = side.keys.verify_key(request).await?.into_inner();
            anyhow::ensure!(answer.valid, "a minted key did not verify: {answer:?}");
            PAGE as usize
        }
        Probe::AuditByActor => events_in(side, "actor-3").await?,
        Probe::AuditAll => events_in(side, "").await?,
    };
    let took = started.elapsed();
    anyhow::ensure!(returned == PAGE as usize, "a page of {returned}");
    Ok(took)
}

/// The user's keys on the page after `page_token`: how many there were.
async fn keys_in(side: &mut Side, page_token: &str) -> anyhow::Result<usize> {
    let request = pb::ListKeysRequest {
        page_size: PAGE,
        page_token: page_token.to_owned(),
        status: String::new(),
    };
    let page = side
        .keys
        .list_keys(authorized(request, &side.user)?)
        .await?;
    Ok(page.into_inner().keys.len())
}

/// The first page of audit events by `actor` (any when empty): how many there were.
async fn events_in(side: &mut Side, actor: &str) -> anyhow::Result<usize> {
    let request = pb::ListAuditEventsRequest {
        actor: actor.to_owned(),
        page_size: PAGE,
        ..Default::default()
    };
    let page = side
        .audit
        .list_audit_events(authorized(request, &side.admin)?)
        .await?;
    Ok(page.into_inner().events.len())
}
