//! A keyed tag of each user key's secret: HMAC-SHA-256 under a server-side secret, stored beside
//! the bcrypt hash and compared first. A well-formed key that is not the stored one is then
//! refused in microseconds, never with a bcrypt that anyone who knows a real key's prefix could
//! make the server run. bcrypt stays the proof of the key at rest: a tag that matches is still
//! followed by it. Keys have 224 random bits, so the tag reveals nothing useful; the secret
//! keeps a stolen table from telling which guesses to try.
//!
//! A stored tag is `<secret id>.<hex tag>`. There is one secret per key of the encryption ring:
//! new tags use the primary's, and a tag made under an older key of the ring still decides (and is
//! renewed under the primary when its key next verifies), so rotating the encryption key keeps
//! the protection. A tag under a secret no longer in the ring, or none at all (keys made before
//! tags), cannot reject anything: such a key is checked by bcrypt, and tagged when it verifies.

use hmac::{Hmac, Mac};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use super::api_key::ApiKey;
use super::fernet_ring::KeyRing;

/// What a stored tag says about a presented key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TagCheck {
    /// The tag is this secret's, and the key's: go on to bcrypt.
    Matches,
    /// The tag is this secret's, and not the key's: refuse without bcrypt.
    Differs,
    /// No tag, or another secret's: only bcrypt can tell.
    Unknown,
}

#[derive(Clone)]
struct Secret {
    /// 8 hex of a hash of the secret: which secret a stored tag was made with.
    id: String,
    bytes: Zeroizing<[u8; 32]>,
}

impl Secret {
    fn new(bytes: Zeroizing<[u8; 32]>) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(b"keyhouse key tag id v1\0");
        hasher.update(bytes.as_ref());
        let id = hex::encode(&hasher.finalize()[..4]);
        Self { id, bytes }
    }

    fn mac(&self, key: &ApiKey) -> [u8; 32] {
        // Any length is a valid HMAC key, so this cannot fail.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(self.bytes.as_ref())
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(key.expose().as_bytes());
        mac.finalize().into_bytes().into()
    }
}

#[derive(Clone)]
pub struct KeyTagger {
    /// The primary's first; never empty.
    secrets: Vec<Secret>,
}

impl KeyTagger {
    /// A tagger that makes tags with the first secret and reads tags of any of them.
    pub fn new(first: Zeroizing<[u8; 32]>, older: Vec<Zeroizing<[u8; 32]>>) -> Self {
        let secrets = std::iter::once(first)
            .chain(older)
            .map(Secret::new)
            .collect();
        Self { secrets }
    }

    /// The tagger of a server whose secrets are encrypted with `ring`.
    pub fn from_ring(ring: &KeyRing) -> Self {
        let mut secrets = ring.derive("user key tag").into_iter();
        let first = secrets
            .next()
            .unwrap_or_else(|| unreachable!("a key ring holds at least one key"));
        Self::new(first, secrets.collect())
    }

    /// The tag to store for `key`.
    pub fn tag(&self, key: &ApiKey) -> String {
        let primary = &self.secrets[0];
        format!("{}.{}", primary.id, hex::encode(primary.mac(key)))
    }

    pub fn check(&self, stored: Option<&str>, key: &ApiKey) -> TagCheck {
        let Some((id, tag)) = stored.and_then(|s| s.split_once('.')) else {
            return TagCheck::Unknown;
        };
        let Some(secret) = self.secrets.iter().find(|s| s.id == id) else {
            return TagCheck::Unknown;
        };
        // A tag of the wrong length was not made here; it must not lock the key out.
        let Some(tag) = hex::decode(tag).ok().filter(|t| t.len() == 32) else {
            return TagCheck::Unknown;
        };
        if bool::from(tag.ct_eq(&secret.mac(key))) {
            TagCheck::Matches
        } else {
            TagCheck::Differs
        }
    }

    /// Whether a verified key's stored tag should be made anew: there is none, or it is not
    /// the primary secret's.
    pub fn is_stale(&self, stored: Option<&str>) -> bool {
        stored
            .and_then(|s| s.split_once('.'))
            .is_none_or(|(id, _)| id != self.secrets[0].id)
    }
}

impl std::fmt::Debug for KeyTagger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyTagger({})", self.secrets[0].id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tagger(byte: u8) -> KeyTagger {
        KeyTagger::new(Zeroizing::new([byte; 32]), Vec::new())
    }

    #[test]
    fn a_key_matches_its_own_tag_and_no_other() {
        let t = tagger(1);
        let key = ApiKey::generate().expect("rng");
        let other = ApiKey::generate().expect("rng");
        let stored = t.tag(&key);
        assert_eq!(t.check(Some(&stored), &key), TagCheck::Matches);
        assert_eq!(t.check(Some(&stored), &other), TagCheck::Differs);
    }

    #[test]
    fn a_tag_of_another_secret_or_none_decides_nothing() {
        let key = ApiKey::generate().expect("rng");
        let stored = tagger(1).tag(&key);
        assert_eq!(tagger(2).check(Some(&stored), &key), TagCheck::Unknown);
        assert_eq!(tagger(1).check(None, &key), TagCheck::Unknown);
        assert_eq!(tagger(1).check(Some("garbage"), &key), TagCheck::Unknown);
        let short = format!("{}.00", stored.split_once('.').expect("id").0);
        assert_eq!(tagger(1).check(Some(&short), &key), TagCheck::Unknown);
    }

    #[test]
    fn after_a_rotation_older_tags_still_decide_and_are_renewed() {
        let key = ApiKey::generate().expect("rng");
        let other = ApiKey::generate().expect("rng");
        let before = tagger(1);
        let stored = before.tag(&key);
        let rotated = KeyTagger::new(Zeroizing::new([2; 32]), vec![Zeroizing::new([1; 32])]);
        assert_eq!(rotated.check(Some(&stored), &key), TagCheck::Matches);
        assert_eq!(rotated.check(Some(&stored), &other), TagCheck::Differs);
        assert!(rotated.is_stale(Some(&stored)));
        assert!(!rotated.is_stale(Some(&rotated.tag(&key))));
        assert!(rotated.is_stale(None));
    }

    #[test]
    fn the_tag_does_not_contain_the_key() {
        let key = ApiKey::generate().expect("rng");
        let stored = tagger(1).tag(&key);
        assert!(!stored.contains(&key.expose()[3..]));
    }
}
