//! Raw `.eml` persistence: the exact bytes received, under `<prefix><agent_id>/<message_id>.eml`.
//!
//! A `put` returns only once the object is durable (for the fs backend: written under its fresh
//! key and synced to disk together with the other puts waiting at that moment), because the SMTP
//! `250` waits on it (for the s3 backend: acknowledged by S3 after it verified the body's
//! checksum). Nothing here parses or rewrites the bytes.
//!
//! A byte range of an object can be read as a stream of chunks ([`Store::get_range`]: a seek
//! and chunked reads on fs, a ranged GET whose body is passed on as it arrives on S3), so an
//! attachment download holds a chunk at a time, never the message.

mod fs;
mod s3;

use crate::config::{StorageBackend, StorageConfig};

pub use fs::FsStore;
pub use s3::S3Store;

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
    #[error("S3 {operation} {key}: {message}")]
    Remote {
        operation: &'static str,
        key: String,
        message: String,
    },
    #[error("storage call for {key} took longer than {after:?}")]
    Timeout {
        key: String,
        after: std::time::Duration,
    },
}

impl Error {
    /// Whether trying again later could succeed (a missing object or a refused key will not).
    pub fn is_transient(&self) -> bool {
        !matches!(self, Self::NotFound { .. } | Self::BadKey { .. })
    }
}

/// Where raw messages live. One variant per backend.
#[derive(Debug, Clone)]
pub enum Store {
    Fs(FsStore),
    S3(S3Store),
}

impl Store {
    /// Builds the configured backend. Nothing is contacted yet: an unreachable S3 shows up as
    /// `451` on the first message, not as a failed start.
    pub async fn from_config(config: &StorageConfig) -> Self {
        match config.backend {
            StorageBackend::Fs => Self::Fs(FsStore::new(config.path.clone())),
            StorageBackend::S3 => Self::S3(S3Store::new(config).await),
        }
    }

    /// Stores `bytes` under `key`, durably, replacing nothing that is half-written.
    ///
    /// # Errors
    /// [`Error::Write`] when the bytes could not be made durable.
    pub async fn put(&self, key: &str, bytes: &[u8]) -> Result<(), Error> {
        match self {
            Self::Fs(store) => store.put(key, bytes).await,
            Self::S3(store) => store.put(key, bytes).await,
        }
    }

    /// Reads an object back.
    ///
    /// # Errors
    /// [`Error::NotFound`] or [`Error::Read`].
    pub async fn get(&self, key: &str) -> Result<Vec<u8>, Error> {
        match self {
            Self::Fs(store) => store.get(key).await,
            Self::S3(store) => store.get(key).await,
        }
    }

    /// Bytes `start..end` of an object, as a stream of chunks of at most [`RANGE_CHUNK`]
    /// bytes (fs; S3 passes on its body's chunks as they come). The object is opened before
    /// this returns, so a missing one is [`Error::NotFound`] here; a failure later, or an
    /// object shorter than `end`, ends the stream with an error.
    ///
    /// # Errors
    /// [`Error::NotFound`], [`Error::Read`], [`Error::Remote`] or [`Error::Timeout`].
    pub async fn get_range(&self, key: &str, start: u64, end: u64) -> Result<ByteChunks, Error> {
        match self {
            Self::Fs(store) => store.get_range(key, start, end).await,
            Self::S3(store) => store.get_range(key, start, end).await,
        }
    }

    /// Removes an object; used to undo a `put` whose database commit failed.
    ///
    /// # Errors
    /// [`Error::Write`] when the object exists and could not be removed.
    pub async fn delete(&self, key: &str) -> Result<(), Error> {
        match self {
            Self::Fs(store) => store.delete(key).await,
            Self::S3(store) => store.delete(key).await,
        }
    }
}

/// Largest chunk a ranged read of the fs store yields.
pub const RANGE_CHUNK: usize = 64 << 10;

/// A ranged read in progress: its chunks, in order.
pub type ByteChunks =
    std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<bytes::Bytes, Error>> + Send>>;

/// The error that ends a ranged read whose object ended before the range did.
fn short_object(key: &str, missing: u64) -> Error {
    Error::Read {
        key: key.to_owned(),
        source: std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("the object ended {missing} bytes before the range"),
        ),
    }
}

/// One stored object, as a listing names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredObject {
    pub key: String,
    /// When it was last written, in ms since the epoch.
    pub modified_ms: i64,
}

impl Store {
    /// Whether an object exists under `key`.
    ///
    /// # Errors
    /// [`Error::Read`] or [`Error::Remote`] when the store cannot say.
    pub async fn exists(&self, key: &str) -> Result<bool, Error> {
        match self {
            Self::Fs(store) => store.exists(key).await,
            Self::S3(store) => store.exists(key).await,
        }
    }

    /// Every object whose key starts with `prefix` (the store check).
    ///
    /// # Errors
    /// [`Error::Read`] or [`Error::Remote`] when the listing fails.
    pub async fn list(&self, prefix: &str) -> Result<Vec<StoredObject>, Error> {
        match self {
            Self::Fs(store) => store.list(prefix).await,
            Self::S3(store) => store.list(prefix).await,
        }
    }
}

/// The object key of one stored message.
pub fn object_key(prefix: &str, agent_id: &str, message_id: &str) -> String {
    format!("{prefix}{agent_id}/{message_id}.eml")
}
