//! The proxy's configuration, compiled from xDS resources.
//!
//! Envoy's protobufs arrive; what requests read is plain Rust built once per update:
//! regexes compiled, header names parsed, defaults filled in. Anything weft cannot
//! honour is a [`ConfigError`], and the update carrying it is rejected (NACKed).

pub mod cluster;
pub mod jwt;
pub mod listener;
pub mod rbac;
pub mod route;

use std::time::Duration;

use envoy_types::pb::google::protobuf::Any;
use prost::Message;

/// Why a resource cannot be applied; the text is the NACK's error detail.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

impl ConfigError {
    /// An error with this message.
    pub fn new(message: impl Into<String>) -> ConfigError {
        ConfigError(message.into())
    }

    /// The same error, prefixed with where it happened.
    pub fn context(self, place: impl std::fmt::Display) -> ConfigError {
        ConfigError(format!("{place}: {}", self.0))
    }
}

/// Decodes an `Any` that must hold `type_name`.
pub fn unpack<T: Message + Default>(any: &Any, type_name: &str) -> Result<T, ConfigError> {
    if any.type_url.rsplit('/').next() != Some(type_name) {
        return Err(ConfigError::new(format!("expected {type_name}, got {}", any.type_url)));
    }
    T::decode(any.value.as_slice()).map_err(|e| ConfigError::new(format!("cannot decode {type_name}: {e}")))
}

/// A protobuf duration (negative values count as zero).
pub fn duration(d: &envoy_types::pb::google::protobuf::Duration) -> Duration {
    let secs = u64::try_from(d.seconds).unwrap_or(0);
    let nanos = u32::try_from(d.nanos).unwrap_or(0);
    Duration::new(secs, nanos.min(999_999_999))
}
