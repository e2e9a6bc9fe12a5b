//! The statements behind the dashboard (`/ui`) and the endpoint statistics of the inbox API:
//! delivery statistics per endpoint, recent messages with the status of their webhook delivery,
//! and the deliveries of one message. Read-only; computed from the existing tables. Part of
//! [`crate::db`], which owns every SQL statement.

use sqlx::Row;

use super::{Db, DeliveryView, Error, delivery_from_row, placeholders};

/// How one endpoint of an inbox has been doing, over every attempt recorded.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EndpointStats {
    pub inbox_id: String,
    /// `inbox` for the inbox webhook, `rule:<id>` for a notification rule.
    pub endpoint_ref: String,
    pub channel: String,
    pub attempts: i64,
    /// Attempts the endpoint accepted (2xx, or the relay took the mail).
    pub delivered: i64,
    /// `delivered / attempts`, 0 to 1; absent before the first attempt.
    pub success_rate: Option<f64>,
    /// When the last attempt started, ms since the epoch.
    pub last_triggered_ms: Option<i64>,
    pub last_status_code: Option<i64>,
    /// `delivered`, `forwarded`, `http_error`, `error` or `not_sent`.
    pub last_outcome: Option<String>,
}

/// Attempt outcomes in which the endpoint took the event: a 2xx from a webhook, or the relay
/// taking an email forward. `delivered` counts these, and `last_succeeded` reads them.
const SUCCESS_OUTCOMES: &str = "('delivered', 'forwarded')";

impl EndpointStats {
    /// Whether the newest attempt succeeded (see [`SUCCESS_OUTCOMES`]).
    pub fn last_succeeded(&self) -> bool {
        matches!(
            self.last_outcome.as_deref(),
            Some("delivered" | "forwarded")
        )
    }
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
    /// Delivery statistics per endpoint; only of inbox `only` when given.
    ///
    /// # Errors
    /// [`Error::Query`].
    pub async fn endpoint_stats(&self, only: Option<&str>) -> Result<Vec<EndpointStats>, Error> {
        let totals = sqlx::query(&format!(
            "SELECT d.inbox_id, d.endpoint_ref, d.channel, COUNT(a.id) AS attempts, \
             SUM(CASE WHEN a.outcome IN {SUCCESS_OUTCOMES} THEN 1 ELSE 0 END) AS delivered, \
             MAX(a.started_at) AS last_triggered \
             FROM delivery_attempts a JOIN deliveries d ON d.id = a.delivery_id \
             WHERE ($1 = '' OR d.inbox_id = $1) \
             GROUP BY d.inbox_id, d.endpoint_ref, d.channel \
             ORDER BY d.inbox_id, d.endpoint_ref, d.channel"
        ))
        .bind(only.unwrap_or_default())
        .fetch_all(&self.pool)
        .await?;
        let mut stats = Vec::with_capacity(totals.len());
        for row in &totals {
            let inbox_id: String = row.try_get("inbox_id")?;
            let endpoint_ref: String = row.try_get("endpoint_ref")?;
            let channel: String = row.try_get("channel")?;
            let attempts: i64 = row.try_get("attempts")?;
            let delivered: i64 = row.try_get::<Option<i64>, _>("delivered")?.unwrap_or(0);
            let last_triggered: Option<i64> = row.try_get("last_triggered")?;
            // The newest attempt, for the last status: looked up per endpoint by its time, one
            // pass over the endpoint's attempts, where a correlated MAX per attempt row would
            // grow with the square of the attempt log.
            let latest = sqlx::query(
                "SELECT a.status_code, a.outcome FROM delivery_attempts a \
                 JOIN deliveries d ON d.id = a.delivery_id \
                 WHERE d.inbox_id = $1 AND d.endpoint_ref = $2 AND d.channel = $3 \
                 AND a.started_at = $4 ORDER BY a.id DESC LIMIT 1",
            )
            .bind(&inbox_id)
            .bind(&endpoint_ref)
            .bind(&channel)
            .bind(last_triggered)
            .fetch_optional(&self.pool)
            .await?;
            let (last_status_code, last_outcome) = match &latest {
                Some(last) => (last.try_get("status_code")?, Some(last.try_get("outcome")?)),
                None => (None, None),
            };
            #[allow(clippy::cast_precision_loss)] // counts far below 2^52
            let success_rate = (attempts > 0).then(|| delivered as f64 / attempts as f64);
            stats.push(EndpointStats {
                inbox_id,
                endpoint_ref,
                channel,
                attempts,
                delivered,
                success_rate,
                last_triggered_ms: last_triggered,
                last_status_code,
                last_outcome,
            });
        }
        Ok(stats)
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
                    event_json: super::stored_event(row)?,
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

    /// Every delivery of one message, oldest first.
    ///
    /// # Errors
    /// [`Error::Query`].
    pub async fn message_deliveries(&self, message_id: &str) -> Result<Vec<DeliveryView>, Error> {
        let rows =
            sqlx::query("SELECT * FROM deliveries WHERE message_id = $1 ORDER BY created_at, id")
                .bind(message_id)
                .fetch_all(&self.pool)
                .await?;
        rows.iter().map(delivery_from_row).collect()
    }
}
