//! `keyhouse encryption rotate`: re-encrypts every stored secret under the key ring's primary
//! key, bound to its row (`fernet_ring::binding`). Row by row (each UPDATE its own transaction,
//! and only if the row still holds the ciphertext that was read), in batches, skipping rows
//! already under the primary key and bound — so it is safe to interrupt and to run again. A
//! secret bound to another row is left as it is and counted: rebinding it would make the copy
//! good.

use sea_orm::sea_query::{Alias, Expr, ExprTrait, Order, Query};
use sea_orm::{ConnectionTrait, DatabaseConnection, TryGetable, Value};

use crate::crypto::fernet_ring::{KeyRing, binding};
use crate::error::{Error, Result};

/// One table's secret column and primary key, and the row a secret there is bound to.
struct SecretColumn {
    table: &'static str,
    key: &'static str,
    value: &'static str,
    /// The columns that name the row, and the binding they make.
    row: &'static [&'static str],
    binding: fn(&[String]) -> String,
}

const SECRET_COLUMNS: &[SecretColumn] = &[
    SecretColumn {
        table: "platform_settings",
        key: "key",
        value: "value",
        row: &["key"],
        binding: |row| binding::platform(&row[0]),
    },
    SecretColumn {
        table: "platform_key_versions",
        key: "id",
        value: "ciphertext",
        row: &["name"],
        binding: |row| binding::platform(&row[0]),
    },
    SecretColumn {
        table: "user_provider_keys",
        key: "id",
        value: "ciphertext",
        row: &["user_id", "provider"],
        binding: |row| binding::byok(&row[0], &row[1]),
    },
];

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    pub table: &'static str,
    /// Rows re-encrypted by this run.
    pub rotated: usize,
    /// Of those, rows stored before secrets were bound to their rows.
    pub bound: usize,
    /// Rows that were already under the primary key and bound.
    pub current: usize,
    /// Rows holding a secret bound to another row, left as they are (each is logged).
    pub refused: usize,
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
    K: TryGetable + Into<Value> + Clone + std::fmt::Display,
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
            .columns(
                column
                    .row
                    .iter()
                    .filter(|c| **c != column.key)
                    .map(|c| Alias::new(*c)),
            )
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
            let names = column
                .row
                .iter()
                .map(|c| row.try_get::<String>("", c))
                .collect::<Result<Vec<_>, _>>()?;
            after = Some(id.clone());
            let new = match ring.rewrap(&(column.binding)(&names), &old) {
                Ok(Some(new)) => new,
                Ok(None) => {
                    progress.current += 1;
                    continue;
                }
                Err(Error::FailedPrecondition(_)) => {
                    tracing::error!(table = column.table, id = %id, "left as it is: its secret is bound to another row");
                    progress.refused += 1;
                    continue;
                }
                Err(e) => return Err(e),
            };
            if *budget == 0 {
                break;
            }
            let mut update = Query::update();
            update
                .table(table.clone())
                .value(value.clone(), new.token)
                .and_where(Expr::col(key.clone()).eq(id))
                .and_where(Expr::col(value.clone()).eq(old));
            // Zero rows means someone rewrote the row meanwhile, under the primary key and bound.
            db.execute(&update).await?;
            progress.rotated += 1;
            progress.bound += usize::from(new.newly_bound);
            *budget -= 1;
        }
        report(&progress);
    }
    Ok(progress)
}
