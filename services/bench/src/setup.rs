//! Servers for the benchmarks: `keyhouse serve` in-process on its own runtime, over a fresh
//! SQLite file or a fresh PostgreSQL database (dropped again afterwards), and sessions to mint
//! keys and call the API with.

use std::net::SocketAddr;

use keyhouse_domain::caller::Role;
use keyhouse_domain::config::Secret;
use keyhouse_domain::crypto::fernet_ring::KeyRing;
use keyhouse_domain::platform_keys::EnvFallback;
use keyhouse_domain::{db, storage};
use keyhouse_proto::v1 as pb;
use keyhouse_proto::v1::user_key_service_client::UserKeyServiceClient;
use keyhouse_server::ServerSettings;
use sea_orm::ConnectionTrait;
use tonic::transport::Channel;

use crate::Args;

pub struct Server {
    pub addr: SocketAddr,
    pub settings: ServerSettings,
    stop: tokio::sync::oneshot::Sender<()>,
    served: tokio::task::JoinHandle<()>,
}

pub fn settings(database_url: String, bcrypt_cost: u32) -> ServerSettings {
    let mut settings = ServerSettings::new(database_url);
    settings.domain.keys.bcrypt_cost = bcrypt_cost;
    settings.domain.encryption_keys = Some(Secret::new(KeyRing::generate_key()));
    settings.domain.platform_env = Some(EnvFallback::default());
    settings
}

pub async fn sqlite(
    dir: &std::path::Path,
    args: &Args,
    rt: &tokio::runtime::Handle,
) -> anyhow::Result<Server> {
    let url = format!("sqlite://{}/bench.db?mode=rwc", dir.display());
    start(settings(url, args.bcrypt_cost), rt).await
}

/// A fresh database on the PostgreSQL server at `url`.
pub async fn postgres_database(url: &str) -> anyhow::Result<String> {
    let name = format!("keyhouse_bench_{}", uuid::Uuid::new_v4().simple());
    db::connect(url)
        .await?
        .execute_unprepared(&format!("CREATE DATABASE {name}"))
        .await?;
    let (server, _) = url
        .rsplit_once('/')
        .ok_or_else(|| anyhow::anyhow!("no database in {url}"))?;
    Ok(format!("{server}/{name}"))
}

/// Drops a database made by `postgres_database`, closing whatever still holds a connection.
pub async fn drop_postgres_database(url: &str, database_url: &str) -> anyhow::Result<()> {
    let (_, name) = database_url
        .rsplit_once('/')
        .ok_or_else(|| anyhow::anyhow!("no database in {database_url}"))?;
    anyhow::ensure!(name.starts_with("keyhouse_bench_"), "not a bench database");
    let conn = db::connect(url).await?;
    conn.execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .await?;
    conn.close().await?;
    Ok(())
}

/// `keyhouse serve` on a port of its own.
pub async fn start(
    settings: ServerSettings,
    rt: &tokio::runtime::Handle,
) -> anyhow::Result<Server> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind("127.0.0.1:0".parse()?)?;
    let addr = socket.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = settings.clone();
    let served = rt.spawn(async move {
        let listener = socket.listen(128).expect("listener");
        if let Err(e) = keyhouse::serve(run, listener, async {
            let _ = stopped.await;
        })
        .await
        {
            eprintln!("server failed: {e:#}");
        }
    });
    for _ in 0..200 {
        if let Ok(ch) = Channel::from_shared(format!("http://{addr}"))?
            .connect()
            .await
        {
            let mut health = tonic_health::pb::health_client::HealthClient::new(ch);
            if health
                .check(tonic_health::pb::HealthCheckRequest::default())
                .await
                .is_ok()
            {
                return Ok(Server {
                    addr,
                    settings,
                    stop,
                    served,
                });
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    anyhow::bail!("the benchmark server did not start")
}

impl Server {
    pub async fn channel(&self) -> anyhow::Result<Channel> {
        Ok(Channel::from_shared(format!("http://{}", self.addr))?
            .connect()
            .await?)
    }

    /// `n` connections of their own.
    pub async fn channels(&self, n: usize) -> anyhow::Result<Vec<Channel>> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(self.channel().await?);
        }
        Ok(out)
    }

    /// Stops the server and waits (up to 10 s) until it has let go of its database.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = tokio::time::timeout(std::time::Duration::from_secs(10), self.served).await;
    }

    /// A session token for `user`, valid for an hour.
    pub async fn session(&self, user: &str, role: Role) -> anyhow::Result<String> {
        let conn = db::connect(&self.settings.domain.database_url).await?;
        let token =
            storage::sessions::create(&conn, user, "", role, chrono::Duration::hours(1)).await?;
        conn.close().await?;
        Ok(token.as_str().to_owned())
    }

    /// Mints a key for `user` through the real API.
    pub async fn key(
        &self,
        user: &str,
        req: pb::CreateKeyRequest,
    ) -> anyhow::Result<pb::IssuedKey> {
        let token = self.session(user, Role::User).await?;
        let mut client = UserKeyServiceClient::new(self.channel().await?);
        Ok(client
            .create_key(authorized(req, &token)?)
            .await?
            .into_inner())
    }
}

/// A gRPC request carrying a session token.
pub fn authorized<T>(message: T, token: &str) -> anyhow::Result<tonic::Request<T>> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    Ok(request)
}
