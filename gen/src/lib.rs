//! The keyhouse contract, generated from `proto/keyhouse/v1`.
//!
//! Generated, like everything in `gen/`: do not edit. Change the protos (or the generator in
//! `services/codegen`) and run `cargo run -p keyhouse-codegen`.

#![allow(clippy::all, clippy::pedantic)]

pub mod v1 {
    include!("keyhouse.v1.rs");

    /// The encoded `FileDescriptorSet` of every keyhouse proto, for gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!("keyhouse_descriptor.bin");

    /// Every field marked `[(keyhouse.v1.secret) = true]`, by full name. Their messages' `Debug`
    /// masks them; logs and traces must not show them any other way either.
    pub const SECRET_FIELDS: &[&str] = &[
        "keyhouse.v1.IssuedKey.api_key",
        "keyhouse.v1.VerifyKeyRequest.api_key",
        "keyhouse.v1.PutProviderKeyRequest.key",
        "keyhouse.v1.GetProviderKeyForUserResponse.api_key",
        "keyhouse.v1.UpdatePlatformKeyRequest.api_key",
        "keyhouse.v1.GetDecryptedPlatformKeyResponse.api_key",
        "keyhouse.v1.TestPlatformKeyRequest.api_key",
        "keyhouse.v1.PlatformKeyEvent.api_key",
    ];

    use std::fmt;

    /// What `Debug` shows for a secret, given whether the field is empty: `<redacted>`, or `""`
    /// for an empty one, so that a log still tells a missing secret from a present one.
    struct Redacted(bool);

    impl fmt::Debug for Redacted {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(if self.0 { "\"\"" } else { "<redacted>" })
        }
    }

    impl fmt::Debug for IssuedKey {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            let mut s = f.debug_struct("IssuedKey");
            s.field("key_id", &self.key_id);
            s.field("api_key", &Redacted(self.api_key.is_empty()));
            s.field("key_name", &self.key_name);
            s.field("key_preview", &self.key_preview);
            s.field("permissions", &self.permissions);
            s.field("created_at", &self.created_at);
            s.field("expires_at", &self.expires_at);
            s.field("warning", &self.warning);
            s.finish()
        }
    }

    impl fmt::Debug for VerifyKeyRequest {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            let mut s = f.debug_struct("VerifyKeyRequest");
            s.field("api_key", &Redacted(self.api_key.is_empty()));
            s.field("required_scopes", &self.required_scopes);
            s.field("client_ip", &self.client_ip);
            s.finish()
        }
    }

    impl fmt::Debug for PutProviderKeyRequest {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            let mut s = f.debug_struct("PutProviderKeyRequest");
            s.field("provider", &self.provider);
            s.field("key", &Redacted(self.key.is_empty()));
            s.field("label", &self.label);
            s.field("endpoint", &self.endpoint);
            s.field("health_checks", &self.health_checks);
            s.finish()
        }
    }

    impl fmt::Debug for GetProviderKeyForUserResponse {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            let mut s = f.debug_struct("GetProviderKeyForUserResponse");
            s.field("provider", &self.provider);
            s.field("api_key", &Redacted(self.api_key.is_empty()));
            s.field("endpoint", &self.endpoint);
            s.finish()
        }
    }

    impl fmt::Debug for UpdatePlatformKeyRequest {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            let mut s = f.debug_struct("UpdatePlatformKeyRequest");
            s.field("name", &self.name);
            s.field("api_key", &Redacted(self.api_key.is_empty()));
            s.finish()
        }
    }

    impl fmt::Debug for GetDecryptedPlatformKeyResponse {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            let mut s = f.debug_struct("GetDecryptedPlatformKeyResponse");
            s.field("api_key", &Redacted(self.api_key.is_empty()));
            s.field("source", &self.source);
            s.field("warning", &self.warning);
            s.finish()
        }
    }

    impl fmt::Debug for TestPlatformKeyRequest {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            let mut s = f.debug_struct("TestPlatformKeyRequest");
            s.field("name", &self.name);
            s.field(
                "api_key",
                &self.api_key.as_ref().map(|v| Redacted(v.is_empty())),
            );
            s.finish()
        }
    }

    impl fmt::Debug for PlatformKeyEvent {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            let mut s = f.debug_struct("PlatformKeyEvent");
            s.field("name", &self.name);
            s.field("version", &self.version);
            s.field("source", &self.source);
            s.field("updated_at", &self.updated_at);
            s.field("api_key", &Redacted(self.api_key.is_empty()));
            s.field("initial", &self.initial);
            s.finish()
        }
    }
}

/// Envoy's external authorization service (`envoy.service.auth.v3.Authorization`), whose
/// messages and service trait come from the `envoy-types` crate.
pub mod envoy {
    /// The encoded `FileDescriptorSet` of `envoy/service/auth/v3/external_auth.proto` and every
    /// file it imports, as the `envoy-types` crate ships them, for gRPC reflection.
    pub const EXT_AUTHZ_DESCRIPTOR_SET: &[u8] = include_bytes!("ext_authz_descriptor.bin");
}
