//! The harness: a real keyhouse server on 127.0.0.1:0 over a fresh SQLite file or a fresh
//! PostgreSQL database, and the generated clients to talk to it.

use std::time::Duration;

use keyhouse_domain::caller::Role;
use keyhouse_domain::config::Secret;
use keyhouse_domain::crypto::fernet_ring::KeyRing;
use keyhouse_domain::platform_keys::EnvFallback;
use keyhouse_domain::{db, storage};
use keyhouse_proto::v1::platform_key_service_client::PlatformKeyServiceClient;
use keyhouse_proto::v1::user_key_service_client::UserKeyServiceClient;
use keyhouse_server::ServerSettings;
use sea_orm::{ConnectionTrait, DatabaseConnection, Statement};
use tokio::sync::oneshot;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Request, Status};

pub const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

pub type UserClient = UserKeyServiceClient<InterceptedService<Channel, Auth>>;
pub type PlatformClient = PlatformKeyServiceClient<InterceptedService<Channel, Auth>>;

/// A database of its own for one test, removed when the test ends.
pub struct TestDb {
    pub url: String,
    backend: Backend,
    name: String,
    _dir: Option<TempDir>,
}

impl TestDb {
    pub async fn new(backend: Backend) -> Self {
        let name = format!("keyhouse_test_{}", uuid::Uuid::new_v4().simple());
        match backend {
            Backend::Sqlite => {
                let dir = TempDir::new();
                let url = format!("sqlite://{}/keyhouse.db?mode=rwc", dir.0.display());
                Self {
                    url,
                    backend,
                    name,
                    _dir: Some(dir),
                }
            }
            Backend::Postgres => {
                let admin = admin_connection().await;
                admin
                    .execute_unprepared(&format!("CREATE DATABASE {name}"))
                    .await
                    .expect("create the test database");
                let base = postgres_url();
                let url = match base.rsplit_once('/') {
                    Some((server, _)) => format!("{server}/{name}"),
                    None => panic!("KEYHOUSE_TEST_POSTGRES_URL has no database part: {base}"),
                };
                Self {
                    url,
                    backend,
                    name,
                    _dir: None,
                }
            }
        }
    }

    pub async fn connect(&self) -> DatabaseConnection {
        db::connect(&self.url)
            .await
            .expect("connect to the test database")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if self.backend != Backend::Postgres {
            return;
        }
        let name = self.name.clone();
        // Drop runs inside the test's runtime, which cannot block on async work: use a thread.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            if let Ok(rt) = rt {
                rt.block_on(async {
                    let admin = admin_connection().await;
                    let _ = admin
                        .execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .await;
                });
            }
        })
        .join();
    }
}

/// What `keyhouse serve` says when it refuses to start with `settings`, with every cause; a
/// server that serves instead (30 s without an answer) fails the test rather than hanging it.
pub async fn refusal_to_serve(settings: ServerSettings) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let served = keyhouse::serve(settings, listener, std::future::pending());
    let err = tokio::time::timeout(Duration::from_secs(30), served)
        .await
        .expect("served instead of refusing to start")
        .expect_err("refuses to start");
    format!("{err:#}")
}

/// The PostgreSQL server's own database, where the test databases are made.
pub fn postgres_url() -> String {
    std::env::var("KEYHOUSE_TEST_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_POSTGRES_URL.to_owned())
}

async fn admin_connection() -> DatabaseConnection {
    let url = postgres_url();
    db::connect(&url).await.unwrap_or_else(|e| {
        panic!(
            "PostgreSQL tests need a server at {url} (set KEYHOUSE_TEST_POSTGRES_URL): {e}. \
             They never pass without one."
        )
    })
}

/// The npm packages of `tests/<folder>` (its `package.json` and `package-lock.json`), installed
/// with `npm ci` once per lockfile into the build's scratch directory, never into the source
/// tree; the folder's scripts (`*.mjs`) are copied beside them on every call, so that Node
/// resolves the packages and an edit to a script is what runs. Returns that directory. Callers
/// call it once per process (behind a `OnceLock`): concurrent installs would race.
pub fn npm_installed(folder: &str) -> std::path::PathBuf {
    use sha2::Digest as _;
    let source = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests")
        .join(folder);
    let lock = std::fs::read(source.join("package-lock.json")).expect("package-lock.json");
    let key = hex::encode(&sha2::Sha256::digest(&lock)[..8]);
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{folder}-{key}"));
    if !dir.join(".installed").exists() {
        std::fs::create_dir_all(&dir).expect("scratch directory");
        for file in ["package.json", "package-lock.json"] {
            std::fs::copy(source.join(file), dir.join(file)).expect("copy");
        }
        let status = std::process::Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--prefix"])
            .arg(&dir)
            .stdin(std::process::Stdio::null())
            .status()
            .unwrap_or_else(|e| panic!("npm (Node.js 20) is needed for tests/{folder}: {e}"));
        assert!(status.success(), "npm ci for tests/{folder} failed");
        std::fs::write(dir.join(".installed"), b"").expect("marker");
    }
    for entry in std::fs::read_dir(&source).expect("read the folder") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "mjs") {
            std::fs::copy(&path, dir.join(path.file_name().expect("name"))).expect("copy");
        }
    }
    dir
}

/// The `bin` folder of a Python virtualenv with `requirements` (a file under the repository)
/// installed, made once per version of that file in the build's scratch directory: never in the
/// source tree or the machine's Python. `name` names the folder and the failure.
pub fn venv_installed(name: &str, requirements: &str) -> std::path::PathBuf {
    use sha2::Digest as _;
    let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(requirements);
    let lock = std::fs::read(&file).unwrap_or_else(|e| panic!("{requirements}: {e}"));
    let key = hex::encode(&sha2::Sha256::digest(&lock)[..8]);
    let venv = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{key}"));
    if !venv.join(".installed").exists() {
        let started = std::time::Instant::now();
        let _ = std::fs::remove_dir_all(&venv);
        let made = std::process::Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .unwrap_or_else(|e| {
                panic!("python3 (3.10+, with venv and pip) is needed for {name}: {e}")
            });
        assert!(made.success(), "python3 -m venv failed for {name}");
        let installed = std::process::Command::new(venv.join("bin/pip"))
            .args([
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--no-input",
                "--requirement",
            ])
            .arg(&file)
            .status()
            .expect("pip in the virtualenv");
        assert!(installed.success(), "pip install of {requirements} failed");
        std::fs::write(venv.join(".installed"), b"").expect("marker");
        println!(
            "installed {requirements} into {} in {:?}",
            venv.display(),
            started.elapsed()
        );
    }
    venv.join("bin")
}

/// A temporary directory, removed on drop.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new() -> Self {
        let dir =
            std::env::temp_dir().join(format!("keyhouse-test-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("create a temp dir");
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `keyhouse serve` running in-process on its own database.
pub struct TestServer {
    pub addr: std::net::SocketAddr,
    db: Option<DatabaseConnection>,
    /// The database this server owns (dropped with it); `None` for a replica.
    _owned_db: Option<TestDb>,
    pub settings: ServerSettings,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl TestServer {
    pub async fn start(backend: Backend) -> Self {
        Self::start_with(backend, |_| {}).await
    }

    pub async fn start_with(backend: Backend, configure: impl FnOnce(&mut ServerSettings)) -> Self {
        let test_db = TestDb::new(backend).await;
        let mut settings = Self::test_settings(&test_db);
        configure(&mut settings);
        Self::serve(settings, Some(test_db)).await
    }

    /// The settings every test server starts from, on `test_db`.
    fn test_settings(test_db: &TestDb) -> ServerSettings {
        let mut settings = ServerSettings::new(test_db.url.clone());
        // The lowest cost bcrypt allows: these tests are about behaviour, not hashing speed.
        settings.domain.keys.bcrypt_cost = 4;
        // Tests make many keys for one user in a minute; the limits have tests of their own.
        settings.domain.keys.max_active_keys_per_user = 10_000;
        settings.domain.keys.max_key_creates_per_minute = 10_000;
        settings.domain.encryption_keys = Some(Secret::new(KeyRing::generate_key()));
        // Isolated from whatever provider variables the machine running the tests has.
        settings.domain.platform_env = Some(EnvFallback::default());
        // No scheduled live tests writing rows under a test's feet; the health tests turn
        // them on.
        settings.domain.health.check_secs = 0;
        settings
    }

    /// A second server on the same database and keys: another replica.
    pub async fn replica(&self) -> Self {
        Self::serve(self.settings.clone(), None).await
    }

    /// Like `start_with`, for settings that name the server's own address (a redirect URL):
    /// `configure` also gets the address it will serve on.
    pub async fn start_at(
        backend: Backend,
        configure: impl FnOnce(&mut ServerSettings, std::net::SocketAddr),
    ) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let test_db = TestDb::new(backend).await;
        let mut settings = Self::test_settings(&test_db);
        configure(&mut settings, addr);
        Self::serve_on(settings, Some(test_db), listener).await
    }

    /// `keyhouse serve` with exactly these settings, on the database they name.
    pub async fn serve(settings: ServerSettings, test_db: Option<TestDb>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        Self::serve_on(settings, test_db, listener).await
    }

    async fn serve_on(
        settings: ServerSettings,
        test_db: Option<TestDb>,
        listener: tokio::net::TcpListener,
    ) -> Self {
        let addr = listener.local_addr().expect("local addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(keyhouse::serve(settings.clone(), listener, async {
            let _ = stopped.await;
        }));
        // The server migrates on start; the test's own connection opens once it serves.
        let mut server = Self {
            addr,
            db: None,
            _owned_db: test_db,
            settings,
            stop: Some(stop),
            task: Some(task),
        };
        server.wait_until_serving().await;
        server.db = Some(
            db::connect(&server.settings.domain.database_url)
                .await
                .expect("connect to the test database"),
        );
        server
    }

    /// Stops serving, as a shutdown signal does (open streams end with UNAVAILABLE); the
    /// database stays. `serve_again` starts it on the same address.
    pub async fn stop_serving(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    /// Serves again on the same address and database after `stop_serving`.
    pub async fn serve_again(&mut self) {
        let mut listener = None;
        for _ in 0..400 {
            match tokio::net::TcpListener::bind(self.addr).await {
                Ok(l) => {
                    listener = Some(l);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(25)).await,
            }
        }
        let listener = listener.expect("the server's address is free again within 10 s");
        let (stop, stopped) = oneshot::channel::<()>();
        self.task = Some(tokio::spawn(keyhouse::serve(
            self.settings.clone(),
            listener,
            async {
                let _ = stopped.await;
            },
        )));
        self.stop = Some(stop);
        self.wait_until_serving().await;
    }

    async fn wait_until_serving(&mut self) {
        for _ in 0..400 {
            if self.task.as_ref().is_some_and(|t| t.is_finished()) {
                let result = self.task.take().expect("task").await;
                panic!(
                    "the test server stopped before serving: {:#}",
                    result.expect("join").expect_err("stopped")
                );
            }
            if let Ok(channel) = Channel::from_shared(self.url())
                .expect("url")
                .connect()
                .await
            {
                let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
                let req = tonic_health::pb::HealthCheckRequest {
                    service: String::new(),
                };
                if health.check(req).await.is_ok() {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!(
            "the test server did not start serving on {} within 10 s",
            self.addr
        );
    }

    /// The test's own connection to the server's database.
    pub fn db(&self) -> &DatabaseConnection {
        self.db.as_ref().expect("connected once serving")
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(self.url())
            .expect("url")
            .connect()
            .await
            .expect("connect")
    }

    /// A session for `user` with `role`, made the way `keyhouse session create` makes one.
    pub async fn session(&self, user: &str, role: Role) -> String {
        let token = storage::sessions::create(
            self.db(),
            user,
            &format!("{user}@example.com"),
            role,
            chrono::Duration::hours(1),
        )
        .await
        .expect("create a session");
        token.as_str().to_owned()
    }

    pub async fn user_client(&self, token: Option<&str>) -> UserClient {
        UserKeyServiceClient::with_interceptor(self.channel().await, Auth(token.map(str::to_owned)))
    }

    pub async fn platform_client(&self, token: Option<&str>) -> PlatformClient {
        PlatformKeyServiceClient::with_interceptor(
            self.channel().await,
            Auth(token.map(str::to_owned)),
        )
    }

    /// A real HTTP client for the REST paths.
    pub fn http(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client")
    }

    /// The full URL of a REST path on this server.
    pub fn rest(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Runs SQL that returns nothing; for tests that move a row's clock.
    pub async fn exec(&self, sql: &str) {
        self.db()
            .execute_unprepared(sql)
            .await
            .expect("test SQL runs");
    }

    /// Every row of every keyhouse table, as text: to prove a secret is stored nowhere.
    pub async fn dump_all_tables(&self) -> String {
        let backend = self.db().get_database_backend();
        let mut out = String::new();
        match backend {
            sea_orm::DbBackend::Postgres => {
                let tables = self
                    .db()
                    .query_all_raw(Statement::from_string(
                        backend,
                        "SELECT tablename FROM pg_tables WHERE schemaname = 'public'",
                    ))
                    .await
                    .expect("list tables");
                for t in tables {
                    let table: String = t.try_get("", "tablename").expect("table name");
                    let rows = self
                        .db()
                        .query_all_raw(Statement::from_string(
                            backend,
                            format!("SELECT row_to_json(t)::text AS j FROM \"{table}\" t"),
                        ))
                        .await
                        .expect("dump table");
                    for r in rows {
                        out.push_str(&r.try_get::<String>("", "j").expect("row text"));
                        out.push('\n');
                    }
                }
            }
            _ => {
                // The database file and its WAL hold every byte SQLite stored.
                let path = self
                    .settings
                    .domain
                    .database_url
                    .trim_start_matches("sqlite://")
                    .split('?')
                    .next()
                    .unwrap_or_default()
                    .to_owned();
                // The database file must be there (a check of what is absent from an empty dump
                // would prove nothing); the WAL may have been checkpointed away.
                let main = std::fs::read(&path).expect("the SQLite database file");
                out.push_str(&String::from_utf8_lossy(&main));
                if let Ok(bytes) = std::fs::read(format!("{path}-wal")) {
                    out.push_str(&String::from_utf8_lossy(&bytes));
                }
            }
        }
        out
    }

    /// Every row of every table as `table: values`, sorted: two snapshots differ when a row was
    /// added, removed or changed, and the difference reads as those rows.
    pub async fn rows(&self) -> Vec<String> {
        let backend = self.db().get_database_backend();
        let query = |sql: String| {
            self.db()
                .query_all_raw(Statement::from_string(backend, sql))
        };
        let text = |row: &sea_orm::QueryResult, column: &str| -> String {
            row.try_get("", column).expect("a text column")
        };
        let postgres = backend == sea_orm::DbBackend::Postgres;
        let list_tables = if postgres {
            "SELECT tablename AS t FROM pg_tables WHERE schemaname = 'public'"
        } else {
            "SELECT name AS t FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        };
        let mut out = Vec::new();
        for table in query(list_tables.into()).await.expect("list tables") {
            let table = text(&table, "t");
            let select = if postgres {
                format!("SELECT row_to_json(x)::text AS r FROM \"{table}\" x")
            } else {
                // quote() renders every SQLite value, blobs and NULL included, as text.
                let columns = query(format!(
                    "SELECT name AS c FROM pragma_table_info('{table}')"
                ))
                .await
                .expect("list columns");
                let values: Vec<String> = columns
                    .iter()
                    .map(|c| format!("'{0}=' || quote(\"{0}\")", text(c, "c")))
                    .collect();
                format!(
                    "SELECT {} AS r FROM \"{table}\"",
                    values.join(" || ', ' || ")
                )
            };
            for row in query(select).await.expect("read a table") {
                out.push(format!("{table}: {}", text(&row, "r")));
            }
        }
        out.sort();
        out
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Adds the session token (if any) as `authorization: Bearer`.
#[derive(Clone)]
pub struct Auth(Option<String>);

impl tonic::service::Interceptor for Auth {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(token) = &self.0 {
            let value: MetadataValue<_> = format!("Bearer {token}")
                .parse()
                .map_err(|_| Status::internal("bad token"))?;
            req.metadata_mut().insert("authorization", value);
        }
        Ok(req)
    }
}

/// Declares each listed test once per database, as `sqlite::name` and `postgres::name`, so the
/// test output shows which storage each run used.
#[macro_export]
macro_rules! on_both_databases {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::support::Backend::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::support::Backend::Postgres).await
                }
            )*
        }
    };
}
