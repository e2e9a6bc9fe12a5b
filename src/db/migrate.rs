//! The schema migrations: the embedded `migrations/*.sql` files run by sqlx's migrator, and the
//! adoption of what the migration runner before it recorded. Part of [`crate::db`]; the SQL of
//! the schema lives in `migrations/`, never here.

use super::{Backend, Db, Error};

/// Schema migrations, in order: (version, description, SQL), for both databases. sqlx's migrator
/// runs each file once per database as one script and records it in `_sqlx_migrations`; the
/// description is the file name's, as `sqlx migrate` would read it. Listed by hand rather than
/// with `sqlx::migrate!`, whose `macros` feature would also compile sqlx's query macros and their
/// database drivers for the build host; the checksums are the same either way (SHA-384 of the
/// file), and `tests/it/migrations.rs` fails when a file in `migrations/` is missing here.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "init", include_str!("../../migrations/0001_init.sql")),
    (
        2,
        "threads",
        include_str!("../../migrations/0002_threads.sql"),
    ),
    (
        3,
        "verification",
        include_str!("../../migrations/0003_verification.sql"),
    ),
    (4, "api", include_str!("../../migrations/0004_api.sql")),
    (
        6,
        "ingress",
        include_str!("../../migrations/0006_ingress.sql"),
    ),
    (
        7,
        "delivery endpoints",
        include_str!("../../migrations/0007_delivery_endpoints.sql"),
    ),
    (
        8,
        "hmac header",
        include_str!("../../migrations/0008_hmac_header.sql"),
    ),
    (
        9,
        "directory version",
        include_str!("../../migrations/0009_directory_version.sql"),
    ),
    (
        10,
        "fingerprints",
        include_str!("../../migrations/0010_fingerprints.sql"),
    ),
    (
        11,
        "inbox policy and keys",
        include_str!("../../migrations/0011_inbox_policy_and_keys.sql"),
    ),
    (
        12,
        "ingress per inbox",
        include_str!("../../migrations/0012_ingress_per_inbox.sql"),
    ),
    (
        13,
        "event lz4",
        include_str!("../../migrations/0013_event_lz4.sql"),
    ),
    (
        14,
        "event subscriptions",
        include_str!("../../migrations/0014_event_subscriptions.sql"),
    ),
    (
        15,
        "endpoint settings",
        include_str!("../../migrations/0015_endpoint_settings.sql"),
    ),
    (
        16,
        "attempt request",
        include_str!("../../migrations/0016_attempt_request.sql"),
    ),
    (
        17,
        "domains",
        include_str!("../../migrations/0017_domains.sql"),
    ),
    (
        18,
        "lifecycle",
        include_str!("../../migrations/0018_lifecycle.sql"),
    ),
    (19, "nodes", include_str!("../../migrations/0019_nodes.sql")),
    (
        21,
        "event stream",
        include_str!("../../migrations/0021_event_stream.sql"),
    ),
    (
        22,
        "replies",
        include_str!("../../migrations/0022_replies.sql"),
    ),
    (
        24,
        "attachment parts",
        include_str!("../../migrations/0024_attachment_parts.sql"),
    ),
];

/// Migrations for PostgreSQL alone (`migrations/postgres/`), for what only its dialect can say
/// (column storage). Their versions are never used by a shared migration, so a SQLite database
/// simply has none of them recorded.
const POSTGRES_MIGRATIONS: &[(i64, &str, &str)] = &[(
    25,
    "compressed columns external",
    include_str!("../../migrations/postgres/0025_compressed_columns_external.sql"),
)];

/// The PostgreSQL advisory lock the migration runner before sqlx's took. Still taken around
/// adoption and the migrator, so a node of an older release starting beside this one (a rolling
/// upgrade) cannot apply a migration while this one adopts or applies it.
const LEGACY_MIGRATION_LOCK: i64 = 7262737;

/// [`MIGRATIONS`], and on PostgreSQL [`POSTGRES_MIGRATIONS`] too, in version order, as a source
/// for sqlx's [`Migrator`](sqlx::migrate::Migrator).
#[derive(Debug)]
struct EmbeddedMigrations(Backend);

impl sqlx::migrate::MigrationSource<'static> for EmbeddedMigrations {
    fn resolve(
        self,
    ) -> futures_util::future::BoxFuture<
        'static,
        Result<Vec<sqlx::migrate::Migration>, sqlx::error::BoxDynError>,
    > {
        let own: &[(i64, &str, &str)] = match self.0 {
            Backend::Sqlite => &[],
            Backend::Postgres => POSTGRES_MIGRATIONS,
        };
        let mut listed: Vec<_> = MIGRATIONS.iter().chain(own).collect();
        listed.sort_by_key(|(version, _, _)| *version);
        Box::pin(async move {
            Ok(listed
                .into_iter()
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

impl Db {
    /// Applies pending migrations with sqlx's migrator (recorded in `_sqlx_migrations`), first
    /// adopting what the earlier runner recorded in `mxhook_migrations`. On PostgreSQL advisory
    /// locks keep two starting nodes from adopting or migrating at once.
    ///
    /// # Errors
    /// [`Error::Migrate`] naming the version that failed, or [`Error::Migrator`].
    pub async fn migrate(&self) -> Result<(), Error> {
        let migrator = sqlx::migrate::Migrator::new(EmbeddedMigrations(self.backend))
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
}
