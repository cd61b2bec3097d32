//! Session tokens: 32 random bytes as hex. Only their SHA-256 is stored, so a database dump
//! does not hand out sessions.

use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::error::{Error, Result};

/// How every keyhouse session token begins; tokens without it come from elsewhere (Ops-Center).
pub const PREFIX: &str = "ks_";

/// A new token, for the operator command that issues sessions.
pub fn generate() -> Result<Zeroizing<String>> {
    let mut bytes = Zeroizing::new([0u8; 32]);
    getrandom::fill(bytes.as_mut()).map_err(|e| Error::internal(anyhow::anyhow!("OS RNG: {e}")))?;
    Ok(Zeroizing::new(format!(
        "{PREFIX}{}",
        hex::encode(bytes.as_ref())
    )))
}

/// The stored form of a token.
pub fn digest(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}
