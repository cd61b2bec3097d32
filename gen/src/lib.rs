//! The keyhouse contract, generated from `proto/keyhouse/v1` by `cargo run -p keyhouse-codegen`.
//! Only this file is written by hand: `Debug` for the messages that carry a secret.

#![allow(clippy::all, clippy::pedantic)]

pub mod v1 {
    include!("keyhouse.v1.rs");

    /// The encoded `FileDescriptorSet` of every keyhouse proto, for gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!("keyhouse_descriptor.bin");

    use std::fmt;

    const MASK: &str = "<redacted>";

    impl fmt::Debug for IssuedKey {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("IssuedKey")
                .field("key_id", &self.key_id)
                .field("api_key", &MASK)
                .field("key_name", &self.key_name)
                .field("key_preview", &self.key_preview)
                .field("permissions", &self.permissions)
                .field("expires_at", &self.expires_at)
                .finish_non_exhaustive()
        }
    }

    impl fmt::Debug for VerifyKeyRequest {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("VerifyKeyRequest")
                .field("api_key", &MASK)
                .field("required_scopes", &self.required_scopes)
                .field("client_ip", &self.client_ip)
                .finish()
        }
    }

    impl fmt::Debug for PutProviderKeyRequest {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("PutProviderKeyRequest")
                .field("provider", &self.provider)
                .field("key", &MASK)
                .field("label", &self.label)
                .field("endpoint", &self.endpoint)
                .finish()
        }
    }

    impl fmt::Debug for UpdatePlatformKeyRequest {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("UpdatePlatformKeyRequest")
                .field("name", &self.name)
                .field("api_key", &MASK)
                .finish()
        }
    }

    impl fmt::Debug for GetDecryptedPlatformKeyResponse {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("GetDecryptedPlatformKeyResponse")
                .field("api_key", &MASK)
                .field("source", &self.source)
                .finish_non_exhaustive()
        }
    }

    impl fmt::Debug for PlatformKeyEvent {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("PlatformKeyEvent")
                .field("name", &self.name)
                .field("version", &self.version)
                .field("source", &self.source)
                .field("api_key", &MASK)
                .field("initial", &self.initial)
                .finish_non_exhaustive()
        }
    }

    impl fmt::Debug for GetProviderKeyForUserResponse {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("GetProviderKeyForUserResponse")
                .field("provider", &self.provider)
                .field("api_key", &MASK)
                .field("endpoint", &self.endpoint)
                .finish()
        }
    }
}
