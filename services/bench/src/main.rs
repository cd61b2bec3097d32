//! keyhouse-bench: the verification path's numbers, measured in one run so that ratios hold
//! on a noisy machine. `cargo run --release -p keyhouse-bench` prints a Markdown report; the
//! results and the command are kept in BENCHMARKS.md.

mod alloc;
mod load;
mod scenarios;
mod setup;
mod traces;

use clap::Parser;

#[global_allocator]
static ALLOC: alloc::Counting = alloc::Counting;

#[derive(Parser, Clone)]
#[command(about = "Benchmarks of keyhouse's verification path")]
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
    /// The PostgreSQL server for the replica benchmark.
    #[arg(
        long,
        env = "KEYHOUSE_TEST_POSTGRES_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    pub postgres_url: String,
    /// Only these benchmarks (1-8); all when empty.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<u32>,
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
    client_rt.block_on(scenarios::run(&args, server_rt.handle().clone()))
}
