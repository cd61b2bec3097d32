//! A keyed tag of each user key's secret: HMAC-SHA-256 under a server-side secret, stored beside
//! the bcrypt hash and compared first. A well-formed key that is not the stored one is then
//! refused in microseconds, never with a bcrypt that anyone who knows a real key's prefix could
//! make the server run. bcrypt stays the proof of the key at rest: a tag that matches is still
//! followed by it. Keys have 224 random bits, so the tag reveals nothing useful; the secret
//! keeps a stolen table from telling which guesses to try.
//!
//! A stored tag is `<tagger id>.<hex tag>`. A tag made under another secret (the primary
//! encryption key changed) cannot reject anything: such a key is checked by bcrypt, as keys made
//! before tags were, and is tagged anew when it verifies.

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
pub struct KeyTagger {
    secret: Zeroizing<[u8; 32]>,
    /// 8 hex of a hash of the secret: which secret a stored tag was made with.
    id: String,
}

impl KeyTagger {
    pub fn new(secret: Zeroizing<[u8; 32]>) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(b"keyhouse key tag id\0");
        hasher.update(secret.as_ref());
        let id = hex::encode(&hasher.finalize()[..4]);
        Self { secret, id }
    }

    /// The tagger of a server whose secrets are encrypted with `ring`.
    pub fn from_ring(ring: &KeyRing) -> Self {
        Self::new(ring.derive("user key tag"))
    }

    /// The tag to store for `key`.
    pub fn tag(&self, key: &ApiKey) -> String {
        format!("{}.{}", self.id, hex::encode(self.mac(key)))
    }

    pub fn check(&self, stored: Option<&str>, key: &ApiKey) -> TagCheck {
        let Some((id, tag)) = stored.and_then(|s| s.split_once('.')) else {
            return TagCheck::Unknown;
        };
        let Ok(tag) = hex::decode(tag) else {
            return TagCheck::Unknown;
        };
        if id != self.id {
            return TagCheck::Unknown;
        }
        if bool::from(tag.ct_eq(&self.mac(key))) {
            TagCheck::Matches
        } else {
            TagCheck::Differs
        }
    }

    fn mac(&self, key: &ApiKey) -> [u8; 32] {
        // Any length is a valid HMAC key, so this cannot fail.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(self.secret.as_ref())
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(key.expose().as_bytes());
        mac.finalize().into_bytes().into()
    }
}

impl std::fmt::Debug for KeyTagger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyTagger({})", self.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tagger(byte: u8) -> KeyTagger {
        KeyTagger::new(Zeroizing::new([byte; 32]))
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
    }

    #[test]
    fn the_tag_does_not_contain_the_key() {
        let key = ApiKey::generate().expect("rng");
        let stored = tagger(1).tag(&key);
        assert!(!stored.contains(&key.expose()[3..]));
    }
}
