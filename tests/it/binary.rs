//! Running the real `keyhouse` binary: operator commands, and `keyhouse serve` with its log
//! (JSON, trace level) in a file the test reads afterwards.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use crate::support::TempDir;

const BIN: &str = env!("CARGO_BIN_EXE_keyhouse");

pub struct Keyhouse {
    pub dir: TempDir,
    pub db_url: String,
    pub log: PathBuf,
    env: Vec<(String, String)>,
}

impl Keyhouse {
    /// A working directory with a SQLite database in it.
    pub fn on_sqlite() -> Self {
        let dir = TempDir::new();
        let db_url = format!("sqlite://{}/keyhouse.db?mode=rwc", dir.0.display());
        Self::on(dir, db_url)
    }

    pub fn on(dir: TempDir, db_url: String) -> Self {
        let log = dir.0.join("keyhouse.log");
        Self {
            dir,
            db_url,
            log,
            env: Vec::new(),
        }
    }

    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.to_owned(), value.to_owned()));
        self
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .current_dir(&self.dir.0)
            .env("DATABASE_URL", &self.db_url)
            .stdin(Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.log)
                    .expect("log file"),
            );
        // Only what the test sets: none of the machine's own keyhouse settings, encryption or
        // provider keys, or trace settings may leak in.
        let provider_vars: Vec<&str> = keyhouse_domain::providers::catalog::platform()
            .filter_map(|spec| spec.env_var)
            .collect();
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy();
            if name.starts_with("KEYHOUSE_")
                || name.starts_with("OTEL_")
                || name == "ENCRYPTION_KEY"
                || provider_vars.contains(&name.as_ref())
            {
                cmd.env_remove(name.as_ref());
            }
        }
        cmd.env("KEYHOUSE_LOG", "trace")
            .env("KEYHOUSE_LOG_FORMAT", "json")
            .env("KEYHOUSE_BCRYPT_COST", "4")
            .env("KEYHOUSE_LISTEN", "127.0.0.1:0");
        for (name, value) in &self.env {
            cmd.env(name, value);
        }
        cmd
    }

    pub fn run(&self, args: &[&str]) -> Output {
        let out = self.command(args).output().expect("run keyhouse");
        assert!(
            out.status.success(),
            "keyhouse {args:?} failed; log:\n{}",
            self.log_text()
        );
        out
    }

    /// `keyhouse session create`, returning the token it printed.
    pub fn session(&self, user: &str, role: &str) -> String {
        let out = self.run(&[
            "session",
            "create",
            "--user",
            user,
            "--email",
            "e@example.com",
            "--role",
            role,
            "--ttl",
            "1h",
        ]);
        String::from_utf8(out.stdout)
            .expect("utf-8")
            .trim_end()
            .to_owned()
    }

    /// Starts `keyhouse serve` and waits until it listens; returns it and its address.
    pub async fn serve(&self) -> (Child, String) {
        let before = self.log_text().len();
        let child = self
            .command(&["serve"])
            .stdout(Stdio::null())
            .spawn()
            .expect("keyhouse serve");
        for _ in 0..400 {
            let text = self.log_text();
            if let Some(line) = text[before..]
                .lines()
                .find(|l| l.contains("serving gRPC, grpc-web and REST"))
            {
                let value: serde_json::Value = serde_json::from_str(line).expect("a JSON log line");
                return (
                    child,
                    value["fields"]["addr"]
                        .as_str()
                        .expect("addr field")
                        .to_owned(),
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let mut child = child;
        let _ = child.kill();
        let _ = child.wait();
        panic!("keyhouse serve did not start; log:\n{}", self.log_text());
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.0.join(name)
    }
}

/// SIGTERM, as Kubernetes sends it; asserts a clean exit within the grace period.
pub async fn stop(child: Child) {
    terminate(&child);
    let status = exit_status(child).await;
    assert!(
        status.success(),
        "keyhouse serve exits 0 on SIGTERM, got {status}"
    );
}

/// Sends SIGTERM without waiting.
pub fn terminate(child: &Child) {
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
}

/// Kubernetes' default grace period: a process still running after it is killed.
pub const GRACE_PERIOD: Duration = Duration::from_secs(30);

/// Waits for the process to end; fails (and kills it) if it is still running after the grace
/// period, as Kubernetes would.
pub async fn exit_status(mut child: Child) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + GRACE_PERIOD;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("keyhouse serve still ran {GRACE_PERIOD:?} after SIGTERM");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn channel(addr: &str) -> tonic::transport::Channel {
    tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .expect("url")
        .connect()
        .await
        .expect("connect")
}

pub fn bearer(token: &str) -> impl tonic::service::Interceptor + Clone + use<> {
    let value: tonic::metadata::MetadataValue<_> =
        format!("Bearer {token}").parse().expect("ascii");
    move |mut req: tonic::Request<()>| {
        req.metadata_mut().insert("authorization", value.clone());
        Ok(req)
    }
}

pub fn mode_of(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o777
}
