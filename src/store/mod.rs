//! Raw `.eml` persistence: the exact bytes received, under `<prefix><agent_id>/<message_id>.eml`.
//!
//! A `put` returns only once the object is durable (for the fs backend: written to a temporary
//! file, fsync'd, renamed into place and the directory fsync'd), because the SMTP `250` waits on
//! it. Nothing here parses or rewrites the bytes.

mod fs;

use crate::config::{StorageBackend, StorageConfig};

pub use fs::FsStore;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("writing {key}: {source}")]
    Write { key: String, source: std::io::Error },
    #[error("reading {key}: {source}")]
    Read { key: String, source: std::io::Error },
    #[error("object {key} not found")]
    NotFound { key: String },
    #[error("object key {key} is not allowed")]
    BadKey { key: String },
    #[error("storage backend `{backend}` is not available in this build")]
    Unsupported { backend: &'static str },
}

/// Where raw messages live. One variant per backend.
#[derive(Debug, Clone)]
pub enum Store {
    Fs(FsStore),
}

impl Store {
    /// Builds the configured backend.
    ///
    /// # Errors
    /// [`Error::Unsupported`] for a backend this build cannot serve.
    pub fn from_config(config: &StorageConfig) -> Result<Self, Error> {
        match config.backend {
            StorageBackend::Fs => Ok(Self::Fs(FsStore::new(config.path.clone()))),
            StorageBackend::S3 => Err(Error::Unsupported { backend: "s3" }),
        }
    }

    /// Stores `bytes` under `key`, durably, replacing nothing that is half-written.
    ///
    /// # Errors
    /// [`Error::Write`] when the bytes could not be made durable.
    pub async fn put(&self, key: &str, bytes: &[u8]) -> Result<(), Error> {
        match self {
            Self::Fs(store) => store.put(key, bytes).await,
        }
    }

    /// Reads an object back.
    ///
    /// # Errors
    /// [`Error::NotFound`] or [`Error::Read`].
    pub async fn get(&self, key: &str) -> Result<Vec<u8>, Error> {
        match self {
            Self::Fs(store) => store.get(key).await,
        }
    }

    /// Removes an object; used to undo a `put` whose database commit failed.
    ///
    /// # Errors
    /// [`Error::Write`] when the object exists and could not be removed.
    pub async fn delete(&self, key: &str) -> Result<(), Error> {
        match self {
            Self::Fs(store) => store.delete(key).await,
        }
    }
}

/// The object key of one stored message.
pub fn object_key(prefix: &str, agent_id: &str, message_id: &str) -> String {
    format!("{prefix}{agent_id}/{message_id}.eml")
}
