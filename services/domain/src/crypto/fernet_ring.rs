//! The encryption key ring for secrets at rest (platform keys, BYOK keys): Fernet, as
//! Ops-Center used. The first key encrypts; every key decrypts, so the primary can be rotated
//! and old rows re-encrypted later by `keyhouse encryption rotate`.

use std::fmt;

use fernet::Fernet;
use zeroize::Zeroizing;

use crate::error::{Error, Result};

pub const KEYS_VAR: &str = "KEYHOUSE_ENCRYPTION_KEYS";
pub const LEGACY_KEY_VAR: &str = "ENCRYPTION_KEY";
pub const GENERATE_HINT: &str = "make one with `keyhouse encryption generate-key`";

#[derive(Clone)]
pub struct KeyRing {
    keys: Vec<Fernet>,
    /// The primary key's text, for `derive`.
    primary: Zeroizing<String>,
}

impl KeyRing {
    /// Parses a comma-separated list of Fernet keys; `source` names where they came from, for
    /// the error. The error never echoes the keys.
    pub fn parse(text: &str, source: &str) -> Result<Self> {
        let parts: Vec<&str> = text
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .collect();
        if parts.is_empty() {
            return Err(Error::FailedPrecondition(format!(
                "{source} is empty: {GENERATE_HINT}"
            )));
        }
        let keys = parts
            .iter()
            .enumerate()
            .map(|(i, part)| {
                Fernet::new(part).ok_or_else(|| {
                    Error::FailedPrecondition(format!(
                        "{source}: key {} of {} is not a Fernet key (32 bytes, URL-safe base64); {GENERATE_HINT}",
                        i + 1,
                        parts.len()
                    ))
                })
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            keys,
            primary: Zeroizing::new(parts[0].to_owned()),
        })
    }

    /// A 32-byte secret for `purpose`, derived from the primary key (so it is as secret as the
    /// ring, and changes when the primary does).
    pub fn derive(&self, purpose: &str) -> Zeroizing<[u8; 32]> {
        use sha2::{Digest as _, Sha256};
        let mut hasher = Sha256::new();
        hasher.update(b"keyhouse derived secret\0");
        hasher.update(purpose.as_bytes());
        hasher.update(b"\0");
        hasher.update(self.primary.as_bytes());
        Zeroizing::new(hasher.finalize().into())
    }

    pub fn generate_key() -> String {
        Fernet::generate_key()
    }

    pub fn encrypt(&self, plaintext: &str) -> String {
        self.keys[0].encrypt(plaintext.as_bytes())
    }

    pub fn decrypt(&self, token: &str) -> Result<Zeroizing<String>> {
        let bytes = self
            .keys
            .iter()
            .find_map(|k| k.decrypt(token).ok())
            .ok_or_else(|| {
                Error::internal(anyhow::anyhow!(
                    "a stored secret cannot be decrypted with any key of the ring"
                ))
            })?;
        let bytes = Zeroizing::new(bytes);
        String::from_utf8(bytes.to_vec())
            .map(Zeroizing::new)
            .map_err(|_| Error::internal(anyhow::anyhow!("a stored secret is not UTF-8")))
    }

    /// Whether `token` is already encrypted under the primary key (rotation skips it).
    pub fn is_primary(&self, token: &str) -> bool {
        self.keys[0].decrypt(token).is_ok()
    }
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyRing({} keys)", self.keys.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_key_encrypts_and_every_key_decrypts() {
        let (old, new) = (KeyRing::generate_key(), KeyRing::generate_key());
        let old_ring = KeyRing::parse(&old, "test").expect("ring");
        let token = old_ring.encrypt("sk-secret-value");
        let both = KeyRing::parse(&format!("{new},{old}"), "test").expect("ring");
        assert_eq!(
            both.decrypt(&token).expect("decrypts").as_str(),
            "sk-secret-value"
        );
        assert!(!both.is_primary(&token));
        assert!(both.is_primary(&both.encrypt("x")));
        let only_new = KeyRing::parse(&new, "test").expect("ring");
        assert!(only_new.decrypt(&token).is_err());
    }

    #[test]
    fn malformed_keys_are_refused_without_echoing_them() {
        let err = KeyRing::parse("not-a-key-at-all", "KEYHOUSE_ENCRYPTION_KEYS").expect_err("bad");
        let message = err.to_string();
        assert!(message.contains("KEYHOUSE_ENCRYPTION_KEYS") && message.contains("generate-key"));
        assert!(!message.contains("not-a-key-at-all"));
        assert!(KeyRing::parse(" , ", "X").is_err());
    }

    #[test]
    fn ciphertext_does_not_contain_the_plaintext() {
        let ring = KeyRing::parse(&KeyRing::generate_key(), "test").expect("ring");
        assert!(!ring.encrypt("sk-or-v1-abcdef").contains("sk-or-v1-abcdef"));
    }
}
