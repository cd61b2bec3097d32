//! WatchPlatformKeys: the state of every key, then one message per change, wherever the
//! change was made. Watchers re-read the key on each notification, so the feed only carries
//! names; a missed notification (reconnect, slow watcher) becomes a full re-read.

use std::collections::HashMap;

use keyhouse_proto::v1 as pb;
use serde_json::json;
use tokio::sync::{broadcast, mpsc};
use tracing::Instrument;

use super::PlatformKeys;
use crate::caller::Caller;
use crate::change_feed::Change;
use crate::error::{Error, Result};
use crate::providers::{Provider, catalog};
use crate::storage::audit;
use crate::timestamp;

impl PlatformKeys {
    #[tracing::instrument(skip_all, fields(actor = %caller.user_id(), include_secret = req.include_secret))]
    pub async fn watch(
        &self,
        caller: &Caller,
        req: pb::WatchPlatformKeysRequest,
    ) -> Result<mpsc::Receiver<Result<pb::PlatformKeyEvent>>> {
        caller.require_admin_or_service()?;
        let txn = crate::db::begin(&self.db).await?;
        audit::record(
            &txn,
            caller,
            "platform_key.watch",
            "*",
            json!({ "include_secret": req.include_secret }),
        )
        .await?;
        txn.commit().await?;

        // Subscribe before reading the initial state, so no change falls between the two.
        let changes = self.feed.subscribe();
        let (tx, rx) = mpsc::channel(64);
        let this = self.clone();
        // The stream's reads (resyncs) belong to the watch call's trace.
        tokio::spawn(
            async move {
                // A watch never ends by itself, and the server's drain waits for every open call:
                // at shutdown the stream ends with UNAVAILABLE, which tells the client to watch
                // again on another replica.
                tokio::select! {
                    () = this.feed.closed() => {
                        let _ = tx.try_send(Err(Error::Unavailable("server shutting down".into())));
                    }
                    () = this.clone().stream(changes, tx.clone(), req.include_secret) => {}
                }
            }
            .in_current_span(),
        );
        Ok(rx)
    }

    /// ReportPlatformKeySync: a sync agent applied `version` of a key to `target`; recorded as a
    /// `platform_key.synced` audit event (never the value: the agent sends none).
    #[tracing::instrument(skip_all, fields(actor = %caller.user_id()))]
    pub async fn report_sync(
        &self,
        caller: &Caller,
        req: pb::ReportPlatformKeySyncRequest,
    ) -> Result<pb::ReportPlatformKeySyncResponse> {
        caller.require_service()?;
        let spec = super::spec(&req.name)?;
        if req.version < 0 {
            return Err(Error::invalid("version", "version must be 0 or more"));
        }
        let target_ok = !req.target.is_empty()
            && req.target.len() <= 100
            && req.target.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
            });
        if !target_ok {
            return Err(Error::invalid(
                "target",
                "target must be 1 to 100 lowercase letters, digits, '.', '_' or '-'",
            ));
        }
        let source = match req.source.as_str() {
            s @ ("database" | "environment" | "not_set") => s,
            _ => {
                return Err(Error::invalid(
                    "source",
                    "source must be database, environment or not_set",
                ));
            }
        };
        let txn = crate::db::begin(&self.db).await?;
        audit::record(
            &txn,
            caller,
            "platform_key.synced",
            spec.id,
            json!({ "version": req.version, "target": req.target, "source": source }),
        )
        .await?;
        txn.commit().await?;
        Ok(pb::ReportPlatformKeySyncResponse {})
    }

    async fn stream(
        self,
        mut changes: broadcast::Receiver<Change>,
        tx: mpsc::Sender<Result<pb::PlatformKeyEvent>>,
        include_secret: bool,
    ) {
        let mut sent: HashMap<&'static str, (i64, String)> = HashMap::new();
        if !self
            .send(catalog::platform(), &mut sent, &tx, include_secret, true)
            .await
        {
            return;
        }
        loop {
            let specs: Vec<&'static Provider> = tokio::select! {
                () = tx.closed() => return,
                change = changes.recv() => match change {
                    Ok(Change::PlatformKey(name)) => catalog::find(&name).filter(|p| p.env_var.is_some()).into_iter().collect(),
                    Ok(Change::UserKey(_)) => Vec::new(),
                    Ok(Change::Resync) | Err(broadcast::error::RecvError::Lagged(_)) => catalog::platform().collect(),
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            };
            if !self
                .send(specs.into_iter(), &mut sent, &tx, include_secret, false)
                .await
            {
                return;
            }
        }
    }

    /// Sends the keys whose (version, source) differ from what this watcher last saw; false
    /// once the watcher is gone or the state cannot be read.
    async fn send(
        &self,
        specs: impl Iterator<Item = &'static Provider>,
        sent: &mut HashMap<&'static str, (i64, String)>,
        tx: &mpsc::Sender<Result<pb::PlatformKeyEvent>>,
        include_secret: bool,
        initial: bool,
    ) -> bool {
        for spec in specs {
            let event = match self.event(spec, include_secret, initial).await {
                Ok(event) => event,
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return false;
                }
            };
            let seen = (event.version, event.source.clone());
            if sent.get(spec.id) == Some(&seen) {
                continue;
            }
            sent.insert(spec.id, seen);
            if tx.send(Ok(event)).await.is_err() {
                return false;
            }
        }
        true
    }

    async fn event(
        &self,
        spec: &Provider,
        include_secret: bool,
        initial: bool,
    ) -> Result<pb::PlatformKeyEvent> {
        let current = self.current(spec).await?;
        let api_key = if include_secret {
            self.reveal(spec, &current)?
                .map(|v| v.to_string())
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(pb::PlatformKeyEvent {
            name: spec.id.into(),
            version: current.stored.as_ref().map_or(0, |s| s.version),
            source: current.source.as_str().into(),
            updated_at: current.stored.as_ref().map(|s| timestamp(s.updated_at)),
            api_key,
            initial,
        })
    }
}
