//! `[storage]`: where raw messages are kept (a directory or an S3 bucket), the S3 credentials
//! (secret redacted in `Debug`) and the call timeout, with defaults and validation.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{Error, invalid, positive_seconds, seconds};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageBackend {
    Fs,
    S3,
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    pub backend: StorageBackend,
    /// fs backend: each object is the file `<path>/<key>`.
    pub path: PathBuf,
    pub bucket: String,
    pub prefix: String,
    pub endpoint: Option<String>,
    pub region: String,
    pub path_style: bool,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    /// Seconds one storage call (a PUT at end of DATA) may take before the message gets `451`.
    pub timeout_s: f64,
}

impl fmt::Debug for StorageConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StorageConfig")
            .field("backend", &self.backend)
            .field("path", &self.path)
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("path_style", &self.path_style)
            .field("access_key_id", &self.access_key_id)
            .field(
                "secret_access_key",
                &self.secret_access_key.as_ref().map(|_| "redacted"),
            )
            .field("timeout_s", &self.timeout_s)
            .finish()
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            backend: StorageBackend::Fs,
            path: PathBuf::from("./data/mail"),
            bucket: "mxhook".to_owned(),
            prefix: "inbound/".to_owned(),
            endpoint: None,
            region: "us-east-1".to_owned(),
            path_style: false,
            access_key_id: None,
            secret_access_key: None,
            timeout_s: 30.0,
        }
    }
}

impl StorageConfig {
    /// `timeout_s`: how long one storage call may take.
    pub fn timeout(&self) -> Duration {
        seconds(self.timeout_s)
    }

    pub(super) fn validate(&self) -> Result<(), Error> {
        if self.bucket.trim().is_empty() {
            return Err(invalid("storage.bucket", "must not be empty"));
        }
        if self.prefix.starts_with('/') || self.prefix.split('/').any(|seg| seg == "..") {
            return Err(invalid(
                "storage.prefix",
                "must be relative and must not contain `..`",
            ));
        }
        if self.access_key_id.is_some() != self.secret_access_key.is_some() {
            return Err(invalid(
                "storage.access_key_id",
                "set both access_key_id and secret_access_key, or neither",
            ));
        }
        positive_seconds("storage.timeout_s", self.timeout_s)
    }
}
