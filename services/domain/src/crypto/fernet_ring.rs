//! The encryption key ring for secrets at rest (platform keys, BYOK keys): Fernet, as
//! Ops-Center used. The first key encrypts; every key decrypts, so the primary can be rotated
//! and old rows re-encrypted later by `keyhouse encryption rotate`.
//!
//! Every secret is bound to the row it belongs to (`binding`). Fernet has no associated data,
//! so the binding travels inside the ciphertext: the plaintext is an envelope,
//! `kh1\n<binding>\n<secret>`, and a secret read for one row but bound to another is refused.
//! Without that, anyone able to write the database could copy one user's ciphertext into
//! another's row and have keyhouse hand it out as theirs.

use std::fmt;

use fernet::Fernet;
use zeroize::Zeroizing;

use crate::error::{Error, Result};

pub const KEYS_VAR: &str = "KEYHOUSE_ENCRYPTION_KEYS";
pub const LEGACY_KEY_VAR: &str = "ENCRYPTION_KEY";
pub const GENERATE_HINT: &str = "make one with `keyhouse encryption generate-key`";

/// The start of every bound plaintext; a plaintext without it was stored before secrets were
/// bound and is read as it is until `keyhouse encryption rotate` rewraps it.
const ENVELOPE: &str = "kh1\n";

/// What each kind of stored secret is bound to.
pub mod binding {
    /// A user's own key for a provider.
    pub fn byok(user_id: &str, provider: &str) -> String {
        format!("byok/{provider}/{user_id}")
    }

    /// A platform key's values, current and past: each is bound to the key's name.
    pub fn platform(name: &str) -> String {
        format!("platform/{name}")
    }
}

/// A stored secret re-encrypted by `KeyRing::rewrap`.
pub struct Rewrapped {
    pub token: String,
    /// It was stored before secrets were bound to their rows.
    pub newly_bound: bool,
}

#[derive(Clone)]
pub struct KeyRing {
    keys: Vec<Fernet>,
    /// Each key's text, primary first, for `derive`.
    texts: Vec<Zeroizing<String>>,
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
            texts: parts
                .iter()
                .map(|p| Zeroizing::new((*p).to_owned()))
                .collect(),
        })
    }

    /// A 32-byte secret for `purpose` from each key of the ring, the primary's first: as secret
    /// as the ring, and still there for older keys after the primary is rotated.
    pub fn derive(&self, purpose: &str) -> Vec<Zeroizing<[u8; 32]>> {
        use sha2::{Digest as _, Sha256};
        self.texts
            .iter()
            .map(|text| {
                let mut hasher = Sha256::new();
                hasher.update(b"keyhouse derived secret v1\0");
                hasher.update(purpose.as_bytes());
                hasher.update(b"\0");
                hasher.update(text.as_bytes());
                Zeroizing::new(hasher.finalize().into())
            })
            .collect()
    }

    /// A ring of Fernet keys derived for `purpose` from this one (see `derive`), primary first:
    /// for short-lived secrets keyhouse hands to a client to bring back (a browser sign-in in
    /// progress), which any replica must open and no one else may read or alter.
    pub fn derived(&self, purpose: &str) -> KeyRing {
        use base64::Engine as _;
        let texts: Vec<Zeroizing<String>> = self
            .derive(purpose)
            .iter()
            .map(|secret| {
                Zeroizing::new(base64::engine::general_purpose::URL_SAFE.encode(secret.as_ref()))
            })
            .collect();
        let keys = texts
            .iter()
            .map(|text| {
                Fernet::new(text).unwrap_or_else(|| unreachable!("32 bytes make a Fernet key"))
            })
            .collect();
        Self { keys, texts }
    }

    pub fn generate_key() -> String {
        Fernet::generate_key()
    }

    /// `secret` encrypted under the primary key, bound to `binding` (see `binding`).
    pub fn encrypt_bound(&self, binding: &str, secret: &str) -> String {
        let sealed = Zeroizing::new(format!("{ENVELOPE}{}\n{secret}", escape(binding)));
        self.keys[0].encrypt(sealed.as_bytes())
    }

    /// The secret in `token`, which must be bound to `binding` (or stored before binding).
    pub fn decrypt_bound(&self, binding: &str, token: &str) -> Result<Zeroizing<String>> {
        let (plaintext, _) = self.decrypt(token)?;
        open(binding, plaintext)
    }

    /// What `keyhouse encryption rotate` does to one stored secret: `None` when it is already
    /// under the primary key and bound to `binding`, else the token to store in its place. A
    /// secret bound to another row is refused, never rebound.
    pub fn rewrap(&self, binding: &str, token: &str) -> Result<Option<Rewrapped>> {
        let (plaintext, primary) = self.decrypt(token)?;
        let bound = plaintext.starts_with(ENVELOPE);
        let secret = open(binding, plaintext)?;
        if primary && bound {
            return Ok(None);
        }
        Ok(Some(Rewrapped {
            token: self.encrypt_bound(binding, &secret),
            newly_bound: !bound,
        }))
    }

    /// The plaintext, and whether the primary key decrypted it.
    fn decrypt(&self, token: &str) -> Result<(Zeroizing<String>, bool)> {
        let (index, bytes) = self
            .keys
            .iter()
            .enumerate()
            .find_map(|(i, k)| k.decrypt(token).ok().map(|b| (i, b)))
            .ok_or_else(|| {
                Error::internal(anyhow::anyhow!(
                    "a stored secret cannot be decrypted with any key of the ring"
                ))
            })?;
        let bytes = Zeroizing::new(bytes);
        let text = String::from_utf8(bytes.to_vec())
            .map(Zeroizing::new)
            .map_err(|_| Error::internal(anyhow::anyhow!("a stored secret is not UTF-8")))?;
        Ok((text, index == 0))
    }
}

/// The secret of a plaintext read for the row `binding`.
fn open(binding: &str, plaintext: Zeroizing<String>) -> Result<Zeroizing<String>> {
    let Some(rest) = plaintext.strip_prefix(ENVELOPE) else {
        return Ok(plaintext);
    };
    match rest.split_once('\n') {
        Some((to, secret)) if to == escape(binding) => Ok(Zeroizing::new(secret.to_owned())),
        other => {
            tracing::error!(
                row = binding,
                bound_to = other.map_or("(unreadable)", |(to, _)| to),
                "a stored secret belongs to another row: it was copied into this one; refused"
            );
            Err(Error::FailedPrecondition(
                "the stored secret does not belong to this record (it was copied from another); \
                 store the key again"
                    .into(),
            ))
        }
    }
}

/// A binding on one line, so that no binding reads as the start of another.
fn escape(binding: &str) -> String {
    binding.replace('\\', "\\\\").replace('\n', "\\n")
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
    fn a_derived_ring_opens_only_its_own_purpose_and_survives_rotation() {
        let (old, new) = (KeyRing::generate_key(), KeyRing::generate_key());
        let ring = KeyRing::parse(&old, "test").expect("ring");
        let sealed = ring.derived("login").encrypt_bound("c", "state");
        // Another replica with the same ring opens it, also after the primary is rotated.
        let rotated = KeyRing::parse(&format!("{new},{old}"), "test").expect("ring");
        assert_eq!(
            rotated
                .derived("login")
                .decrypt_bound("c", &sealed)
                .expect("opens")
                .as_str(),
            "state"
        );
        // Neither the ring itself nor a ring derived for another purpose can.
        assert!(ring.decrypt_bound("c", &sealed).is_err());
        assert!(ring.derived("other").decrypt_bound("c", &sealed).is_err());
        let stranger = KeyRing::parse(&new, "test").expect("ring");
        assert!(
            stranger
                .derived("login")
                .decrypt_bound("c", &sealed)
                .is_err()
        );
    }

    #[test]
    fn the_first_key_encrypts_and_every_key_decrypts() {
        let (old, new) = (KeyRing::generate_key(), KeyRing::generate_key());
        let old_ring = KeyRing::parse(&old, "test").expect("ring");
        let token = old_ring.encrypt_bound("platform/openai", "sk-secret-value");
        let both = KeyRing::parse(&format!("{new},{old}"), "test").expect("ring");
        assert_eq!(
            both.decrypt_bound("platform/openai", &token)
                .expect("decrypts")
                .as_str(),
            "sk-secret-value"
        );
        let rewrapped = both
            .rewrap("platform/openai", &token)
            .expect("rewraps")
            .expect("not under the primary key yet");
        assert!(!rewrapped.newly_bound);
        assert!(
            both.rewrap("platform/openai", &rewrapped.token)
                .expect("reads")
                .is_none()
        );
        let only_new = KeyRing::parse(&new, "test").expect("ring");
        assert!(only_new.decrypt_bound("platform/openai", &token).is_err());
        assert!(
            only_new
                .decrypt_bound("platform/openai", &rewrapped.token)
                .is_ok()
        );
    }

    #[test]
    fn a_secret_bound_to_one_row_is_refused_for_another() {
        let ring = KeyRing::parse(&KeyRing::generate_key(), "test").expect("ring");
        let alice = ring.encrypt_bound(&binding::byok("alice", "openai"), "sk-alice");
        let err = ring
            .decrypt_bound(&binding::byok("bob", "openai"), &alice)
            .expect_err("another row");
        assert!(matches!(err, Error::FailedPrecondition(_)));
        assert!(!err.to_string().contains("sk-alice"));
        assert!(
            ring.rewrap(&binding::byok("bob", "openai"), &alice)
                .is_err()
        );
        // A binding that contains a newline cannot pass for a shorter one.
        let tricky = ring.encrypt_bound("byok/openai/alice\nx", "sk-alice");
        assert!(ring.decrypt_bound("byok/openai/alice", &tricky).is_err());
        assert_eq!(
            ring.decrypt_bound("byok/openai/alice\nx", &tricky)
                .expect("its own row")
                .as_str(),
            "sk-alice"
        );
    }

    #[test]
    fn a_secret_stored_before_binding_reads_until_rotate_binds_it() {
        let ring = KeyRing::parse(&KeyRing::generate_key(), "test").expect("ring");
        let legacy = ring.keys[0].encrypt(b"sk-legacy");
        assert_eq!(
            ring.decrypt_bound("platform/openai", &legacy)
                .expect("still reads")
                .as_str(),
            "sk-legacy"
        );
        let rewrapped = ring
            .rewrap("platform/openai", &legacy)
            .expect("rewraps")
            .expect("binds it");
        assert!(rewrapped.newly_bound);
        assert!(
            ring.decrypt_bound("platform/groq", &rewrapped.token)
                .is_err()
        );
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
        assert!(
            !ring
                .encrypt_bound("platform/openrouter", "sk-or-v1-abcdef")
                .contains("sk-or-v1-abcdef")
        );
    }
}
