use clap::Parser;
use keyhouse_core::{config::ServerSettings, server, telemetry};

/// UserKeyService alone: user API keys, VerifyKey and BYOK. Run `keyhouse migrate` first.
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(flatten)]
    settings: ServerSettings,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let settings = Cli::parse().settings;
    server::exit_on_error(
        async {
            let _telemetry = telemetry::init(settings.log_format, "user-key-service")?;
            let listener = server::bind(&settings).await?;
            keyhouse_user_keys::run(settings, listener, server::shutdown_signal()).await
        }
        .await,
    )
}
