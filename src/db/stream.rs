//! The event stream's reads (SPEC "Agents without a public URL"): an inbox's events in the
//! order of migration 0021 (`stream_seq`, then id), after a position, and on PostgreSQL the
//! poll that announces other nodes' commits. Part of [`crate::db`].
//!
//! On PostgreSQL `stream_seq` is the inserting transaction's id; every read here takes only
//! rows below the xmin of its own statement's snapshot. Every transaction under that xmin has
//! ended, so a row that commits later has a `stream_seq` above everything a reader has been
//! given: a position, once passed, never has anything committed before it.

use std::time::Duration;

use sqlx::Row;
use tokio_util::sync::CancellationToken;

use super::jobs::quarantined_event;
use super::messages::stored_event;
use super::{Backend, Db, Error};
use crate::notify::Arrivals;

/// A place in an inbox's stream: just after the event there.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StreamPosition {
    seq: i64,
    id: String,
}

/// One event of the stream.
#[derive(Debug, Clone)]
pub struct StreamEvent {
    pub event_id: String,
    pub event_type: String,
    pub message_id: String,
    /// The event as the inbox webhook receives it with `payload = "mxhook"`: a quarantined
    /// message's is its reduced `mail.quarantined` event.
    pub json: String,
    pub position: StreamPosition,
}

/// Only rows every transaction before which has ended (see the module docs); SQLite commits
/// one transaction at a time, so there every committed row qualifies.
fn settled(backend: Backend) -> &'static str {
    match backend {
        Backend::Sqlite => "",
        Backend::Postgres => " AND stream_seq < txid_snapshot_xmin(txid_current_snapshot())",
    }
}

#[derive(serde::Deserialize)]
struct TypeOnly {
    r#type: String,
}

impl Db {
    /// The signal the event streams wait on; [`Db::commit_accepted`] announces into it.
    pub fn arrivals(&self) -> &Arrivals {
        &self.arrivals
    }

    /// Where the event `event_id` of `inbox_id` is in the stream; `None` when the inbox has no
    /// such event.
    ///
    /// # Errors
    /// [`Error::Query`].
    pub async fn stream_position(
        &self,
        inbox_id: &str,
        event_id: &str,
    ) -> Result<Option<StreamPosition>, Error> {
        let row = sqlx::query(
            "SELECT stream_seq, id FROM messages WHERE event_id = $1 AND inbox_id = $2",
        )
        .bind(event_id)
        .bind(inbox_id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| {
            Ok(StreamPosition {
                seq: row.try_get("stream_seq")?,
                id: row.try_get("id")?,
            })
        })
        .transpose()
    }

    /// The end of the inbox's stream as it is now: a stream starting here gets only what comes.
    ///
    /// # Errors
    /// [`Error::Query`].
    pub async fn stream_end(&self, inbox_id: &str) -> Result<StreamPosition, Error> {
        let row = sqlx::query(&format!(
            "SELECT stream_seq, id FROM messages WHERE inbox_id = $1{} \
             ORDER BY stream_seq DESC, id DESC LIMIT 1",
            settled(self.backend)
        ))
        .bind(inbox_id)
        .fetch_optional(&self.pool)
        .await?;
        match row {
            Some(row) => Ok(StreamPosition {
                seq: row.try_get("stream_seq")?,
                id: row.try_get("id")?,
            }),
            // Before every message: `stream_seq` is never negative.
            None => Ok(StreamPosition {
                seq: -1,
                id: String::new(),
            }),
        }
    }

    /// Up to `limit` events of the inbox after `after`, in stream order. Replies the inbox sent
    /// are no events (they raise no `mail.received`) and are left out.
    ///
    /// # Errors
    /// [`Error::Query`], or [`Error::Corrupt`] for a stored event that is not an event.
    pub async fn stream_after(
        &self,
        inbox_id: &str,
        after: &StreamPosition,
        limit: i64,
    ) -> Result<Vec<StreamEvent>, Error> {
        let rows = sqlx::query(&format!(
            "SELECT id, event_id, stream_seq, quarantined, event_json, event_lz4 FROM messages \
             WHERE inbox_id = $1 AND (stream_seq > $2 OR (stream_seq = $2 AND id > $3)) \
             AND direction = 'inbound'{} ORDER BY stream_seq, id LIMIT $4",
            settled(self.backend)
        ))
        .bind(inbox_id)
        .bind(after.seq)
        .bind(&after.id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let stored = stored_event(row)?;
                let json = if row.try_get::<i64, _>("quarantined")? != 0 {
                    quarantined_event(&stored)?
                } else {
                    stored
                };
                let event_type = serde_json::from_str::<TypeOnly>(&json)
                    .map_err(|err| Error::Corrupt(format!("a stored event has no type: {err}")))?
                    .r#type;
                let id: String = row.try_get("id")?;
                Ok(StreamEvent {
                    event_id: row.try_get("event_id")?,
                    event_type,
                    message_id: id.clone(),
                    json,
                    position: StreamPosition {
                        seq: row.try_get("stream_seq")?,
                        id,
                    },
                })
            })
            .collect()
    }

    /// On PostgreSQL, announces every inbox that another node (or a transaction of this one)
    /// committed a message to, once it is settled, checking every `every` until `cancel`. Two
    /// small indexed queries per tick for the whole node, however many streams are open. A
    /// no-op on SQLite, where only this process writes and the commit announces.
    pub async fn follow_arrivals(self, every: Duration, cancel: CancellationToken) {
        if self.backend != Backend::Postgres {
            return;
        }
        let mut floor: Option<i64> = None;
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                _ = ticks.tick() => {}
            }
            match self.settled_since(floor).await {
                Ok((horizon, inboxes)) => {
                    for inbox in inboxes {
                        self.arrivals.announce(&inbox);
                    }
                    floor = Some(horizon);
                }
                Err(err) => tracing::warn!(error = %err, "polling for new messages failed"),
            }
        }
    }

    /// The current horizon (below which every transaction has ended) and the inboxes with
    /// messages in `[floor, horizon)`; the first call only finds the horizon.
    async fn settled_since(&self, floor: Option<i64>) -> Result<(i64, Vec<String>), Error> {
        let horizon: i64 = sqlx::query("SELECT txid_snapshot_xmin(txid_current_snapshot())")
            .fetch_one(&self.pool)
            .await?
            .try_get(0)?;
        let Some(floor) = floor else {
            return Ok((horizon, Vec::new()));
        };
        if floor >= horizon {
            return Ok((horizon.max(floor), Vec::new()));
        }
        let rows = sqlx::query(
            "SELECT DISTINCT inbox_id FROM messages WHERE stream_seq >= $1 AND stream_seq < $2",
        )
        .bind(floor)
        .bind(horizon)
        .fetch_all(&self.pool)
        .await?;
        let inboxes = rows
            .iter()
            .map(|row| row.try_get("inbox_id"))
            .collect::<Result<_, _>>()?;
        Ok((horizon, inboxes))
    }
}
