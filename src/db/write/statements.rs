//! The critical-path writes, each statement sequence once: an accepted message with its
//! fingerprint and delivery jobs, an attempt with its job's next state, a rate-limit count, a
//! claim of due jobs, and the read of rate-limit levels. Each runs on an [`Exec`], in a
//! transaction its committer opened: the pooled sqlx one (either backend) or the SQLite
//! committer thread's. `$n` are numbered in order of first use, which is also SQLite's binding
//! order.

use super::Claim;
use super::exec::{Exec, args};
use crate::db::jobs::{INSERT_RAISED_DELIVERY, NOT_BLOCKED, not_to};
use crate::db::limits::FingerprintPrune;
use crate::db::messages::compress_event;
use crate::db::{
    AttemptRecord, Backend, Error, JobUpdate, NewFingerprint, NewMessage, RaisedEvent, header_text,
    placeholders,
};
use crate::model::{DeliveryStatus, now_ms};

/// The insert of a message, with its place in its inbox's event stream (migration 0021) as
/// the last value.
macro_rules! insert_message {
    ($stream_seq:literal) => {
        concat!(
            "INSERT INTO messages (id, inbox_id, event_id, storage_bucket, \
            storage_key, size, envelope_from, envelope_to, remote_ip, helo, header_message_id, \
            sender, subject, received_at, event_json, thread_id, subject_key, participants, \
            quarantined, event_lz4, direction, stream_seq) \
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, \
            $18, $19, $20, $21, ",
            $stream_seq,
            ")"
        )
    };
}

/// SQLite writes one transaction at a time, so the inbox's next number is commit order.
const INSERT_MESSAGE_SQLITE: &str =
    insert_message!("(SELECT COALESCE(MAX(stream_seq), 0) + 1 FROM messages WHERE inbox_id = $2)");

/// PostgreSQL: the transaction's id, which readers take only once every transaction below it
/// has ended (see `db::stream`).
const INSERT_MESSAGE_POSTGRES: &str = insert_message!("txid_current()");

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
    started_at, latency_ms, status_code, outcome, error, response_excerpt, request_meta, \
    request_body) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)";

/// Commits accepted messages with their fingerprints and delivery jobs. Returns, per message in
/// order, its event as committed when that differs from the one given (see
/// [`Db::commit_accepted`](crate::db::Db::commit_accepted)).
pub(super) async fn insert_messages(
    exec: &mut impl Exec,
    messages: &[NewMessage],
    fingerprint_prune: &mut FingerprintPrune,
) -> Result<Vec<Option<String>>, Error> {
    let mut changed = Vec::with_capacity(messages.len());
    for message in messages {
        let envelope_to = serde_json::to_string(&message.envelope_to)
            .map_err(|err| Error::Corrupt(err.to_string()))?;
        let mut flagged = None;
        if let Some(fingerprint) = &message.fingerprint {
            let first_seen = record_fingerprint(exec, message, fingerprint).await?;
            // The flag the intake computed came from a lookup that cannot see a copy another
            // node is committing at this moment; the unique index can, so it decides.
            flagged = crate::event::with_duplicate_flag(&message.event_json, !first_seen);
            if fingerprint_prune.due(message.received_at) {
                exec.execute(PRUNE_FINGERPRINTS, &args![fingerprint.forget_before])
                    .await?;
            }
        }
        let event_json = flagged.as_deref().unwrap_or(&message.event_json);
        let event_lz4 = exec.compresses_events().then(|| compress_event(event_json));
        let event_text = if event_lz4.is_some() { "" } else { event_json };
        let header_message_id = message.header_message_id.as_deref().map(header_text);
        let sender = message.sender.as_deref().map(header_text);
        let subject = message.subject.as_deref().map(header_text);
        let subject_key = message.subject_key.as_deref().map(header_text);
        let participants = header_text(&message.participants.join(" "));
        let insert = match exec.backend() {
            Backend::Sqlite => INSERT_MESSAGE_SQLITE,
            Backend::Postgres => INSERT_MESSAGE_POSTGRES,
        };
        exec.execute(
            insert,
            &args![
                &message.id,
                &message.inbox_id,
                &message.event_id,
                &message.storage_bucket,
                &message.storage_key,
                message.size,
                message.envelope_from.as_deref(),
                &envelope_to,
                message.remote_ip.as_deref(),
                &message.helo,
                header_message_id.as_deref(),
                sender.as_deref(),
                subject.as_deref(),
                message.received_at,
                event_text,
                &message.thread_id,
                subject_key.as_deref(),
                &participants,
                i64::from(message.quarantined),
                event_lz4.as_deref(),
                message.direction.as_str(),
            ],
        )
        .await?;
        for delivery in &message.deliveries {
            exec.execute(
                INSERT_DELIVERY,
                &args![
                    &delivery.id,
                    &message.id,
                    &message.inbox_id,
                    &message.event_id,
                    delivery.channel,
                    &delivery.endpoint_ref,
                    &delivery.target,
                    message.received_at,
                    &message.thread_id,
                    i64::from(delivery.ordered),
                    delivery.lease.as_ref().map(|lease| lease.until),
                    delivery.lease.as_ref().map(|lease| lease.node.as_str()),
                ],
            )
            .await?;
        }
        changed.push(flagged);
    }
    Ok(changed)
}

/// Records that `message` reached its inbox with this fingerprint. True when it is the first
/// copy within the duplicate window: the row is new, or the one there fell out of the window.
/// On PostgreSQL a concurrent insert of the same fingerprint waits on the unique index for the
/// other transaction, so of two nodes committing one message at once exactly one sees it first.
async fn record_fingerprint(
    exec: &mut impl Exec,
    message: &NewMessage,
    fingerprint: &NewFingerprint,
) -> Result<bool, Error> {
    let inserted: Option<String> = exec
        .first(
            INSERT_FINGERPRINT,
            &args![
                &message.inbox_id,
                &fingerprint.fingerprint,
                &message.id,
                message.received_at,
            ],
        )
        .await?;
    if inserted.is_some() {
        return Ok(true);
    }
    let replaced: Option<String> = exec
        .first(
            REPLACE_FINGERPRINT,
            &args![
                &message.id,
                message.received_at,
                &message.inbox_id,
                &fingerprint.fingerprint,
                fingerprint.forget_before,
            ],
        )
        .await?;
    if replaced.is_some() {
        return Ok(true);
    }
    // A duplicate: the window runs from the newest copy, as it did with one row per copy.
    exec.execute(
        REFRESH_FINGERPRINT,
        &args![
            message.received_at,
            &message.inbox_id,
            &fingerprint.fingerprint,
        ],
    )
    .await?;
    Ok(false)
}

/// The statement of a claim: `$1` lease until, `$2` worker, `$3` now, then each skipped
/// endpoint's inbox, endpoint ref and channel, then the limit.
fn claim_sql(backend: Backend, claim: &Claim) -> String {
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

/// Leases up to `claim.limit` due jobs; see [`Db::claim_due`](crate::db::Db::claim_due).
pub(super) async fn claim_ids(exec: &mut impl Exec, claim: &Claim) -> Result<Vec<String>, Error> {
    let mut values = Vec::from(args![claim.lease_until, &claim.worker, claim.now]);
    for endpoint in &claim.skip {
        values.extend(args![
            &endpoint.inbox_id,
            &endpoint.endpoint_ref,
            endpoint.channel,
        ]);
    }
    values.extend(args![claim.limit]);
    let sql = claim_sql(exec.backend(), claim);
    let ids: Vec<(String,)> = exec.rows(&sql, &values).await?;
    Ok(ids.into_iter().map(|(id,)| id).collect())
}

/// Adds one message to each bucket, draining it first; see
/// [`Db::add_to_rate_buckets`](crate::db::Db::add_to_rate_buckets). One statement for all of a
/// message's buckets, each draining at its own rate.
pub(super) async fn count_in_buckets(
    exec: &mut impl Exec,
    buckets: &[(String, f64)],
    now: i64,
) -> Result<Vec<i64>, Error> {
    let unique = unique_buckets(buckets);
    if unique.is_empty() {
        return Ok(Vec::new());
    }
    let mut values = Vec::from(args![now]);
    for (bucket, drain_per_ms) in &unique {
        values.extend(args![bucket, *drain_per_ms]);
    }
    let counted: Vec<(String, i64)> = exec.rows(&count_sql(unique.len()), &values).await?;
    levels_in_order(buckets, &counted)
}

/// The stored buckets among `buckets`: (bucket, level in thousandths of a message, when it was
/// written); see [`Db::rate_buckets`](crate::db::Db::rate_buckets).
pub(super) async fn read_levels(
    exec: &mut impl Exec,
    buckets: &[impl AsRef<str>],
) -> Result<Vec<(String, i64, i64)>, Error> {
    if buckets.is_empty() {
        return Ok(Vec::new());
    }
    let values: Vec<_> = buckets
        .iter()
        .map(|bucket| super::exec::Arg::from(bucket.as_ref()))
        .collect();
    exec.rows(&levels_sql(buckets.len()), &values).await
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

/// Logs one attempt and moves its job on, releasing the lease.
pub(super) async fn write_attempt(
    exec: &mut impl Exec,
    record: &AttemptRecord,
    raised: Option<&RaisedEvent>,
) -> Result<(), Error> {
    // The write comes first: on SQLite a transaction that reads and then writes fails at
    // once with "database is locked" when another attempt committed in between, and the
    // job would then wait for its lease to run out and be sent again.
    let now = now_ms();
    let (status, next_attempt_at, failed, delivered_at) = job_after(record.next, now);
    // The job's attempt counter numbers the attempt, so no second read is needed.
    let attempt: Option<i64> = exec
        .first(
            FINISH_ATTEMPT,
            &args![
                status.as_str(),
                next_attempt_at,
                failed,
                delivered_at,
                record.status_code.map(i64::from),
                record.error.as_deref(),
                now,
                &record.delivery_id,
                &record.worker,
            ],
        )
        .await?;
    // The delivery is gone (its inbox was deleted), or this node's lease ran out and another
    // node took the job: that node's attempt is the one that counts, so this one must neither
    // finish the job nor spend its retry budget.
    let Some(attempt) = attempt else {
        tracing::warn!(
            delivery = %record.delivery_id,
            node = %record.worker,
            "attempt not recorded: the job is gone or its lease passed to another node"
        );
        return Ok(());
    };
    let attempt_id = crate::model::new_id("att");
    let (request_meta, request_body) = match &record.request {
        Some(request) => {
            let (meta, body) = request.columns();
            (Some(meta), body)
        }
        None => (None, None),
    };
    exec.execute(
        INSERT_ATTEMPT,
        &args![
            &attempt_id,
            &record.delivery_id,
            attempt,
            record.started_at,
            record.latency_ms,
            record.status_code.map(i64::from),
            record.outcome.as_str(),
            record.error.as_deref(),
            record.response_excerpt.as_deref(),
            request_meta.as_deref(),
            request_body,
        ],
    )
    .await?;
    // Raised only by the record that dead-letters, in its transaction: a node killed before
    // the commit leaves neither, and the attempt that dead-letters the job later raises it.
    if status == DeliveryStatus::Dead
        && let Some(raised) = raised
    {
        for delivery in &raised.deliveries {
            exec.execute(
                INSERT_RAISED_DELIVERY,
                &args![
                    &delivery.id,
                    &raised.message_id,
                    &raised.inbox_id,
                    &raised.event_id,
                    delivery.channel,
                    &delivery.endpoint_ref,
                    &delivery.target,
                    now,
                    &raised.event_json,
                ],
            )
            .await?;
        }
    }
    Ok(())
}

/// The read of `count` buckets' stored levels.
fn levels_sql(count: usize) -> String {
    format!(
        "SELECT bucket, level_milli, updated_at FROM rate_buckets WHERE bucket IN ({})",
        placeholders(1, count)
    )
}
