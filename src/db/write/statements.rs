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

/// The columns of `messages` one accepted message writes, one `$n` each.
const MESSAGE_COLUMNS: &str = "INSERT INTO messages (id, inbox_id, event_id, storage_bucket, \
    storage_key, size, envelope_from, envelope_to, remote_ip, helo, header_message_id, sender, \
    subject, received_at, event_json, thread_id, subject_key, participants, quarantined, \
    event_lz4, direction, attachment_parts, stream_seq) VALUES ";
const MESSAGE_PARAMS: usize = 22;

/// A delivery's row: `$8` (the message's receipt) is its due, creation and update time.
const DELIVERY_COLUMNS: &str = "INSERT INTO deliveries (id, message_id, inbox_id, event_id, \
    channel, endpoint_ref, target, status, attempts, failures, next_attempt_at, created_at, \
    updated_at, thread_id, ordered, locked_until, locked_by) VALUES ";
const DELIVERY_PARAMS: usize = 12;

const FINGERPRINT_COLUMNS: &str = "INSERT INTO message_fingerprints (inbox_id, fingerprint, \
    message_id, received_at) VALUES ";
const FINGERPRINT_PARAMS: usize = 4;
const FINGERPRINT_CONFLICT: &str =
    " ON CONFLICT (inbox_id, fingerprint) DO NOTHING RETURNING message_id";

/// Parameters one multi-row statement binds at most: under SQLite's limit (32766 in the bundled
/// library) and PostgreSQL's (65535), so a batch of any size splits into statements that fit.
const MAX_PARAMS: usize = 30_000;

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
///
/// Each table gets one multi-row statement for the whole batch (more only past
/// [`MAX_PARAMS`]), so on PostgreSQL a batch costs a few round trips however many messages it
/// holds; only a fingerprint already there costs statements of its own.
pub(super) async fn insert_messages(
    exec: &mut impl Exec,
    messages: &[&NewMessage],
    fingerprint_prune: &mut FingerprintPrune,
) -> Result<Vec<Option<String>>, Error> {
    let first_seen = record_fingerprints(exec, messages).await?;
    let mut prune_before = None;
    for message in messages {
        if let Some(fingerprint) = &message.fingerprint
            && fingerprint_prune.due(message.received_at)
        {
            prune_before = Some(fingerprint.forget_before);
        }
    }
    if let Some(forget_before) = prune_before {
        exec.execute(PRUNE_FINGERPRINTS, &args![forget_before])
            .await?;
    }
    let mut changed = Vec::with_capacity(messages.len());
    let mut rows = Vec::with_capacity(messages.len());
    for (message, first_seen) in messages.iter().zip(first_seen) {
        // The flag the intake computed came from a lookup that cannot see a copy another
        // node is committing at this moment; the unique index can, so it decides.
        let flagged = match first_seen {
            Some(first_seen) => crate::event::with_duplicate_flag(&message.event_json, !first_seen),
            None => None,
        };
        rows.push(MessageColumns::new(
            message,
            flagged.as_deref(),
            exec.compresses_events(),
        )?);
        changed.push(flagged);
    }
    let deliveries: Vec<(&NewMessage, &crate::db::NewDelivery)> = messages
        .iter()
        .flat_map(|message| {
            message
                .deliveries
                .iter()
                .map(move |delivery| (*message, delivery))
        })
        .collect();
    let message_chunks: Vec<&[MessageColumns<'_>]> =
        rows.chunks(MAX_PARAMS / MESSAGE_PARAMS).collect();
    let delivery_chunks: Vec<&[(&NewMessage, &crate::db::NewDelivery)]> =
        deliveries.chunks(MAX_PARAMS / DELIVERY_PARAMS).collect();
    // PostgreSQL runs an INSERT inside WITH as part of the statement, and checks the
    // deliveries' foreign key at its end: messages and their jobs cost one round trip.
    // SQLite has no writes inside WITH.
    if exec.backend() == Backend::Postgres
        && let ([messages], [deliveries]) = (&message_chunks[..], &delivery_chunks[..])
        && messages.len() * MESSAGE_PARAMS + deliveries.len() * DELIVERY_PARAMS <= MAX_PARAMS
    {
        let (message_sql, mut values) = message_statement(messages, 1, exec.backend());
        let (delivery_sql, delivery_values) = delivery_statement(deliveries, values.len() + 1);
        values.extend(delivery_values);
        let sql = format!("WITH inserted_messages AS ({message_sql}) {delivery_sql}");
        exec.execute_sized(&sql, &values, messages.len()).await?;
        return Ok(changed);
    }
    for chunk in message_chunks {
        let (sql, values) = message_statement(chunk, 1, exec.backend());
        exec.execute_sized(&sql, &values, chunk.len()).await?;
    }
    // A lone message's few texts (one per number of deliveries) stay prepared.
    for chunk in delivery_chunks {
        let (sql, values) = delivery_statement(chunk, 1);
        exec.execute_sized(&sql, &values, messages.len()).await?;
    }
    Ok(changed)
}

/// The insert of `rows` into `messages`, its parameters numbered from `first`. Each row's
/// place in its inbox's event stream (migration 0021) is computed by the database, last:
/// on SQLite, which writes one transaction at a time, the inbox's next number (rows of one
/// statement may share it; the stream orders them by id); on PostgreSQL the transaction's
/// id, which readers take only once every transaction below it has ended (see `db::stream`).
fn message_statement<'a>(
    rows: &'a [MessageColumns<'_>],
    first: usize,
    backend: Backend,
) -> (String, Vec<super::exec::Arg<'a>>) {
    let mut values = Vec::with_capacity(rows.len() * MESSAGE_PARAMS);
    for row in rows {
        values.extend(row.args());
    }
    let sql = multi_row(MESSAGE_COLUMNS, rows.len(), first, MESSAGE_PARAMS, |n| {
        let numbers: Vec<String> = (n..n + MESSAGE_PARAMS).map(|n| format!("${n}")).collect();
        let stream_seq = match backend {
            // `$n + 1` is the row's inbox_id.
            Backend::Sqlite => format!(
                "(SELECT COALESCE(MAX(stream_seq), 0) + 1 FROM messages WHERE inbox_id = ${})",
                n + 1
            ),
            Backend::Postgres => "txid_current()".to_owned(),
        };
        format!("{}, {stream_seq}", numbers.join(", "))
    });
    (sql, values)
}

/// The insert of `deliveries` (each with its message) into `deliveries`, its parameters
/// numbered from `first`.
fn delivery_statement<'a>(
    deliveries: &[(&'a NewMessage, &'a crate::db::NewDelivery)],
    first: usize,
) -> (String, Vec<super::exec::Arg<'a>>) {
    let mut values = Vec::with_capacity(deliveries.len() * DELIVERY_PARAMS);
    for (message, delivery) in deliveries {
        values.extend(args![
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
        ]);
    }
    let sql = multi_row(
        DELIVERY_COLUMNS,
        deliveries.len(),
        first,
        DELIVERY_PARAMS,
        |n| {
            format!(
                "${}, ${}, ${}, ${}, ${}, ${}, ${}, 'pending', 0, 0, ${}, ${}, ${}, ${}, ${}, ${}, ${}",
                n,
                n + 1,
                n + 2,
                n + 3,
                n + 4,
                n + 5,
                n + 6,
                n + 7,
                n + 7,
                n + 7,
                n + 8,
                n + 9,
                n + 10,
                n + 11
            )
        },
    );
    (sql, values)
}

/// `head` followed by `count` rows, each `(…)` from `row` given its first parameter's number;
/// the first row's is `first`, and every row binds `per_row` parameters, numbered on from the
/// row before.
fn multi_row(
    head: &str,
    count: usize,
    first: usize,
    per_row: usize,
    row: impl Fn(usize) -> String,
) -> String {
    let rows: Vec<String> = (0..count)
        .map(|i| format!("({})", row(first + i * per_row)))
        .collect();
    format!("{head}{}", rows.join(", "))
}

/// One message's row, its texts prepared as stored.
pub(super) struct MessageColumns<'m> {
    pub(super) message: &'m NewMessage,
    pub(super) envelope_to: String,
    pub(super) event_text: String,
    pub(super) event_lz4: Option<Vec<u8>>,
    pub(super) header_message_id: Option<String>,
    pub(super) sender: Option<String>,
    pub(super) subject: Option<String>,
    pub(super) subject_key: Option<String>,
    pub(super) participants: String,
}

impl<'m> MessageColumns<'m> {
    pub(super) fn new(
        message: &'m NewMessage,
        flagged: Option<&str>,
        compress: bool,
    ) -> Result<Self, Error> {
        let envelope_to = serde_json::to_string(&message.envelope_to)
            .map_err(|err| Error::Corrupt(err.to_string()))?;
        let event_json = flagged.unwrap_or(&message.event_json);
        let event_lz4 = compress.then(|| compress_event(event_json));
        let event_text = if event_lz4.is_some() { "" } else { event_json };
        Ok(Self {
            message,
            envelope_to,
            event_text: event_text.to_owned(),
            event_lz4,
            header_message_id: message.header_message_id.as_deref().map(header_text),
            sender: message.sender.as_deref().map(header_text),
            subject: message.subject.as_deref().map(header_text),
            subject_key: message.subject_key.as_deref().map(header_text),
            participants: header_text(&message.participants.join(" ")),
        })
    }

    fn args(&self) -> [super::exec::Arg<'_>; MESSAGE_PARAMS] {
        let message = self.message;
        args![
            &message.id,
            &message.inbox_id,
            &message.event_id,
            &message.storage_bucket,
            &message.storage_key,
            message.size,
            message.envelope_from.as_deref(),
            &self.envelope_to,
            message.remote_ip.as_deref(),
            &message.helo,
            self.header_message_id.as_deref(),
            self.sender.as_deref(),
            self.subject.as_deref(),
            message.received_at,
            self.event_text.as_str(),
            &message.thread_id,
            self.subject_key.as_deref(),
            &self.participants,
            i64::from(message.quarantined),
            self.event_lz4.as_deref(),
            message.direction.as_str(),
            message.attachment_parts.as_deref(),
        ]
    }
}

/// Records that each message with a fingerprint reached its inbox with it: per message, `None`
/// without a fingerprint, else whether it is the first copy within the duplicate window (the
/// row is new, or the one there fell out of the window).
///
/// All rows go in with one `INSERT … ON CONFLICT DO NOTHING`; a message whose row was not
/// inserted then runs the replace-or-refresh of [`settle_fingerprint`] alone. The rows go in
/// sorted by (inbox, fingerprint), copies of one fingerprint in the batch's order: the first
/// copy is inserted and every later one conflicts with it, as when each message went in alone,
/// and two nodes' batches take the unique index's entries in the same order.
/// On PostgreSQL a concurrent insert of the same fingerprint waits on the unique index for the
/// other transaction, so of two nodes committing one message at once exactly one sees it first.
async fn record_fingerprints(
    exec: &mut impl Exec,
    messages: &[&NewMessage],
) -> Result<Vec<Option<bool>>, Error> {
    let mut first_seen: Vec<Option<bool>> = vec![None; messages.len()];
    let mut order: Vec<(usize, &NewFingerprint)> = messages
        .iter()
        .enumerate()
        .filter_map(|(index, message)| message.fingerprint.as_ref().map(|fp| (index, fp)))
        .collect();
    // Stable: copies of one fingerprint keep the batch's order.
    order.sort_by(|(a, fa), (b, fb)| {
        (messages[*a].inbox_id.as_str(), fa.fingerprint.as_str())
            .cmp(&(messages[*b].inbox_id.as_str(), fb.fingerprint.as_str()))
    });
    for chunk in order.chunks(MAX_PARAMS / FINGERPRINT_PARAMS) {
        let mut values = Vec::with_capacity(chunk.len() * FINGERPRINT_PARAMS);
        for (index, fingerprint) in chunk {
            let message = messages[*index];
            values.extend(args![
                &message.inbox_id,
                &fingerprint.fingerprint,
                &message.id,
                message.received_at,
            ]);
        }
        let mut sql = multi_row(
            FINGERPRINT_COLUMNS,
            chunk.len(),
            1,
            FINGERPRINT_PARAMS,
            |n| format!("${}, ${}, ${}, ${}", n, n + 1, n + 2, n + 3),
        );
        sql.push_str(FINGERPRINT_CONFLICT);
        let inserted: Vec<(String,)> = exec.rows_sized(&sql, &values, chunk.len()).await?;
        let inserted: std::collections::HashSet<&str> =
            inserted.iter().map(|(id,)| id.as_str()).collect();
        for (index, _) in chunk {
            if inserted.contains(messages[*index].id.as_str()) {
                first_seen[*index] = Some(true);
            }
        }
    }
    for (index, fingerprint) in &order {
        if first_seen[*index].is_none() {
            let first = settle_fingerprint(exec, messages[*index], fingerprint).await?;
            first_seen[*index] = Some(first);
        }
    }
    Ok(first_seen)
}

/// A message whose fingerprint row was there already: it is the first copy when that row fell
/// out of the window (the row becomes this message's), else a duplicate.
async fn settle_fingerprint(
    exec: &mut impl Exec,
    message: &NewMessage,
    fingerprint: &NewFingerprint,
) -> Result<bool, Error> {
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
/// endpoint's inbox, endpoint ref and channel, then the limit. It returns `returning` (columns
/// of `deliveries`).
pub(in crate::db) fn claim_sql(backend: Backend, claim: &Claim, returning: &str) -> String {
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
         RETURNING {returning}"
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
    let sql = claim_sql(exec.backend(), claim, "id");
    let ids: Vec<(String,)> = exec.rows(&sql, &values).await?;
    Ok(ids.into_iter().map(|(id,)| id).collect())
}

/// Adds one message to each bucket of each count, draining it first; see
/// [`Db::add_to_rate_buckets`](crate::db::Db::add_to_rate_buckets). Returns each count's new
/// levels, in order.
///
/// One statement for every count of a group commit, each bucket draining at its own rate: a
/// bucket several counts share gets all of them at once (one statement may not update a row
/// twice; PostgreSQL refuses), drained up to the latest count's time. Each count's level is
/// the one it would have read alone, in order: the bucket's new level less the counts after
/// it. That leaves out only what the bucket drains between counts of one batch, a few
/// milliseconds' worth, which can only make a level read higher: the limits never loosen.
pub(super) async fn count_in_buckets(
    exec: &mut impl Exec,
    counts: &[&super::RateCount],
) -> Result<Vec<Vec<i64>>, Error> {
    let (now, merged) = merge_counts(counts);
    if merged.is_empty() {
        return Ok(counts.iter().map(|_| Vec::new()).collect());
    }
    let mut values = Vec::from(args![now]);
    for (bucket, drain_per_ms, n) in &merged {
        values.extend(args![*bucket, *drain_per_ms, *n]);
    }
    let counted: Vec<(String, i64)> = exec
        .rows_sized(&count_sql(merged.len()), &values, counts.len())
        .await?;
    levels_of_counts(counts, &counted)
}

/// The counts of a batch merged per bucket: the latest count's time, and (bucket, drain per
/// ms, what the counts add in thousandths of a message), sorted by name. Two nodes'
/// transactions counting into shared buckets then lock them in one order, so neither waits for
/// a row the other holds while holding one it wants.
pub(super) fn merge_counts<'c>(counts: &[&'c super::RateCount]) -> (i64, Vec<(&'c str, f64, i64)>) {
    let mut merged: Vec<(&str, f64, i64)> = Vec::new();
    let mut now = i64::MIN;
    for count in counts {
        now = now.max(count.now);
        for (bucket, drain_per_ms) in unique_buckets(&count.buckets) {
            match merged
                .iter_mut()
                .find(|(name, _, _)| *name == bucket.as_str())
            {
                Some((_, _, n)) => *n += 1000,
                None => merged.push((bucket, *drain_per_ms, 1000)),
            }
        }
    }
    merged.sort_unstable_by(|a, b| a.0.cmp(b.0));
    (now, merged)
}

/// Each count's levels from the buckets' new levels (`counted`, matched by name).
pub(super) fn levels_of_counts(
    counts: &[&super::RateCount],
    counted: &[(String, i64)],
) -> Result<Vec<Vec<i64>>, Error> {
    // Walked from the last count back: each count's level is the bucket's level less what
    // the counts after it added.
    let mut after: Vec<(&str, i64)> = counted
        .iter()
        .map(|(name, level)| (name.as_str(), *level))
        .collect();
    let mut levels = Vec::with_capacity(counts.len());
    for count in counts.iter().rev() {
        let mine = levels_in_order(&count.buckets, &after)?;
        for (bucket, _) in unique_buckets(&count.buckets) {
            if let Some((_, level)) = after.iter_mut().find(|(name, _)| *name == bucket.as_str()) {
                *level -= 1000;
            }
        }
        levels.push(mine);
    }
    levels.reverse();
    Ok(levels)
}

/// The stored buckets among `buckets`: (bucket, level in thousandths of a message, when it was
/// written); see [`Db::rate_buckets`](crate::db::Db::rate_buckets). `reads`: how many
/// sessions' reads these buckets answer together; only a lone read's texts stay prepared.
pub(super) async fn read_levels(
    exec: &mut impl Exec,
    buckets: &[impl AsRef<str>],
    reads: usize,
) -> Result<Vec<(String, i64, i64)>, Error> {
    if buckets.is_empty() {
        return Ok(Vec::new());
    }
    let values: Vec<_> = buckets
        .iter()
        .map(|bucket| super::exec::Arg::from(bucket.as_ref()))
        .collect();
    exec.rows_sized(&levels_sql(buckets.len()), &values, reads)
        .await
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

/// The counting statement for `count` buckets: `$1` is the time, then each bucket's name,
/// drain per millisecond and what it adds (in thousandths of a message).
fn count_sql(count: usize) -> String {
    let rows: Vec<String> = (0..count)
        .map(|i| format!("(${}, ${}, $1)", 2 + 3 * i, 4 + 3 * i))
        .collect();
    let drains: String = (0..count)
        .map(|i| format!(" WHEN ${} THEN ${}", 2 + 3 * i, 3 + 3 * i))
        .collect();
    let drained = format!(
        "CAST(($1 - rate_buckets.updated_at) * CASE rate_buckets.bucket{drains} END AS BIGINT)"
    );
    format!(
        "INSERT INTO rate_buckets (bucket, level_milli, updated_at) VALUES {} \
         ON CONFLICT (bucket) DO UPDATE SET \
         level_milli = excluded.level_milli + CASE \
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
fn levels_in_order(buckets: &[(String, f64)], counted: &[(&str, i64)]) -> Result<Vec<i64>, Error> {
    buckets
        .iter()
        .map(|(bucket, _)| {
            counted
                .iter()
                .find(|(name, _)| *name == bucket.as_str())
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

/// Logs attempts and moves their jobs on, releasing their leases; see
/// [`Db::record_attempt_raising`](crate::db::Db::record_attempt_raising).
///
/// On PostgreSQL every record of a group commit goes in one statement: an `UPDATE … FROM
/// (VALUES …)` of the jobs inside `WITH`, and the `INSERT` of the attempt rows of the jobs it
/// updated, numbered by their new attempt counts; a lone record too, one statement instead of
/// two. A record whose job is gone or whose lease passed to another node updates nothing and
/// so logs nothing, as alone. The jobs a
/// dead-lettering raises (rare) follow in their own statements. SQLite, where a statement is
/// no round trip, writes each record alone.
pub(super) async fn write_attempts(
    exec: &mut impl Exec,
    records: &[(&AttemptRecord, Option<&RaisedEvent>)],
) -> Result<(), Error> {
    let distinct = records
        .iter()
        .map(|(record, _)| record.delivery_id.as_str())
        .collect::<std::collections::HashSet<_>>()
        .len()
        == records.len();
    // One statement may not update a row twice: two records of one job (which a lease rules
    // out) go alone, in order.
    if exec.backend() != Backend::Postgres || !distinct {
        for (record, raised) in records {
            write_attempt_alone(exec, record, *raised).await?;
        }
        return Ok(());
    }
    let now = now_ms();
    let rows: Vec<AttemptColumns<'_>> = records
        .iter()
        .map(|(record, _)| AttemptColumns::new(record, now))
        .collect();
    for chunk in rows.chunks(MAX_PARAMS / ATTEMPT_PARAMS) {
        let mut values = Vec::with_capacity(1 + chunk.len() * ATTEMPT_PARAMS);
        values.extend(args![now]);
        for row in chunk {
            values.extend(row.args());
        }
        let sql = batch_attempt_sql(chunk.len());
        let recorded: Vec<(String,)> = exec.rows_sized(&sql, &values, chunk.len()).await?;
        let recorded: std::collections::HashSet<&str> =
            recorded.iter().map(|(id,)| id.as_str()).collect();
        for row in chunk {
            if !recorded.contains(row.record.delivery_id.as_str()) {
                tracing::warn!(
                    delivery = %row.record.delivery_id,
                    node = %row.record.worker,
                    "attempt not recorded: the job is gone or its lease passed to another node"
                );
            }
        }
        for (record, raised) in records {
            if matches!(record.next, JobUpdate::Dead)
                && recorded.contains(record.delivery_id.as_str())
                && let Some(raised) = raised
            {
                insert_raised(exec, raised, now).await?;
            }
        }
    }
    Ok(())
}

/// Parameters one record binds in [`batch_attempt_sql`].
const ATTEMPT_PARAMS: usize = 15;

/// One attempt record's values, as [`batch_attempt_sql`] binds them.
pub(super) struct AttemptColumns<'r> {
    pub(super) record: &'r AttemptRecord,
    pub(super) attempt_id: String,
    pub(super) status: DeliveryStatus,
    pub(super) next_attempt_at: i64,
    pub(super) failed: i64,
    pub(super) delivered_at: Option<i64>,
    pub(super) request_meta: Option<String>,
    pub(super) request_body: Option<&'r [u8]>,
}

impl<'r> AttemptColumns<'r> {
    pub(super) fn new(record: &'r AttemptRecord, now: i64) -> Self {
        let (status, next_attempt_at, failed, delivered_at) = job_after(record.next, now);
        let (request_meta, request_body) = match &record.request {
            Some(request) => {
                let (meta, body) = request.columns();
                (Some(meta), body)
            }
            None => (None, None),
        };
        Self {
            record,
            attempt_id: crate::model::new_id("att"),
            status,
            next_attempt_at,
            failed,
            delivered_at,
            request_meta,
            request_body,
        }
    }

    fn args(&self) -> [super::exec::Arg<'_>; ATTEMPT_PARAMS] {
        let record = self.record;
        args![
            &record.delivery_id,
            &record.worker,
            self.status.as_str(),
            self.next_attempt_at,
            self.failed,
            self.delivered_at,
            record.status_code.map(i64::from),
            record.error.as_deref(),
            &self.attempt_id,
            record.started_at,
            record.latency_ms,
            record.outcome.as_str(),
            record.response_excerpt.as_deref(),
            self.request_meta.as_deref(),
            self.request_body,
        ]
    }
}

/// The statement of [`write_attempts`] for `count` records on PostgreSQL: `$1` is the time,
/// then each record's [`AttemptColumns::args`]. Returns the ids of the jobs it recorded.
fn batch_attempt_sql(count: usize) -> String {
    let rows = multi_row("", count, 2, ATTEMPT_PARAMS, |n| {
        let numbers: Vec<String> = (n..n + ATTEMPT_PARAMS).map(|n| format!("${n}")).collect();
        numbers.join(", ")
    });
    format!(
        "WITH v (id, worker, status, next_attempt_at, failed, delivered_at, status_code, error, \
         attempt_id, started_at, latency_ms, outcome, response_excerpt, request_meta, \
         request_body) AS (VALUES {rows}), \
         finished AS (UPDATE deliveries d SET status = v.status, \
             next_attempt_at = v.next_attempt_at, attempts = d.attempts + 1, \
             failures = d.failures + v.failed, delivered_at = v.delivered_at, \
             last_status_code = v.status_code, last_error = v.error, locked_until = NULL, \
             locked_by = NULL, updated_at = $1 \
             FROM v WHERE d.id = v.id AND d.locked_by = v.worker RETURNING d.id, d.attempts) \
         INSERT INTO delivery_attempts (id, delivery_id, attempt, started_at, latency_ms, \
             status_code, outcome, error, response_excerpt, request_meta, request_body) \
         SELECT v.attempt_id, v.id, finished.attempts, v.started_at, v.latency_ms, \
             v.status_code, v.outcome, v.error, v.response_excerpt, v.request_meta, \
             v.request_body FROM finished JOIN v ON v.id = finished.id \
         RETURNING delivery_id"
    )
}

/// Logs one attempt and moves its job on, releasing the lease: two statements, and the
/// raised jobs of a dead-lettering.
async fn write_attempt_alone(
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
        insert_raised(exec, raised, now).await?;
    }
    Ok(())
}

/// The jobs of an event a dead-lettering raised.
async fn insert_raised(exec: &mut impl Exec, raised: &RaisedEvent, now: i64) -> Result<(), Error> {
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
    Ok(())
}

/// The read of `count` buckets' stored levels.
fn levels_sql(count: usize) -> String {
    format!(
        "SELECT bucket, level_milli, updated_at FROM rate_buckets WHERE bucket IN ({})",
        placeholders(1, count)
    )
}
