//! The database: inboxes, accepted messages with their events, delivery jobs and attempts.
//!
//! One SQL dialect serves SQLite (the default) and PostgreSQL (several nodes): TEXT and BIGINT
//! columns, `$n` placeholders in order of first use, times in ms since the epoch. This module owns
//! every statement; stages call its functions and never write SQL themselves.
//!
//! The layer is split by what it stores, one file per table or aggregate:
//!
//! - this file: the handle [`Db`], connecting, [`Backend`] and [`Error`];
//! - `migrate`: the schema migrations and the adoption of the earlier runner's records;
//! - `inboxes`: inboxes, their addresses, webhooks and rules, the config sync and the
//!   directory's change marker;
//! - `api_keys`: per-inbox API keys;
//! - `endpoints`: endpoint health (the failing-period record, switching an endpoint off);
//! - `messages`: accepted messages, their stored (compressed) events and listings;
//! - `jobs`: delivery jobs (claim, release, resend) and their attempts;
//! - `threads`: the reads threading needs (candidates, history);
//! - `limits`: rate-limit buckets and duplicate fingerprints;
//! - `erase`: erasing and releasing messages, the pruner's and the store check's reads;
//! - `stats`: the counts `/metrics` and the endpoint statistics report;
//! - `ingress`: provider secrets, event types and replay keys;
//! - `secrets`: the startup check that every stored secret decrypts, and re-encrypting them
//!   all under the current key (`mxhook rotate-secrets-key`);
//! - `write/`: the critical-path writes and the group committer that batches them.

use sqlx::AnyPool;
use sqlx::any::AnyPoolOptions;

use crate::config::DatabaseConfig;

/// The settings of every SQLite connection: the pool's and the committer's own. WAL lets
/// readers run beside the writer; `synchronous = FULL` makes every commit durable before it
/// returns, which the SMTP 250 relies on.
const SQLITE_PRAGMAS: &[&str] = &[
    "PRAGMA journal_mode = WAL",
    "PRAGMA synchronous = FULL",
    "PRAGMA busy_timeout = 10000",
    "PRAGMA foreign_keys = ON",
];

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("connecting to the database: {0}")]
    Connect(#[source] sqlx::Error),
    #[error("preparing the database directory {path}: {source}")]
    Directory {
        path: String,
        source: std::io::Error,
    },
    /// The SQLite file is no longer at its path (see [`Db::ping`]).
    #[error("the database file {path} is gone: {source}")]
    FileGone {
        path: String,
        source: std::io::Error,
    },
    #[error("applying migration {version}: {source}")]
    Migrate { version: i64, source: sqlx::Error },
    /// The migrator refused to run: a recorded migration this build does not have or whose file
    /// changed since, or a failure reading its own table.
    #[error("running the schema migrations: {0}")]
    Migrator(#[source] sqlx::migrate::MigrateError),
    #[error("database query failed: {0}")]
    Query(#[from] sqlx::Error),
    /// A write of the SQLite committer's own connection failed.
    #[error("database write failed: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("stored row is inconsistent: {0}")]
    Corrupt(String),
    /// A uniqueness rule the caller can act on (an id or an address already taken).
    #[error("{0}")]
    Conflict(String),
    /// A stored secret that does not decrypt here, or one that cannot be stored (see
    /// [`crate::secrets`]).
    #[error(transparent)]
    Secret(#[from] crate::secrets::Error),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Debug, Clone)]
pub struct Db {
    pool: AnyPool,
    backend: Backend,
    /// Where accepted messages and attempt records are committed, in groups (see `write`).
    writes: write::GroupCommit,
    /// The SQLite file the connections opened, checked by [`Db::ping`].
    sqlite_file: Option<std::sync::Arc<SqliteFile>>,
    /// Announced after each commit of accepted messages (see `stream`).
    arrivals: crate::notify::Arrivals,
    /// Seals and opens the stored signing secrets (see `secrets`); empty until
    /// [`Db::with_secrets`], which stores them as plaintext.
    secrets: std::sync::Arc<crate::secrets::Keyring>,
}

/// A SQLite database file as it was when the pool opened it.
#[derive(Debug)]
struct SqliteFile {
    path: std::path::PathBuf,
    identity: Option<(u64, u64)>,
}

impl SqliteFile {
    fn opened(path: &str) -> Self {
        let path = std::path::PathBuf::from(path);
        let identity = std::fs::metadata(&path)
            .ok()
            .and_then(|meta| file_identity(&meta));
        Self { path, identity }
    }

    /// Whether the path still names the file the connections have open. Open connections keep
    /// reading and writing a file that was deleted or moved away, so without this check every
    /// query still answers while nothing written will be found again.
    fn still_there(&self) -> std::io::Result<()> {
        let meta = std::fs::metadata(&self.path)?;
        if file_identity(&meta) == self.identity {
            Ok(())
        } else {
            Err(std::io::Error::other(
                "replaced by another file since it was opened",
            ))
        }
    }
}

#[cfg(unix)]
fn file_identity(meta: &std::fs::Metadata) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt as _;
    Some((meta.dev(), meta.ino()))
}

#[cfg(not(unix))]
fn file_identity(_meta: &std::fs::Metadata) -> Option<(u64, u64)> {
    None
}

/// `$first, $first+1, …`: `count` placeholders for an `IN (…)` list.
pub(super) fn placeholders(first: usize, count: usize) -> String {
    (first..first + count)
        .map(|n| format!("${n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A header value as a column value. PostgreSQL TEXT cannot hold NUL, which a hostile header
/// can; the event JSON escapes it, these columns replace it, so such mail is still accepted.
pub(super) fn header_text(value: &str) -> String {
    value.replace('\0', "\u{fffd}")
}

/// The statement one PostgreSQL group commit runs, and its parameters' types (for `PREPARE`):
/// exposed for the test that checks its plan, which must stay right at any table size.
#[doc(hidden)]
pub fn postgres_batch_statement() -> (&'static str, &'static str) {
    write::postgres_batch_statement()
}

/// Prepared statements a pooled PostgreSQL connection keeps, unless the URL sets
/// `statement-cache-capacity`: sqlx's default of 100 is less than the group committer's batch
/// texts (`write::exec::POOL_CACHED_ROWS` sizes of about five kinds) and the rest together,
/// and a statement pushed out costs a round trip and its planning when it runs again.
pub(crate) const POOL_STATEMENT_CACHE: usize = 256;

impl Db {
    /// Connects, creating the SQLite file and its directory when needed.
    ///
    /// # Errors
    /// [`Error::Connect`] or [`Error::Directory`].
    pub async fn connect(config: &DatabaseConfig) -> Result<Self, Error> {
        sqlx::any::install_default_drivers();
        let backend = if config.url.starts_with("sqlite:") {
            Backend::Sqlite
        } else {
            Backend::Postgres
        };
        let mut url = config.url.clone();
        let mut sqlite_path = None;
        if backend == Backend::Sqlite {
            let path = url
                .trim_start_matches("sqlite://")
                .trim_start_matches("sqlite:")
                .split('?')
                .next()
                .unwrap_or_default()
                .to_owned();
            if let Some(parent) = std::path::Path::new(&path).parent()
                && !parent.as_os_str().is_empty()
            {
                std::fs::create_dir_all(parent).map_err(|source| Error::Directory {
                    path: parent.display().to_string(),
                    source,
                })?;
            }
            if !path.is_empty() && path != ":memory:" && !url.contains("mode=memory") {
                sqlite_path = Some(path);
            }
            if !url.contains("mode=") {
                url.push(if url.contains('?') { '&' } else { '?' });
                url.push_str("mode=rwc");
            }
        }
        if backend == Backend::Postgres && !url.contains("statement-cache-capacity") {
            url.push(if url.contains('?') { '&' } else { '?' });
            url.push_str(&format!("statement-cache-capacity={POOL_STATEMENT_CACHE}"));
        }
        let pool = AnyPoolOptions::new()
            .max_connections(config.max_connections)
            // A SQLite connection is a file handle in this process: it cannot go stale, and the
            // liveness ping before every acquire would double the round trips to its worker
            // thread. A PostgreSQL connection can be cut by the server, so it is still tested.
            .test_before_acquire(backend == Backend::Postgres)
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        for pragma in SQLITE_PRAGMAS {
                            sqlx::query(pragma).execute(&mut *conn).await?;
                        }
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await
            .map_err(Error::Connect)?;
        let writes = match &sqlite_path {
            Some(path) => write::GroupCommit::start_sqlite(path)?,
            None => write::GroupCommit::start(pool.clone(), backend),
        };
        Ok(Self {
            pool,
            backend,
            writes,
            sqlite_file: sqlite_path
                .as_deref()
                .map(|path| std::sync::Arc::new(SqliteFile::opened(path))),
            arrivals: crate::notify::Arrivals::default(),
            secrets: std::sync::Arc::default(),
        })
    }

    /// Encrypts the secrets written from now on, and decrypts stored ones, with `keys`.
    #[must_use]
    pub fn with_secrets(mut self, keys: crate::secrets::Keyring) -> Self {
        self.secrets = std::sync::Arc::new(keys);
        self
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The SQLite database file, when that is the backend and it is a file.
    pub fn sqlite_path(&self) -> Option<&std::path::Path> {
        self.sqlite_file.as_deref().map(|file| file.path.as_path())
    }

    /// Whether the database answers, and on SQLite whether its file is still the one at its
    /// path (health checks).
    ///
    /// # Errors
    /// [`Error::Query`], or [`Error::FileGone`] when the SQLite file was deleted, moved or
    /// replaced.
    pub async fn ping(&self) -> Result<(), Error> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        if let Some(file) = &self.sqlite_file {
            file.still_there().map_err(|source| Error::FileGone {
                path: file.path.display().to_string(),
                source,
            })?;
        }
        Ok(())
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

mod api_keys;
mod domains;
mod endpoints;
mod erase;
mod inboxes;
mod ingress;
mod jobs;
mod limits;
mod messages;
mod migrate;
mod replies;
mod secrets;
mod stats;
mod stream;
mod threads;
mod write;
pub use api_keys::ApiKeyRow;
pub use domains::{AutoCreate, DomainChange, DomainRow};
pub use erase::{Erasure, PruneCandidate, PruneLock};
pub use inboxes::{InboxRow, InboxUpdate, NewInbox, WebhookSettings};
pub use ingress::EventTypeRow;
pub use jobs::{
    AttemptRecord, AttemptRequest, AttemptRow, ClaimedJob, DeliveryRow, EndpointKey, HIDDEN_VALUE,
    JobTarget, JobUpdate, Lease, MAX_LOGGED_BODY, NewDelivery, RaisedEvent, Recover, Recovered,
    SentBody, SentRequest,
};
pub use limits::NewFingerprint;
pub use messages::{MessageFilter, MessageListing, MessageRow, MessageSummaryRow, NewMessage};
pub use replies::KeyReservation;
pub use secrets::{PlaceCounts, RotationReport};
pub use stats::{
    DeliveryHealth, EndpointStats, Histogram, HourlyLatency, HourlyOutcomes, MetricsSnapshot,
};
pub use stream::{StreamEvent, StreamPosition};
pub use write::{StatementPath, statement_counts};
