//! The group committer on SQLite: a thread of its own with its own connection, which runs each
//! batch of critical-path writes (see the parent module) as one transaction in one go.
//!
//! Through sqlx every statement is a round trip to the connection's worker thread, and with
//! about five statements per message those hops, each a sleep and a wake-up of two threads, cost
//! more CPU than SQLite itself. Here a batch costs one hop: the thread takes every queued write,
//! runs the same statement sequences as the pooled committer (`statements`, on
//! [`SqliteExec`]: cached prepared statements, each future ready at its first poll), commits,
//! and answers each writer. The connection has the pool's settings: WAL and
//! `synchronous = FULL`, so a commit is durable when it returns and `250` keeps its meaning.
//! Other writers (the API, the dispatcher's lease returns) use the pool and wait for this
//! connection's lock through `busy_timeout`, as they waited for each other before.

use rusqlite::{Connection, TransactionBehavior};
use tokio::sync::mpsc;

use super::exec::{SQLITE_CACHED_ROWS, SqliteExec, ready};
use super::{Request, answer_batch, fill_batch, run_all};
use crate::db::Error;
use crate::db::limits::FingerprintPrune;

/// Prepared statements kept per connection: the fixed ones, claims and counts of each shape,
/// and the batch inserts of each size up to [`SQLITE_CACHED_ROWS`] rows (messages,
/// deliveries, fingerprints, rate counts and reads: about five per size; past that the
/// least recently used are prepared again).
const STATEMENT_CACHE: usize = 64 + 5 * SQLITE_CACHED_ROWS;

/// Opens the writer's connection and starts its thread, which ends when every sender of
/// `requests` is dropped.
///
/// # Errors
/// [`Error::Sqlite`] when the database cannot be opened.
pub(super) fn start(path: &str, requests: mpsc::Receiver<Request>) -> Result<(), Error> {
    let conn = Connection::open(path)?;
    // The pool's connections' settings (see `Db::connect`).
    for pragma in crate::db::SQLITE_PRAGMAS {
        conn.execute_batch(pragma)?;
    }
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    std::thread::Builder::new()
        .name("mxhook-sqlite-commit".to_owned())
        .spawn(move || run(conn, requests))
        .map_err(|err| Error::Corrupt(format!("starting the SQLite committer: {err}")))?;
    Ok(())
}

fn run(mut conn: Connection, mut requests: mpsc::Receiver<Request>) {
    // Owned by the committer: it is the only writer of this database's accepted messages.
    let mut fingerprint_prune = FingerprintPrune::default();
    let mut synchronous = Synchronous::Full;
    while let Some(first) = requests.blocking_recv() {
        let batch = fill_batch(first, &mut requests);
        // Reads are answered first, outside the transaction: they wait for no commit.
        let (reads, mut batch): (Vec<Request>, Vec<Request>) =
            batch.into_iter().partition(Request::is_read);
        if !reads.is_empty() {
            let mut exec = SqliteExec {
                conn: &conn,
                statements: 0,
            };
            ready(async {
                super::answer_reads(&mut exec, reads).await;
                Ok(())
            })
            .unwrap_or_else(|err| tracing::error!(error = %err, "reading rate levels failed"));
        }
        if batch.is_empty() {
            continue;
        }
        // Only an accepted message needs its commit on disk before the reply. A lost attempt
        // record means the job is sent again, a lost claim or rate count means nothing after
        // the crash that lost it: those batches skip the WAL sync, and the next full commit
        // syncs their frames along with its own.
        let wanted = if batch.iter().any(Request::must_be_durable) {
            Synchronous::Full
        } else {
            Synchronous::Normal
        };
        if wanted != synchronous {
            match conn.execute_batch(wanted.pragma()) {
                Ok(()) => synchronous = wanted,
                Err(err) => {
                    tracing::warn!(error = %err, "switching the commit mode failed; committing with full sync");
                    if conn.execute_batch(Synchronous::Full.pragma()).is_ok() {
                        synchronous = Synchronous::Full;
                    }
                }
            }
        }
        let result = commit(&mut conn, &mut batch, &mut fingerprint_prune);
        for mut request in answer_batch(batch, result) {
            let alone = std::slice::from_mut(&mut request);
            let result = commit(&mut conn, alone, &mut fingerprint_prune);
            request.answer_alone(result);
        }
    }
}

/// SQLite's `synchronous` setting of the writer's connection.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Synchronous {
    /// Every commit syncs the WAL: durable when it returns.
    Full,
    /// Commits survive a crash of this process, but not of the machine, until the next sync.
    Normal,
}

impl Synchronous {
    fn pragma(self) -> &'static str {
        match self {
            Self::Full => "PRAGMA synchronous = FULL",
            Self::Normal => "PRAGMA synchronous = NORMAL",
        }
    }
}

/// The requests in one transaction, all or none, in one go on this thread.
fn commit(
    conn: &mut Connection,
    batch: &mut [Request],
    fingerprint_prune: &mut FingerprintPrune,
) -> Result<(), Error> {
    // IMMEDIATE takes the write lock at the start (waiting through busy_timeout), so a batch
    // never fails half-way on a lock it could not upgrade.
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut exec = SqliteExec {
        conn: &tx,
        statements: 0,
    };
    // BEGIN and COMMIT.
    ready(run_all(&mut exec, batch, fingerprint_prune, 2))?;
    tx.commit()?;
    Ok(())
}
