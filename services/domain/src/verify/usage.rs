//! Usage written behind: verifications are counted in memory per key and hour, and flushed in
//! one transaction every few seconds (and at shutdown) instead of one UPDATE per request. A
//! failed flush keeps its counts for the next one.

use std::collections::HashMap;
use std::sync::Mutex;

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use sea_orm::sea_query::{Condition, Expr, OnConflict};
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, Set};
use uuid::Uuid;

use crate::entities::{api_key_usage_hourly as usage, user_api_keys};
use crate::error::Result;

#[derive(Default)]
struct Pending {
    counts: HashMap<(Uuid, DateTime<Utc>), i64>,
    last_used: HashMap<Uuid, DateTime<Utc>>,
}

/// Sharded by key, so concurrent verifications of different keys do not queue on one lock.
pub struct UsageRecorder {
    shards: Box<[Mutex<Pending>]>,
}

impl Default for UsageRecorder {
    fn default() -> Self {
        Self {
            shards: (0..16).map(|_| Mutex::default()).collect(),
        }
    }
}

impl UsageRecorder {
    fn shard(&self, key_id: &Uuid) -> std::sync::MutexGuard<'_, Pending> {
        let shard = &self.shards[usize::from(key_id.as_bytes()[15]) % self.shards.len()];
        shard
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn record(&self, key_id: Uuid, at: DateTime<Utc>) {
        let hour = at.duration_trunc(TimeDelta::hours(1)).unwrap_or(at);
        let mut pending = self.shard(&key_id);
        *pending.counts.entry((key_id, hour)).or_insert(0) += 1;
        pending.last_used.insert(key_id, at);
    }

    /// Writes what has been counted so far.
    pub async fn flush(&self, db: &DatabaseConnection) -> Result<()> {
        let mut batch = Pending::default();
        for shard in &self.shards {
            let taken = std::mem::take(
                &mut *shard
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner),
            );
            batch.counts.extend(taken.counts);
            batch.last_used.extend(taken.last_used);
        }
        // Bounded by the keys verified since the last flush, not by the requests: one count
        // per key and hour (more hours only while flushes keep failing).
        crate::observe::queue_depth("usage", batch.counts.len());
        if batch.counts.is_empty() && batch.last_used.is_empty() {
            return Ok(());
        }
        let result = Self::write(db, &batch).await;
        if result.is_err() {
            for ((key_id, hour), n) in batch.counts {
                *self
                    .shard(&key_id)
                    .counts
                    .entry((key_id, hour))
                    .or_insert(0) += n;
            }
            for (key_id, at) in batch.last_used {
                let mut pending = self.shard(&key_id);
                let slot = pending.last_used.entry(key_id).or_insert(at);
                *slot = (*slot).max(at);
            }
        }
        result
    }

    async fn write(db: &DatabaseConnection, batch: &Pending) -> Result<()> {
        let txn = crate::db::begin(db).await?;
        let rows: Vec<usage::ActiveModel> = batch
            .counts
            .iter()
            .map(|((key_id, hour), n)| usage::ActiveModel {
                key_id: Set(*key_id),
                hour: Set(*hour),
                requests: Set(*n),
            })
            .collect();
        for chunk in rows.chunks(500) {
            usage::Entity::insert_many(chunk.to_vec())
                .on_conflict(
                    OnConflict::columns([usage::Column::KeyId, usage::Column::Hour])
                        .value(
                            usage::Column::Requests,
                            Expr::cust("api_key_usage_hourly.requests + excluded.requests"),
                        )
                        .to_owned(),
                )
                .exec(&txn)
                .await?;
        }
        for (key_id, at) in &batch.last_used {
            user_api_keys::Entity::update_many()
                .col_expr(user_api_keys::Column::LastUsed, Expr::value(*at))
                .filter(user_api_keys::Column::Id.eq(*key_id))
                .filter(
                    Condition::any()
                        .add(user_api_keys::Column::LastUsed.is_null())
                        .add(user_api_keys::Column::LastUsed.lt(*at)),
                )
                .exec(&txn)
                .await?;
        }
        txn.commit().await?;
        Ok(())
    }
}
