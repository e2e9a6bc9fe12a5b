//! Inboxes: their addresses, webhook settings, sender policy and notification rules, as the
//! config file declares them (synced at start) and as the management API creates and changes
//! them; the directory the pipeline loads from them, and its change marker. Part of
//! [`crate::db`], which owns every SQL statement.

use serde_json::Value;
use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Db, Error};
use crate::config::InboxConfig;
use crate::model::{
    EndpointSettings, Inbox, PayloadFormat, SenderPolicy, SignatureFormat, SignatureScheme,
};
use crate::model::{Subscription, WebhookEndpoint, now_ms};
use crate::secrets::{Keyring, Place};

/// An inbox as stored, secrets included; the API decides what of it to show.
#[derive(Debug, Clone)]
pub struct InboxRow {
    pub id: String,
    pub name: Option<String>,
    /// `config` for inboxes the config file declares, `auto` for those a domain made on first
    /// mail, `api` for the others.
    pub source: String,
    pub status: String,
    pub addresses: Vec<String>,
    pub webhook: Option<WebhookSettings>,
    pub sender_policy: SenderPolicy,
    /// Days its messages are kept (0 for ever); `None` is `retention.days`.
    pub retention_days: Option<f64>,
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
    /// The event types it receives.
    pub events: Subscription,
    /// `custom_headers`, `timeout_s`, `max_retries`.
    pub endpoint: EndpointSettings,
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
            .field("endpoint", &self.endpoint)
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

const INBOX_COLUMNS: &str = "id, name, source, status, webhook_url, webhook_enabled, \
    webhook_secret, webhook_signature, webhook_payload, webhook_previous_secret, \
    webhook_previous_secret_expires_at, webhook_verify_tls, webhook_disabled_reason, webhook_ordered, \
    webhook_signature_header, webhook_signature_format, sender_policy, created_at, updated_at, \
    webhook_events, webhook_endpoint_json, retention_days";

impl Db {
    /// Writes a config-declared inbox, replacing what an earlier start wrote for it: the config
    /// file is the source of truth for the inboxes it declares.
    ///
    /// # Errors
    /// [`Error::Query`].
    pub async fn upsert_config_inbox(&self, inbox: &InboxConfig) -> Result<(), Error> {
        let now = now_ms();
        let secret = self.secrets.seal_opt(
            Place::InboxWebhook,
            &[inbox.id.as_str()],
            inbox.webhook_secret.as_deref(),
        )?;
        let mut tx = self.pool.begin().await?;
        bump_directory_version(&mut tx).await?;
        sqlx::query(
            "INSERT INTO inboxes (id, source, webhook_url, webhook_enabled, webhook_secret, \
             webhook_signature, webhook_payload, webhook_verify_tls, webhook_ordered, \
             created_at, updated_at, webhook_signature_header, webhook_signature_format, \
             sender_policy, webhook_events, webhook_endpoint_json) \
             VALUES ($1, 'config', $2, 1, $3, $4, $5, $7, $8, $6, $6, $9, $10, $11, $12, $13) \
             ON CONFLICT (id) DO UPDATE SET source = 'config', webhook_url = $2, \
             webhook_enabled = 1, webhook_secret = $3, webhook_signature = $4, \
             webhook_payload = $5, webhook_verify_tls = $7, webhook_ordered = $8, \
             webhook_disabled_reason = NULL, updated_at = $6, \
             webhook_signature_header = $9, webhook_signature_format = $10, \
             sender_policy = $11, webhook_events = $12, webhook_endpoint_json = $13",
        )
        .bind(&inbox.id)
        .bind(inbox.webhook_url.clone())
        .bind(secret)
        .bind(inbox.signature.as_str())
        .bind(inbox.payload.as_str())
        .bind(now)
        .bind(i64::from(inbox.verify_tls))
        .bind(i64::from(inbox.ordered))
        .bind(inbox.signature_header.clone())
        .bind(inbox.signature_format.as_str())
        .bind(sender_policy_json(&inbox.sender_policy())?)
        .bind(events_json(&inbox.events()))
        .bind(endpoint_settings_json(&inbox.endpoint_settings())?)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM inbox_addresses WHERE inbox_id = $1")
            .bind(&inbox.id)
            .execute(&mut *tx)
            .await?;
        for address in &inbox.addresses {
            let normalized =
                crate::model::normalize_address(address).unwrap_or_else(|| address.to_lowercase());
            // An address that moved here from another inbox in the config follows the config.
            sqlx::query("DELETE FROM inbox_addresses WHERE address = $1")
                .bind(&normalized)
                .execute(&mut *tx)
                .await?;
            sqlx::query("INSERT INTO inbox_addresses (address, inbox_id) VALUES ($1, $2)")
                .bind(&normalized)
                .bind(&inbox.id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Every inbox with its addresses.
    ///
    /// # Errors
    /// [`Error::Query`] or [`Error::Corrupt`].
    pub async fn load_inboxes(&self) -> Result<Vec<Inbox>, Error> {
        let rows = sqlx::query(
            "SELECT id, webhook_url, webhook_enabled, webhook_secret, webhook_signature, \
             webhook_payload, webhook_previous_secret, webhook_previous_secret_expires_at, \
             webhook_verify_tls, webhook_disabled_reason, webhook_ordered, notifications_json, \
             webhook_signature_header, webhook_signature_format, sender_policy, webhook_events, \
             webhook_endpoint_json \
             FROM inboxes \
             WHERE status = 'enabled' \
             ORDER BY id",
        )
        .fetch_all(&self.pool)
        .await?;
        let addresses =
            sqlx::query("SELECT address, inbox_id FROM inbox_addresses ORDER BY address")
                .fetch_all(&self.pool)
                .await?;
        // Grouped once: matching every inbox against every address made each load quadratic,
        // 30 s at 30,000 inboxes (BENCHMARKS.md), and the directory loads again after every
        // inbox change, including each inbox a domain makes on first mail.
        let mut addresses_of: std::collections::HashMap<String, Vec<String>> =
            std::collections::HashMap::new();
        for address in &addresses {
            if let (Ok(owner), Ok(address)) = (
                address.try_get::<String, _>("inbox_id"),
                address.try_get::<String, _>("address"),
            ) {
                addresses_of.entry(owner).or_default().push(address);
            }
        }
        let mut inboxes = Vec::with_capacity(rows.len());
        for row in rows {
            let id: String = row.try_get("id")?;
            let inbox_addresses = addresses_of.remove(&id).unwrap_or_default();
            let rules_json: Option<String> = row.try_get("notifications_json")?;
            let policy_json: Option<String> = row.try_get("sender_policy")?;
            inboxes.push(Inbox {
                sender_policy: sender_policy_from_json(&id, policy_json.as_deref())?,
                webhook: endpoint_from_row(&self.secrets, &row, "", &id)?,
                addresses: inbox_addresses,
                rules: rules_from_json(&id, rules_json.as_deref()),
                id,
            });
        }
        Ok(inboxes)
    }

    /// The directory's change marker: it moves with every committed change to an inbox or its
    /// addresses (see [`bump_directory_version`]), so a node reloads only when it moved. Read it
    /// before [`Db::load_inboxes`]: a change committed in between then shows up as a newer
    /// version at the next poll instead of being missed.
    ///
    /// # Errors
    /// [`Error::Query`].
    pub async fn directory_version(&self) -> Result<i64, Error> {
        Ok(
            sqlx::query_scalar("SELECT version FROM directory_version WHERE id = 1")
                .fetch_one(&self.pool)
                .await?,
        )
    }
}

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
            let mut inbox = inbox_from_row(&self.secrets, row)?;
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
        let seal = |secret: Option<&String>| {
            self.secrets
                .seal_opt(Place::InboxWebhook, &[inbox_id], secret.map(String::as_str))
        };
        let secret = seal(webhook.and_then(|webhook| webhook.secret.as_ref()))?;
        let previous_secret = seal(webhook.and_then(|webhook| webhook.previous_secret.as_ref()))?;
        let mut tx = self.pool.begin().await?;
        bump_directory_version(&mut tx).await?;
        let result = sqlx::query(
            "UPDATE inboxes SET webhook_url = $1, webhook_enabled = $2, webhook_secret = $3, \
             webhook_signature = $4, webhook_payload = $5, webhook_previous_secret = $6, \
             webhook_previous_secret_expires_at = $7, updated_at = $8, webhook_verify_tls = $10, \
             webhook_disabled_reason = NULL, webhook_ordered = $11, \
             webhook_signature_header = $12, webhook_signature_format = $13, \
             webhook_events = $14, webhook_endpoint_json = $15 \
             WHERE id = $9",
        )
        .bind(webhook.map(|webhook| webhook.url.clone()))
        .bind(i64::from(webhook.is_none_or(|webhook| webhook.enabled)))
        .bind(secret)
        .bind(signature.as_str())
        .bind(payload.as_str())
        .bind(previous_secret)
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
        .bind(webhook.and_then(|webhook| events_json(&webhook.events)))
        .bind(match webhook {
            Some(webhook) => endpoint_settings_json(&webhook.endpoint)?,
            None => None,
        })
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
}

/// Moves the directory's change marker (see [`Db::directory_version`]) inside the transaction
/// that changes an inbox, so the change and the marker commit together. Called first in the
/// transaction: it is then a write first (which SQLite needs, see `create_inbox`), and on
/// PostgreSQL every inbox change takes the counter's row lock before any other, so two changes
/// never wait on each other in opposite orders.
///
/// # Errors
/// [`Error::Query`].
pub(super) async fn bump_directory_version(conn: &mut sqlx::AnyConnection) -> Result<(), Error> {
    sqlx::query("UPDATE directory_version SET version = version + 1 WHERE id = 1")
        .execute(conn)
        .await?;
    Ok(())
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

/// The stored form of a webhook's `events`: `NULL` for the default, so an inbox that never set
/// them follows the default.
pub(super) fn events_json(events: &Subscription) -> Option<String> {
    (!events.is_default()).then(|| serde_json::Value::from(events.names()).to_string())
}

/// A stored `events` list. Each pattern was checked when it was set; one that no longer reads
/// (a type a later release dropped) is left out rather than failing the whole inbox.
fn events_from_json(stored: Option<String>) -> Subscription {
    let Some(stored) = stored else {
        return Subscription::default();
    };
    let names: Vec<String> = serde_json::from_str(&stored).unwrap_or_default();
    Subscription(
        names
            .iter()
            .filter_map(|name| crate::model::EventPattern::parse(name).ok())
            .collect(),
    )
}

fn inbox_from_row(secrets: &Keyring, row: &AnyRow) -> Result<InboxRow, Error> {
    let id: String = row.try_get("id")?;
    let open = |column: &str| -> Result<Option<String>, Error> {
        let stored: Option<String> = row.try_get(column)?;
        Ok(secrets.open_opt(Place::InboxWebhook, &[id.as_str()], stored.as_deref())?)
    };
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
                secret: open("webhook_secret")?,
                previous_secret: open("webhook_previous_secret")?,
                previous_secret_expires_at: row.try_get("webhook_previous_secret_expires_at")?,
                verify_tls: verify_tls != 0,
                disabled_reason: row.try_get("webhook_disabled_reason")?,
                ordered: row.try_get::<i64, _>("webhook_ordered")? != 0,
                events: events_from_json(row.try_get("webhook_events")?),
                endpoint: endpoint_settings_from_json(row.try_get("webhook_endpoint_json")?)?,
            })
        }
    };
    let policy_json: Option<String> = row.try_get("sender_policy")?;
    Ok(InboxRow {
        sender_policy: sender_policy_from_json(&id, policy_json.as_deref())?,
        id,
        name: row.try_get("name")?,
        source: row.try_get("source")?,
        status: row.try_get("status")?,
        addresses: Vec::new(),
        webhook,
        retention_days: row.try_get("retention_days")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

/// The inbox webhook of a row whose inbox webhook columns are named `<prefix><column>`, its
/// secrets decrypted (`inbox_id` is the row's inbox, which they are bound to).
pub(super) fn endpoint_from_row(
    secrets: &Keyring,
    row: &AnyRow,
    prefix: &str,
    inbox_id: &str,
) -> Result<Option<WebhookEndpoint>, Error> {
    let column = |name: &str| format!("{prefix}{name}");
    let open = |name: &str| -> Result<Option<String>, Error> {
        let stored: Option<String> = row.try_get(column(name).as_str())?;
        Ok(secrets.open_opt(Place::InboxWebhook, &[inbox_id], stored.as_deref())?)
    };
    let url: Option<String> = row.try_get(column("webhook_url").as_str())?;
    let Some(url) = url else {
        return Ok(None);
    };
    let signature: String = row.try_get(column("webhook_signature").as_str())?;
    let payload: String = row.try_get(column("webhook_payload").as_str())?;
    let enabled: i64 = row.try_get(column("webhook_enabled").as_str())?;
    let previous_expires_at: Option<i64> =
        row.try_get(column("webhook_previous_secret_expires_at").as_str())?;
    let previous_secret = open("webhook_previous_secret")?;
    let verify_tls: i64 = row.try_get(column("webhook_verify_tls").as_str())?;
    let ordered: i64 = row.try_get(column("webhook_ordered").as_str())?;
    let signature_format: String = row.try_get(column("webhook_signature_format").as_str())?;
    let settings =
        endpoint_settings_from_json(row.try_get(column("webhook_endpoint_json").as_str())?)?;
    let mut endpoint = WebhookEndpoint {
        url,
        enabled: enabled != 0,
        secret: open("webhook_secret")?,
        previous_secret,
        previous_secret_expires_at: previous_expires_at,
        signature: SignatureScheme::parse(&signature)
            .ok_or_else(|| Error::Corrupt(format!("unknown signature scheme `{signature}`")))?,
        payload: PayloadFormat::parse(&payload)
            .ok_or_else(|| Error::Corrupt(format!("unknown payload format `{payload}`")))?,
        signature_header: row.try_get(column("webhook_signature_header").as_str())?,
        signature_format: SignatureFormat::parse(&signature_format).ok_or_else(|| {
            Error::Corrupt(format!("unknown signature format `{signature_format}`"))
        })?,
        timeout: settings.timeout(),
        max_retries: settings.max_retries,
        custom_headers: settings.custom_headers,
        verify_tls: verify_tls != 0,
        disabled_reason: row.try_get(column("webhook_disabled_reason").as_str())?,
        events: events_from_json(row.try_get(column("webhook_events").as_str())?),
        ordered: ordered != 0,
        name: None,
    };
    endpoint.expire_previous_secret(now_ms());
    Ok(Some(endpoint))
}

/// The inbox webhook's delivery settings as the inbox row stores them: `NULL` when none is set.
///
/// # Errors
/// [`Error::Corrupt`] if they do not serialize (they always do).
pub(super) fn endpoint_settings_json(settings: &EndpointSettings) -> Result<Option<String>, Error> {
    if *settings == EndpointSettings::default() {
        return Ok(None);
    }
    serde_json::to_string(settings)
        .map(Some)
        .map_err(|err| Error::Corrupt(err.to_string()))
}

/// Stored delivery settings. Ones that do not parse are an error rather than the defaults: a
/// dropped header could be the receiver's authentication.
fn endpoint_settings_from_json(text: Option<String>) -> Result<EndpointSettings, Error> {
    text.map_or(Ok(EndpointSettings::default()), |text| {
        serde_json::from_str(&text)
            .map_err(|err| Error::Corrupt(format!("inbox webhook settings: {err}")))
    })
}

/// The sender policy as the inbox row stores it: `NULL` when it is the default (no policy).
///
/// # Errors
/// [`Error::Corrupt`] if it does not serialize (it always does).
pub(crate) fn sender_policy_json(
    policy: &crate::model::SenderPolicy,
) -> Result<Option<String>, Error> {
    if *policy == crate::model::SenderPolicy::default() {
        return Ok(None);
    }
    serde_json::to_string(policy)
        .map(Some)
        .map_err(|err| Error::Corrupt(err.to_string()))
}

/// A stored sender policy. One that does not parse is an error, not "no policy": a silently
/// dropped block list would let through what the inbox refuses.
///
/// # Errors
/// [`Error::Corrupt`].
pub(crate) fn sender_policy_from_json(
    inbox_id: &str,
    json: Option<&str>,
) -> Result<crate::model::SenderPolicy, Error> {
    json.map_or(Ok(crate::model::SenderPolicy::default()), |json| {
        serde_json::from_str(json)
            .map_err(|err| Error::Corrupt(format!("sender policy of inbox {inbox_id}: {err}")))
    })
}

/// An inbox's stored notification rules. Rules that no longer parse are skipped with a warning
/// rather than failing every delivery of the inbox.
pub(super) fn rules_from_json(inbox_id: &str, json: Option<&str>) -> Vec<crate::model::Rule> {
    let Some(json) = json else {
        return Vec::new();
    };
    match serde_json::from_str::<Vec<Value>>(json) {
        Ok(values) => values
            .into_iter()
            .filter_map(|value| match serde_json::from_value(value) {
                Ok(rule) => Some(rule),
                Err(err) => {
                    tracing::warn!(inbox_id, error = %err, "skipping a stored rule that does not parse");
                    None
                }
            })
            .collect(),
        Err(err) => {
            tracing::warn!(inbox_id, error = %err, "stored notification rules are not a list");
            Vec::new()
        }
    }
}
