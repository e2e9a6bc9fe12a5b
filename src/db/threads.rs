//! The reads threading needs: earlier messages a new one may continue (by Message-ID or by
//! subject), and the history of a thread a later email shows. Threads are columns of
//! `messages`, written with them. Part of [`crate::db`], which owns every SQL statement.

use sqlx::Row;

use super::messages::stored_event;
use super::{Db, Error, header_text, placeholders};

/// Most pages (of as many rows as it wants emails) [`Db::thread_history`] reads looking for
/// emails it may show.
const HISTORY_SCAN_PAGES: usize = 5;

impl Db {
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
}
