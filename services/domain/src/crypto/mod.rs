//! Secrets: API key minting and hashing, session tokens, masking.

pub mod api_key;
pub mod fernet_ring;
pub mod key_tag;
pub mod mask;
pub mod session_token;
