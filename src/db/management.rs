//! The statements behind the management API: inboxes created and changed through it, their
//! webhook settings and notification rules, per-inbox API keys, message listings, bulk resend
//! and the counts `/metrics` reports. Part of [`crate::db`], which owns every SQL statement.

use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Db, Error, bump_directory_version, sender_policy_from_json, sender_policy_json};
use crate::model::now_ms;
use crate::model::{PayloadFormat, SenderPolicy, SignatureFormat, SignatureScheme};

/// An inbox as stored, secrets included; the API decides what of it to show.
#[derive(Debug, Clone)]
pub struct InboxRow {
    pub id: String,
    pub name: Option<String>,
    /// `config` for inboxes the config file declares, `api` for the others.
    pub source: String,
    pub status: String,
    pub addresses: Vec<String>,
    pub webhook: Option<WebhookSettings>,
    pub sender_policy: SenderPolicy,
    pub created_at: i64,
    pub updated_at: i64,
}

/// The inbox webhook with its secrets.
#[derive(Clone)]
pub struct WebhookSettings {
    pub url: String,
    pub enabled: bool,
    pub signature: SignatureScheme,
    pub payload: PayloadFormat,
    /// The `hmac-sha256` scheme's header; `None` is `X-Webhook-Signature`.
    pub signature_header: Option<String>,
    pub signature_format: SignatureFormat,
    pub secret: Option<String>,
    pub previous_secret: Option<String>,
    pub previous_secret_expires_at: Option<i64>,
    pub verify_tls: bool,
    /// Why the dispatcher switched the webhook off; setting the webhook clears it.
    pub disabled_reason: Option<String>,
    pub ordered: bool,
}

impl std::fmt::Debug for WebhookSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookSettings")
            .field("url", &self.url)
            .field("enabled", &self.enabled)
            .field("signature", &self.signature)
            .field("payload", &self.payload)
            .field("signature_header", &self.signature_header)
            .field("signature_format", &self.signature_format)
            .field("has_secret", &self.secret.is_some())
            .field(
                "previous_secret_expires_at",
                &self.previous_secret_expires_at,
            )
            .field("verify_tls", &self.verify_tls)
            .field("disabled_reason", &self.disabled_reason)
            .field("ordered", &self.ordered)
            .finish()
    }
}

#[derive(Debug, Clone)]
pub struct NewInbox {
    pub id: String,
    pub name: Option<String>,
    pub status: String,
    /// Already normalized.
    pub addresses: Vec<String>,
    pub sender_policy: SenderPolicy,
}

/// A partial change; `None` leaves the field as it is.
#[derive(Debug, Clone, Default)]
pub struct InboxUpdate {
    pub name: Option<Option<String>>,
    pub status: Option<String>,
    pub addresses: Option<Vec<String>>,
    pub sender_policy: Option<SenderPolicy>,
}

#[derive(Debug, Clone)]
pub struct ApiKeyRow {
    pub id: String,
    pub inbox_id: String,
    pub name: Option<String>,
    /// The key's first characters, to tell keys apart; never enough to use.
    pub prefix: Option<String>,
    pub created_at: i64,
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

/// One message in an inbox listing (the API shows it as it is).
///
/// Every field is sent, `null` when unset, so each is `required` in the OpenAPI document.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct MessageSummary {
    pub id: String,
    pub inbox_id: String,
    pub event_id: String,
    #[schema(required)]
    pub sender: Option<String>,
    #[schema(required)]
    pub envelope_from: Option<String>,
    #[schema(required)]
    pub subject: Option<String>,
    #[schema(required)]
    pub header_message_id: Option<String>,
    pub size: i64,
    pub received_at: String,
    /// The inbox policy held it back: stored, not delivered.
    pub quarantined: bool,
}

/// Counts read from the database at scrape time.
#[derive(Debug, Clone, Default)]
pub struct MetricsSnapshot {
    pub messages_by_inbox: Vec<(String, i64)>,
    pub deliveries_by_status: Vec<(String, i64)>,
    pub attempts_by_outcome: Vec<(String, i64)>,
    /// Webhook request latency of every attempt that sent a request.
    pub attempt_latency: Histogram,
    /// From the commit that accepted a message to the delivery of its event, per delivered job.
    pub delivery_latency: Histogram,
}

/// A Prometheus histogram read from the database.
#[derive(Debug, Clone, Default)]
pub struct Histogram {
    /// Cumulative counts at or under each bound, in ms, ascending.
    pub buckets_ms: Vec<(i64, i64)>,
    pub sum_ms: i64,
    pub count: i64,
}

/// Upper bounds of the attempt latency histogram, in ms.
pub const LATENCY_BUCKETS_MS: &[i64] = &[10, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000];

/// Upper bounds of the accepted → delivered histogram, in ms: retries stretch it to hours.
pub const DELIVERY_LATENCY_BUCKETS_MS: &[i64] = &[
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000, 60_000, 300_000, 1_800_000, 3_600_000,
    21_600_000, 86_400_000,
];

/// Reads a histogram of `value` (an SQL expression in ms) over `from_where` in one statement:
/// one `SUM(CASE …)` per bucket, so a scrape scans the table once, not once per bucket.
async fn histogram(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    value: &str,
    from_where: &str,
    bounds: &[i64],
) -> Result<Histogram, Error> {
    // The bounds are constants of this module, never input, so they are written into the SQL.
    let buckets: String = bounds
        .iter()
        .enumerate()
        .map(|(idx, bound)| {
            format!(
                ", CAST(COALESCE(SUM(CASE WHEN {value} <= {bound} THEN 1 ELSE 0 END), 0) \
                 AS BIGINT) AS le{idx}"
            )
        })
        .collect();
    let row = sqlx::query(&format!(
        "SELECT COUNT(*) AS n, CAST(COALESCE(SUM({value}), 0) AS BIGINT) AS total{buckets} \
         {from_where}"
    ))
    .fetch_one(&mut **tx)
    .await?;
    let mut buckets_ms = Vec::with_capacity(bounds.len());
    for (idx, bound) in bounds.iter().enumerate() {
        buckets_ms.push((*bound, row.try_get(format!("le{idx}").as_str())?));
    }
    Ok(Histogram {
        buckets_ms,
        sum_ms: row.try_get("total")?,
        count: row.try_get("n")?,
    })
}

const INBOX_COLUMNS: &str = "id, name, source, status, webhook_url, webhook_enabled, \
    webhook_secret, webhook_signature, webhook_payload, webhook_previous_secret, \
    webhook_previous_secret_expires_at, webhook_verify_tls, webhook_disabled_reason, webhook_ordered, \
    webhook_signature_header, webhook_signature_format, sender_policy, created_at, updated_at";

impl Db {
    /// Inboxes with their addresses; only `only` when given.
    ///
    /// # Errors
    /// [`Error::Query`] or [`Error::Corrupt`].
    pub async fn list_inbox_rows(&self, only: Option<&str>) -> Result<Vec<InboxRow>, Error> {
        let rows = sqlx::query(&format!(
            "SELECT {INBOX_COLUMNS} FROM inboxes WHERE ($1 = '' OR id = $1) ORDER BY id"
        ))
        .bind(only.unwrap_or_default())
        .fetch_all(&self.pool)
        .await?;
        let addresses = sqlx::query(
            "SELECT address, inbox_id FROM inbox_addresses WHERE ($1 = '' OR inbox_id = $1) \
             ORDER BY address",
        )
        .bind(only.unwrap_or_default())
        .fetch_all(&self.pool)
        .await?;
        let mut inboxes = Vec::with_capacity(rows.len());
        for row in &rows {
            let mut inbox = inbox_from_row(row)?;
            for address in &addresses {
                let owner: String = address.try_get("inbox_id")?;
                if owner == inbox.id {
                    inbox.addresses.push(address.try_get("address")?);
                }
            }
            inboxes.push(inbox);
        }
        Ok(inboxes)
    }

    /// One inbox.
    ///
    /// # Errors
    /// [`Error::Query`] or [`Error::Corrupt`].
    pub async fn get_inbox_row(&self, id: &str) -> Result<Option<InboxRow>, Error> {
        if id.is_empty() {
            return Ok(None);
        }
        Ok(self.list_inbox_rows(Some(id)).await?.into_iter().next())
    }

    /// Creates an inbox without a webhook.
    ///
    /// # Errors
    /// [`Error::Conflict`] when the id or an address is taken; [`Error::Query`].
    pub async fn create_inbox(&self, inbox: &NewInbox) -> Result<(), Error> {
        let now = now_ms();
        // Every transaction here starts with a write: on SQLite a transaction that reads first
        // and writes later fails at once (not after busy_timeout) when another connection
        // wrote in between.
        let mut tx = self.pool.begin().await?;
        bump_directory_version(&mut tx).await?;
        sqlx::query(
            "INSERT INTO inboxes (id, source, name, status, webhook_enabled, webhook_signature, \
             webhook_payload, created_at, updated_at, sender_policy) \
             VALUES ($1, 'api', $2, $3, 1, 'agentmail', 'mxhook', $4, $4, $5)",
        )
        .bind(&inbox.id)
        .bind(inbox.name.clone())
        .bind(&inbox.status)
        .bind(now)
        .bind(sender_policy_json(&inbox.sender_policy)?)
        .execute(&mut *tx)
        .await
        .map_err(|err| match conflict_or_query(err) {
            Error::Conflict(_) => {
                Error::Conflict(format!("an inbox with id `{}` exists", inbox.id))
            }
            other => other,
        })?;
        insert_addresses(&mut tx, &inbox.id, &inbox.addresses).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Applies a partial change. Returns `false` when there is no such inbox.
    ///
    /// # Errors
    /// [`Error::Conflict`] when an address belongs to another inbox; [`Error::Query`].
    pub async fn update_inbox(&self, id: &str, update: &InboxUpdate) -> Result<bool, Error> {
        let mut tx = self.pool.begin().await?;
        bump_directory_version(&mut tx).await?;
        let touched = sqlx::query("UPDATE inboxes SET updated_at = $1 WHERE id = $2")
            .bind(now_ms())
            .bind(id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if touched == 0 {
            return Ok(false);
        }
        if let Some(name) = &update.name {
            sqlx::query("UPDATE inboxes SET name = $1 WHERE id = $2")
                .bind(name.clone())
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        if let Some(status) = &update.status {
            sqlx::query("UPDATE inboxes SET status = $1 WHERE id = $2")
                .bind(status)
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        if let Some(policy) = &update.sender_policy {
            sqlx::query("UPDATE inboxes SET sender_policy = $1 WHERE id = $2")
                .bind(sender_policy_json(policy)?)
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        if let Some(addresses) = &update.addresses {
            sqlx::query("DELETE FROM inbox_addresses WHERE inbox_id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            insert_addresses(&mut tx, id, addresses).await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Deletes an inbox, its addresses and its API keys. Its messages and deliveries stay (they
    /// are the record of what was accepted); pending deliveries find no webhook and dead-letter.
    ///
    /// # Errors
    /// [`Error::Query`]. Returns `false` when there is no such inbox.
    pub async fn delete_inbox(&self, id: &str) -> Result<bool, Error> {
        let mut tx = self.pool.begin().await?;
        bump_directory_version(&mut tx).await?;
        for statement in [
            "DELETE FROM api_keys WHERE inbox_id = $1",
            "DELETE FROM inbox_addresses WHERE inbox_id = $1",
            // A new inbox that reuses the id must not inherit provider secrets or bookings.
            "DELETE FROM ingress_secrets WHERE inbox_id = $1",
            "DELETE FROM ingress_event_types WHERE inbox_id = $1",
        ] {
            sqlx::query(statement).bind(id).execute(&mut *tx).await?;
        }
        let deleted = sqlx::query("DELETE FROM inboxes WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(deleted > 0)
    }

    /// Sets (or with `None` removes) the inbox webhook.
    ///
    /// # Errors
    /// [`Error::Query`]. Returns `false` when there is no such inbox.
    pub async fn set_webhook(
        &self,
        inbox_id: &str,
        webhook: Option<&WebhookSettings>,
    ) -> Result<bool, Error> {
        let (signature, payload) = webhook.map_or(
            (SignatureScheme::Agentmail, PayloadFormat::Mxhook),
            |webhook| (webhook.signature, webhook.payload),
        );
        let mut tx = self.pool.begin().await?;
        bump_directory_version(&mut tx).await?;
        let result = sqlx::query(
            "UPDATE inboxes SET webhook_url = $1, webhook_enabled = $2, webhook_secret = $3, \
             webhook_signature = $4, webhook_payload = $5, webhook_previous_secret = $6, \
             webhook_previous_secret_expires_at = $7, updated_at = $8, webhook_verify_tls = $10, \
             webhook_disabled_reason = NULL, webhook_ordered = $11, \
             webhook_signature_header = $12, webhook_signature_format = $13 \
             WHERE id = $9",
        )
        .bind(webhook.map(|webhook| webhook.url.clone()))
        .bind(i64::from(webhook.is_none_or(|webhook| webhook.enabled)))
        .bind(webhook.and_then(|webhook| webhook.secret.clone()))
        .bind(signature.as_str())
        .bind(payload.as_str())
        .bind(webhook.and_then(|webhook| webhook.previous_secret.clone()))
        .bind(webhook.and_then(|webhook| webhook.previous_secret_expires_at))
        .bind(now_ms())
        .bind(inbox_id)
        .bind(i64::from(webhook.is_none_or(|webhook| webhook.verify_tls)))
        .bind(i64::from(webhook.is_some_and(|webhook| webhook.ordered)))
        .bind(webhook.and_then(|webhook| webhook.signature_header.clone()))
        .bind(
            webhook
                .map_or(SignatureFormat::default(), |webhook| {
                    webhook.signature_format
                })
                .as_str(),
        )
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(result.rows_affected() > 0)
    }

    /// The stored notification rules (JSON), `None` when the inbox does not exist.
    ///
    /// # Errors
    /// [`Error::Query`].
    pub async fn get_notifications(&self, inbox_id: &str) -> Result<Option<Option<String>>, Error> {
        let row = sqlx::query("SELECT notifications_json FROM inboxes WHERE id = $1")
            .bind(inbox_id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| row.try_get("notifications_json"))
            .transpose()
            .map_err(Error::from)
    }

    /// Replaces the notification rules. Returns `false` when there is no such inbox.
    ///
    /// # Errors
    /// [`Error::Query`].
    pub async fn set_notifications(&self, inbox_id: &str, rules_json: &str) -> Result<bool, Error> {
        let mut tx = self.pool.begin().await?;
        bump_directory_version(&mut tx).await?;
        let result = sqlx::query(
            "UPDATE inboxes SET notifications_json = $1, updated_at = $2 WHERE id = $3",
        )
        .bind(rules_json)
        .bind(now_ms())
        .bind(inbox_id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(result.rows_affected() > 0)
    }

    /// Stores a new per-inbox key by its hash.
    ///
    /// # Errors
    /// [`Error::Query`].
    pub async fn create_api_key(&self, key: &ApiKeyRow, key_hash: &str) -> Result<(), Error> {
        sqlx::query(
            "INSERT INTO api_keys (id, inbox_id, key_hash, name, created_at, key_prefix) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&key.id)
        .bind(&key.inbox_id)
        .bind(key_hash)
        .bind(key.name.clone())
        .bind(key.created_at)
        .bind(key.prefix.clone())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The keys of one inbox, oldest first, without their hashes.
    ///
    /// # Errors
    /// [`Error::Query`].
    pub async fn list_api_keys(&self, inbox_id: &str) -> Result<Vec<ApiKeyRow>, Error> {
        let rows = sqlx::query(
            "SELECT id, inbox_id, name, key_prefix, created_at FROM api_keys \
             WHERE inbox_id = $1 ORDER BY created_at, id",
        )
        .bind(inbox_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(ApiKeyRow {
                    id: row.try_get("id")?,
                    inbox_id: row.try_get("inbox_id")?,
                    name: row.try_get("name")?,
                    prefix: row.try_get("key_prefix")?,
                    created_at: row.try_get("created_at")?,
                })
            })
            .collect()
    }

    /// Revokes a key of an inbox; every later request with it is unauthorized. Returns `false`
    /// when the inbox has no such key.
    ///
    /// # Errors
    /// [`Error::Query`].
    pub async fn delete_api_key(&self, inbox_id: &str, key_id: &str) -> Result<bool, Error> {
        let result = sqlx::query("DELETE FROM api_keys WHERE id = $1 AND inbox_id = $2")
            .bind(key_id)
            .bind(inbox_id)
            .execute(&self.pool)
            .await?;
        Ok(result.rows_affected() > 0)
    }

    /// The inbox a key (given by its hash) belongs to.
    ///
    /// # Errors
    /// [`Error::Query`].
    pub async fn inbox_for_key_hash(&self, key_hash: &str) -> Result<Option<String>, Error> {
        Ok(
            sqlx::query_scalar("SELECT inbox_id FROM api_keys WHERE key_hash = $1")
                .bind(key_hash)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    /// Messages of one inbox, newest first.
    ///
    /// # Errors
    /// [`Error::Query`].
    pub async fn list_messages(
        &self,
        inbox_id: &str,
        filter: &MessageFilter,
    ) -> Result<Vec<MessageSummary>, Error> {
        let subject_pattern = filter
            .subject_contains
            .as_deref()
            .map(|needle| format!("%{}%", needle.to_lowercase()))
            .unwrap_or_default();
        let rows = sqlx::query(
            "SELECT id, inbox_id, event_id, sender, envelope_from, subject, header_message_id, \
             size, received_at, quarantined FROM messages WHERE inbox_id = $1 \
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
                Ok(MessageSummary {
                    id: row.try_get("id")?,
                    inbox_id: row.try_get("inbox_id")?,
                    event_id: row.try_get("event_id")?,
                    sender: row.try_get("sender")?,
                    envelope_from: row.try_get("envelope_from")?,
                    subject: row.try_get("subject")?,
                    header_message_id: row.try_get("header_message_id")?,
                    size: row.try_get("size")?,
                    received_at: crate::model::rfc3339(row.try_get("received_at")?),
                    quarantined: row.try_get::<i64, _>("quarantined")? != 0,
                })
            })
            .collect()
    }

    /// Puts every dead delivery of an inbox back in the queue (see [`Db::resend`]).
    ///
    /// # Errors
    /// [`Error::Query`]. Returns how many were requeued.
    pub async fn resend_dead(&self, inbox_id: &str) -> Result<u64, Error> {
        let now = now_ms();
        let result = sqlx::query(
            "UPDATE deliveries SET status = 'pending', failures = 0, next_attempt_at = $1, \
             locked_until = NULL, locked_by = NULL, updated_at = $1 \
             WHERE inbox_id = $2 AND status = 'dead'",
        )
        .bind(now)
        .bind(inbox_id)
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected())
    }

    /// The counts `/metrics` exposes.
    ///
    /// # Errors
    /// [`Error::Query`].
    pub async fn metrics(&self) -> Result<MetricsSnapshot, Error> {
        // One snapshot: read separately, a delivery committed between two reads would show its
        // attempt but not its new status, and the numbers would disagree with each other.
        let mut tx = self.pool.begin().await?;
        if self.backend == super::Backend::Postgres {
            sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                .execute(&mut *tx)
                .await?;
        }
        let pairs = |rows: Vec<AnyRow>| -> Result<Vec<(String, i64)>, Error> {
            rows.iter()
                .map(|row| Ok((row.try_get("label")?, row.try_get("n")?)))
                .collect()
        };
        let messages_by_inbox = pairs(
            sqlx::query(
                "SELECT inbox_id AS label, COUNT(*) AS n FROM messages GROUP BY inbox_id \
                 ORDER BY inbox_id",
            )
            .fetch_all(&mut *tx)
            .await?,
        )?;
        let deliveries_by_status = pairs(
            sqlx::query(
                "SELECT status AS label, COUNT(*) AS n FROM deliveries GROUP BY status \
                 ORDER BY status",
            )
            .fetch_all(&mut *tx)
            .await?,
        )?;
        let attempts_by_outcome = pairs(
            sqlx::query(
                "SELECT outcome AS label, COUNT(*) AS n FROM delivery_attempts GROUP BY outcome \
                 ORDER BY outcome",
            )
            .fetch_all(&mut *tx)
            .await?,
        )?;
        let attempt_latency = histogram(
            &mut tx,
            "latency_ms",
            "FROM delivery_attempts WHERE outcome <> 'not_sent'",
            LATENCY_BUCKETS_MS,
        )
        .await?;
        let delivery_latency = histogram(
            &mut tx,
            "(delivered_at - created_at)",
            "FROM deliveries WHERE status = 'delivered' AND delivered_at IS NOT NULL",
            DELIVERY_LATENCY_BUCKETS_MS,
        )
        .await?;
        tx.commit().await?;
        Ok(MetricsSnapshot {
            messages_by_inbox,
            deliveries_by_status,
            attempts_by_outcome,
            attempt_latency,
            delivery_latency,
        })
    }
}

async fn insert_addresses(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    inbox_id: &str,
    addresses: &[String],
) -> Result<(), Error> {
    for address in addresses {
        let owner: Option<String> =
            sqlx::query_scalar("SELECT inbox_id FROM inbox_addresses WHERE address = $1")
                .bind(address)
                .fetch_optional(&mut **tx)
                .await?;
        if let Some(owner) = owner {
            return Err(Error::Conflict(format!(
                "address `{address}` belongs to inbox `{owner}`"
            )));
        }
        sqlx::query("INSERT INTO inbox_addresses (address, inbox_id) VALUES ($1, $2)")
            .bind(address)
            .bind(inbox_id)
            .execute(&mut **tx)
            .await
            .map_err(conflict_or_query)?;
    }
    Ok(())
}

/// A unique-key violation is a conflict the caller can act on (a concurrent create won).
fn conflict_or_query(err: sqlx::Error) -> Error {
    match &err {
        sqlx::Error::Database(db_err) if db_err.is_unique_violation() => {
            Error::Conflict("the id or an address is already taken".to_owned())
        }
        _ => Error::Query(err),
    }
}

fn inbox_from_row(row: &AnyRow) -> Result<InboxRow, Error> {
    let url: Option<String> = row.try_get("webhook_url")?;
    let webhook = match url {
        None => None,
        Some(url) => {
            let signature: String = row.try_get("webhook_signature")?;
            let payload: String = row.try_get("webhook_payload")?;
            let enabled: i64 = row.try_get("webhook_enabled")?;
            let verify_tls: i64 = row.try_get("webhook_verify_tls")?;
            let signature_format: String = row.try_get("webhook_signature_format")?;
            Some(WebhookSettings {
                url,
                enabled: enabled != 0,
                signature: SignatureScheme::parse(&signature).ok_or_else(|| {
                    Error::Corrupt(format!("unknown signature scheme `{signature}`"))
                })?,
                payload: PayloadFormat::parse(&payload)
                    .ok_or_else(|| Error::Corrupt(format!("unknown payload format `{payload}`")))?,
                signature_header: row.try_get("webhook_signature_header")?,
                signature_format: SignatureFormat::parse(&signature_format).ok_or_else(|| {
                    Error::Corrupt(format!("unknown signature format `{signature_format}`"))
                })?,
                secret: row.try_get("webhook_secret")?,
                previous_secret: row.try_get("webhook_previous_secret")?,
                previous_secret_expires_at: row.try_get("webhook_previous_secret_expires_at")?,
                verify_tls: verify_tls != 0,
                disabled_reason: row.try_get("webhook_disabled_reason")?,
                ordered: row.try_get::<i64, _>("webhook_ordered")? != 0,
            })
        }
    };
    let id: String = row.try_get("id")?;
    let policy_json: Option<String> = row.try_get("sender_policy")?;
    Ok(InboxRow {
        sender_policy: sender_policy_from_json(&id, policy_json.as_deref())?,
        id,
        name: row.try_get("name")?,
        source: row.try_get("source")?,
        status: row.try_get("status")?,
        addresses: Vec::new(),
        webhook,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}
