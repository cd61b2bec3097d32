use clap::{Parser, Subcommand};
use keyhouse_domain::caller::Role;
use keyhouse_domain::config::{DEFAULT_DATABASE_URL, SessionPolicy};
use keyhouse_domain::crypto::fernet_ring::KeyRing;
use keyhouse_domain::{db, duration, rotation, storage};
use keyhouse_server::bootstrap::{self, Deployment};
use keyhouse_server::{ServerSettings, backup, key_file, telemetry};
use zeroize::Zeroizing;

/// keyhouse: API keys for an LLM gateway. `keyhouse serve` runs everything on one port.
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once per process
enum Command {
    /// Serve every keyhouse service on one port, migrating the database first.
    Serve(ServerSettings),
    /// Push platform keys to another system as they change.
    #[command(subcommand)]
    Sync(SyncCommand),
    #[command(flatten)]
    Operator(Operator),
}

/// The operator's commands: each does one thing to the database or prints something, and exits.
#[derive(Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once per process
enum Operator {
    /// Apply pending migrations to DATABASE_URL and exit.
    Migrate {
        #[arg(long, env = "DATABASE_URL", hide_env_values = true, default_value = DEFAULT_DATABASE_URL)]
        database_url: String,
    },
    /// Manage sessions.
    #[command(subcommand)]
    Session(SessionCommand),
    /// Print the OpenAPI document of the REST paths.
    Openapi,
    /// Manage the tokens internal services (the gateway) use.
    #[command(subcommand)]
    ServiceToken(ServiceTokenCommand),
    /// Manage the encryption of stored secrets.
    #[command(subcommand)]
    Encryption(EncryptionCommand),
    /// Copy the SQLite database (consistent while the server writes) and its key file into the
    /// directory PATH as keyhouse.db and keyhouse.db.key. Never overwrites a file. PostgreSQL is
    /// backed up with pg_dump (README).
    Backup {
        path: std::path::PathBuf,
        #[arg(long, env = "DATABASE_URL", hide_env_values = true, default_value = DEFAULT_DATABASE_URL)]
        database_url: String,
    },
    /// Put a backup directory written by `keyhouse backup` in place of DATABASE_URL's SQLite
    /// database and key file (mode 0600). Stop the server first.
    Restore {
        path: std::path::PathBuf,
        /// Replace an existing database and key file.
        #[arg(long)]
        force: bool,
        #[arg(long, env = "DATABASE_URL", hide_env_values = true, default_value = DEFAULT_DATABASE_URL)]
        database_url: String,
    },
}

#[derive(Subcommand)]
enum SyncCommand {
    /// Watch platform keys with a service token and apply each change to a LiteLLM proxy's
    /// credentials (and mapped models), with no LiteLLM restart. `--once` applies the current
    /// state and exits.
    Litellm {
        #[command(flatten)]
        settings: keyhouse::sync_litellm::SyncSettings,
        #[arg(
            long,
            env = "KEYHOUSE_LOG_FORMAT",
            value_enum,
            default_value = "pretty"
        )]
        log_format: telemetry::LogFormat,
    },
}

#[derive(Subcommand)]
enum ServiceTokenCommand {
    /// Print a new random service token on stdout. Configure its SHA-256 (hex) in
    /// KEYHOUSE_SERVICE_TOKENS as `name=<digest>:Rpc+Rpc`, bound to the RPCs the service calls.
    Create,
}

#[derive(Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once per process
enum EncryptionCommand {
    /// Print a new Fernet key for KEYHOUSE_ENCRYPTION_KEYS.
    GenerateKey,
    /// Re-encrypt every stored secret under the first key of the ring. Safe to interrupt and
    /// to run again.
    Rotate {
        #[command(flatten)]
        settings: keyhouse_domain::config::Settings,
        /// Rows read per batch.
        #[arg(long, default_value_t = 100)]
        batch_size: u64,
        /// Stop after re-encrypting this many rows (for a staged rotation).
        #[arg(long)]
        limit: Option<usize>,
    },
}

#[derive(Subcommand)]
enum SessionCommand {
    /// Issue a session and print only its token on stdout.
    Create {
        /// The user id the session acts as.
        #[arg(long)]
        user: String,
        #[arg(long, default_value = "")]
        email: String,
        /// `admin` or `user`.
        #[arg(long)]
        role: Role,
        /// How long the session lives, e.g. 30m, 8h, 7d; at most the session limit.
        #[arg(long, default_value = "8h", value_parser = duration::parse)]
        ttl: chrono::Duration,
        #[command(flatten)]
        policy: SessionPolicy,
        #[arg(long, env = "DATABASE_URL", hide_env_values = true, default_value = DEFAULT_DATABASE_URL)]
        database_url: String,
    },
    /// End sessions: the one TOKEN names, or every session of --user (one with --id). Servers
    /// that resolved a session in the last KEYHOUSE_SESSION_CACHE_SECS may accept it that long.
    Revoke {
        /// The session's token; `-` reads it from stdin, out of the process list and history.
        #[arg(required_unless_present = "user", conflicts_with = "user")]
        token: Option<String>,
        /// End every session of this user.
        #[arg(long)]
        user: Option<String>,
        /// With --user: end only the session with this id (from `session list`).
        #[arg(long, requires = "user")]
        id: Option<String>,
        #[arg(long, env = "DATABASE_URL", hide_env_values = true, default_value = DEFAULT_DATABASE_URL)]
        database_url: String,
    },
    /// Print a user's live sessions: id, role, creation and expiry (UTC). Never their tokens.
    List {
        #[arg(long)]
        user: String,
        #[arg(long, env = "DATABASE_URL", hide_env_values = true, default_value = DEFAULT_DATABASE_URL)]
        database_url: String,
    },
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match Cli::parse().command {
        // The handlers are installed before anything else `serve` does, so that SIGTERM during
        // start-up stops it cleanly. Operator commands keep the default: a signal ends them.
        Command::Serve(settings) => {
            let shutdown = bootstrap::shutdown_signal();
            bootstrap::main(
                "keyhouse",
                settings,
                Deployment::Embedded,
                &keyhouse::SERVICES,
                shutdown,
            )
            .await
        }
        Command::Sync(SyncCommand::Litellm {
            settings,
            log_format,
        }) => {
            let shutdown = bootstrap::shutdown_signal();
            bootstrap::exit_on_error(
                async {
                    let _telemetry = telemetry::init(log_format, "keyhouse-sync-litellm")?;
                    keyhouse::sync_litellm::run(settings, shutdown).await
                }
                .await,
            )
        }
        Command::Operator(command) => bootstrap::exit_on_error(
            async {
                let _telemetry = telemetry::init(telemetry::LogFormat::Pretty, "keyhouse")?;
                run(command).await
            }
            .await,
        ),
    }
}

async fn run(command: Operator) -> anyhow::Result<()> {
    match command {
        Operator::Migrate { database_url } => {
            let db = db::connect(&database_url).await?;
            let applied = db::migrate(&db).await?;
            eprintln!(
                "{applied} migration(s) applied to {}",
                db::redact_url(&database_url)
            );
            Ok(())
        }
        Operator::Session(SessionCommand::Create {
            user,
            email,
            role,
            ttl,
            policy,
            database_url,
        }) => {
            policy.check_ttl(ttl)?;
            let db = db::connect(&database_url).await?;
            db::ensure_schema_current(&db).await?;
            let token = storage::sessions::create(&db, &user, &email, role, ttl).await?;
            println!("{}", token.as_str());
            Ok(())
        }
        Operator::Session(SessionCommand::Revoke {
            token,
            user,
            id,
            database_url,
        }) => {
            let db = db::connect(&database_url).await?;
            db::ensure_schema_current(&db).await?;
            match (token, user, id) {
                (Some(token), _, _) => {
                    let token = if token == "-" {
                        let mut line = Zeroizing::new(String::new());
                        std::io::stdin().read_line(&mut line)?;
                        line
                    } else {
                        Zeroizing::new(token)
                    };
                    if !storage::sessions::revoke(&db, &token).await? {
                        anyhow::bail!(
                            "no session has this token: never issued, already revoked, or expired"
                        );
                    }
                    println!("1 session revoked");
                }
                (None, Some(user), Some(id)) => {
                    if !storage::sessions::revoke_id(&db, &user, &id).await? {
                        anyhow::bail!("{user} has no session with the id {id}");
                    }
                    println!("1 session of {user} revoked");
                }
                (None, Some(user), None) => {
                    let revoked = storage::sessions::revoke_user(&db, &user).await?;
                    println!("{revoked} session(s) of {user} revoked");
                }
                (None, None, _) => anyhow::bail!("name a TOKEN or --user"),
            }
            Ok(())
        }
        Operator::Session(SessionCommand::List { user, database_url }) => {
            let db = db::connect(&database_url).await?;
            db::ensure_schema_current(&db).await?;
            let sessions = storage::sessions::list(&db, &user).await?;
            let time = |t: chrono::DateTime<chrono::Utc>| {
                t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            };
            println!(
                "{:<16}  {:<5}  {:<20}  {:<20}",
                "ID", "ROLE", "CREATED", "EXPIRES"
            );
            for s in &sessions {
                println!(
                    "{:<16}  {:<5}  {:<20}  {:<20}",
                    s.id,
                    s.role,
                    time(s.created_at),
                    time(s.expires_at)
                );
            }
            eprintln!("{} live session(s) of {user}", sessions.len());
            Ok(())
        }
        Operator::ServiceToken(ServiceTokenCommand::Create) => {
            let token = keyhouse_domain::crypto::session_token::generate()?;
            println!("svc_{}", &token[3..]);
            Ok(())
        }
        Operator::Backup { path, database_url } => {
            // Before connecting: PostgreSQL is pointed to pg_dump, and `mode=rwc` would back up a
            // new empty database in place of a missing one.
            let file = backup::database_file(&database_url)?;
            anyhow::ensure!(file.exists(), "there is no database at {}", file.display());
            let db = db::connect(&database_url).await?;
            let written = backup::backup(&db, &database_url, &path).await?;
            report("backup written", &written);
            Ok(())
        }
        Operator::Restore {
            path,
            force,
            database_url,
        } => {
            let written = backup::restore(&database_url, &path, force)?;
            report("restored", &written);
            Ok(())
        }
        Operator::Openapi => {
            println!("{}", keyhouse::openapi_document().to_pretty_json()?);
            Ok(())
        }
        Operator::Encryption(EncryptionCommand::GenerateKey) => {
            println!("{}", KeyRing::generate_key());
            Ok(())
        }
        Operator::Encryption(EncryptionCommand::Rotate {
            settings,
            batch_size,
            limit,
        }) => {
            let ring = key_file::key_ring(&settings, false)?;
            let db = db::connect(&settings.database_url).await?;
            db::ensure_schema_current(&db).await?;
            let done = rotation::rotate(&db, &ring, batch_size.max(1), limit, |p| {
                eprintln!(
                    "{}: {} re-encrypted ({} newly bound to their row), {} already current, {} refused",
                    p.table, p.rotated, p.bound, p.current, p.refused
                );
            })
            .await?;
            let total = |f: fn(&rotation::Progress) -> usize| done.iter().map(f).sum::<usize>();
            eprintln!(
                "rotation finished: {} secret(s) re-encrypted under the primary key, {} of them newly bound to their row",
                total(|p| p.rotated),
                total(|p| p.bound)
            );
            let refused = total(|p| p.refused);
            if refused > 0 {
                anyhow::bail!(
                    "{refused} secret(s) are bound to another row (copied there) and were left as they are; \
                     the log names each row: store those keys again"
                );
            }
            Ok(())
        }
    }
}

fn report(what: &str, written: &backup::Written) {
    match &written.key_file {
        Some(key) => eprintln!(
            "{what}: {} and its key file {}",
            written.database.display(),
            key.display()
        ),
        None => eprintln!(
            "{what}: {}; there is no key file: keep KEYHOUSE_ENCRYPTION_KEYS with it, \
             without it the stored secrets cannot be decrypted",
            written.database.display()
        ),
    }
}
