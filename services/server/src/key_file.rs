//! The embedded default's encryption key: `keyhouse serve` on SQLite with no key configured
//! keeps one in a file beside the database (mode 0600), so one command starts everything.
//! PostgreSQL deployments never get one: there a missing key is a refusal to start. A key file
//! that group or others may read or write is a refusal to start too, naming the `chmod` to run.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use keyhouse_domain::config::Settings;
use keyhouse_domain::crypto::fernet_ring::{self, KeyRing};

/// Where the key file for a SQLite URL lives: `<database file>.key`.
pub fn path_for(database_url: &str) -> Option<PathBuf> {
    let rest = database_url.strip_prefix("sqlite:")?;
    let rest = rest.strip_prefix("//").unwrap_or(rest);
    let file = rest.split('?').next().unwrap_or_default();
    if file.is_empty() || file.contains(":memory:") {
        return None;
    }
    Some(PathBuf::from(format!("{file}.key")))
}

/// The ring from the environment if set; else, on SQLite, from the key file, which is created
/// when `create` is true and it does not exist yet.
pub fn key_ring(settings: &Settings, create: bool) -> anyhow::Result<KeyRing> {
    if let Some(ring) = settings.configured_key_ring()? {
        return Ok(ring);
    }
    let Some(path) = path_for(&settings.database_url) else {
        return Ok(settings.required_key_ring()?);
    };
    if path.exists() {
        return read(&path);
    }
    if !create {
        bail!(
            "{} is not set and there is no key file at {}; {}",
            fernet_ring::KEYS_VAR,
            path.display(),
            fernet_ring::GENERATE_HINT
        );
    }
    write_new(&path)?;
    tracing::warn!(
        path = %path.display(),
        "created an encryption key for stored secrets; back this file up with the database: without it they cannot be decrypted"
    );
    read(&path)
}

fn read(path: &Path) -> anyhow::Result<KeyRing> {
    check_mode(path)?;
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the key file {}", path.display()))?;
    Ok(KeyRing::parse(
        &text,
        &format!("the key file {}", path.display()),
    )?)
}

/// Whoever may read the key file may read every stored secret with a copy of the database.
#[cfg(unix)]
fn check_mode(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .with_context(|| format!("reading the key file {}", path.display()))?
        .permissions()
        .mode()
        & 0o777;
    if mode & 0o077 != 0 {
        bail!(
            "the key file {path} is open to group or others (mode {mode:03o}); anyone who can \
             read it can decrypt every stored secret. Run `chmod 600 {path}` and start again",
            path = path.display()
        );
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_mode(_: &Path) -> anyhow::Result<()> {
    Ok(())
}

fn write_new(path: &Path) -> anyhow::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(path)
        .with_context(|| format!("creating the key file {}", path.display()))?;
    writeln!(file, "{}", KeyRing::generate_key())?;
    file.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::path_for;

    #[test]
    fn key_files_sit_beside_sqlite_databases_only() {
        assert_eq!(
            path_for("sqlite://keyhouse.db?mode=rwc").as_deref(),
            Some("keyhouse.db.key".as_ref())
        );
        assert_eq!(
            path_for("sqlite:///var/lib/kh/k.db").as_deref(),
            Some("/var/lib/kh/k.db.key".as_ref())
        );
        assert_eq!(path_for("sqlite::memory:"), None);
        assert_eq!(path_for("postgres://u@h/db"), None);
    }
}
