//! Accepted messages: the row each copy of a message is stored as, its event (compressed by the
//! SQLite committer, see migration 0013), and the reads of the API and the dashboard over them.
//! The commit of a message with its jobs is a critical-path write (see `write`). Part of
//! [`crate::db`], which owns every SQL statement.

use sqlx::Row;
use sqlx::any::AnyRow;

use super::jobs::NewDelivery;
use super::limits::NewFingerprint;
use super::{Db, Error, placeholders};
use crate::model::Direction;

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
    /// Received, or sent by the inbox (a reply).
    pub direction: Direction,
    /// Where its attachments' bodies lie in the raw message, for streaming them
    /// (`parse::part::spans_json`); `None` serves them from the whole message.
    pub attachment_parts: Option<String>,
}

#[derive(Debug, Clone)]
pub struct MessageRow {
    pub id: String,
    pub inbox_id: String,
    pub storage_key: String,
    pub event_json: String,
    /// See [`NewMessage::attachment_parts`].
    pub attachment_parts: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct MessageFilter {
    /// Only messages whose id sorts before this one (ids are time-sortable): the paging cursor.
    pub before: Option<String>,
    pub sender: Option<String>,
    pub subject_contains: Option<String>,
    pub received_after_ms: Option<i64>,
    pub received_before_ms: Option<i64>,
    /// Only quarantined messages (`Some(true)`) or only the others (`Some(false)`).
    pub quarantined: Option<bool>,
    pub limit: i64,
}

/// One message of an inbox listing: the columns kept beside the event.
#[derive(Debug, Clone)]
pub struct MessageSummaryRow {
    pub id: String,
    pub inbox_id: String,
    pub event_id: String,
    pub sender: Option<String>,
    pub envelope_from: Option<String>,
    pub subject: Option<String>,
    pub header_message_id: Option<String>,
    pub size: i64,
    pub received_at_ms: i64,
    /// The inbox policy held it back: stored, not delivered.
    pub quarantined: bool,
    /// Received, or sent by the inbox (a reply).
    pub direction: Direction,
}

/// A message as the dashboard lists it: the summary columns, the stored event (for the flags)
/// and the state of its webhook delivery.
#[derive(Debug, Clone)]
pub struct MessageListing {
    pub id: String,
    pub inbox_id: String,
    pub sender: Option<String>,
    pub subject: Option<String>,
    pub received_at: i64,
    pub event_json: String,
    /// The inbox webhook delivery when there is one, otherwise the newest delivery.
    pub delivery_id: Option<String>,
    pub delivery_status: Option<String>,
    pub delivery_status_code: Option<i64>,
}

/// Who sent a message and what it is about, as a list of deliveries names it.
#[derive(Debug, Clone)]
pub struct MessageHeadline {
    pub sender: Option<String>,
    pub subject: Option<String>,
}

/// The delivery the webhook column shows: the inbox webhook first, then the newest.
const WEBHOOK_DELIVERY: &str = "SELECT d.id FROM deliveries d WHERE d.message_id = m.id \
     ORDER BY CASE WHEN d.endpoint_ref = 'inbox' THEN 0 ELSE 1 END, d.created_at DESC, d.id DESC \
     LIMIT 1";

impl Db {
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
        let inboxes: Vec<String> = messages.iter().map(|m| m.inbox_id.clone()).collect();
        let committed = self.writes.accept(messages).await?;
        for inbox in &inboxes {
            self.arrivals.announce(inbox);
        }
        Ok(committed)
    }

    /// One stored message.
    ///
    /// # Errors
    /// [`Error::Query`].
    pub async fn get_message(&self, id: &str) -> Result<Option<MessageRow>, Error> {
        let row = sqlx::query(
            "SELECT id, inbox_id, storage_key, event_json, event_lz4, attachment_parts \
             FROM messages WHERE id = $1",
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
                attachment_parts: row.try_get("attachment_parts")?,
            })
        })
        .transpose()
    }

    /// Messages of one inbox, newest first.
    ///
    /// # Errors
    /// [`Error::Query`].
    pub async fn list_messages(
        &self,
        inbox_id: &str,
        filter: &MessageFilter,
    ) -> Result<Vec<MessageSummaryRow>, Error> {
        let subject_pattern = filter
            .subject_contains
            .as_deref()
            .map(|needle| format!("%{}%", needle.to_lowercase()))
            .unwrap_or_default();
        let rows = sqlx::query(
            "SELECT id, inbox_id, event_id, sender, envelope_from, subject, header_message_id, \
             size, received_at, quarantined, direction FROM messages WHERE inbox_id = $1 \
             AND ($2 = '' OR id < $2) AND ($3 = '' OR LOWER(sender) = $3) \
             AND ($4 = '' OR LOWER(subject) LIKE $4) AND received_at >= $5 AND received_at < $6 \
             AND ($8 < 0 OR quarantined = $8) \
             ORDER BY id DESC LIMIT $7",
        )
        .bind(inbox_id)
        .bind(filter.before.clone().unwrap_or_default())
        .bind(
            filter
                .sender
                .as_deref()
                .map(str::to_lowercase)
                .unwrap_or_default(),
        )
        .bind(subject_pattern)
        .bind(filter.received_after_ms.unwrap_or(i64::MIN))
        .bind(filter.received_before_ms.unwrap_or(i64::MAX))
        .bind(filter.limit)
        .bind(filter.quarantined.map_or(-1, i64::from))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(MessageSummaryRow {
                    id: row.try_get("id")?,
                    inbox_id: row.try_get("inbox_id")?,
                    event_id: row.try_get("event_id")?,
                    sender: row.try_get("sender")?,
                    envelope_from: row.try_get("envelope_from")?,
                    subject: row.try_get("subject")?,
                    header_message_id: row.try_get("header_message_id")?,
                    size: row.try_get("size")?,
                    received_at_ms: row.try_get("received_at")?,
                    quarantined: row.try_get::<i64, _>("quarantined")? != 0,
                    direction: match row.try_get::<String, _>("direction")?.as_str() {
                        "outbound" => Direction::Outbound,
                        _ => Direction::Inbound,
                    },
                })
            })
            .collect()
    }

    /// A run of messages next to a paging cursor, only of inbox `only` when given: with `after`,
    /// those just after it, oldest first; otherwise the newest, or those just before `before`,
    /// newest first. Ids sort by creation time, so an id is the cursor.
    ///
    /// # Errors
    /// [`Error::Query`].
    pub async fn recent_messages(
        &self,
        only: Option<&str>,
        before: Option<&str>,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<MessageListing>, Error> {
        let order = if after.is_some() { "ASC" } else { "DESC" };
        let rows = sqlx::query(&format!(
            "SELECT m.id, m.inbox_id, m.sender, m.subject, m.received_at, m.event_json, m.event_lz4, \
             w.id AS delivery_id, w.status AS delivery_status, \
             w.last_status_code AS delivery_status_code \
             FROM messages m LEFT JOIN deliveries w ON w.id = ({WEBHOOK_DELIVERY}) \
             WHERE ($1 = '' OR m.inbox_id = $1) AND ($2 = '' OR m.id < $2) \
             AND ($3 = '' OR m.id > $3) \
             ORDER BY m.id {order} LIMIT $4"
        ))
        .bind(only.unwrap_or_default())
        .bind(before.unwrap_or_default())
        .bind(after.unwrap_or_default())
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(MessageListing {
                    id: row.try_get("id")?,
                    inbox_id: row.try_get("inbox_id")?,
                    sender: row.try_get("sender")?,
                    subject: row.try_get("subject")?,
                    received_at: row.try_get("received_at")?,
                    event_json: stored_event(row)?,
                    delivery_id: row.try_get("delivery_id")?,
                    delivery_status: row.try_get("delivery_status")?,
                    delivery_status_code: row.try_get("delivery_status_code")?,
                })
            })
            .collect()
    }

    /// The sender and subject of each of these messages, by id, for lists of deliveries; one
    /// statement for the whole list.
    ///
    /// # Errors
    /// [`Error::Query`].
    pub async fn message_headlines(
        &self,
        ids: &[&str],
    ) -> Result<std::collections::HashMap<String, MessageHeadline>, Error> {
        let mut headlines = std::collections::HashMap::with_capacity(ids.len());
        if ids.is_empty() {
            return Ok(headlines);
        }
        let sql = format!(
            "SELECT id, sender, subject FROM messages WHERE id IN ({})",
            placeholders(1, ids.len())
        );
        let mut query = sqlx::query(&sql);
        for id in ids {
            query = query.bind(*id);
        }
        for row in query.fetch_all(&self.pool).await? {
            headlines.insert(
                row.try_get("id")?,
                MessageHeadline {
                    sender: row.try_get("sender")?,
                    subject: row.try_get("subject")?,
                },
            );
        }
        Ok(headlines)
    }
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
