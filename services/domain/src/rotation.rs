//! `keyhouse encryption rotate`: re-encrypts every stored secret under the key ring's primary
//! key. Row by row (each UPDATE its own transaction, and only if the row still holds the
//! ciphertext that was read), in batches, skipping rows already under the primary key — so it
//! is safe to interrupt and to run again.

use sea_orm::sea_query::{Alias, Expr, ExprTrait, Order, Query};
use sea_orm::{ConnectionTrait, DatabaseConnection, TryGetable, Value};

use crate::crypto::fernet_ring::KeyRing;
use crate::error::Result;

/// One table's secret column and primary key.
struct SecretColumn {
    table: &'static str,
    key: &'static str,
    value: &'static str,
}

const SECRET_COLUMNS: &[SecretColumn] = &[
    SecretColumn {
        table: "platform_settings",
        key: "key",
        value: "value",
    },
    SecretColumn {
        table: "platform_key_versions",
        key: "id",
        value: "ciphertext",
    },
    SecretColumn {
        table: "user_provider_keys",
        key: "id",
        value: "ciphertext",
    },
];

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    pub table: &'static str,
    /// Rows re-encrypted by this run.
    pub rotated: usize,
    /// Rows that were already under the primary key.
    pub current: usize,
}

/// Re-encrypts up to `limit` rows (all when `None`), calling `report` after each batch.
pub async fn rotate(
    db: &DatabaseConnection,
    ring: &KeyRing,
    batch_size: u64,
    limit: Option<usize>,
    mut report: impl FnMut(&Progress),
) -> Result<Vec<Progress>> {
    let mut budget = limit.unwrap_or(usize::MAX);
    let mut done = Vec::new();
    for column in SECRET_COLUMNS {
        let progress = if column.key == "id" {
            rotate_table::<uuid::Uuid>(db, ring, column, batch_size, &mut budget, &mut report)
                .await?
        } else {
            rotate_table::<String>(db, ring, column, batch_size, &mut budget, &mut report).await?
        };
        done.push(progress);
    }
    Ok(done)
}

async fn rotate_table<K>(
    db: &DatabaseConnection,
    ring: &KeyRing,
    column: &SecretColumn,
    batch_size: u64,
    budget: &mut usize,
    report: &mut impl FnMut(&Progress),
) -> Result<Progress>
where
    K: TryGetable + Into<Value> + Clone,
{
    let (table, key, value) = (
        Alias::new(column.table),
        Alias::new(column.key),
        Alias::new(column.value),
    );
    let mut progress = Progress {
        table: column.table,
        ..Default::default()
    };
    let mut after: Option<K> = None;
    while *budget > 0 {
        let mut select = Query::select();
        select
            .columns([key.clone(), value.clone()])
            .from(table.clone())
            .order_by(key.clone(), Order::Asc)
            .limit(batch_size);
        if let Some(last) = after.clone() {
            select.and_where(Expr::col(key.clone()).gt(last));
        }
        let rows = db.query_all(&select).await?;
        if rows.is_empty() {
            break;
        }
        for row in &rows {
            let id: K = row.try_get("", column.key)?;
            let old: String = row.try_get("", column.value)?;
            after = Some(id.clone());
            if ring.is_primary(&old) {
                progress.current += 1;
                continue;
            }
            if *budget == 0 {
                break;
            }
            let plaintext = ring.decrypt(&old)?;
            let mut update = Query::update();
            update
                .table(table.clone())
                .value(value.clone(), ring.encrypt(&plaintext))
                .and_where(Expr::col(key.clone()).eq(id))
                .and_where(Expr::col(value.clone()).eq(old));
            // Zero rows means someone rewrote the row meanwhile, under the primary key.
            db.execute(&update).await?;
            progress.rotated += 1;
            *budget -= 1;
        }
        report(&progress);
    }
    Ok(progress)
}
