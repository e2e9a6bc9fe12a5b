//! A PostgreSQL batch as one statement. A batch in a transaction is `BEGIN`, a statement per
//! kind of write and `COMMIT`, each a round trip, and each statement's text grows with the
//! batch, so a size not prepared yet costs a second round trip and a plan of its own. Here the
//! batch's rows go in as a few parameters whose text is fixed (JSON arrays read with
//! `json_to_recordset`, and the events' compressed bytes in one `bytea` sliced by offset), and
//! one `WITH` of data-modifying statements writes every kind at once: one round trip, one
//! prepared statement, and no `BEGIN` or `COMMIT`, since one statement is a transaction of its
//! own (all or none, as the committer promises).
//!
//! What the transaction path does in several steps is decided inside the statement:
//! - A fingerprint already there is replaced when it fell out of the window, else refreshed,
//!   by `ON CONFLICT DO UPDATE`; the row comes back with this message's id exactly when the
//!   message is the first copy.
//! - A stored event carries intake's guess of `is_duplicate`, which the fingerprint decides.
//!   The guess is rarely wrong (two copies committed at once), and then the statement fails on
//!   purpose (a division by zero on that row) and the committer writes the batch again in a
//!   transaction, which corrects the event: an event is never written twice to be safe.
//!
//! The rows come from JSON, whose row count the planner cannot know (it assumes 100), and the
//! plan of a prepared statement is kept: a join of the records with `deliveries` was planned
//! as a hash join over a sequential scan of the whole table, every batch. So the records'
//! jobs are found by `id = ANY (…)`, which only an index scan of the primary key answers well
//! at any table size, and each job reads its record by a lookup in the batch's own rows.
//!
//! Batches this statement does not cover go the transaction way: copies of one fingerprint in
//! one batch (`ON CONFLICT DO UPDATE` may not touch a row twice), two records of one job, a
//! record that dead-letters and raises jobs, and the batch that prunes old fingerprints.

use serde::Serialize;

use super::exec::{Exec, args};
use super::statements::{AttemptColumns, MessageColumns, levels_of_counts, merge_counts};
use super::{RateCount, Request};
use crate::db::limits::FingerprintPrune;
use crate::db::{AttemptRecord, Error, JobUpdate, NewMessage, RaisedEvent};
use crate::model::now_ms;

/// `$1` the counts' time, `$2` the counts, `$3` the fingerprints, `$4` the messages, `$5` their
/// events' bytes, `$6` the deliveries, `$7` the attempt records, `$8` the records' time, `$9`
/// the records' request bodies, `$10` 1 when the batch must be flushed to disk before it is
/// answered (it holds an accepted message). Returns (0, bucket, level) per counted bucket,
/// (1, message id, 0) per fingerprint row written, (2, job id, 0) per attempt recorded.
pub(super) const BATCH: &str = "WITH \
    flush AS (SELECT CASE WHEN $10::BIGINT = 0 \
        THEN set_config('synchronous_commit', 'off', true) ELSE '' END AS setting), \
    counts AS (SELECT * FROM json_to_recordset($2::JSON) \
        AS c (bucket TEXT, drain DOUBLE PRECISION, added BIGINT)), \
    counted AS (INSERT INTO rate_buckets AS b (bucket, level_milli, updated_at) \
        SELECT bucket, added, $1::BIGINT FROM counts ORDER BY bucket \
        ON CONFLICT (bucket) DO UPDATE SET \
        level_milli = excluded.level_milli + CASE \
            WHEN b.updated_at >= $1::BIGINT THEN b.level_milli \
            ELSE GREATEST(b.level_milli - CAST(($1::BIGINT - b.updated_at) * \
                (SELECT drain FROM counts WHERE counts.bucket = b.bucket) AS BIGINT), 0) END, \
        updated_at = GREATEST(b.updated_at, $1::BIGINT) \
        RETURNING bucket, level_milli), \
    fps AS (SELECT * FROM json_to_recordset($3::JSON) \
        AS f (inbox_id TEXT, fingerprint TEXT, message_id TEXT, received_at BIGINT, \
        forget_before BIGINT)), \
    fp AS (INSERT INTO message_fingerprints AS o (inbox_id, fingerprint, message_id, received_at) \
        SELECT inbox_id, fingerprint, message_id, received_at FROM fps \
        ORDER BY inbox_id, fingerprint \
        ON CONFLICT (inbox_id, fingerprint) DO UPDATE SET \
        message_id = CASE WHEN o.received_at < (SELECT forget_before FROM fps \
            WHERE fps.message_id = excluded.message_id) \
            THEN excluded.message_id ELSE o.message_id END, \
        received_at = GREATEST(o.received_at, excluded.received_at) \
        RETURNING message_id), \
    msgs AS (SELECT * FROM json_to_recordset($4::JSON) \
        AS m (id TEXT, inbox_id TEXT, event_id TEXT, storage_bucket TEXT, storage_key TEXT, \
        size BIGINT, envelope_from TEXT, envelope_to TEXT, remote_ip TEXT, helo TEXT, \
        header_message_id TEXT, sender TEXT, subject TEXT, received_at BIGINT, event_json TEXT, \
        thread_id TEXT, subject_key TEXT, participants TEXT, quarantined BIGINT, \
        event_at BIGINT, event_len BIGINT, direction TEXT, attachment_parts TEXT, \
        first_guess BIGINT)), \
    inserted_messages AS (INSERT INTO messages (id, inbox_id, event_id, storage_bucket, \
        storage_key, size, envelope_from, envelope_to, remote_ip, helo, header_message_id, \
        sender, subject, received_at, event_json, thread_id, subject_key, participants, \
        quarantined, event_lz4, direction, attachment_parts, stream_seq) \
        SELECT id, inbox_id, event_id, storage_bucket, storage_key, size, envelope_from, \
        envelope_to, remote_ip, helo, header_message_id, sender, subject, received_at, \
        event_json, thread_id, subject_key, participants, quarantined, \
        CASE WHEN event_at >= 0 THEN substring($5::BYTEA FROM event_at::INTEGER + 1 \
            FOR event_len::INTEGER) END, \
        direction, attachment_parts, txid_current() FROM msgs \
        WHERE 1 / CASE WHEN first_guess < 0 OR first_guess = CASE WHEN EXISTS \
            (SELECT 1 FROM fp WHERE fp.message_id = msgs.id) THEN 1 ELSE 0 END \
            THEN 1 ELSE 0 END = 1), \
    dels AS (SELECT * FROM json_to_recordset($6::JSON) \
        AS d (id TEXT, message_id TEXT, inbox_id TEXT, event_id TEXT, channel TEXT, \
        endpoint_ref TEXT, target TEXT, due BIGINT, thread_id TEXT, ordered BIGINT, \
        locked_until BIGINT, locked_by TEXT)), \
    inserted_deliveries AS (INSERT INTO deliveries (id, message_id, inbox_id, event_id, \
        channel, endpoint_ref, target, status, attempts, failures, next_attempt_at, created_at, \
        updated_at, thread_id, ordered, locked_until, locked_by) \
        SELECT id, message_id, inbox_id, event_id, channel, endpoint_ref, target, 'pending', \
        0, 0, due, due, due, thread_id, ordered, locked_until, locked_by FROM dels), \
    v AS (SELECT * FROM json_to_recordset($7::JSON) \
        AS v (id TEXT, worker TEXT, status TEXT, next_attempt_at BIGINT, failed BIGINT, \
        delivered_at BIGINT, status_code BIGINT, error TEXT, attempt_id TEXT, \
        started_at BIGINT, latency_ms BIGINT, outcome TEXT, response_excerpt TEXT, \
        request_meta TEXT, body_at BIGINT, body_len BIGINT)), \
    finished AS (UPDATE deliveries d SET (status, next_attempt_at, attempts, failures, \
        delivered_at, last_status_code, last_error, locked_until, locked_by, updated_at) = \
        (SELECT v.status, v.next_attempt_at, d.attempts + 1, d.failures + v.failed, \
            v.delivered_at, v.status_code, v.error, NULL::BIGINT, NULL::TEXT, $8::BIGINT FROM v \
            WHERE v.id = d.id) \
        WHERE d.id = ANY (ARRAY(SELECT id FROM v)) \
        AND d.locked_by = (SELECT worker FROM v WHERE v.id = d.id) \
        RETURNING d.id, d.attempts), \
    recorded AS (INSERT INTO delivery_attempts (id, delivery_id, attempt, started_at, \
        latency_ms, status_code, outcome, error, response_excerpt, request_meta, request_body) \
        SELECT v.attempt_id, v.id, finished.attempts, v.started_at, v.latency_ms, \
        v.status_code, v.outcome, v.error, v.response_excerpt, v.request_meta, \
        CASE WHEN v.body_at >= 0 THEN substring($9::BYTEA FROM v.body_at::INTEGER + 1 \
            FOR v.body_len::INTEGER) END \
        FROM finished JOIN v ON v.id = finished.id RETURNING delivery_id) \
    SELECT 0::BIGINT, bucket, level_milli FROM counted \
    UNION ALL SELECT 1, message_id, 0 FROM fp \
    UNION ALL SELECT 2, delivery_id, 0 FROM recorded \
    UNION ALL SELECT 3, setting, 0 FROM flush";

/// The types of [`BATCH`]'s parameters, in order, as `PREPARE` takes them.
pub(super) const PARAMETER_TYPES: &str =
    "BIGINT, JSON, JSON, JSON, BYTEA, JSON, JSON, BIGINT, BYTEA, BIGINT";

/// The writes of a batch this statement covers, gathered from its requests.
pub(super) struct Covered<'b> {
    counts: Vec<&'b RateCount>,
    messages: Vec<&'b NewMessage>,
    records: Vec<&'b AttemptRecord>,
}

/// The batch's writes, when one statement can write them all (see the module's list).
pub(super) fn covered<'b>(
    batch: &'b [Request],
    fingerprint_prune: &FingerprintPrune,
) -> Option<Covered<'b>> {
    let mut covered = Covered {
        counts: Vec::new(),
        messages: Vec::new(),
        records: Vec::new(),
    };
    for request in batch {
        match request {
            Request::RateCount(pending) => covered.counts.push(&pending.write),
            Request::Accepted(pending) => covered.messages.extend(pending.write.iter()),
            Request::Attempt(pending) => {
                let (record, raised): &(AttemptRecord, Option<RaisedEvent>) = &pending.write;
                if raised.is_some() && matches!(record.next, JobUpdate::Dead) {
                    return None;
                }
                covered.records.push(record);
            }
            Request::Claim(_) | Request::ReadLevels(_) => return None,
        }
    }
    let mut fingerprints = std::collections::HashSet::new();
    for message in &covered.messages {
        if let Some(fingerprint) = &message.fingerprint
            && (fingerprint_prune.is_due(message.received_at)
                || !fingerprints.insert((&message.inbox_id, &fingerprint.fingerprint)))
        {
            return None;
        }
    }
    let mut jobs = std::collections::HashSet::new();
    if !covered
        .records
        .iter()
        .all(|record| jobs.insert(&record.delivery_id))
    {
        return None;
    }
    Some(covered)
}

/// Writes `covered` with one statement, outside any transaction. Returns, per rate count in
/// order, its buckets' levels.
///
/// # Errors
/// The statement's error; nothing of the batch is written then.
pub(super) async fn write(
    exec: &mut impl Exec,
    covered: &Covered<'_>,
) -> Result<Vec<Vec<i64>>, Error> {
    let (count_time, merged) = merge_counts(&covered.counts);
    let counts: Vec<CountRow<'_>> = merged
        .iter()
        .map(|(bucket, drain, added)| CountRow {
            bucket,
            drain: *drain,
            added: *added,
        })
        .collect();

    let mut fingerprints = Vec::new();
    let mut messages = Vec::with_capacity(covered.messages.len());
    let mut columns = Vec::with_capacity(covered.messages.len());
    let mut deliveries = Vec::new();
    for message in &covered.messages {
        if let Some(fingerprint) = &message.fingerprint {
            fingerprints.push(FingerprintRow {
                inbox_id: &message.inbox_id,
                fingerprint: &fingerprint.fingerprint,
                message_id: &message.id,
                received_at: message.received_at,
                forget_before: fingerprint.forget_before,
            });
        }
        columns.push(MessageColumns::new(
            message,
            None,
            exec.compresses_events(),
        )?);
        for delivery in &message.deliveries {
            deliveries.push(DeliveryRow {
                id: &delivery.id,
                message_id: &message.id,
                inbox_id: &message.inbox_id,
                event_id: &message.event_id,
                channel: delivery.channel.as_str(),
                endpoint_ref: &delivery.endpoint_ref,
                target: &delivery.target,
                due: message.received_at,
                thread_id: &message.thread_id,
                ordered: i64::from(delivery.ordered),
                locked_until: delivery.lease.as_ref().map(|lease| lease.until),
                locked_by: delivery.lease.as_ref().map(|lease| lease.node.as_str()),
            });
        }
    }
    // Sorted as the transaction path inserts them: two nodes' batches take the unique index's
    // entries in one order.
    fingerprints.sort_by(|a, b| (a.inbox_id, a.fingerprint).cmp(&(b.inbox_id, b.fingerprint)));
    let mut events = Vec::new();
    for (message, columns) in covered.messages.iter().zip(&columns) {
        let (event_at, event_len) = append(&mut events, columns.event_lz4.as_deref());
        messages.push(MessageRow {
            columns,
            event_at,
            event_len,
            first_guess: first_guess(message),
        });
    }

    let now = now_ms();
    let attempt_columns: Vec<AttemptColumns<'_>> = covered
        .records
        .iter()
        .map(|record| AttemptColumns::new(record, now))
        .collect();
    let mut bodies = Vec::new();
    let records: Vec<AttemptRow<'_>> = attempt_columns
        .iter()
        .map(|columns| {
            let (body_at, body_len) = append(&mut bodies, columns.request_body);
            AttemptRow {
                columns,
                body_at,
                body_len,
            }
        })
        .collect();

    let counts = to_json(&counts)?;
    let fingerprints = to_json(&fingerprints)?;
    let messages = to_json(&messages)?;
    let deliveries = to_json(&deliveries)?;
    let records_json = to_json(&records)?;
    let durable = i64::from(!covered.messages.is_empty());
    let rows: Vec<(i64, String, i64)> = exec
        .rows(
            BATCH,
            &args![
                count_time,
                counts.as_str(),
                fingerprints.as_str(),
                messages.as_str(),
                Some(events.as_slice()),
                deliveries.as_str(),
                records_json.as_str(),
                now,
                Some(bodies.as_slice()),
                durable,
            ],
        )
        .await?;

    let counted: Vec<(String, i64)> = rows
        .iter()
        .filter(|(kind, _, _)| *kind == 0)
        .map(|(_, bucket, level)| (bucket.clone(), *level))
        .collect();
    let recorded: std::collections::HashSet<&str> = rows
        .iter()
        .filter(|(kind, _, _)| *kind == 2)
        .map(|(_, id, _)| id.as_str())
        .collect();
    for record in &covered.records {
        if !recorded.contains(record.delivery_id.as_str()) {
            tracing::warn!(
                delivery = %record.delivery_id,
                node = %record.worker,
                "attempt not recorded: the job is gone or its lease passed to another node"
            );
        }
    }
    levels_of_counts(&covered.counts, &counted)
}

/// Appends `bytes` to `all` and returns where they start and how long they are; (-1, 0) for
/// none.
fn append(all: &mut Vec<u8>, bytes: Option<&[u8]>) -> (i64, i64) {
    match bytes {
        Some(bytes) => {
            let at = all.len();
            all.extend_from_slice(bytes);
            (
                i64::try_from(at).unwrap_or(i64::MAX),
                i64::try_from(bytes.len()).unwrap_or(i64::MAX),
            )
        }
        None => (-1, 0),
    }
}

/// Intake's guess of whether the message is the first copy, as its stored event says: 1 or 0,
/// or -1 when nothing is to be checked (no fingerprint, or no mail event).
fn first_guess(message: &NewMessage) -> i64 {
    if message.fingerprint.is_none() {
        return -1;
    }
    match crate::event::stored_duplicate_flag(&message.event_json) {
        Some(duplicate) => i64::from(!duplicate),
        None => -1,
    }
}

/// The rows of one parameter, as the JSON array `json_to_recordset` reads.
fn to_json<T: Serialize>(rows: &[T]) -> Result<String, Error> {
    serde_json::to_string(rows).map_err(|err| Error::Corrupt(err.to_string()))
}

#[derive(Serialize)]
struct CountRow<'a> {
    bucket: &'a str,
    drain: f64,
    added: i64,
}

#[derive(Serialize)]
struct FingerprintRow<'a> {
    inbox_id: &'a str,
    fingerprint: &'a str,
    message_id: &'a str,
    received_at: i64,
    forget_before: i64,
}

struct MessageRow<'a> {
    columns: &'a MessageColumns<'a>,
    event_at: i64,
    event_len: i64,
    first_guess: i64,
}

impl Serialize for MessageRow<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let columns = self.columns;
        let message = columns.message;
        let mut row = serializer.serialize_map(Some(24))?;
        row.serialize_entry("id", &message.id)?;
        row.serialize_entry("inbox_id", &message.inbox_id)?;
        row.serialize_entry("event_id", &message.event_id)?;
        row.serialize_entry("storage_bucket", &message.storage_bucket)?;
        row.serialize_entry("storage_key", &message.storage_key)?;
        row.serialize_entry("size", &message.size)?;
        row.serialize_entry("envelope_from", &message.envelope_from)?;
        row.serialize_entry("envelope_to", &columns.envelope_to)?;
        row.serialize_entry("remote_ip", &message.remote_ip)?;
        row.serialize_entry("helo", &message.helo)?;
        row.serialize_entry("header_message_id", &columns.header_message_id)?;
        row.serialize_entry("sender", &columns.sender)?;
        row.serialize_entry("subject", &columns.subject)?;
        row.serialize_entry("received_at", &message.received_at)?;
        row.serialize_entry("event_json", &columns.event_text)?;
        row.serialize_entry("thread_id", &message.thread_id)?;
        row.serialize_entry("subject_key", &columns.subject_key)?;
        row.serialize_entry("participants", &columns.participants)?;
        row.serialize_entry("quarantined", &i64::from(message.quarantined))?;
        row.serialize_entry("event_at", &self.event_at)?;
        row.serialize_entry("event_len", &self.event_len)?;
        row.serialize_entry("direction", message.direction.as_str())?;
        row.serialize_entry("attachment_parts", &message.attachment_parts)?;
        row.serialize_entry("first_guess", &self.first_guess)?;
        row.end()
    }
}

#[derive(Serialize)]
struct DeliveryRow<'a> {
    id: &'a str,
    message_id: &'a str,
    inbox_id: &'a str,
    event_id: &'a str,
    channel: &'a str,
    endpoint_ref: &'a str,
    target: &'a str,
    due: i64,
    thread_id: &'a str,
    ordered: i64,
    locked_until: Option<i64>,
    locked_by: Option<&'a str>,
}

struct AttemptRow<'a> {
    columns: &'a AttemptColumns<'a>,
    body_at: i64,
    body_len: i64,
}

impl Serialize for AttemptRow<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let columns = self.columns;
        let record = columns.record;
        let mut row = serializer.serialize_map(Some(16))?;
        row.serialize_entry("id", &record.delivery_id)?;
        row.serialize_entry("worker", &record.worker)?;
        row.serialize_entry("status", columns.status.as_str())?;
        row.serialize_entry("next_attempt_at", &columns.next_attempt_at)?;
        row.serialize_entry("failed", &columns.failed)?;
        row.serialize_entry("delivered_at", &columns.delivered_at)?;
        row.serialize_entry("status_code", &record.status_code)?;
        row.serialize_entry("error", &record.error)?;
        row.serialize_entry("attempt_id", &columns.attempt_id)?;
        row.serialize_entry("started_at", &record.started_at)?;
        row.serialize_entry("latency_ms", &record.latency_ms)?;
        row.serialize_entry("outcome", record.outcome.as_str())?;
        row.serialize_entry("response_excerpt", &record.response_excerpt)?;
        row.serialize_entry("request_meta", &columns.request_meta)?;
        row.serialize_entry("body_at", &self.body_at)?;
        row.serialize_entry("body_len", &self.body_len)?;
        row.end()
    }
}
