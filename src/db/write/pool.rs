//! The critical-path writes through the sqlx pool, on either backend: one transaction per batch
//! of the group committer (see the parent module), and the statements of each write. The SQLite
//! committer thread (`sqlite`) runs the same statements on its own connection.

use serde_json::Value;
use sqlx::Row;

use super::{Claim, Reply, Write};
use crate::db::header_text;
use crate::db::jobs::{NOT_BLOCKED, not_to};
use crate::db::limits::FingerprintPrune;
use crate::db::{AttemptRecord, Backend, Db, Error, JobUpdate, NewFingerprint, NewMessage};
use crate::model::{DeliveryStatus, now_ms};

/// The statements of the critical-path writes, shared by both ways of committing them (see
/// `write`). `$n` are numbered in order of first use, which is also SQLite's binding order.
pub(super) const INSERT_MESSAGE: &str = "INSERT INTO messages (id, inbox_id, event_id, storage_bucket, \
    storage_key, size, envelope_from, envelope_to, remote_ip, helo, header_message_id, sender, \
    subject, received_at, event_json, thread_id, subject_key, participants, quarantined, \
    event_lz4) \
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, \
    $20)";

pub(super) const INSERT_DELIVERY: &str = "INSERT INTO deliveries (id, message_id, inbox_id, event_id, \
    channel, endpoint_ref, target, status, attempts, failures, next_attempt_at, created_at, \
    updated_at, thread_id, ordered, locked_until, locked_by) \
    VALUES ($1, $2, $3, $4, $5, $6, $7, 'pending', 0, 0, $8, $8, $8, $9, $10, $11, $12)";

pub(super) const INSERT_FINGERPRINT: &str = "INSERT INTO message_fingerprints (inbox_id, fingerprint, \
    message_id, received_at) VALUES ($1, $2, $3, $4) \
    ON CONFLICT (inbox_id, fingerprint) DO NOTHING RETURNING message_id";

pub(super) const REPLACE_FINGERPRINT: &str = "UPDATE message_fingerprints SET message_id = $1, \
    received_at = $2 WHERE inbox_id = $3 AND fingerprint = $4 AND received_at < $5 \
    RETURNING message_id";

pub(super) const REFRESH_FINGERPRINT: &str = "UPDATE message_fingerprints SET received_at = $1 \
    WHERE inbox_id = $2 AND fingerprint = $3 AND received_at < $1";

pub(super) const PRUNE_FINGERPRINTS: &str =
    "DELETE FROM message_fingerprints WHERE received_at < $1";

pub(super) const FINISH_ATTEMPT: &str = "UPDATE deliveries SET status = $1, next_attempt_at = $2, \
    attempts = attempts + 1, failures = failures + $3, delivered_at = $4, \
    last_status_code = $5, last_error = $6, locked_until = NULL, locked_by = NULL, \
    updated_at = $7 WHERE id = $8 AND locked_by = $9 RETURNING attempts";

pub(super) const INSERT_ATTEMPT: &str = "INSERT INTO delivery_attempts (id, delivery_id, attempt, \
    started_at, latency_ms, status_code, outcome, error, response_excerpt) \
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)";

impl Db {
    /// Commits writes of the group committer in one transaction: all or none. One reply per
    /// write, in order.
    pub(super) async fn write_together(&self, writes: &[&Write]) -> Result<Vec<Reply>, Error> {
        let mut tx = self.pool.begin().await?;
        // As on SQLite (see `sqlite`): only accepted messages wait for the WAL flush.
        if self.backend == Backend::Postgres && !writes.iter().any(|write| write.must_be_durable())
        {
            sqlx::query("SET LOCAL synchronous_commit = off")
                .execute(&mut *tx)
                .await?;
        }
        let mut replies = Vec::with_capacity(writes.len());
        for write in writes {
            replies.push(match write {
                Write::Accepted(messages) => Reply::Events(
                    insert_messages(&mut tx, messages, &self.fingerprint_prune).await?,
                ),
                Write::Attempt(record) => {
                    write_attempt(&mut tx, record).await?;
                    Reply::Done
                }
                Write::RateCount { buckets, now } => {
                    Reply::Levels(count_in_buckets(&mut tx, buckets, *now).await?)
                }
                Write::Claim(claim) => {
                    Reply::Claimed(claim_ids(&mut tx, self.backend, claim).await?)
                }
                Write::ReadLevels(_) => {
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

/// Returns the events the duplicate flag changed, see [`Db::commit_accepted`].
async fn insert_messages(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    messages: &[NewMessage],
    fingerprint_prune: &FingerprintPrune,
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
                if fingerprint_prune.due(message.received_at) {
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
pub(super) fn with_duplicate_flag(event_json: &str, duplicate: bool) -> Option<String> {
    // Events are compact JSON, where a quote inside a string is escaped: without the opposite
    // flag's text no key can hold it, and the parse (of a payload up to megabytes) is skipped.
    if !event_json.contains(&format!("\"is_duplicate\":{}", !duplicate)) {
        return None;
    }
    match serde_json::from_str::<Value>(event_json) {
        Ok(Value::Object(mut event)) => {
            event.insert("is_duplicate".to_owned(), Value::Bool(duplicate));
            Some(Value::Object(event).to_string())
        }
        _ => None,
    }
}

/// The statement of a claim: `$1` lease until, `$2` worker, `$3` now, then each skipped
/// endpoint's inbox, endpoint ref and channel, then the limit.
pub(super) fn claim_sql(backend: Backend, claim: &Claim) -> String {
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
    claim: &Claim,
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

/// The buckets once each: one statement may not update a row twice (PostgreSQL refuses), so a
/// repeated bucket is counted once.
pub(super) fn unique_buckets(buckets: &[(String, f64)]) -> Vec<&(String, f64)> {
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
pub(super) fn count_sql(count: usize) -> String {
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
pub(super) fn levels_in_order(
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
pub(super) fn job_after(next: JobUpdate, now: i64) -> (DeliveryStatus, i64, i64, Option<i64>) {
    match next {
        JobUpdate::Delivered => (DeliveryStatus::Delivered, now, 0, Some(now)),
        JobUpdate::RetryAt(at) => (DeliveryStatus::Pending, at, 1, None),
        JobUpdate::Dead => (DeliveryStatus::Dead, now, 1, None),
    }
}

pub(super) fn warn_attempt_not_recorded(record: &AttemptRecord) {
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
