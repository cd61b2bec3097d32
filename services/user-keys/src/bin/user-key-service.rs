use clap::Parser;
use keyhouse_server::ServerSettings;
use keyhouse_server::bootstrap::{self, Deployment};

/// UserKeyService alone: user API keys, VerifyKey and BYOK. Run `keyhouse migrate` first.
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(flatten)]
    settings: ServerSettings,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // First, so that SIGTERM during start-up stops it cleanly.
    let shutdown = bootstrap::shutdown_signal();
    let settings = Cli::parse().settings;
    let services = [&keyhouse_user_keys::Service as &dyn bootstrap::Mount];
    bootstrap::main(
        "user-key-service",
        settings,
        Deployment::Split,
        &services,
        shutdown,
    )
    .await
}
