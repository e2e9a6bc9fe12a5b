//! Schema migrations through sqlx's migrator: a fresh database gets the schema the earlier
//! runner built, a database that runner migrated is adopted without running anything again, and
//! two nodes migrating one PostgreSQL database at once both start. Each test runs on SQLite and
//! on PostgreSQL (a new database per test).

use mxhook::config::DatabaseConfig;
use mxhook::db::Db;
use sha2::Digest as _;
use sqlx::AnyPool;

use crate::support::gateway::postgres_database_url;

/// The shared migration files, (version, SQL), in version order, read as the earlier runner did
/// (it knew no others).
fn migration_files() -> Vec<(i64, String)> {
    read_migrations("migrations")
}

/// What sqlx's migrator applies to the database at `url`: the shared files, and on PostgreSQL
/// its own (`migrations/postgres/`) too, in version order.
fn applied_migration_files(url: &str) -> Vec<(i64, String)> {
    let mut files = migration_files();
    if !url.starts_with("sqlite:") {
        files.extend(read_migrations("migrations/postgres"));
    }
    files.sort_by_key(|(version, _)| *version);
    files
}

/// The `NNNN_*.sql` files of one folder of the crate, (version, SQL), in version order.
fn read_migrations(folder: &str) -> Vec<(i64, String)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(folder);
    let mut files: Vec<(i64, String)> = std::fs::read_dir(&dir)
        .expect("migrations directory")
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.is_file())
        .map(|path| {
            let name = path.file_name().expect("file name").to_string_lossy();
            let version = name
                .split('_')
                .next()
                .and_then(|digits| digits.parse().ok())
                .expect("NNNN_ file name");
            (
                version,
                std::fs::read_to_string(&path).expect("read migration"),
            )
        })
        .collect();
    files.sort_by_key(|(version, _)| *version);
    files
}

/// The earlier runner's statement split: on every `;`, comment lines dropped.
fn old_split(sql: &str) -> Vec<String> {
    sql.split(';')
        .map(|statement| {
            statement
                .lines()
                .filter(|line| !line.trim_start().starts_with("--"))
                .collect::<Vec<_>>()
                .join("\n")
        })
        .filter(|statement| !statement.trim().is_empty())
        .collect()
}

fn sqlite_url() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("mxhook.db").display());
    (dir, url)
}

async fn pool(url: &str) -> AnyPool {
    sqlx::any::install_default_drivers();
    let url = if url.starts_with("sqlite:") {
        format!("{url}?mode=rwc")
    } else {
        url.to_owned()
    };
    AnyPool::connect(&url).await.expect("open database")
}

async fn node(url: &str) -> Db {
    Db::connect(&DatabaseConfig {
        url: url.to_owned(),
        ..DatabaseConfig::default()
    })
    .await
    .expect("connect")
}

/// Migrates `url` as the runner before sqlx's did: each file split into statements, in a
/// transaction, recorded in `mxhook_migrations`.
async fn migrate_with_old_runner(url: &str) {
    let pool = pool(url).await;
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS mxhook_migrations \
         (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
    )
    .execute(&pool)
    .await
    .expect("create mxhook_migrations");
    for (version, sql) in migration_files() {
        let mut tx = pool.begin().await.expect("begin");
        for statement in old_split(&sql) {
            sqlx::query(&statement)
                .execute(&mut *tx)
                .await
                .unwrap_or_else(|err| panic!("migration {version}: {err}"));
        }
        sqlx::query("INSERT INTO mxhook_migrations (version, applied_at) VALUES ($1, $2)")
            .bind(version)
            .bind(1_700_000_000_000_i64)
            .execute(&mut *tx)
            .await
            .expect("record migration");
        tx.commit().await.expect("commit");
    }
    pool.close().await;
}

/// Tables, columns, indexes and constraints, less the migration bookkeeping tables.
async fn schema(url: &str) -> Vec<String> {
    let pool = pool(url).await;
    let queries: &[&str] = if url.starts_with("sqlite:") {
        &[
            "SELECT type || ' ' || name || ' ' || COALESCE(sql, '') FROM sqlite_master \
           WHERE tbl_name NOT IN ('mxhook_migrations', '_sqlx_migrations') ORDER BY name",
        ]
    } else {
        &[
            "SELECT concat_ws(' ', table_name, column_name, data_type, column_default, \
             is_nullable)::text FROM information_schema.columns \
             WHERE table_schema = current_schema() \
             AND table_name NOT IN ('mxhook_migrations', '_sqlx_migrations') \
             ORDER BY table_name, column_name",
            "SELECT (indexname || ' ' || indexdef)::text FROM pg_indexes \
             WHERE schemaname = current_schema() \
             AND tablename NOT IN ('mxhook_migrations', '_sqlx_migrations') ORDER BY indexname",
            "SELECT pg_get_constraintdef(c.oid)::text FROM pg_constraint c \
             JOIN pg_class t ON t.oid = c.conrelid JOIN pg_namespace n ON n.oid = t.relnamespace \
             WHERE n.nspname = current_schema() \
             AND t.relname NOT IN ('mxhook_migrations', '_sqlx_migrations') \
             ORDER BY t.relname, c.conname",
        ]
    };
    let mut lines = Vec::new();
    for query in queries {
        let rows: Vec<String> = sqlx::query_scalar(query)
            .fetch_all(&pool)
            .await
            .expect("read schema");
        lines.extend(rows);
    }
    pool.close().await;
    lines
}

/// Every migration file for this database is listed in `_sqlx_migrations` as applied, with
/// sqlx's checksum.
async fn assert_recorded_by_sqlx(url: &str) {
    let pool = pool(url).await;
    let rows: Vec<(i64, Vec<u8>)> = sqlx::query_as(
        "SELECT version, checksum FROM _sqlx_migrations WHERE success = TRUE ORDER BY version",
    )
    .fetch_all(&pool)
    .await
    .expect("read _sqlx_migrations");
    let expected: Vec<(i64, Vec<u8>)> = applied_migration_files(url)
        .into_iter()
        .map(|(version, sql)| (version, sha2::Sha384::digest(sql.as_bytes()).to_vec()))
        .collect();
    assert_eq!(rows, expected);
    pool.close().await;
}

async fn fresh_database_gets_the_old_runners_schema(new: &str, old: &str) {
    node(new).await.migrate().await.expect("migrate");
    migrate_with_old_runner(old).await;
    let schema_new = schema(new).await;
    assert!(schema_new.len() > 20, "{schema_new:?}");
    assert_eq!(schema_new, schema(old).await);
    assert_recorded_by_sqlx(new).await;
}

#[tokio::test]
async fn a_fresh_sqlite_database_gets_the_old_runners_schema() {
    let (_new_dir, new) = sqlite_url();
    let (_old_dir, old) = sqlite_url();
    fresh_database_gets_the_old_runners_schema(&new, &old).await;
}

#[tokio::test]
async fn a_fresh_postgres_database_gets_the_old_runners_schema() {
    fresh_database_gets_the_old_runners_schema(&postgres_database_url(), &postgres_database_url())
        .await;
}

/// A database the earlier runner migrated, with a row in it, opened by `nodes` nodes at once.
async fn old_runners_database_is_adopted(url: &str, nodes: usize) {
    migrate_with_old_runner(url).await;
    let pool = pool(url).await;
    sqlx::query(
        "INSERT INTO inboxes (id, source, created_at, updated_at) \
         VALUES ('before', 'api', 1, 1)",
    )
    .execute(&pool)
    .await
    .expect("insert a row before the upgrade");
    let before = schema(url).await;

    let mut handles = Vec::new();
    for _ in 0..nodes {
        handles.push(node(url).await);
    }
    let results =
        futures_util::future::join_all(handles.iter().map(|handle| handle.migrate())).await;
    for result in results {
        // A migration run again would fail here (the table or column already exists).
        result.expect("migrate a database of the old runner");
    }
    // A second start finds everything adopted and the checksums the migrator expects.
    handles[0].migrate().await.expect("migrate again");

    assert_recorded_by_sqlx(url).await;
    assert_eq!(schema(url).await, before, "the upgrade changed the schema");
    let inboxes: Vec<String> = sqlx::query_scalar("SELECT id FROM inboxes")
        .fetch_all(&pool)
        .await
        .expect("read inboxes");
    assert_eq!(inboxes, ["before"]);
    // 0009 inserts the counter's one row: run again it would have failed or added one.
    let counters: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM directory_version")
        .fetch_one(&pool)
        .await
        .expect("read directory_version");
    assert_eq!(counters, 1);
    let legacy: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM mxhook_migrations")
        .fetch_one(&pool)
        .await
        .expect("mxhook_migrations is kept");
    assert_eq!(
        legacy,
        i64::try_from(migration_files().len()).expect("count")
    );
    pool.close().await;
}

#[tokio::test]
async fn a_sqlite_database_of_the_old_runner_is_adopted() {
    let (_dir, url) = sqlite_url();
    old_runners_database_is_adopted(&url, 1).await;
}

#[tokio::test]
async fn a_postgres_database_of_the_old_runner_is_adopted_by_two_nodes_at_once() {
    old_runners_database_is_adopted(&postgres_database_url(), 2).await;
}

#[tokio::test]
async fn two_nodes_migrate_a_fresh_postgres_database_at_once() {
    let url = postgres_database_url();
    let (a, b) = (node(&url).await, node(&url).await);
    let (first, second) = tokio::join!(a.migrate(), b.migrate());
    first.expect("first node migrates");
    second.expect("second node migrates");
    assert_recorded_by_sqlx(&url).await;
}

/// The columns holding LZ4 the gateway compressed are stored without PostgreSQL's own attempt
/// at compressing them (`e`: EXTERNAL), on a fresh database and on one the old runner made.
#[tokio::test]
async fn postgres_stores_the_gateways_compressed_columns_as_they_are() {
    let fresh = postgres_database_url();
    node(&fresh).await.migrate().await.expect("migrate");
    let upgraded = postgres_database_url();
    migrate_with_old_runner(&upgraded).await;
    node(&upgraded).await.migrate().await.expect("migrate");
    for url in [fresh, upgraded] {
        let pool = pool(&url).await;
        let storage: Vec<(String, String, String)> = sqlx::query_as(
            "SELECT c.relname::text, a.attname::text, a.attstorage::text \
             FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = current_schema() AND a.attnum > 0 \
             AND (c.relname, a.attname) IN (('messages', 'event_lz4'), \
             ('delivery_attempts', 'request_body'), ('messages', 'event_json')) \
             ORDER BY 1, 2",
        )
        .fetch_all(&pool)
        .await
        .expect("read column storage");
        let expected = [
            ("delivery_attempts", "request_body", "e"),
            ("messages", "event_json", "x"),
            ("messages", "event_lz4", "e"),
        ]
        .map(|(table, column, storage)| (table.to_owned(), column.to_owned(), storage.to_owned()));
        assert_eq!(storage, expected, "{url}");
        pool.close().await;
    }
}
