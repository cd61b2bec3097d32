//! `keyhouse backup` and `keyhouse restore` for the embedded default: a SQLite database and the
//! key file beside it go together, since a database without its key keeps every stored secret
//! sealed. PostgreSQL is backed up with `pg_dump` (README, "Backup and restore"); these commands
//! refuse it rather than copy half of what matters.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use sea_orm::{ConnectionTrait, DbBackend, Statement};

use crate::key_file;

/// The names inside a backup directory.
pub const DATABASE: &str = "keyhouse.db";
pub const KEY_FILE: &str = "keyhouse.db.key";

/// What a backup or restore wrote, for the operator's message.
pub struct Written {
    pub database: PathBuf,
    /// `None` when the ring comes from KEYHOUSE_ENCRYPTION_KEYS and there is no key file.
    pub key_file: Option<PathBuf>,
}

/// The database file of a SQLite URL; `None` for PostgreSQL and in-memory databases.
pub fn sqlite_file(database_url: &str) -> Option<PathBuf> {
    let key = key_file::path_for(database_url)?;
    let key = key.to_str()?;
    Some(PathBuf::from(key.strip_suffix(".key")?))
}

/// The SQLite database file of `database_url`, or a refusal that says how to back up
/// PostgreSQL.
pub fn database_file(database_url: &str) -> anyhow::Result<PathBuf> {
    if let Some(file) = sqlite_file(database_url) {
        return Ok(file);
    }
    if database_url.starts_with("postgres") {
        bail!(
            "DATABASE_URL is PostgreSQL: back it up with `pg_dump --format=custom` and keep \
             KEYHOUSE_ENCRYPTION_KEYS with the dump; restore with `pg_restore` into an empty \
             database, then `keyhouse migrate` (README, \"Backup and restore\")"
        );
    }
    bail!("DATABASE_URL names no database file to back up (an in-memory database?)")
}

/// Writes `dir/keyhouse.db`, a consistent copy taken with `VACUUM INTO` while writers go on,
/// and `dir/keyhouse.db.key` (mode 0600) when the ring is kept in a key file. Creates `dir`
/// if needed; never overwrites a file.
pub async fn backup(
    db: &impl ConnectionTrait,
    database_url: &str,
    dir: &Path,
) -> anyhow::Result<Written> {
    database_file(database_url)?;
    let database = dir.join(DATABASE);
    let key_copy = dir.join(KEY_FILE);
    for path in [&database, &key_copy] {
        if path.exists() {
            bail!(
                "{} exists; a backup never overwrites a file: choose an empty directory",
                path.display()
            );
        }
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let target = database
        .to_str()
        .context("the backup path is not valid UTF-8")?;
    let copied = db
        .execute_raw(Statement::from_sql_and_values(
            DbBackend::Sqlite,
            "VACUUM INTO ?",
            [target.into()],
        ))
        .await;
    if let Err(e) = copied {
        // A half-written copy would make the next attempt refuse, and is no backup.
        let _ = std::fs::remove_file(&database);
        return Err(e).with_context(|| format!("writing {}", database.display()));
    }
    let key_file = match key_file::path_for(database_url).filter(|p| p.exists()) {
        Some(source) => {
            copy_private(&source, &key_copy, false)?;
            Some(key_copy)
        }
        None => None,
    };
    Ok(Written { database, key_file })
}

/// Copies `dir/keyhouse.db` to the database of `database_url` and `dir/keyhouse.db.key` beside
/// it (mode 0600). Refuses to replace an existing database or key file unless `force`. The
/// server must be stopped: a running one keeps the old file open.
pub fn restore(database_url: &str, dir: &Path, force: bool) -> anyhow::Result<Written> {
    let database = database_file(database_url)?;
    let source = dir.join(DATABASE);
    let mut header = [0u8; 16];
    std::fs::File::open(&source)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut header))
        .with_context(|| format!("reading the backup {}", source.display()))?;
    if &header != b"SQLite format 3\0" {
        bail!("{} is not a SQLite database", source.display());
    }
    let key_source = dir.join(KEY_FILE);
    let key_target = key_file::path_for(database_url)
        .filter(|_| key_source.exists())
        .map(|target| (key_source, target));
    if !force {
        for path in std::iter::once(&database).chain(key_target.as_ref().map(|(_, t)| t)) {
            if path.exists() {
                bail!(
                    "{} exists; restore replaces it only with --force (stop the server first)",
                    path.display()
                );
            }
        }
    }
    if let Some(parent) = database.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    let key_file = match key_target {
        Some((source, target)) => {
            copy_private(&source, &target, true)?;
            Some(target)
        }
        None => None,
    };
    // The copy lands beside the database and is renamed over it, so a failed copy leaves the
    // old database whole; the old write-ahead log would replay onto the new file, so it goes.
    let staging = with_suffix(&database, ".restoring");
    let _ = std::fs::remove_file(&staging);
    std::fs::copy(&source, &staging)
        .with_context(|| format!("copying {} to {}", source.display(), staging.display()))?;
    std::fs::File::open(&staging)?.sync_all()?;
    for suffix in ["-wal", "-shm"] {
        let path = with_suffix(&database, suffix);
        if path.exists() {
            std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        }
    }
    std::fs::rename(&staging, &database)
        .with_context(|| format!("moving the restored database to {}", database.display()))?;
    Ok(Written { database, key_file })
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Copies a key file so that no moment exists where the copy is open to group or others.
fn copy_private(from: &Path, to: &Path, replace: bool) -> anyhow::Result<()> {
    let key = zeroize::Zeroizing::new(
        std::fs::read(from).with_context(|| format!("reading the key file {}", from.display()))?,
    );
    let staging = if replace {
        with_suffix(to, ".restoring")
    } else {
        to.to_owned()
    };
    if replace {
        let _ = std::fs::remove_file(&staging);
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(&staging)
        .with_context(|| format!("creating the key file {}", staging.display()))?;
    file.write_all(&key)?;
    file.sync_all()?;
    if replace {
        std::fs::rename(&staging, to)
            .with_context(|| format!("moving the key file to {}", to.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::sqlite_file;

    #[test]
    fn the_database_file_comes_from_the_sqlite_url() {
        assert_eq!(
            sqlite_file("sqlite:///var/lib/kh/k.db?mode=rwc").as_deref(),
            Some("/var/lib/kh/k.db".as_ref())
        );
        assert_eq!(sqlite_file("postgres://u@h/db"), None);
    }
}
