//! keyhouse-bench: the verification path's numbers (1-8), the REST paths (9), listing at
//! scale (10), a flood of forged keys (11), a soak (12), a database outage (13), the Redis
//! fallback (14), overload (15), a deadline-less flood (16), a new replica's share (17) and
//! Envoy's ext_authz Check against VerifyKey and the empty RPC (18),
//! measured in one run so that ratios hold on a noisy machine.
//! `cargo run --release -p keyhouse-bench` prints a Markdown report; the results and the command
//! are kept in BENCHMARKS.md.

mod alloc;
mod breakdown;
mod encoded;
mod ext_authz;
mod fallback;
mod fill;
mod flood;
mod load;
mod outage;
mod overload;
mod rest;
mod scale;
mod scenarios;
mod setup;
mod soak;
mod spread;
mod starve;
mod traces;

use clap::Parser;

#[global_allocator]
static ALLOC: alloc::Counting = alloc::Counting;

#[derive(Parser, Clone)]
#[command(
    about = "Benchmarks of keyhouse: the verification path, the REST paths, listing at scale"
)]
pub struct Args {
    /// Seconds each closed-loop load runs.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Requests in flight at once in closed-loop load.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// HTTP/2 connections the load is spread over.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// bcrypt cost of the keys, as in production.
    #[arg(long, default_value_t = 12)]
    pub bcrypt_cost: u32,
    /// bcrypt cost of the servers of benchmarks 9 and 10, which mint keys in bulk: low, so that
    /// a cold lookup there measures storage more than bcrypt.
    #[arg(long, default_value_t = 4)]
    pub bulk_bcrypt_cost: u32,
    /// The PostgreSQL server for benchmarks 5, 9 and 10 (each makes and drops its databases).
    #[arg(
        long,
        env = "KEYHOUSE_TEST_POSTGRES_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    pub postgres_url: String,
    /// How long the soak (12) runs, in seconds.
    #[arg(long, default_value_t = 600)]
    pub soak_seconds: u64,
    /// How long the overload (15) offers three times the saturated rate, in seconds.
    #[arg(long, default_value_t = 60)]
    pub overload_seconds: u64,
    /// Only these benchmarks (1-18); all when empty.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<u32>,
}

impl Args {
    pub fn wanted(&self, n: u32) -> bool {
        self.only.is_empty() || self.only.contains(&n)
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // Two runtimes, as two processes would have: the server's and the load generator's.
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("server")
        .enable_all()
        .build()?;
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("load")
        .enable_all()
        .build()?;
    client_rt.block_on(async {
        println!("# keyhouse benchmarks\n");
        println!(
            "{} s closed-loop runs, {} requests in flight over {} HTTP/2 connections, bcrypt cost {} ({} for 9 and 10), \
             SQLite unless noted; server and load generator share the machine ({} cores).\n",
            args.seconds,
            args.concurrency,
            args.connections,
            args.bcrypt_cost,
            args.bulk_bcrypt_cost,
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(0)
        );
        let rest_and_scale = async {
            if args.wanted(9) {
                rest::run(&args, server_rt.handle()).await?;
            }
            if args.wanted(10) {
                scale::run(&args, server_rt.handle()).await?;
            }
            if args.wanted(11) {
                flood::run(&args, server_rt.handle()).await?;
            }
            if args.wanted(12) {
                soak::run(&args, server_rt.handle()).await?;
            }
            if args.wanted(13) {
                outage::run(&args, server_rt.handle()).await?;
            }
            if args.wanted(14) {
                fallback::run(&args, server_rt.handle()).await?;
            }
            if args.wanted(15) {
                overload::run(&args, server_rt.handle()).await?;
            }
            if args.wanted(16) {
                starve::run(&args, server_rt.handle()).await?;
            }
            if args.wanted(17) {
                spread::run(&args, server_rt.handle()).await?;
            }
            if args.wanted(18) {
                ext_authz::run(&args, server_rt.handle()).await?;
            }
            Ok(())
        };
        if (1..=8).any(|n| args.wanted(n)) {
            scenarios::run(&args, server_rt.handle().clone(), rest_and_scale).await
        } else {
            rest_and_scale.await
        }
    })
}
