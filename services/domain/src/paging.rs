//! Pagination shared by every list RPC: page sizes, opaque page tokens that mark where the
//! previous page (newest first) ended, and the one keyset query condition that reads the next.

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{EntityTrait, QueryFilter, QueryOrder, QuerySelect, Select};
use uuid::Uuid;

use crate::error::{Error, Result};

pub const DEFAULT_PAGE_SIZE: i32 = 50;
pub const MAX_PAGE_SIZE: i32 = 500;

/// The requested page size, with 0 meaning the default.
pub fn page_size(requested: i32) -> Result<u64> {
    match requested {
        0 => Ok(DEFAULT_PAGE_SIZE as u64),
        n @ 1..=MAX_PAGE_SIZE => Ok(n as u64),
        n => Err(Error::invalid(
            "page_size",
            format!("page_size must be between 1 and {MAX_PAGE_SIZE}, got {n}"),
        )),
    }
}

/// The last row of a page: the next page holds rows strictly older than it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cursor {
    pub at: DateTime<Utc>,
    pub id: Uuid,
}

impl Cursor {
    pub fn encode(self) -> String {
        hex::encode(format!("{}|{}", self.at.timestamp_micros(), self.id))
    }

    /// An empty token is the first page.
    pub fn decode(token: &str) -> Result<Option<Self>> {
        if token.is_empty() {
            return Ok(None);
        }
        let bad = || Error::invalid("page_token", "invalid page_token");
        let raw = String::from_utf8(hex::decode(token).map_err(|_| bad())?).map_err(|_| bad())?;
        let (micros, id) = raw.split_once('|').ok_or_else(bad)?;
        let at =
            DateTime::from_timestamp_micros(micros.parse().map_err(|_| bad())?).ok_or_else(bad)?;
        Ok(Some(Self {
            at,
            id: Uuid::parse_str(id).map_err(|_| bad())?,
        }))
    }
}

/// One page of `query`, newest first by (`at`, `id`): the rows strictly older than `after`, and
/// `limit + 1` of them so that `split_page` can tell whether more follow. The condition is a row
/// comparison, `(at, id) < (cursor)`, which an index ending in (at, id) serves as a range: a deep
/// page costs what the first one does.
pub fn keyset<E: EntityTrait>(
    query: Select<E>,
    at: E::Column,
    id: E::Column,
    after: Option<Cursor>,
    limit: u64,
) -> Select<E> {
    let query = match after {
        Some(c) => query.filter(
            Expr::tuple([Expr::col(at), Expr::col(id)])
                .lt(Expr::tuple([Expr::value(c.at), Expr::value(c.id)])),
        ),
        None => query,
    };
    query.order_by_desc(at).order_by_desc(id).limit(limit + 1)
}

/// Trims a `limit + 1` read to one page and says where the next one starts.
pub fn split_page<T>(
    mut rows: Vec<T>,
    limit: u64,
    cursor_of: impl Fn(&T) -> Cursor,
) -> (Vec<T>, String) {
    if rows.len() as u64 <= limit {
        return (rows, String::new());
    }
    rows.truncate(limit as usize);
    let next = rows
        .last()
        .map(|r| cursor_of(r).encode())
        .unwrap_or_default();
    (rows, next)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip() {
        let c = Cursor {
            at: crate::storage::now(),
            id: Uuid::new_v4(),
        };
        assert_eq!(Cursor::decode(&c.encode()).expect("decodes"), Some(c));
        assert_eq!(Cursor::decode("").expect("empty"), None);
        assert!(Cursor::decode("zz").is_err());
        assert!(Cursor::decode("7c").is_err());
    }

    #[test]
    fn page_sizes_are_bounded() {
        assert_eq!(page_size(0).expect("default"), 50);
        assert_eq!(page_size(500).expect("max"), 500);
        assert!(page_size(501).is_err());
        assert!(page_size(-1).is_err());
    }
}
