//! The database: inboxes, accepted messages with their events, delivery jobs and attempts.
//!
//! One SQL dialect serves SQLite (the default) and PostgreSQL (several nodes): TEXT and BIGINT
//! columns, `$n` placeholders in order of first use, times in ms since the epoch. This module owns
//! every statement; stages call its functions and never write SQL themselves.

use serde_json::Value;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};

use crate::config::{DatabaseConfig, InboxConfig};
use crate::model::{DeliveryStatus, Inbox, WebhookEndpoint, now_ms};
use crate::model::{PayloadFormat, SignatureFormat, SignatureScheme};

/// Most pages (of as many rows as it wants emails) [`Db::thread_history`] reads looking for
/// emails it may show.
const HISTORY_SCAN_PAGES: usize = 5;

/// The condition (on a `deliveries d` row) that no earlier job of its thread holds it back.
const NOT_BLOCKED: &str = "(d.ordered = 0 OR d.thread_id IS NULL OR NOT EXISTS (\
    SELECT 1 FROM deliveries e WHERE e.inbox_id = d.inbox_id \
    AND e.endpoint_ref = d.endpoint_ref AND e.channel = d.channel \
    AND e.thread_id = d.thread_id AND e.status = 'pending' \
    AND (e.created_at < d.created_at OR (e.created_at = d.created_at AND e.id < d.id))))";

/// The statements of the critical-path writes, shared by both ways of committing them (see
/// `commit`). `$n` are numbered in order of first use, which is also SQLite's binding order.
const INSERT_MESSAGE: &str = "INSERT INTO messages (id, inbox_id, event_id, storage_bucket, \
    storage_key, size, envelope_from, envelope_to, remote_ip, helo, header_message_id, sender, \
    subject, received_at, event_json, thread_id, subject_key, participants, quarantined, \
    event_lz4) \
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, \
    $20)";
const INSERT_DELIVERY: &str = "INSERT INTO deliveries (id, message_id, inbox_id, event_id, \
    channel, endpoint_ref, target, status, attempts, failures, next_attempt_at, created_at, \
    updated_at, thread_id, ordered, locked_until, locked_by) \
    VALUES ($1, $2, $3, $4, $5, $6, $7, 'pending', 0, 0, $8, $8, $8, $9, $10, $11, $12)";
const INSERT_FINGERPRINT: &str = "INSERT INTO message_fingerprints (inbox_id, fingerprint, \
    message_id, received_at) VALUES ($1, $2, $3, $4) \
    ON CONFLICT (inbox_id, fingerprint) DO NOTHING RETURNING message_id";
const REPLACE_FINGERPRINT: &str = "UPDATE message_fingerprints SET message_id = $1, \
    received_at = $2 WHERE inbox_id = $3 AND fingerprint = $4 AND received_at < $5 \
    RETURNING message_id";
const REFRESH_FINGERPRINT: &str = "UPDATE message_fingerprints SET received_at = $1 \
    WHERE inbox_id = $2 AND fingerprint = $3 AND received_at < $1";
const PRUNE_FINGERPRINTS: &str = "DELETE FROM message_fingerprints WHERE received_at < $1";
const FINISH_ATTEMPT: &str = "UPDATE deliveries SET status = $1, next_attempt_at = $2, \
    attempts = attempts + 1, failures = failures + $3, delivered_at = $4, \
    last_status_code = $5, last_error = $6, locked_until = NULL, locked_by = NULL, \
    updated_at = $7 WHERE id = $8 AND locked_by = $9 RETURNING attempts";
const INSERT_ATTEMPT: &str = "INSERT INTO delivery_attempts (id, delivery_id, attempt, \
    started_at, latency_ms, status_code, outcome, error, response_excerpt) \
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)";

/// Schema migrations, in order: (version, description, SQL). sqlx's migrator runs each file once
/// per database as one script and records it in `_sqlx_migrations`; the description is the file
/// name's, as `sqlx migrate` would read it. Listed by hand rather than with `sqlx::migrate!`, whose
/// `macros` feature would also compile sqlx's query macros and their database drivers for the
/// build host; the checksums are the same either way (SHA-384 of the file), and
/// `tests/it/migrations.rs` fails when a file in `migrations/` is missing here.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "init", include_str!("../migrations/0001_init.sql")),
    (2, "threads", include_str!("../migrations/0002_threads.sql")),
    (
        3,
        "verification",
        include_str!("../migrations/0003_verification.sql"),
    ),
    (4, "api", include_str!("../migrations/0004_api.sql")),
    (6, "ingress", include_str!("../migrations/0006_ingress.sql")),
    (
        7,
        "delivery endpoints",
        include_str!("../migrations/0007_delivery_endpoints.sql"),
    ),
    (
        8,
        "hmac header",
        include_str!("../migrations/0008_hmac_header.sql"),
    ),
    (
        9,
        "directory version",
        include_str!("../migrations/0009_directory_version.sql"),
    ),
    (
        10,
        "fingerprints",
        include_str!("../migrations/0010_fingerprints.sql"),
    ),
    (
        11,
        "inbox policy and keys",
        include_str!("../migrations/0011_inbox_policy_and_keys.sql"),
    ),
    (
        12,
        "ingress per inbox",
        include_str!("../migrations/0012_ingress_per_inbox.sql"),
    ),
    (
        13,
        "event lz4",
        include_str!("../migrations/0013_event_lz4.sql"),
    ),
];

/// The PostgreSQL advisory lock the migration runner before sqlx's took. Still taken around
/// adoption and the migrator, so a node of an older release starting beside this one (a rolling
/// upgrade) cannot apply a migration while this one adopts or applies it.
const LEGACY_MIGRATION_LOCK: i64 = 7262737;

/// [`MIGRATIONS`] as a source for sqlx's [`Migrator`](sqlx::migrate::Migrator).
#[derive(Debug)]
struct EmbeddedMigrations;

impl sqlx::migrate::MigrationSource<'static> for EmbeddedMigrations {
    fn resolve(
        self,
    ) -> futures_util::future::BoxFuture<
        'static,
        Result<Vec<sqlx::migrate::Migration>, sqlx::error::BoxDynError>,
    > {
        Box::pin(async {
            Ok(MIGRATIONS
                .iter()
                .map(|(version, description, sql)| {
                    sqlx::migrate::Migration::new(
                        *version,
                        std::borrow::Cow::Borrowed(*description),
                        sqlx::migrate::MigrationType::Simple,
                        std::borrow::Cow::Borrowed(*sql),
                        false,
                    )
                })
                .collect())
        })
    }
}

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
    /// Where accepted messages and attempt records are committed, in groups (see `commit`).
    /// `None` in the committer's own handle, which writes directly.
    writes: Option<commit::GroupCommit>,
    /// The SQLite file the connections opened, checked by [`Db::ping`].
    sqlite_file: Option<std::sync::Arc<SqliteFile>>,
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

/// One accepted copy of a message (one per inbox), committed with its delivery jobs.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub id: String,
    pub inbox_id: String,
    pub event_id: String,
    pub storage_bucket: String,
    pub storage_key: String,
    pub size: i64,
    pub envelope_from: Option<String>,
    pub envelope_to: Vec<String>,
    pub remote_ip: Option<String>,
    pub helo: String,
    pub header_message_id: Option<String>,
    pub sender: Option<String>,
    pub subject: Option<String>,
    pub received_at: i64,
    pub event_json: String,
    pub deliveries: Vec<NewDelivery>,
    /// The conversation this message belongs to (`thr_…`), see `thread`.
    pub thread_id: String,
    /// The normalised reply subject, the key of the subject fallback of threading.
    pub subject_key: Option<String>,
    /// Lower-cased From, To and Cc addresses.
    pub participants: Vec<String>,
    /// The inbox policy held it back: stored, with no delivery job.
    pub quarantined: bool,
    /// Recorded for duplicate detection in the same commit, so a message that did not commit
    /// never makes its own retry look like a duplicate.
    pub fingerprint: Option<NewFingerprint>,
}

#[derive(Debug, Clone)]
pub struct NewFingerprint {
    pub fingerprint: String,
    /// Fingerprints of the inbox older than this fall out of the duplicate window.
    pub forget_before: i64,
}

#[derive(Debug, Clone)]
pub struct NewDelivery {
    pub id: String,
    pub channel: String,
    pub endpoint_ref: String,
    pub target: String,
    /// The endpoint wants one thread's events in order: this job waits for earlier ones.
    pub ordered: bool,
    /// The job is written already leased to this node, which attempts it without a claim.
    pub lease: Option<Lease>,
}

/// A lease a delivery job is written with.
#[derive(Debug, Clone)]
pub struct Lease {
    pub node: String,
    pub until: i64,
}

/// A job this node holds a lease on, with everything an attempt needs.
#[derive(Debug, Clone)]
pub struct ClaimedJob {
    pub delivery_id: String,
    pub message_id: String,
    pub inbox_id: String,
    pub event_id: String,
    pub attempts: i64,
    pub failures: i64,
    pub event_json: String,
    /// Where the raw message is, for channels that send it on (email forwards).
    pub storage_key: String,
    /// `inbox` or `rule:<id>`: which endpoint to switch off when the receiver answers 410.
    pub endpoint_ref: String,
    /// `webhook` or `email`.
    pub channel: String,
    pub target: JobTarget,
}

impl ClaimedJob {
    pub fn endpoint(&self) -> EndpointKey {
        EndpointKey {
            inbox_id: self.inbox_id.clone(),
            endpoint_ref: self.endpoint_ref.clone(),
            channel: self.channel.clone(),
        }
    }
}

/// One endpoint jobs go to: the inbox webhook (`inbox`) or a rule (`rule:<id>`) of an inbox,
/// and the channel (a rule's webhook and its email forward are separate endpoints).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EndpointKey {
    pub inbox_id: String,
    pub endpoint_ref: String,
    pub channel: String,
}

/// `$first, $first+1, …`: `count` placeholders for an `IN (…)` list.
fn placeholders(first: usize, count: usize) -> String {
    (first..first + count)
        .map(|n| format!("${n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A condition (on a `deliveries d` row) leaving out the jobs of `skip`, with placeholders
/// numbered from `$first`.
fn not_to(skip: &[EndpointKey], first: usize) -> String {
    skip.iter()
        .enumerate()
        .map(|(idx, _)| {
            let n = first + 3 * idx;
            format!(
                " AND NOT (d.inbox_id = ${n} AND d.endpoint_ref = ${} AND d.channel = ${})",
                n + 1,
                n + 2
            )
        })
        .collect()
}

/// What a job delivers to, read at attempt time so that edits to endpoints and rules apply to
/// pending jobs.
#[derive(Debug, Clone)]
pub enum JobTarget {
    Webhook(WebhookEndpoint),
    Email {
        recipients: Vec<String>,
    },
    /// The endpoint or rule was removed, or its channel switched off, since the job was made.
    Gone(String),
}

/// What one attempt did to its job.
#[derive(Debug, Clone)]
pub struct AttemptRecord {
    pub delivery_id: String,
    /// The node that held the lease for this attempt; the record only counts while it still
    /// does.
    pub worker: String,
    pub started_at: i64,
    pub latency_ms: i64,
    pub status_code: Option<u16>,
    pub outcome: String,
    pub error: Option<String>,
    pub response_excerpt: Option<String>,
    pub next: JobUpdate,
}

#[derive(Debug, Clone, Copy)]
pub enum JobUpdate {
    Delivered,
    RetryAt(i64),
    Dead,
}

/// One delivery as the API shows it (`GET /v1/deliveries`, `GET /v1/deliveries/{id}`).
///
/// Every field is sent, `null` when unset, so each is `required` in the OpenAPI document.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct DeliveryView {
    pub id: String,
    pub message_id: String,
    pub inbox_id: String,
    /// The event's id: the same on every attempt and resend (the idempotency key).
    pub event_id: String,
    /// webhook or email.
    pub channel: String,
    /// Where it goes: the webhook URL or the forward recipients.
    pub target: String,
    /// pending, delivered or dead.
    pub status: String,
    pub attempts: i64,
    #[schema(required)]
    pub next_attempt_at: Option<String>,
    #[schema(required)]
    pub last_status_code: Option<i64>,
    #[schema(required)]
    pub last_error: Option<String>,
    pub created_at: String,
    #[schema(required)]
    pub delivered_at: Option<String>,
}

/// One delivery attempt as the API shows it (`GET /v1/deliveries/{id}/attempts`).
///
/// Every field is sent, `null` when unset, so each is `required` in the OpenAPI document.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct AttemptView {
    pub attempt: i64,
    pub started_at: String,
    pub latency_ms: i64,
    /// The endpoint's HTTP status; null when no response came (or for an email forward).
    #[schema(required)]
    pub status_code: Option<i64>,
    /// What the attempt came to: delivered, http_error, error or not_sent for a webhook;
    /// forwarded or error for an email forward.
    pub outcome: String,
    #[schema(required)]
    pub error: Option<String>,
    #[schema(required)]
    pub response_excerpt: Option<String>,
}

#[derive(Debug, Clone)]
pub struct MessageRow {
    pub id: String,
    pub inbox_id: String,
    pub storage_key: String,
    pub event_json: String,
}

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
        let pool = AnyPoolOptions::new()
            .max_connections(config.max_connections)
            // A SQLite connection is a file handle in this process: it cannot go stale, and the
            // liveness ping before every acquire would double the round trips to its worker
            // thread. A PostgreSQL connection can be cut by the server, so it is still tested.
            .test_before_acquire(backend == Backend::Postgres)
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        // WAL lets readers run beside the writer; synchronous=FULL makes every
                        // commit durable before it returns, which the SMTP 250 relies on.
                        sqlx::query("PRAGMA journal_mode = WAL")
                            .execute(&mut *conn)
                            .await?;
                        sqlx::query("PRAGMA synchronous = FULL")
                            .execute(&mut *conn)
                            .await?;
                        sqlx::query("PRAGMA busy_timeout = 10000")
                            .execute(&mut *conn)
                            .await?;
                        sqlx::query("PRAGMA foreign_keys = ON")
                            .execute(&mut *conn)
                            .await?;
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await
            .map_err(Error::Connect)?;
        let direct = Self {
            pool,
            backend,
            writes: None,
            sqlite_file: sqlite_path
                .as_deref()
                .map(|path| std::sync::Arc::new(SqliteFile::opened(path))),
        };
        let writes = match sqlite_path {
            Some(path) => commit::GroupCommit::start_sqlite(&path)?,
            None => commit::GroupCommit::start(direct.clone()),
        };
        Ok(Self {
            writes: Some(writes),
            ..direct
        })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Applies pending migrations with sqlx's migrator (recorded in `_sqlx_migrations`), first
    /// adopting what the earlier runner recorded in `mxhook_migrations`. On PostgreSQL advisory
    /// locks keep two starting nodes from adopting or migrating at once.
    ///
    /// # Errors
    /// [`Error::Migrate`] naming the version that failed, or [`Error::Migrator`].
    pub async fn migrate(&self) -> Result<(), Error> {
        let migrator = sqlx::migrate::Migrator::new(EmbeddedMigrations)
            .await
            .map_err(Error::Migrator)?;
        let mut conn = self.pool.acquire().await?;
        if self.backend == Backend::Postgres {
            sqlx::query("SELECT pg_advisory_lock($1)")
                .bind(LEGACY_MIGRATION_LOCK)
                .execute(&mut *conn)
                .await?;
        }
        let result = self.migrate_locked(&mut conn, &migrator).await;
        match result {
            Ok(()) => {
                if self.backend == Backend::Postgres {
                    sqlx::query("SELECT pg_advisory_unlock($1)")
                        .bind(LEGACY_MIGRATION_LOCK)
                        .execute(&mut *conn)
                        .await?;
                }
                Ok(())
            }
            Err(err) => {
                // The migrator returns early without releasing its lock, and the connection may
                // be mid-transaction: closing it ends the session, which releases both locks,
                // instead of handing them back to the pool.
                conn.close_on_drop();
                Err(err)
            }
        }
    }

    /// Adopts the earlier runner's records, then runs the migrator, on the connection that holds
    /// the legacy lock.
    ///
    /// # Errors
    /// As [`Db::migrate`].
    async fn migrate_locked(
        &self,
        conn: &mut sqlx::AnyConnection,
        migrator: &sqlx::migrate::Migrator,
    ) -> Result<(), Error> {
        self.adopt_legacy_migrations(conn, migrator).await?;
        // The migrator takes its own lock too (re-entrant on this session), so nodes that only
        // know sqlx's lock are kept out as well. `run_direct` (public, doc-hidden) is `run` on a
        // connection, sqlx's own way around `run`'s `Acquire` bound, with which the future is not
        // provably `Send`, and the app spawns it.
        migrator.run_direct(conn).await.map_err(|err| match err {
            sqlx::migrate::MigrateError::ExecuteMigration(source, version) => {
                Error::Migrate { version, source }
            }
            other => Error::Migrator(other),
        })
    }

    /// Records in `_sqlx_migrations`, as applied, every migration the earlier runner recorded in
    /// `mxhook_migrations` and sqlx's table lacks, with the checksum the migrator expects, so
    /// the migrator does not run it again. `mxhook_migrations` is kept: a node of an older
    /// release started on this database (a rollback) then still finds its records instead of
    /// running `0001` over the existing schema.
    ///
    /// # Errors
    /// [`Error::Query`], or [`Error::Migrator`] for a recorded version this build does not have.
    async fn adopt_legacy_migrations(
        &self,
        conn: &mut sqlx::AnyConnection,
        migrator: &sqlx::migrate::Migrator,
    ) -> Result<(), Error> {
        use sqlx::migrate::Migrate as _;
        let exists = match self.backend {
            Backend::Sqlite => {
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'mxhook_migrations'"
            }
            Backend::Postgres => {
                "SELECT 1 FROM information_schema.tables \
                 WHERE table_schema = current_schema() AND table_name = 'mxhook_migrations'"
            }
        };
        if sqlx::query(exists)
            .fetch_optional(&mut *conn)
            .await?
            .is_none()
        {
            return Ok(());
        }
        let legacy: Vec<i64> =
            sqlx::query_scalar("SELECT version FROM mxhook_migrations ORDER BY version")
                .fetch_all(&mut *conn)
                .await?;
        conn.ensure_migrations_table()
            .await
            .map_err(Error::Migrator)?;
        let adopted: std::collections::HashSet<i64> = conn
            .list_applied_migrations()
            .await
            .map_err(Error::Migrator)?
            .into_iter()
            .map(|applied| applied.version)
            .collect();
        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
        for version in legacy {
            if adopted.contains(&version) {
                continue;
            }
            let migration = migrator
                .iter()
                .find(|migration| migration.version == version)
                .ok_or(Error::Migrator(
                    sqlx::migrate::MigrateError::VersionMissing(version),
                ))?;
            // execution_time -1 is what sqlx itself records until it has measured a run.
            sqlx::query(
                "INSERT INTO _sqlx_migrations \
                 (version, description, success, checksum, execution_time) \
                 VALUES ($1, $2, TRUE, $3, -1)",
            )
            .bind(version)
            .bind(migration.description.as_ref())
            .bind(migration.checksum.as_ref())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Writes a config-declared inbox, replacing what an earlier start wrote for it: the config
    /// file is the source of truth for the inboxes it declares.
    ///
    /// # Errors
    /// [`Error::Query`].
    pub async fn upsert_config_inbox(&self, inbox: &InboxConfig) -> Result<(), Error> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        bump_directory_version(&mut tx).await?;
        sqlx::query(
            "INSERT INTO inboxes (id, source, webhook_url, webhook_enabled, webhook_secret, \
             webhook_signature, webhook_payload, webhook_verify_tls, webhook_ordered, \
             created_at, updated_at, webhook_signature_header, webhook_signature_format, \
             sender_policy) \
             VALUES ($1, 'config', $2, 1, $3, $4, $5, $7, $8, $6, $6, $9, $10, $11) \
             ON CONFLICT (id) DO UPDATE SET source = 'config', webhook_url = $2, \
             webhook_enabled = 1, webhook_secret = $3, webhook_signature = $4, \
             webhook_payload = $5, webhook_verify_tls = $7, webhook_ordered = $8, \
             webhook_disabled_reason = NULL, updated_at = $6, \
             webhook_signature_header = $9, webhook_signature_format = $10, \
             sender_policy = $11",
        )
        .bind(&inbox.id)
        .bind(inbox.webhook_url.clone())
        .bind(inbox.webhook_secret.clone())
        .bind(inbox.signature.as_str())
        .bind(inbox.payload.as_str())
        .bind(now)
        .bind(i64::from(inbox.verify_tls))
        .bind(i64::from(inbox.ordered))
        .bind(inbox.signature_header.clone())
        .bind(inbox.signature_format.as_str())
        .bind(sender_policy_json(&inbox.sender_policy())?)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM inbox_addresses WHERE inbox_id = $1")
            .bind(&inbox.id)
            .execute(&mut *tx)
            .await?;
        for address in &inbox.addresses {
            let normalized =
                crate::model::normalize_address(address).unwrap_or_else(|| address.to_lowercase());
            // An address that moved here from another inbox in the config follows the config.
            sqlx::query("DELETE FROM inbox_addresses WHERE address = $1")
                .bind(&normalized)
                .execute(&mut *tx)
                .await?;
            sqlx::query("INSERT INTO inbox_addresses (address, inbox_id) VALUES ($1, $2)")
                .bind(&normalized)
                .bind(&inbox.id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Every inbox with its addresses.
    ///
    /// # Errors
    /// [`Error::Query`] or [`Error::Corrupt`].
    pub async fn load_inboxes(&self) -> Result<Vec<Inbox>, Error> {
        let rows = sqlx::query(
            "SELECT id, webhook_url, webhook_enabled, webhook_secret, webhook_signature, \
             webhook_payload, webhook_previous_secret, webhook_previous_secret_expires_at, \
             webhook_verify_tls, webhook_disabled_reason, webhook_ordered, notifications_json, \
             webhook_signature_header, webhook_signature_format, sender_policy \
             FROM inboxes \
             WHERE status = 'enabled' \
             ORDER BY id",
        )
        .fetch_all(&self.pool)
        .await?;
        let addresses =
            sqlx::query("SELECT address, inbox_id FROM inbox_addresses ORDER BY address")
                .fetch_all(&self.pool)
                .await?;
        let mut inboxes = Vec::with_capacity(rows.len());
        for row in rows {
            let id: String = row.try_get("id")?;
            let inbox_addresses = addresses
                .iter()
                .filter(|a| {
                    a.try_get::<String, _>("inbox_id")
                        .is_ok_and(|owner| owner == id)
                })
                .filter_map(|a| a.try_get::<String, _>("address").ok())
                .collect();
            let rules_json: Option<String> = row.try_get("notifications_json")?;
            let policy_json: Option<String> = row.try_get("sender_policy")?;
            inboxes.push(Inbox {
                sender_policy: sender_policy_from_json(&id, policy_json.as_deref())?,
                webhook: endpoint_from_row(&row, "")?,
                addresses: inbox_addresses,
                rules: rules_from_json(&id, rules_json.as_deref()),
                id,
            });
        }
        Ok(inboxes)
    }

    /// The directory's change marker: it moves with every committed change to an inbox or its
    /// addresses (see [`bump_directory_version`]), so a node reloads only when it moved. Read it
    /// before [`Db::load_inboxes`]: a change committed in between then shows up as a newer
    /// version at the next poll instead of being missed.
    ///
    /// # Errors
    /// [`Error::Query`].
    pub async fn directory_version(&self) -> Result<i64, Error> {
        Ok(
            sqlx::query_scalar("SELECT version FROM directory_version WHERE id = 1")
                .fetch_one(&self.pool)
                .await?,
        )
    }

    /// Commits accepted messages and their delivery jobs in one transaction: after this returns
    /// `Ok`, the SMTP session may answer 250.
    ///
    /// # Errors
    /// [`Error::Query`]; nothing is committed then.
    /// Returns, per message in order, its event as committed when that differs from the one
    /// given: the duplicate flag is decided by the fingerprint index at commit.
    pub async fn commit_accepted(
        &self,
        messages: Vec<NewMessage>,
    ) -> Result<Vec<Option<String>>, Error> {
        match self.write(commit::Write::Accepted(messages)).await? {
            commit::Reply::Events(events) => Ok(events),
            _ => Ok(Vec::new()),
        }
    }

    /// One critical-path write, through the group committer when there is one.
    async fn write(&self, write: commit::Write) -> Result<commit::Reply, Error> {
        match &self.writes {
            Some(writes) => writes.write(write).await,
            None => {
                let mut replies = self.write_together(&[&write]).await?;
                Ok(replies.pop().unwrap_or(commit::Reply::Done))
            }
        }
    }

    /// Commits writes of the group committer in one transaction: all or none. One reply per
    /// write, in order.
    async fn write_together(&self, writes: &[&commit::Write]) -> Result<Vec<commit::Reply>, Error> {
        let mut tx = self.pool.begin().await?;
        // As on SQLite (see `sqlite_writer`): only accepted messages wait for the WAL flush.
        if self.backend == Backend::Postgres && !writes.iter().any(|write| write.must_be_durable())
        {
            sqlx::query("SET LOCAL synchronous_commit = off")
                .execute(&mut *tx)
                .await?;
        }
        let mut replies = Vec::with_capacity(writes.len());
        for write in writes {
            replies.push(match write {
                commit::Write::Accepted(messages) => {
                    commit::Reply::Events(insert_messages(&mut tx, messages).await?)
                }
                commit::Write::Attempt(record) => {
                    write_attempt(&mut tx, record).await?;
                    commit::Reply::Done
                }
                commit::Write::RateCount { buckets, now } => {
                    commit::Reply::Levels(count_in_buckets(&mut tx, buckets, *now).await?)
                }
                commit::Write::Claim(claim) => {
                    commit::Reply::Claimed(claim_ids(&mut tx, self.backend, claim).await?)
                }
                commit::Write::ReadLevels(_) => {
                    return Err(Error::Corrupt(
                        "a read was sent to the pool's committer".to_owned(),
                    ));
                }
            });
        }
        tx.commit().await?;
        Ok(replies)
    }
}

/// How often accepted messages prune fingerprints that left the duplicate window.
const FINGERPRINT_PRUNE_EVERY_MS: i64 = 60_000;
static LAST_FINGERPRINT_PRUNE: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);

/// Whether a message received at `received_at` should prune old fingerprints. Lookups only see
/// the duplicate window, so old rows are dead weight, not wrong answers: they are pruned once a
/// minute, not on every message.
fn prune_fingerprints_now(received_at: i64) -> bool {
    let last = LAST_FINGERPRINT_PRUNE.load(std::sync::atomic::Ordering::Relaxed);
    received_at - last >= FINGERPRINT_PRUNE_EVERY_MS
        && LAST_FINGERPRINT_PRUNE
            .compare_exchange(
                last,
                received_at,
                std::sync::atomic::Ordering::Relaxed,
                std::sync::atomic::Ordering::Relaxed,
            )
            .is_ok()
}

/// Returns the events the duplicate flag changed, see [`Db::commit_accepted`].
async fn insert_messages(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    messages: &[NewMessage],
) -> Result<Vec<Option<String>>, Error> {
    let mut changed = Vec::with_capacity(messages.len());
    {
        for message in messages {
            let envelope_to = serde_json::to_string(&message.envelope_to)
                .map_err(|err| Error::Corrupt(err.to_string()))?;
            let mut event_json = std::borrow::Cow::Borrowed(message.event_json.as_str());
            if let Some(fingerprint) = &message.fingerprint {
                let first_seen = record_fingerprint(tx, message, fingerprint).await?;
                // The flag the intake computed came from a lookup that cannot see a copy another
                // node is committing at this moment; the unique index can, so it decides.
                if let Some(flagged) = with_duplicate_flag(&message.event_json, !first_seen) {
                    event_json = std::borrow::Cow::Owned(flagged);
                }
                if prune_fingerprints_now(message.received_at) {
                    sqlx::query(PRUNE_FINGERPRINTS)
                        .bind(fingerprint.forget_before)
                        .execute(&mut **tx)
                        .await?;
                }
            }
            sqlx::query(INSERT_MESSAGE)
                .bind(&message.id)
                .bind(&message.inbox_id)
                .bind(&message.event_id)
                .bind(&message.storage_bucket)
                .bind(&message.storage_key)
                .bind(message.size)
                .bind(message.envelope_from.clone())
                .bind(envelope_to)
                .bind(message.remote_ip.clone())
                .bind(&message.helo)
                .bind(message.header_message_id.as_deref().map(header_text))
                .bind(message.sender.as_deref().map(header_text))
                .bind(message.subject.as_deref().map(header_text))
                .bind(message.received_at)
                .bind(event_json.as_ref())
                .bind(&message.thread_id)
                .bind(message.subject_key.as_deref().map(header_text))
                .bind(header_text(&message.participants.join(" ")))
                .bind(i64::from(message.quarantined))
                // This path writes PostgreSQL (which compresses large text itself) and
                // in-memory SQLite; the file-backed SQLite committer compresses.
                .bind(None::<Vec<u8>>)
                .execute(&mut **tx)
                .await?;
            for delivery in &message.deliveries {
                sqlx::query(INSERT_DELIVERY)
                    .bind(&delivery.id)
                    .bind(&message.id)
                    .bind(&message.inbox_id)
                    .bind(&message.event_id)
                    .bind(&delivery.channel)
                    .bind(&delivery.endpoint_ref)
                    .bind(&delivery.target)
                    .bind(message.received_at)
                    .bind(&message.thread_id)
                    .bind(i64::from(delivery.ordered))
                    .bind(delivery.lease.as_ref().map(|lease| lease.until))
                    .bind(delivery.lease.as_ref().map(|lease| lease.node.clone()))
                    .execute(&mut **tx)
                    .await?;
            }
            changed.push(match event_json {
                std::borrow::Cow::Owned(event_json) => Some(event_json),
                std::borrow::Cow::Borrowed(_) => None,
            });
        }
    }
    Ok(changed)
}

/// Records that `message` reached its inbox with this fingerprint. True when it is the first
/// copy within the duplicate window: the row is new, or the one there fell out of the window.
/// On PostgreSQL a concurrent insert of the same fingerprint waits on the unique index for the
/// other transaction, so of two nodes committing one message at once exactly one sees it first.
async fn record_fingerprint(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    message: &NewMessage,
    fingerprint: &NewFingerprint,
) -> Result<bool, Error> {
    let inserted: Option<String> = sqlx::query_scalar(INSERT_FINGERPRINT)
        .bind(&message.inbox_id)
        .bind(&fingerprint.fingerprint)
        .bind(&message.id)
        .bind(message.received_at)
        .fetch_optional(&mut **tx)
        .await?;
    if inserted.is_some() {
        return Ok(true);
    }
    let replaced: Option<String> = sqlx::query_scalar(REPLACE_FINGERPRINT)
        .bind(&message.id)
        .bind(message.received_at)
        .bind(&message.inbox_id)
        .bind(&fingerprint.fingerprint)
        .bind(fingerprint.forget_before)
        .fetch_optional(&mut **tx)
        .await?;
    if replaced.is_some() {
        return Ok(true);
    }
    // A duplicate: the window runs from the newest copy, as it did with one row per copy.
    sqlx::query(REFRESH_FINGERPRINT)
        .bind(message.received_at)
        .bind(&message.inbox_id)
        .bind(&fingerprint.fingerprint)
        .execute(&mut **tx)
        .await?;
    Ok(false)
}

/// The event with `is_duplicate` set to `duplicate`, or `None` when it already says so.
fn with_duplicate_flag(event_json: &str, duplicate: bool) -> Option<String> {
    crate::event::with_duplicate_flag(event_json, duplicate)
}

/// Longest event a stored `event_lz4` may claim to hold: the payload cap is configurable, but an
/// event past this is a corrupt length prefix, not mail, and must not size an allocation.
const MAX_STORED_EVENT: usize = 1 << 30;

/// An event as `event_lz4` holds it (migration 0013): LZ4 block format, its length first.
pub(crate) fn compress_event(event_json: &str) -> Vec<u8> {
    lz4_flex::block::compress_prepend_size(event_json.as_bytes())
}

fn decompress_event(stored: &[u8]) -> Result<String, Error> {
    let corrupt = |what: String| Error::Corrupt(format!("a stored event {what}"));
    let (length, compressed) = lz4_flex::block::uncompressed_size(stored)
        .map_err(|err| corrupt(format!("has no length: {err}")))?;
    if length > MAX_STORED_EVENT {
        return Err(corrupt(format!("claims {length} bytes")));
    }
    let json = lz4_flex::block::decompress(compressed, length)
        .map_err(|err| corrupt(format!("does not decompress: {err}")))?;
    String::from_utf8(json).map_err(|err| corrupt(format!("is not UTF-8: {err}")))
}

/// A row's event: `event_lz4` where the writer compressed it, else `event_json`. The query
/// must select both columns under these names.
pub(crate) fn stored_event(row: &AnyRow) -> Result<String, Error> {
    match row.try_get::<Option<Vec<u8>>, _>("event_lz4")? {
        Some(compressed) => decompress_event(&compressed),
        None => Ok(row.try_get("event_json")?),
    }
}

/// The statement of a claim: `$1` lease until, `$2` worker, `$3` now, then each skipped
/// endpoint's inbox, endpoint ref and channel, then the limit.
fn claim_sql(backend: Backend, claim: &commit::Claim) -> String {
    let row_lock = match backend {
        Backend::Postgres => "FOR UPDATE SKIP LOCKED",
        Backend::Sqlite => "",
    };
    // Placeholders go in order of first use: the skipped endpoints come before the limit.
    let skipped = not_to(&claim.skip, 4);
    let limit_param = 4 + 3 * claim.skip.len();
    format!(
        "UPDATE deliveries SET locked_until = $1, locked_by = $2, updated_at = $3 \
         WHERE id IN (SELECT d.id FROM deliveries d WHERE d.status = 'pending' \
             AND d.next_attempt_at <= $3 AND (d.locked_until IS NULL OR d.locked_until < $3) \
             AND {NOT_BLOCKED}{skipped} \
             ORDER BY d.next_attempt_at LIMIT ${limit_param} {row_lock}) \
         AND status = 'pending' AND (locked_until IS NULL OR locked_until < $3) \
         RETURNING id"
    )
}

/// Leases up to `claim.limit` due jobs; see [`Db::claim_due`].
async fn claim_ids(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    backend: Backend,
    claim: &commit::Claim,
) -> Result<Vec<String>, Error> {
    let sql = claim_sql(backend, claim);
    let mut query = sqlx::query_scalar(&sql)
        .bind(claim.lease_until)
        .bind(&claim.worker)
        .bind(claim.now);
    for endpoint in &claim.skip {
        query = query
            .bind(&endpoint.inbox_id)
            .bind(&endpoint.endpoint_ref)
            .bind(&endpoint.channel);
    }
    Ok(query.bind(claim.limit).fetch_all(&mut **tx).await?)
}

/// Adds one message to each bucket, draining it first; see [`Db::add_to_rate_buckets`]. One
/// statement for all of a message's buckets, each draining at its own rate.
async fn count_in_buckets(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    buckets: &[(String, f64)],
    now: i64,
) -> Result<Vec<i64>, Error> {
    let unique = unique_buckets(buckets);
    if unique.is_empty() {
        return Ok(Vec::new());
    }
    let sql = count_sql(unique.len());
    let mut query = sqlx::query(&sql).bind(now);
    for (bucket, drain_per_ms) in unique {
        query = query.bind(bucket).bind(*drain_per_ms);
    }
    let mut counted = Vec::with_capacity(buckets.len());
    for row in query.fetch_all(&mut **tx).await? {
        counted.push((row.try_get("bucket")?, row.try_get("level_milli")?));
    }
    levels_in_order(buckets, &counted)
}

/// The read of `count` buckets' stored levels.
fn levels_sql(count: usize) -> String {
    format!(
        "SELECT bucket, level_milli, updated_at FROM rate_buckets WHERE bucket IN ({})",
        placeholders(1, count)
    )
}

/// The buckets once each: one statement may not update a row twice (PostgreSQL refuses), so a
/// repeated bucket is counted once.
fn unique_buckets(buckets: &[(String, f64)]) -> Vec<&(String, f64)> {
    let mut unique: Vec<&(String, f64)> = Vec::with_capacity(buckets.len());
    for bucket in buckets {
        if !unique.iter().any(|seen| seen.0 == bucket.0) {
            unique.push(bucket);
        }
    }
    unique
}

/// The counting statement for `count` buckets: `$1` is the time, then each bucket's name and
/// drain per millisecond.
fn count_sql(count: usize) -> String {
    let rows: Vec<String> = (0..count)
        .map(|i| format!("(${}, 1000, $1)", 2 + 2 * i))
        .collect();
    let drains: String = (0..count)
        .map(|i| format!(" WHEN ${} THEN ${}", 2 + 2 * i, 3 + 2 * i))
        .collect();
    let drained = format!(
        "CAST(($1 - rate_buckets.updated_at) * CASE rate_buckets.bucket{drains} END AS BIGINT)"
    );
    format!(
        "INSERT INTO rate_buckets (bucket, level_milli, updated_at) VALUES {} \
         ON CONFLICT (bucket) DO UPDATE SET \
         level_milli = 1000 + CASE \
             WHEN rate_buckets.updated_at >= $1 THEN rate_buckets.level_milli \
             WHEN rate_buckets.level_milli > {drained} THEN rate_buckets.level_milli - {drained} \
             ELSE 0 END, \
         updated_at = CASE WHEN rate_buckets.updated_at > $1 THEN rate_buckets.updated_at ELSE $1 END \
         RETURNING bucket, level_milli",
        rows.join(", ")
    )
}

/// Each bucket's new level, in the order asked: `RETURNING` promises no order, so the counted
/// (bucket, level) rows are matched by name.
fn levels_in_order(
    buckets: &[(String, f64)],
    counted: &[(String, i64)],
) -> Result<Vec<i64>, Error> {
    buckets
        .iter()
        .map(|(bucket, _)| {
            counted
                .iter()
                .find(|(name, _)| name == bucket)
                .map(|(_, level)| *level)
                .ok_or_else(|| Error::Corrupt(format!("rate bucket `{bucket}` was not counted")))
        })
        .collect()
}

/// A job's columns after an attempt at `now`: status, next attempt time, failures to add, and
/// when it was delivered.
fn job_after(next: JobUpdate, now: i64) -> (DeliveryStatus, i64, i64, Option<i64>) {
    match next {
        JobUpdate::Delivered => (DeliveryStatus::Delivered, now, 0, Some(now)),
        JobUpdate::RetryAt(at) => (DeliveryStatus::Pending, at, 1, None),
        JobUpdate::Dead => (DeliveryStatus::Dead, now, 1, None),
    }
}

fn warn_attempt_not_recorded(record: &AttemptRecord) {
    tracing::warn!(
        delivery = %record.delivery_id,
        node = %record.worker,
        "attempt not recorded: the job is gone or its lease passed to another node"
    );
}

/// Logs one attempt and moves its job on, releasing the lease.
async fn write_attempt(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    record: &AttemptRecord,
) -> Result<(), Error> {
    // The write comes first: on SQLite a transaction that reads and then writes fails at
    // once with "database is locked" when another attempt committed in between, and the
    // job would then wait for its lease to run out and be sent again.
    let now = now_ms();
    let (status, next_attempt_at, failed, delivered_at) = job_after(record.next, now);
    // The job's attempt counter numbers the attempt, so no second read is needed.
    let attempt: Option<i64> = sqlx::query_scalar(FINISH_ATTEMPT)
        .bind(status.as_str())
        .bind(next_attempt_at)
        .bind(failed)
        .bind(delivered_at)
        .bind(record.status_code.map(i64::from))
        .bind(record.error.clone())
        .bind(now)
        .bind(&record.delivery_id)
        .bind(&record.worker)
        .fetch_optional(&mut **tx)
        .await?;
    // The delivery is gone (its inbox was deleted), or this node's lease ran out and another
    // node took the job: that node's attempt is the one that counts, so this one must neither
    // finish the job nor spend its retry budget.
    let Some(attempt) = attempt else {
        warn_attempt_not_recorded(record);
        return Ok(());
    };
    sqlx::query(INSERT_ATTEMPT)
        .bind(crate::model::new_id("att"))
        .bind(&record.delivery_id)
        .bind(attempt)
        .bind(record.started_at)
        .bind(record.latency_ms)
        .bind(record.status_code.map(i64::from))
        .bind(&record.outcome)
        .bind(record.error.clone())
        .bind(record.response_excerpt.clone())
        .execute(&mut **tx)
        .await?;
    Ok(())
}

impl Db {
    /// Takes a lease on up to `limit` due jobs. A job whose lease ran out (its node died) is due
    /// again. On PostgreSQL, `FOR UPDATE SKIP LOCKED` lets several nodes claim at once without
    /// waiting on each other or taking the same row; the conditions are repeated outside the
    /// sub-select so a row changed meanwhile is re-checked. SQLite has one writer at a time, so
    /// the plain form is already exclusive there.
    ///
    /// A job of an ordered endpoint is not due while an earlier job (by acceptance, then id) of
    /// the same thread, endpoint and channel is still pending, leased or not. Jobs of the
    /// endpoints in `skip` (those at their in-flight limit on this node) are left for later.
    ///
    /// # Errors
    /// [`Error::Query`].
    pub async fn claim_due(
        &self,
        worker: &str,
        now: i64,
        lease_until: i64,
        limit: i64,
        skip: &[EndpointKey],
    ) -> Result<Vec<ClaimedJob>, Error> {
        let claim = commit::Claim {
            worker: worker.to_owned(),
            now,
            lease_until,
            limit,
            skip: skip.to_vec(),
        };
        let mut ids = match self.write(commit::Write::Claim(claim)).await? {
            commit::Reply::Claimed(ids) => ids,
            _ => Vec::new(),
        };
        // On PostgreSQL the statement can take more rows than the limit: when a row it meets was
        // changed concurrently, the re-check runs the sub-select again and SKIP LOCKED finds
        // further rows. The caller has workers for `limit` jobs only, and a surplus job would
        // sit out its whole lease, so the surplus goes back at once.
        let limit_len = usize::try_from(limit).unwrap_or(0);
        if ids.len() > limit_len {
            let surplus = ids.split_off(limit_len);
            self.release_claims(worker, &surplus).await?;
        }
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        // One read for the whole claim, in claim order.
        let load = format!(
            "SELECT d.id, d.message_id, d.inbox_id, d.event_id, d.attempts, d.failures, \
             d.endpoint_ref, d.channel, m.event_json, m.event_lz4, m.storage_key, i.webhook_url, \
             i.webhook_enabled, i.webhook_secret, i.webhook_signature, i.webhook_payload, \
             i.webhook_previous_secret, i.webhook_previous_secret_expires_at, \
             i.webhook_verify_tls, i.webhook_disabled_reason, i.webhook_ordered, \
             i.notifications_json, i.webhook_signature_header, i.webhook_signature_format \
             FROM deliveries d JOIN messages m ON m.id = d.message_id \
             LEFT JOIN inboxes i ON i.id = d.inbox_id WHERE d.id IN ({}) \
             ORDER BY d.next_attempt_at, d.id",
            placeholders(1, ids.len())
        );
        let mut query = sqlx::query(&load);
        for id in &ids {
            query = query.bind(id);
        }
        let rows = query.fetch_all(&self.pool).await?;
        let mut jobs = Vec::with_capacity(rows.len());
        for row in rows {
            let endpoint_ref: String = row.try_get("endpoint_ref")?;
            let channel: String = row.try_get("channel")?;
            let inbox_id: String = row.try_get("inbox_id")?;
            let inbox_webhook = endpoint_from_row(&row, "")?;
            let target = match endpoint_ref.strip_prefix("rule:") {
                None => inbox_webhook.map(JobTarget::Webhook).unwrap_or_else(|| {
                    JobTarget::Gone("the inbox has no webhook any more".to_owned())
                }),
                Some(rule_id) => {
                    let rules_json: Option<String> = row.try_get("notifications_json")?;
                    let rules = rules_from_json(&inbox_id, rules_json.as_deref());
                    let rule = rules.iter().find(|rule| rule.id == rule_id);
                    match (channel.as_str(), rule) {
                        (_, None) => JobTarget::Gone(format!("rule {rule_id} was removed")),
                        (_, Some(rule)) if !rule.enabled => {
                            JobTarget::Gone(format!("rule {rule_id} is disabled"))
                        }
                        ("email", Some(rule)) => {
                            match rule.channels.email.as_ref().filter(|email| email.enabled) {
                                Some(email) => JobTarget::Email {
                                    recipients: email.recipients.clone(),
                                },
                                None => JobTarget::Gone(format!(
                                    "rule {rule_id} has no email channel any more"
                                )),
                            }
                        }
                        (_, Some(rule)) => match &rule.channels.webhook {
                            Some(webhook) => JobTarget::Webhook(WebhookEndpoint::for_rule(
                                webhook,
                                inbox_webhook.as_ref(),
                            )),
                            None => {
                                JobTarget::Gone(format!("rule {rule_id} has no webhook any more"))
                            }
                        },
                    }
                }
            };
            jobs.push(ClaimedJob {
                delivery_id: row.try_get("id")?,
                message_id: row.try_get("message_id")?,
                inbox_id: row.try_get("inbox_id")?,
                event_id: row.try_get("event_id")?,
                attempts: row.try_get("attempts")?,
                failures: row.try_get("failures")?,
                event_json: stored_event(&row)?,
                storage_key: row.try_get("storage_key")?,
                endpoint_ref,
                channel,
                target,
            });
        }
        Ok(jobs)
    }

    /// Switches off the endpoint a job delivers to (the inbox webhook, or a rule's webhook
    /// channel) and stores why. Its pending jobs fall due at once, so they dead-letter with the
    /// reason instead of waiting out their retry delays.
    ///
    /// # Errors
    /// [`Error::Query`].
    pub async fn disable_endpoint(
        &self,
        inbox_id: &str,
        endpoint_ref: &str,
        reason: &str,
    ) -> Result<(), Error> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        // The disabled endpoint must stop receiving new jobs on every node, not only this one.
        bump_directory_version(&mut tx).await?;
        if let Some(rule_id) = endpoint_ref.strip_prefix("rule:") {
            // The write comes first (see record_attempt): touch the row, then read it.
            sqlx::query("UPDATE inboxes SET updated_at = $1 WHERE id = $2")
                .bind(now)
                .bind(inbox_id)
                .execute(&mut *tx)
                .await?;
            let stored: Option<Option<String>> =
                sqlx::query_scalar("SELECT notifications_json FROM inboxes WHERE id = $1")
                    .bind(inbox_id)
                    .fetch_optional(&mut *tx)
                    .await?;
            if let Some(Ok(mut rules)) = stored
                .flatten()
                .map(|json| serde_json::from_str::<Vec<Value>>(&json))
            {
                for rule in &mut rules {
                    if rule["id"] == rule_id
                        && let Some(webhook) = rule["channels"]["webhook"].as_object_mut()
                    {
                        webhook.insert("enabled".to_owned(), Value::Bool(false));
                        webhook.insert(
                            "disabled_reason".to_owned(),
                            Value::String(reason.to_owned()),
                        );
                    }
                }
                let json =
                    serde_json::to_string(&rules).map_err(|err| Error::Corrupt(err.to_string()))?;
                sqlx::query("UPDATE inboxes SET notifications_json = $1 WHERE id = $2")
                    .bind(json)
                    .bind(inbox_id)
                    .execute(&mut *tx)
                    .await?;
            }
        } else {
            sqlx::query(
                "UPDATE inboxes SET webhook_enabled = 0, webhook_disabled_reason = $1, \
                 updated_at = $2 WHERE id = $3",
            )
            .bind(reason)
            .bind(now)
            .bind(inbox_id)
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query(
            "UPDATE deliveries SET next_attempt_at = $1 WHERE inbox_id = $2 \
             AND endpoint_ref = $3 AND channel = 'webhook' AND status = 'pending'",
        )
        .bind(now)
        .bind(inbox_id)
        .bind(endpoint_ref)
        .execute(&mut *tx)
        .await?;
        // Enabled again later, the endpoint starts with a clean record.
        sqlx::query("DELETE FROM endpoint_failures WHERE inbox_id = $1 AND endpoint_ref = $2")
            .bind(inbox_id)
            .bind(endpoint_ref)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Notes the outcome of a webhook attempt for the failing-period check. A success clears
    /// the endpoint's record; a failure returns since when the endpoint has been failing
    /// without a success (this failure's time when it is the first).
    ///
    /// # Errors
    /// [`Error::Query`].
    pub async fn note_endpoint_outcome(
        &self,
        inbox_id: &str,
        endpoint_ref: &str,
        url: &str,
        success: bool,
        now: i64,
    ) -> Result<Option<i64>, Error> {
        // A read first: nearly every success finds nothing to clear and nearly every failure
        // of a failing endpoint finds its record, and a read does not take SQLite's write lock.
        let failing_since: Option<i64> = sqlx::query_scalar(
            "SELECT failing_since FROM endpoint_failures WHERE inbox_id = $1 \
             AND endpoint_ref = $2 AND url = $3",
        )
        .bind(inbox_id)
        .bind(endpoint_ref)
        .bind(url)
        .fetch_optional(&self.pool)
        .await?;
        match (success, failing_since) {
            (true, None) => Ok(None),
            (true, Some(_)) => {
                sqlx::query(
                    "DELETE FROM endpoint_failures WHERE inbox_id = $1 AND endpoint_ref = $2 \
                     AND url = $3",
                )
                .bind(inbox_id)
                .bind(endpoint_ref)
                .bind(url)
                .execute(&self.pool)
                .await?;
                Ok(None)
            }
            (false, Some(since)) => Ok(Some(since)),
            (false, None) => {
                // Another node may record the same first failure at the same moment; either
                // time will do, so the conflict is ignored.
                sqlx::query(
                    "INSERT INTO endpoint_failures (inbox_id, endpoint_ref, url, failing_since) \
                     VALUES ($1, $2, $3, $4) ON CONFLICT (inbox_id, endpoint_ref, url) DO NOTHING",
                )
                .bind(inbox_id)
                .bind(endpoint_ref)
                .bind(url)
                .bind(now)
                .execute(&self.pool)
                .await?;
                Ok(Some(now))
            }
        }
    }

    /// Gives back leases this node took but will not use now (jobs of an endpoint that
    /// reached its in-flight limit within one claimed batch): they are due again at once, for
    /// this node once a slot frees up or for another node.
    ///
    /// # Errors
    /// [`Error::Query`].
    pub async fn release_claims(&self, worker: &str, ids: &[String]) -> Result<(), Error> {
        if ids.is_empty() {
            return Ok(());
        }
        let sql = format!(
            "UPDATE deliveries SET locked_until = NULL, locked_by = NULL \
             WHERE locked_by = $1 AND status = 'pending' AND id IN ({})",
            placeholders(2, ids.len())
        );
        let mut query = sqlx::query(&sql).bind(worker);
        for id in ids {
            query = query.bind(id);
        }
        query.execute(&self.pool).await?;
        Ok(())
    }

    /// When the next pending job that is not of an endpoint in `skip` falls due, if any.
    ///
    /// # Errors
    /// [`Error::Query`].
    pub async fn next_due_at(&self, skip: &[EndpointKey]) -> Result<Option<i64>, Error> {
        // Blocked jobs and those of saturated endpoints are left out, or the dispatcher would
        // spin on jobs it cannot claim; the job blocking them is counted, and its end (like a
        // freed endpoint slot) wakes the dispatcher.
        let skipped = not_to(skip, 1);
        let sql = format!(
            "SELECT MIN(CASE WHEN d.locked_until IS NOT NULL \
             AND d.locked_until > d.next_attempt_at \
             THEN d.locked_until ELSE d.next_attempt_at END) FROM deliveries d \
             WHERE d.status = 'pending' AND {NOT_BLOCKED}{skipped}"
        );
        let mut query = sqlx::query_scalar(&sql);
        for endpoint in skip {
            query = query
                .bind(&endpoint.inbox_id)
                .bind(&endpoint.endpoint_ref)
                .bind(&endpoint.channel);
        }
        let due: Option<i64> = query.fetch_one(&self.pool).await?;
        Ok(due)
    }

    /// Logs one attempt and moves its job on, releasing the lease.
    ///
    /// # Errors
    /// [`Error::Query`].
    pub async fn record_attempt(&self, record: &AttemptRecord) -> Result<(), Error> {
        self.write(commit::Write::Attempt(record.clone()))
            .await
            .map(|_| ())
    }

    /// Puts a delivery back in the queue, due now, with a fresh retry budget. The event (and so
    /// its `event_id`) stays the same.
    ///
    /// # Errors
    /// [`Error::Query`]. Returns `false` when there is no such delivery.
    pub async fn resend(&self, delivery_id: &str) -> Result<bool, Error> {
        let now = now_ms();
        let result = sqlx::query(
            "UPDATE deliveries SET status = 'pending', failures = 0, next_attempt_at = $1, \
             locked_until = NULL, locked_by = NULL, updated_at = $1 WHERE id = $2",
        )
        .bind(now)
        .bind(delivery_id)
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected() > 0)
    }

    /// Deliveries, newest first, optionally of one status and one inbox.
    ///
    /// # Errors
    /// [`Error::Query`].
    pub async fn list_deliveries(
        &self,
        status: Option<DeliveryStatus>,
        inbox_id: Option<&str>,
        limit: i64,
    ) -> Result<Vec<DeliveryView>, Error> {
        let rows = sqlx::query(
            "SELECT * FROM deliveries WHERE ($1 = '' OR status = $1) AND ($2 = '' OR inbox_id = $2) \
             ORDER BY created_at DESC, id DESC LIMIT $3",
        )
        .bind(status.map(DeliveryStatus::as_str).unwrap_or_default())
        .bind(inbox_id.unwrap_or_default())
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(delivery_from_row).collect()
    }

    /// One delivery.
    ///
    /// # Errors
    /// [`Error::Query`].
    pub async fn get_delivery(&self, id: &str) -> Result<Option<DeliveryView>, Error> {
        let row = sqlx::query("SELECT * FROM deliveries WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(delivery_from_row).transpose()
    }

    /// Every attempt of one delivery, in order.
    ///
    /// # Errors
    /// [`Error::Query`].
    pub async fn list_attempts(&self, delivery_id: &str) -> Result<Vec<AttemptView>, Error> {
        let rows =
            sqlx::query("SELECT * FROM delivery_attempts WHERE delivery_id = $1 ORDER BY attempt")
                .bind(delivery_id)
                .fetch_all(&self.pool)
                .await?;
        rows.iter()
            .map(|row| {
                Ok(AttemptView {
                    attempt: row.try_get("attempt")?,
                    started_at: crate::model::rfc3339(row.try_get("started_at")?),
                    latency_ms: row.try_get("latency_ms")?,
                    status_code: row.try_get("status_code")?,
                    outcome: row.try_get("outcome")?,
                    error: row.try_get("error")?,
                    response_excerpt: row.try_get("response_excerpt")?,
                })
            })
            .collect()
    }

    /// One stored message.
    ///
    /// # Errors
    /// [`Error::Query`].
    pub async fn get_message(&self, id: &str) -> Result<Option<MessageRow>, Error> {
        let row = sqlx::query(
            "SELECT id, inbox_id, storage_key, event_json, event_lz4 FROM messages WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| {
            Ok(MessageRow {
                id: row.try_get("id")?,
                inbox_id: row.try_get("inbox_id")?,
                storage_key: row.try_get("storage_key")?,
                event_json: stored_event(&row)?,
            })
        })
        .transpose()
    }

    /// Earlier messages of one inbox a new message may continue: those whose Message-ID is among
    /// `references`, and those since `since` whose normalised subject is `subject_key`.
    ///
    /// # Errors
    /// [`Error::Query`].
    pub async fn thread_candidates(
        &self,
        inbox_id: &str,
        references: &[String],
        subject_key: Option<&str>,
        since: i64,
    ) -> Result<Vec<crate::thread::Candidate>, Error> {
        const COLUMNS: &str =
            "thread_id, header_message_id, subject_key, sender, participants, received_at";
        let mut rows = Vec::new();
        if !references.is_empty() {
            let sql = format!(
                "SELECT {COLUMNS} FROM messages WHERE inbox_id = $1 \
                 AND header_message_id IN ({}) AND thread_id IS NOT NULL",
                placeholders(2, references.len())
            );
            let mut query = sqlx::query(&sql).bind(inbox_id);
            for reference in references {
                query = query.bind(header_text(reference));
            }
            rows.extend(query.fetch_all(&self.pool).await?);
        }
        if let Some(subject_key) = subject_key {
            let found = sqlx::query(&format!(
                "SELECT {COLUMNS} FROM messages WHERE inbox_id = $1 AND subject_key = $2 \
                 AND received_at >= $3 AND thread_id IS NOT NULL \
                 ORDER BY received_at DESC LIMIT 50"
            ))
            .bind(inbox_id)
            .bind(header_text(subject_key))
            .bind(since)
            .fetch_all(&self.pool)
            .await?;
            rows.extend(found);
        }
        rows.iter()
            .map(|row| {
                let participants: Option<String> = row.try_get("participants")?;
                Ok(crate::thread::Candidate {
                    thread_id: row.try_get("thread_id")?,
                    header_message_id: row.try_get("header_message_id")?,
                    subject_key: row.try_get("subject_key")?,
                    sender: row
                        .try_get::<Option<String>, _>("sender")?
                        .map(|sender| sender.to_lowercase()),
                    participants: participants
                        .unwrap_or_default()
                        .split_whitespace()
                        .map(str::to_owned)
                        .collect(),
                    received_at: row.try_get("received_at")?,
                })
            })
            .collect()
    }

    /// The stored events of the newest `limit` messages of a thread that a later email may
    /// show as its earlier emails, oldest first. Quarantined messages are left out (the
    /// inbox's policy held them, so they may be forged and must not reach an agent through a
    /// later mail's `previous_emails` or `thread_prompt`), and of several copies of one
    /// Message-ID (the same mail received twice) only the oldest is kept.
    ///
    /// Rows are read newest first a page at a time, so skipped rows do not shorten the list;
    /// at most [`HISTORY_SCAN_PAGES`] pages, so a flood of quarantined mail into one thread
    /// costs a bounded read per later message.
    ///
    /// # Errors
    /// [`Error::Query`].
    pub async fn thread_history(
        &self,
        inbox_id: &str,
        thread_id: &str,
        limit: i64,
    ) -> Result<Vec<String>, Error> {
        let wanted = usize::try_from(limit).unwrap_or(0);
        // Newest first: (header Message-ID, event).
        let mut kept: Vec<(Option<String>, String)> = Vec::new();
        let mut before = (i64::MAX, String::new());
        for _ in 0..HISTORY_SCAN_PAGES {
            if kept.len() >= wanted {
                break;
            }
            let rows = sqlx::query(
                "SELECT id, received_at, header_message_id, event_json, event_lz4 FROM messages \
                 WHERE inbox_id = $1 AND thread_id = $2 \
                 AND (received_at < $3 OR (received_at = $3 AND id < $4)) \
                 ORDER BY received_at DESC, id DESC LIMIT $5",
            )
            .bind(inbox_id)
            .bind(thread_id)
            .bind(before.0)
            .bind(before.1.clone())
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
            let page_len = rows.len();
            for row in rows {
                before = (row.try_get("received_at")?, row.try_get("id")?);
                let event = stored_event(&row)?;
                if crate::thread::is_quarantined(&event) {
                    continue;
                }
                let header_id: Option<String> = row.try_get("header_message_id")?;
                if let Some(id) = &header_id
                    && let Some(newer_copy) = kept
                        .iter()
                        .position(|(known, _)| known.as_ref() == Some(id))
                {
                    // This row is older: it takes the copy's place, at its own time.
                    kept.remove(newer_copy);
                } else if kept.len() >= wanted {
                    continue;
                }
                kept.push((header_id, event));
            }
            if page_len < wanted {
                break;
            }
        }
        kept.reverse();
        Ok(kept.into_iter().map(|(_, event)| event).collect())
    }

    /// A cheap round trip, for readiness.
    ///
    /// # Errors
    /// [`Error::Query`].
    /// True when this inbox received a message with this fingerprint at or after `since`.
    ///
    /// # Errors
    /// [`Error::Query`].
    pub async fn fingerprint_seen(
        &self,
        inbox_id: &str,
        fingerprint: &str,
        since: i64,
    ) -> Result<bool, Error> {
        let found: Option<String> = sqlx::query_scalar(
            "SELECT message_id FROM message_fingerprints \
             WHERE inbox_id = $1 AND fingerprint = $2 AND received_at >= $3 LIMIT 1",
        )
        .bind(inbox_id)
        .bind(fingerprint)
        .bind(since)
        .fetch_optional(&self.pool)
        .await?;
        Ok(found.is_some())
    }

    /// The stored buckets among `buckets`: (bucket, level in thousandths of a message, when it
    /// was written). Absent buckets are empty.
    ///
    /// # Errors
    /// [`Error::Query`].
    pub async fn rate_buckets(&self, buckets: &[&str]) -> Result<Vec<(String, i64, i64)>, Error> {
        if buckets.is_empty() {
            return Ok(Vec::new());
        }
        if let Some(writes) = self.writes.as_ref().filter(|writes| writes.takes_reads()) {
            let buckets = buckets.iter().map(|bucket| (*bucket).to_owned()).collect();
            return match writes.write(commit::Write::ReadLevels(buckets)).await? {
                commit::Reply::Buckets(levels) => Ok(levels),
                _ => Ok(Vec::new()),
            };
        }
        let sql = levels_sql(buckets.len());
        let mut query = sqlx::query(&sql);
        for bucket in buckets {
            query = query.bind(*bucket);
        }
        query
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|row| {
                Ok((
                    row.try_get("bucket")?,
                    row.try_get("level_milli")?,
                    row.try_get("updated_at")?,
                ))
            })
            .collect()
    }

    /// Adds one message to each bucket, draining it first by `drain_per_ms` thousandths per
    /// millisecond since its last write, and returns the new levels in order. One statement per
    /// bucket does the read, the drain and the write atomically, so concurrent sessions and nodes
    /// never lose a count and never retry; one transaction for all of a message's buckets means
    /// one commit (one WAL sync on SQLite) instead of one per bucket.
    ///
    /// # Errors
    /// [`Error::Query`].
    pub async fn add_to_rate_buckets(
        &self,
        buckets: &[(&str, f64)],
        now: i64,
    ) -> Result<Vec<i64>, Error> {
        let buckets = buckets
            .iter()
            .map(|(bucket, drain)| ((*bucket).to_owned(), *drain))
            .collect();
        match self
            .write(commit::Write::RateCount { buckets, now })
            .await?
        {
            commit::Reply::Levels(levels) => Ok(levels),
            _ => Ok(Vec::new()),
        }
    }

    /// Sets a bucket's level as of `updated_at` (tests age a bucket with it).
    ///
    /// # Errors
    /// [`Error::Query`].
    pub async fn set_rate_bucket(
        &self,
        bucket: &str,
        level_milli: i64,
        updated_at: i64,
    ) -> Result<(), Error> {
        sqlx::query(
            "INSERT INTO rate_buckets (bucket, level_milli, updated_at) VALUES ($1, $2, $3) \
             ON CONFLICT (bucket) DO UPDATE SET level_milli = $2, updated_at = $3",
        )
        .bind(bucket)
        .bind(level_milli)
        .bind(updated_at)
        .execute(&self.pool)
        .await?;
        Ok(())
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

fn endpoint_from_row(row: &AnyRow, prefix: &str) -> Result<Option<WebhookEndpoint>, Error> {
    let column = |name: &str| format!("{prefix}{name}");
    let url: Option<String> = row.try_get(column("webhook_url").as_str())?;
    let Some(url) = url else {
        return Ok(None);
    };
    let signature: String = row.try_get(column("webhook_signature").as_str())?;
    let payload: String = row.try_get(column("webhook_payload").as_str())?;
    let enabled: i64 = row.try_get(column("webhook_enabled").as_str())?;
    let previous_expires_at: Option<i64> =
        row.try_get(column("webhook_previous_secret_expires_at").as_str())?;
    let previous_secret: Option<String> =
        row.try_get(column("webhook_previous_secret").as_str())?;
    let verify_tls: i64 = row.try_get(column("webhook_verify_tls").as_str())?;
    let ordered: i64 = row.try_get(column("webhook_ordered").as_str())?;
    let signature_format: String = row.try_get(column("webhook_signature_format").as_str())?;
    let mut endpoint = WebhookEndpoint {
        url,
        enabled: enabled != 0,
        secret: row.try_get(column("webhook_secret").as_str())?,
        previous_secret,
        previous_secret_expires_at: previous_expires_at,
        signature: SignatureScheme::parse(&signature)
            .ok_or_else(|| Error::Corrupt(format!("unknown signature scheme `{signature}`")))?,
        payload: PayloadFormat::parse(&payload)
            .ok_or_else(|| Error::Corrupt(format!("unknown payload format `{payload}`")))?,
        signature_header: row.try_get(column("webhook_signature_header").as_str())?,
        signature_format: SignatureFormat::parse(&signature_format).ok_or_else(|| {
            Error::Corrupt(format!("unknown signature format `{signature_format}`"))
        })?,
        custom_headers: std::collections::BTreeMap::new(),
        timeout: None,
        max_retries: None,
        verify_tls: verify_tls != 0,
        disabled_reason: row.try_get(column("webhook_disabled_reason").as_str())?,
        ordered: ordered != 0,
    };
    endpoint.expire_previous_secret(now_ms());
    Ok(Some(endpoint))
}

/// An inbox's stored notification rules. Rules that no longer parse are skipped with a warning
/// rather than failing every delivery of the inbox.
/// The sender policy as the inbox row stores it: `NULL` when it is the default (no policy).
///
/// # Errors
/// [`Error::Corrupt`] if it does not serialize (it always does).
pub(crate) fn sender_policy_json(
    policy: &crate::model::SenderPolicy,
) -> Result<Option<String>, Error> {
    if *policy == crate::model::SenderPolicy::default() {
        return Ok(None);
    }
    serde_json::to_string(policy)
        .map(Some)
        .map_err(|err| Error::Corrupt(err.to_string()))
}

/// A stored sender policy. One that does not parse is an error, not "no policy": a silently
/// dropped block list would let through what the inbox refuses.
///
/// # Errors
/// [`Error::Corrupt`].
pub(crate) fn sender_policy_from_json(
    inbox_id: &str,
    json: Option<&str>,
) -> Result<crate::model::SenderPolicy, Error> {
    json.map_or(Ok(crate::model::SenderPolicy::default()), |json| {
        serde_json::from_str(json)
            .map_err(|err| Error::Corrupt(format!("sender policy of inbox {inbox_id}: {err}")))
    })
}

fn rules_from_json(inbox_id: &str, json: Option<&str>) -> Vec<crate::model::Rule> {
    let Some(json) = json else {
        return Vec::new();
    };
    match serde_json::from_str::<Vec<Value>>(json) {
        Ok(values) => values
            .into_iter()
            .filter_map(|value| match serde_json::from_value(value) {
                Ok(rule) => Some(rule),
                Err(err) => {
                    tracing::warn!(inbox_id, error = %err, "skipping a stored rule that does not parse");
                    None
                }
            })
            .collect(),
        Err(err) => {
            tracing::warn!(inbox_id, error = %err, "stored notification rules are not a list");
            Vec::new()
        }
    }
}

fn delivery_from_row(row: &AnyRow) -> Result<DeliveryView, Error> {
    let status: String = row.try_get("status")?;
    let next_attempt_at: i64 = row.try_get("next_attempt_at")?;
    Ok(DeliveryView {
        id: row.try_get("id")?,
        message_id: row.try_get("message_id")?,
        inbox_id: row.try_get("inbox_id")?,
        event_id: row.try_get("event_id")?,
        channel: row.try_get("channel")?,
        target: row.try_get("target")?,
        next_attempt_at: (status == "pending").then(|| crate::model::rfc3339(next_attempt_at)),
        status,
        attempts: row.try_get("attempts")?,
        last_status_code: row.try_get("last_status_code")?,
        last_error: row.try_get("last_error")?,
        created_at: crate::model::rfc3339(row.try_get("created_at")?),
        delivered_at: row
            .try_get::<Option<i64>, _>("delivered_at")?
            .map(crate::model::rfc3339),
    })
}

/// A header value as a column value. PostgreSQL TEXT cannot hold NUL, which a hostile header
/// can; the event JSON escapes it, these columns replace it, so such mail is still accepted.
fn header_text(value: &str) -> String {
    value.replace('\0', "\u{fffd}")
}
/// Moves the directory's change marker (see [`Db::directory_version`]) inside the transaction
/// that changes an inbox, so the change and the marker commit together. Called first in the
/// transaction: it is then a write first (which SQLite needs, see `create_inbox`), and on
/// PostgreSQL every inbox change takes the counter's row lock before any other, so two changes
/// never wait on each other in opposite orders.
///
/// # Errors
/// [`Error::Query`].
async fn bump_directory_version(conn: &mut sqlx::AnyConnection) -> Result<(), Error> {
    sqlx::query("UPDATE directory_version SET version = version + 1 WHERE id = 1")
        .execute(conn)
        .await?;
    Ok(())
}

mod commit;
mod dashboard;
mod ingress;
mod management;
mod sqlite_writer;
pub use dashboard::{EndpointStats, MessageListing};
pub use ingress::EventTypeRow;
pub use management::{
    ApiKeyRow, Histogram, InboxRow, InboxUpdate, MessageFilter, MessageSummary, MetricsSnapshot,
    NewInbox, WebhookSettings,
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_compressed_event_reads_back_as_written() {
        let event = serde_json::json!({
            "email": {"plain_text": "Grüße\n".repeat(300), "prompt": "Grüße\n".repeat(300)},
            "is_duplicate": false,
        })
        .to_string();
        let stored = compress_event(&event);
        assert!(
            stored.len() * 4 < event.len(),
            "{} of {}",
            stored.len(),
            event.len()
        );
        assert_eq!(decompress_event(&stored).expect("decompress"), event);
    }

    #[test]
    fn a_damaged_stored_event_is_an_error_not_a_panic_or_a_huge_allocation() {
        let stored = compress_event(&"x".repeat(5000));
        // A length prefix of 4 GiB - 1: refused before anything is allocated.
        let mut huge = stored.clone();
        huge[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(decompress_event(&huge), Err(Error::Corrupt(_))));
        for damaged in [&stored[..2], &stored[..stored.len() - 3], &[0xff; 16][..]] {
            assert!(matches!(decompress_event(damaged), Err(Error::Corrupt(_))));
        }
        // Valid LZ4 of bytes that are not UTF-8.
        let binary = lz4_flex::block::compress_prepend_size(&[0xc3, 0x28]);
        assert!(matches!(decompress_event(&binary), Err(Error::Corrupt(_))));
    }
}
