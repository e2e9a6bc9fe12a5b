//! The group committer on SQLite: a thread of its own with its own connection, which runs each
//! batch of critical-path writes (see the parent module) as one transaction in one go.
//!
//! Through sqlx every statement is a round trip to the connection's worker thread, and with
//! about five statements per message those hops, each a sleep and a wake-up of two threads, cost
//! more CPU than SQLite itself. Here a batch costs one hop: the thread takes every queued write,
//! runs the same statements as the sqlx path (the constants in `pool`) on cached prepared
//! statements, commits, and answers each writer. The connection has the pool's settings: WAL and
//! `synchronous = FULL`, so a commit is durable when it returns and `250` keeps its meaning.
//! Other writers (the API, the dispatcher's lease returns) use the pool and wait for this
//! connection's lock through `busy_timeout`, as they waited for each other before.

use rusqlite::types::ToSql;
use rusqlite::{Connection, Statement, TransactionBehavior};
use tokio::sync::mpsc;

use super::pool::{
    FINISH_ATTEMPT, INSERT_ATTEMPT, INSERT_DELIVERY, INSERT_FINGERPRINT, INSERT_MESSAGE,
    PRUNE_FINGERPRINTS, REFRESH_FINGERPRINT, REPLACE_FINGERPRINT, claim_sql, count_sql, job_after,
    levels_in_order, unique_buckets, warn_attempt_not_recorded, with_duplicate_flag,
};
use super::{Claim, Reply, Request, Write, answer_batch, fill_batch};
use crate::db::limits::{FingerprintPrune, levels_sql};
use crate::db::messages::compress_event;
use crate::db::{AttemptRecord, Backend, Error, NewFingerprint, NewMessage, header_text};

/// Prepared statements kept per connection: the fixed ones, plus claims and counts of each shape.
const STATEMENT_CACHE: usize = 64;

/// Opens the writer's connection and starts its thread, which ends when every sender of
/// `requests` is dropped.
///
/// # Errors
/// [`Error::Sqlite`] when the database cannot be opened.
pub(super) fn start(
    path: &str,
    requests: mpsc::Receiver<Request>,
    fingerprint_prune: std::sync::Arc<FingerprintPrune>,
) -> Result<(), Error> {
    let conn = Connection::open(path)?;
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; \
         PRAGMA busy_timeout = 10000; PRAGMA foreign_keys = ON;",
    )?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    std::thread::Builder::new()
        .name("mxhook-sqlite-commit".to_owned())
        .spawn(move || run(conn, requests, &fingerprint_prune))
        .map_err(|err| Error::Corrupt(format!("starting the SQLite committer: {err}")))?;
    Ok(())
}

fn run(
    mut conn: Connection,
    mut requests: mpsc::Receiver<Request>,
    fingerprint_prune: &FingerprintPrune,
) {
    let mut synchronous = Synchronous::Full;
    while let Some(first) = requests.blocking_recv() {
        let batch = fill_batch(first, &mut requests);
        // Reads are answered first, outside the transaction: they wait for no commit.
        let (reads, batch): (Vec<Request>, Vec<Request>) = batch
            .into_iter()
            .partition(|request| matches!(request.write, Write::ReadLevels(_)));
        for request in reads {
            if let Write::ReadLevels(buckets) = &request.write {
                let _ = request
                    .done
                    .send(read_levels(&conn, buckets).map(Reply::Buckets));
            }
        }
        if batch.is_empty() {
            continue;
        }
        let writes: Vec<&Write> = batch.iter().map(|request| &request.write).collect();
        // Only an accepted message needs its commit on disk before the reply. A lost attempt
        // record means the job is sent again, a lost claim or rate count means nothing after
        // the crash that lost it: those batches skip the WAL sync, and the next full commit
        // syncs their frames along with its own.
        let wanted = if writes.iter().any(|write| write.must_be_durable()) {
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
        let result = write_together(&mut conn, &writes, fingerprint_prune);
        for request in answer_batch(batch, result) {
            let result = write_together(&mut conn, &[&request.write], fingerprint_prune);
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

/// The writes in one transaction: all or none, one reply per write.
fn write_together(
    conn: &mut Connection,
    writes: &[&Write],
    fingerprint_prune: &FingerprintPrune,
) -> Result<Vec<Reply>, Error> {
    // IMMEDIATE takes the write lock at the start (waiting through busy_timeout), so a batch
    // never fails half-way on a lock it could not upgrade.
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut replies = Vec::with_capacity(writes.len());
    for write in writes {
        replies.push(match write {
            Write::Accepted(messages) => {
                Reply::Events(insert_messages(&tx, messages, fingerprint_prune)?)
            }
            Write::Attempt(record) => {
                write_attempt(&tx, record)?;
                Reply::Done
            }
            Write::RateCount { buckets, now } => {
                Reply::Levels(count_in_buckets(&tx, buckets, *now)?)
            }
            Write::Claim(claim) => Reply::Claimed(claim_ids(&tx, claim)?),
            Write::ReadLevels(buckets) => Reply::Buckets(read_levels(&tx, buckets)?),
        });
    }
    tx.commit()?;
    Ok(replies)
}

/// As `pool::insert_messages`.
fn insert_messages(
    conn: &Connection,
    messages: &[NewMessage],
    fingerprint_prune: &FingerprintPrune,
) -> Result<Vec<Option<String>>, Error> {
    let mut changed = Vec::with_capacity(messages.len());
    for message in messages {
        let envelope_to = serde_json::to_string(&message.envelope_to)
            .map_err(|err| Error::Corrupt(err.to_string()))?;
        let mut flagged = None;
        if let Some(fingerprint) = &message.fingerprint {
            let first_seen = record_fingerprint(conn, message, fingerprint)?;
            flagged = with_duplicate_flag(&message.event_json, !first_seen);
            if fingerprint_prune.due(message.received_at) {
                execute(conn, PRUNE_FINGERPRINTS, &[&fingerprint.forget_before])?;
            }
        }
        let event_json = flagged.as_deref().unwrap_or(&message.event_json);
        // Stored compressed (migration 0013): a third of the pages, each written to the WAL
        // and again by the checkpoint.
        let event_lz4 = compress_event(event_json);
        execute(
            conn,
            INSERT_MESSAGE,
            &[
                &message.id,
                &message.inbox_id,
                &message.event_id,
                &message.storage_bucket,
                &message.storage_key,
                &message.size,
                &message.envelope_from,
                &envelope_to,
                &message.remote_ip,
                &message.helo,
                &message.header_message_id.as_deref().map(header_text),
                &message.sender.as_deref().map(header_text),
                &message.subject.as_deref().map(header_text),
                &message.received_at,
                &"",
                &message.thread_id,
                &message.subject_key.as_deref().map(header_text),
                &header_text(&message.participants.join(" ")),
                &i64::from(message.quarantined),
                &event_lz4,
            ],
        )?;
        for delivery in &message.deliveries {
            execute(
                conn,
                INSERT_DELIVERY,
                &[
                    &delivery.id,
                    &message.id,
                    &message.inbox_id,
                    &message.event_id,
                    &delivery.channel,
                    &delivery.endpoint_ref,
                    &delivery.target,
                    &message.received_at,
                    &message.thread_id,
                    &i64::from(delivery.ordered),
                    &delivery.lease.as_ref().map(|lease| lease.until),
                    &delivery.lease.as_ref().map(|lease| lease.node.as_str()),
                ],
            )?;
        }
        changed.push(flagged);
    }
    Ok(changed)
}

/// As `pool::record_fingerprint`.
fn record_fingerprint(
    conn: &Connection,
    message: &NewMessage,
    fingerprint: &NewFingerprint,
) -> Result<bool, Error> {
    let inserted: Option<String> = query_first(
        conn,
        INSERT_FINGERPRINT,
        &[
            &message.inbox_id,
            &fingerprint.fingerprint,
            &message.id,
            &message.received_at,
        ],
    )?;
    if inserted.is_some() {
        return Ok(true);
    }
    let replaced: Option<String> = query_first(
        conn,
        REPLACE_FINGERPRINT,
        &[
            &message.id,
            &message.received_at,
            &message.inbox_id,
            &fingerprint.fingerprint,
            &fingerprint.forget_before,
        ],
    )?;
    if replaced.is_some() {
        return Ok(true);
    }
    execute(
        conn,
        REFRESH_FINGERPRINT,
        &[
            &message.received_at,
            &message.inbox_id,
            &fingerprint.fingerprint,
        ],
    )?;
    Ok(false)
}

/// As `pool::write_attempt`.
fn write_attempt(conn: &Connection, record: &AttemptRecord) -> Result<(), Error> {
    let now = crate::model::now_ms();
    let (status, next_attempt_at, failed, delivered_at) = job_after(record.next, now);
    let attempt: Option<i64> = query_first(
        conn,
        FINISH_ATTEMPT,
        &[
            &status.as_str(),
            &next_attempt_at,
            &failed,
            &delivered_at,
            &record.status_code.map(i64::from),
            &record.error,
            &now,
            &record.delivery_id,
            &record.worker,
        ],
    )?;
    let Some(attempt) = attempt else {
        warn_attempt_not_recorded(record);
        return Ok(());
    };
    execute(
        conn,
        INSERT_ATTEMPT,
        &[
            &crate::model::new_id("att"),
            &record.delivery_id,
            &attempt,
            &record.started_at,
            &record.latency_ms,
            &record.status_code.map(i64::from),
            &record.outcome,
            &record.error,
            &record.response_excerpt,
        ],
    )?;
    Ok(())
}

/// As `pool::count_in_buckets`.
fn count_in_buckets(
    conn: &Connection,
    buckets: &[(String, f64)],
    now: i64,
) -> Result<Vec<i64>, Error> {
    let unique = unique_buckets(buckets);
    if unique.is_empty() {
        return Ok(Vec::new());
    }
    let mut values: Vec<&dyn ToSql> = vec![&now];
    for (bucket, drain_per_ms) in unique {
        values.push(bucket);
        values.push(drain_per_ms);
    }
    let mut statement = conn.prepare_cached(&count_sql(values.len() / 2))?;
    bind_numbered(&mut statement, &values)?;
    let mut counted = Vec::with_capacity(buckets.len());
    let mut rows = statement.raw_query();
    while let Some(row) = rows.next()? {
        counted.push((row.get(0)?, row.get(1)?));
    }
    levels_in_order(buckets, &counted)
}

/// As `Db::rate_buckets`.
fn read_levels(conn: &Connection, buckets: &[String]) -> Result<Vec<(String, i64, i64)>, Error> {
    if buckets.is_empty() {
        return Ok(Vec::new());
    }
    let values: Vec<&dyn ToSql> = buckets.iter().map(|bucket| bucket as &dyn ToSql).collect();
    let mut statement = conn.prepare_cached(&levels_sql(buckets.len()))?;
    bind_numbered(&mut statement, &values)?;
    let mut levels = Vec::with_capacity(buckets.len());
    let mut rows = statement.raw_query();
    while let Some(row) = rows.next()? {
        levels.push((row.get(0)?, row.get(1)?, row.get(2)?));
    }
    Ok(levels)
}

/// As `pool::claim_ids`.
fn claim_ids(conn: &Connection, claim: &Claim) -> Result<Vec<String>, Error> {
    let mut values: Vec<&dyn ToSql> = vec![&claim.lease_until, &claim.worker, &claim.now];
    for endpoint in &claim.skip {
        values.push(&endpoint.inbox_id);
        values.push(&endpoint.endpoint_ref);
        values.push(&endpoint.channel);
    }
    values.push(&claim.limit);
    let mut statement = conn.prepare_cached(&claim_sql(Backend::Sqlite, claim))?;
    bind_numbered(&mut statement, &values)?;
    let mut ids = Vec::new();
    let mut rows = statement.raw_query();
    while let Some(row) = rows.next()? {
        ids.push(row.get(0)?);
    }
    Ok(ids)
}

/// Binds `values[n - 1]` to each `$n` of a statement. SQLite numbers parameters in order of
/// first appearance, whatever their names say, so they are matched by name, as sqlx does.
fn bind_numbered(statement: &mut Statement<'_>, values: &[&dyn ToSql]) -> Result<(), Error> {
    for index in 1..=statement.parameter_count() {
        let value = statement
            .parameter_name(index)
            .and_then(|name| name.strip_prefix('$'))
            .and_then(|number| number.parse::<usize>().ok())
            .and_then(|number| number.checked_sub(1))
            .and_then(|number| values.get(number))
            .ok_or_else(|| Error::Corrupt(format!("statement parameter {index} has no value")))?;
        statement.raw_bind_parameter(index, value)?;
    }
    Ok(())
}

/// Runs a statement that returns no rows.
fn execute(conn: &Connection, sql: &str, values: &[&dyn ToSql]) -> Result<(), Error> {
    let mut statement = conn.prepare_cached(sql)?;
    bind_numbered(&mut statement, values)?;
    statement.raw_execute()?;
    Ok(())
}

/// The first column of the first row a statement returns, if any.
fn query_first<T: rusqlite::types::FromSql>(
    conn: &Connection,
    sql: &str,
    values: &[&dyn ToSql],
) -> Result<Option<T>, Error> {
    let mut statement = conn.prepare_cached(sql)?;
    bind_numbered(&mut statement, values)?;
    let mut rows = statement.raw_query();
    match rows.next()? {
        Some(row) => Ok(Some(row.get(0)?)),
        None => Ok(None),
    }
}
