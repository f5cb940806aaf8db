//! The generated code of package `rekey.v1`, plus hand-written `Debug` for the
//! messages that carry secret values: they print `<redacted>` instead of the
//! value, so a stray `{:?}` in a log line cannot leak one.

#![allow(missing_docs, clippy::all, missing_debug_implementations)]

use std::fmt;

tonic::include_proto!("rekey.v1");

/// The encoded descriptor set of every `.proto` file, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/rekey_descriptor.bin"));

/// How a value-carrying field appears in `Debug` output.
fn redacted<T>(value: &Option<T>) -> &'static str {
    if value.is_some() {
        "<redacted>"
    } else {
        "None"
    }
}

impl fmt::Debug for CreateSecretRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CreateSecretRequest")
            .field("name", &self.name)
            .field("description", &self.description)
            .field("key_name", &self.key_name)
            .field("tags", &self.tags)
            .field("client_request_token", &self.client_request_token)
            .field("secret_string", &redacted(&self.secret_string))
            .field("secret_binary", &redacted(&self.secret_binary))
            .finish()
    }
}

impl fmt::Debug for GetSecretValueResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GetSecretValueResponse")
            .field("name", &self.name)
            .field("secret_id", &self.secret_id)
            .field("version_id", &self.version_id)
            .field("version_stages", &self.version_stages)
            .field("secret_string", &redacted(&self.secret_string))
            .field("secret_binary", &redacted(&self.secret_binary))
            .field("created_at", &self.created_at)
            .finish()
    }
}

impl fmt::Debug for PutSecretValueRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PutSecretValueRequest")
            .field("name", &self.name)
            .field("client_request_token", &self.client_request_token)
            .field("secret_string", &redacted(&self.secret_string))
            .field("secret_binary", &redacted(&self.secret_binary))
            .field("version_stages", &self.version_stages)
            .finish()
    }
}

impl fmt::Debug for UpdateSecretRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpdateSecretRequest")
            .field("name", &self.name)
            .field("description", &self.description)
            .field("key_name", &self.key_name)
            .field("client_request_token", &self.client_request_token)
            .field("secret_string", &redacted(&self.secret_string))
            .field("secret_binary", &redacted(&self.secret_binary))
            .finish()
    }
}

impl fmt::Debug for GetRandomPasswordResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GetRandomPasswordResponse")
            .field("random_password", &"<redacted>")
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_never_shows_a_value() {
        let planted = "planted-value-7d1e";
        let response = GetSecretValueResponse {
            secret_string: Some(planted.to_owned()),
            secret_binary: Some(planted.as_bytes().to_vec()),
            ..Default::default()
        };
        let put = PutSecretValueRequest {
            secret_string: Some(planted.to_owned()),
            ..Default::default()
        };
        let create = CreateSecretRequest {
            secret_string: Some(planted.to_owned()),
            ..Default::default()
        };
        let update = UpdateSecretRequest {
            secret_string: Some(planted.to_owned()),
            ..Default::default()
        };
        let password = GetRandomPasswordResponse {
            random_password: planted.to_owned(),
        };
        for printed in [
            format!("{response:?}"),
            format!("{put:?}"),
            format!("{create:?}"),
            format!("{update:?}"),
            format!("{password:?}"),
        ] {
            assert!(!printed.contains(planted), "{printed}");
            assert!(printed.contains("<redacted>"), "{printed}");
        }
    }
}
