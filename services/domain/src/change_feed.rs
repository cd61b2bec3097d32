//! Change notifications between replicas. On PostgreSQL a change is a NOTIFY sent inside the
//! transaction that made it, so every replica (this one included) hears of it exactly when it
//! commits; on SQLite, where there is one process, an in-process broadcast after the commit.

use std::sync::Arc;
use std::time::Duration;

use sea_orm::sqlx::postgres::{PgListener, PgPoolOptions};
use sea_orm::{ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, Statement};
use tokio::sync::{broadcast, watch};

use crate::error::Result;

const CHANNEL: &str = "keyhouse_changes";

/// How long one attempt to open the LISTEN connection lasts, and the pause between attempts.
const RETRY: Duration = Duration::from_secs(1);

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// A platform key's stored value changed (by its catalog name).
    PlatformKey(String),
    /// A user API key was revoked or regenerated.
    UserKey(uuid::Uuid),
    /// Notifications may have been missed (a reconnect, a slow subscriber): re-read everything.
    Resync,
}

impl Change {
    fn encode(&self) -> Option<String> {
        match self {
            Change::PlatformKey(name) => Some(format!("platform_key:{name}")),
            Change::UserKey(id) => Some(format!("user_key:{id}")),
            Change::Resync => None,
        }
    }

    fn decode(payload: &str) -> Option<Self> {
        let (kind, value) = payload.split_once(':')?;
        match kind {
            "platform_key" => Some(Change::PlatformKey(value.to_owned())),
            "user_key" => uuid::Uuid::parse_str(value).ok().map(Change::UserKey),
            _ => None,
        }
    }
}

#[derive(Clone)]
pub struct ChangeFeed {
    tx: broadcast::Sender<Change>,
    backend: DbBackend,
    /// True once the server shuts down: long-lived subscribers (watch streams) end then, so
    /// that they do not hold the drain open.
    closing: Arc<watch::Sender<bool>>,
    _listener: Option<Arc<AbortOnDrop>>,
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl ChangeFeed {
    /// Starts the feed; on PostgreSQL this opens a LISTEN connection to `url` that lives as
    /// long as the feed.
    pub async fn start(db: &DatabaseConnection, url: &str) -> Result<Self> {
        // A subscriber more than this many changes behind loses the oldest and is told to
        // resync (`Lagged`), so a slow subscriber never makes the feed hold more.
        let (tx, _) = broadcast::channel(1024);
        let backend = db.get_database_backend();
        let listener = if backend == DbBackend::Postgres {
            let listener = subscribe(url).await.map_err(crate::Error::internal)?;
            Some(Arc::new(AbortOnDrop(tokio::spawn(listen(
                listener,
                url.to_owned(),
                tx.clone(),
            )))))
        } else {
            None
        };
        Ok(Self {
            tx,
            backend,
            closing: Arc::new(watch::channel(false).0),
            _listener: listener,
        })
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.tx.subscribe()
    }

    /// Called when the server starts shutting down: `closed` resolves for every subscriber.
    pub fn close(&self) {
        self.closing.send_replace(true);
    }

    /// Resolves once `close` was called (at once if it already was).
    pub async fn closed(&self) {
        let mut closing = self.closing.subscribe();
        // The sender lives as long as `self`, so waiting cannot fail.
        let _ = closing.wait_for(|closed| *closed).await;
    }

    /// Commits `txn` and announces `changes` to every replica.
    pub async fn commit(&self, txn: DatabaseTransaction, changes: &[Change]) -> Result<()> {
        if self.backend == DbBackend::Postgres {
            for payload in changes.iter().filter_map(Change::encode) {
                txn.execute_raw(Statement::from_sql_and_values(
                    DbBackend::Postgres,
                    "SELECT pg_notify($1, $2)",
                    [CHANNEL.into(), payload.into()],
                ))
                .await?;
            }
            txn.commit().await?;
        } else {
            txn.commit().await?;
            for change in changes {
                let _ = self.tx.send(change.clone());
            }
            crate::observe::queue_depth("change_feed", self.tx.len());
        }
        Ok(())
    }
}

/// The LISTEN connection, from a pool of one that gives up after `RETRY`. `PgListener::connect`
/// would keep trying for 30 s with pauses growing to 6 s, so after a long outage the feed came
/// back seconds after the database, and a revocation made meanwhile stayed unseen that long.
async fn subscribe(url: &str) -> Result<PgListener, sea_orm::sqlx::Error> {
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .max_lifetime(None)
        .idle_timeout(None)
        .acquire_timeout(RETRY)
        .connect(url)
        .await?;
    let mut listener = PgListener::connect_with(&pool).await?;
    // Reconnecting is `listen`'s work, so that the resync follows it; the listener's own would
    // wait on the pool before reporting the loss.
    listener.eager_reconnect(false);
    listener.listen(CHANNEL).await?;
    Ok(listener)
}

async fn listen(mut listener: PgListener, url: String, tx: broadcast::Sender<Change>) {
    loop {
        match listener.try_recv().await {
            Ok(Some(note)) => {
                if let Some(change) = Change::decode(note.payload()) {
                    let _ = tx.send(change);
                    crate::observe::queue_depth("change_feed", tx.len());
                }
            }
            // The connection dropped. A new LISTEN is made here rather than by sqlx's silent
            // reconnect, so that the resync is sent once it is in place: whatever was notified
            // before then is lost, and cached verdicts until then are not trusted.
            Ok(None) | Err(_) => {
                listener = resubscribe(&url).await;
                let _ = tx.send(Change::Resync);
            }
        }
    }
}

/// A new LISTEN connection, tried every second until the database answers.
async fn resubscribe(url: &str) -> PgListener {
    let mut warned = false;
    loop {
        match subscribe(url).await {
            Ok(listener) => {
                if warned {
                    tracing::info!("change feed: listening again");
                }
                return listener;
            }
            Err(e) => {
                if !warned {
                    tracing::warn!(error = %e, "change feed: LISTEN connection lost; retrying every second");
                    warned = true;
                }
                tokio::time::sleep(RETRY).await;
            }
        }
    }
}
