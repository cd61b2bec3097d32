//! Servers for the benchmarks: `keyhouse serve` in-process on its own runtime, over a fresh
//! SQLite file or a fresh PostgreSQL database, and sessions to mint keys with.

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

pub struct Server {
    pub addr: SocketAddr,
    pub settings: ServerSettings,
    _stop: tokio::sync::oneshot::Sender<()>,
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
    bcrypt_cost: u32,
    rt: &tokio::runtime::Handle,
) -> anyhow::Result<Server> {
    start(
        settings(
            format!("sqlite://{}/bench.db?mode=rwc", dir.display()),
            bcrypt_cost,
        ),
        rt,
    )
    .await
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

pub async fn start(
    settings: ServerSettings,
    rt: &tokio::runtime::Handle,
) -> anyhow::Result<Server> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = settings.clone();
    rt.spawn(async move {
        let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
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
                    _stop: stop,
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

    /// Mints a key for `user` through the real API.
    pub async fn key(
        &self,
        user: &str,
        req: pb::CreateKeyRequest,
    ) -> anyhow::Result<pb::IssuedKey> {
        let conn = db::connect(&self.settings.domain.database_url).await?;
        let token =
            storage::sessions::create(&conn, user, "", Role::User, chrono::Duration::hours(1))
                .await?;
        let mut client = UserKeyServiceClient::new(self.channel().await?);
        let mut request = tonic::Request::new(req);
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {}", token.as_str()).parse()?,
        );
        Ok(client.create_key(request).await?.into_inner())
    }
}
