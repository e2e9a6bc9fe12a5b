//! Domains: the `[[domain]]` tables (synced at start) and the ones the management API manages,
//! and the atomic creation of an inbox on a domain's first mail to a new local part. Part of
//! [`crate::db`], which owns every SQL statement.
//!
//! Every change here moves the directory's change marker in its own transaction (see
//! [`super::inboxes::bump_directory_version`]), so every node's RCPT directory learns of it.

use serde_json::{Map, Value};
use sqlx::Row;
use sqlx::any::AnyRow;

use super::inboxes::{bump_directory_version, endpoint_settings_json, events_json};
use super::{Db, Error};
use crate::config::{DomainConfig, InboxConfig};
use crate::model::now_ms;
use crate::secrets::{Keyring, Place};

/// A domain as stored, its template's secret included; the API decides what of it to show.
#[derive(Clone)]
pub struct DomainRow {
    /// Lowercase, without a trailing dot.
    pub name: String,
    /// `config` (declared in the config file) or `api`.
    pub source: String,
    pub catch_all: Option<String>,
    pub auto_create: bool,
    pub max_auto_inboxes: u64,
    pub auto_create_per_minute: u64,
    /// The template's keys as given (`[domain.template]` or the API's `template`).
    pub template: Map<String, Value>,
    pub created_at: i64,
    pub updated_at: i64,
}

impl std::fmt::Debug for DomainRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DomainRow")
            .field("name", &self.name)
            .field("source", &self.source)
            .field("catch_all", &self.catch_all)
            .field("auto_create", &self.auto_create)
            .field("max_auto_inboxes", &self.max_auto_inboxes)
            .field("auto_create_per_minute", &self.auto_create_per_minute)
            .field("template", &self.template.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// What a domain change did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DomainChange {
    Created,
    Updated,
    Deleted,
    NotFound,
    /// The config file declares the domain: the API does not change it.
    ConfigOwned,
}

/// What an attempt to create a domain's inbox on first mail came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AutoCreate {
    /// Made now, by this call.
    Created,
    /// The address already belongs to this inbox (another node made it first).
    Exists(String),
    /// An inbox with the id exists without the address: the local part is not for auto-create.
    IdTaken,
    /// The domain has `max_auto_inboxes` auto-created inboxes; nothing was made.
    CapReached,
    /// `auto_create_per_minute` inboxes were made for the domain in the last 60 seconds.
    RateLimited,
}

const DOMAIN_COLUMNS: &str = "name, source, catch_all, auto_create, max_auto_inboxes, \
    auto_create_per_minute, template_json, created_at, updated_at";

impl Db {
    /// Makes the `domains` table hold exactly the config file's domains among its config-owned
    /// ones: each is written (replacing what an earlier start wrote), and a config domain the
    /// file no longer declares is removed, as its mail would otherwise still be taken.
    ///
    /// # Errors
    /// [`Error::Query`].
    pub async fn sync_config_domains(&self, domains: &[DomainConfig]) -> Result<(), Error> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        bump_directory_version(&mut tx).await?;
        let mut names = Vec::with_capacity(domains.len());
        for domain in domains {
            let name = crate::config::domain::normalize_domain(&domain.name)
                .unwrap_or_else(|| domain.name.to_lowercase());
            sqlx::query(
                "INSERT INTO domains (name, source, catch_all, auto_create, max_auto_inboxes, \
                 auto_create_per_minute, template_json, created_at, updated_at) \
                 VALUES ($1, 'config', $2, $3, $4, $5, $6, $7, $7) \
                 ON CONFLICT (name) DO UPDATE SET source = 'config', catch_all = $2, \
                 auto_create = $3, max_auto_inboxes = $4, auto_create_per_minute = $5, \
                 template_json = $6, updated_at = $7",
            )
            .bind(&name)
            .bind(domain.catch_all.clone())
            .bind(i64::from(domain.auto_create))
            .bind(clamp_i64(domain.max_auto_inboxes))
            .bind(clamp_i64(domain.auto_create_per_minute))
            .bind(stored_template(&self.secrets, &name, &domain.template)?)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            names.push(name);
        }
        let stored: Vec<String> =
            sqlx::query_scalar("SELECT name FROM domains WHERE source = 'config'")
                .fetch_all(&mut *tx)
                .await?;
        for name in stored.iter().filter(|name| !names.contains(name)) {
            sqlx::query("DELETE FROM domains WHERE name = $1")
                .bind(name)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Every domain, by name.
    ///
    /// # Errors
    /// [`Error::Query`] or [`Error::Corrupt`].
    pub async fn list_domains(&self) -> Result<Vec<DomainRow>, Error> {
        let rows = sqlx::query(&format!(
            "SELECT {DOMAIN_COLUMNS} FROM domains ORDER BY name"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| domain_from_row(&self.secrets, row))
            .collect()
    }

    /// One domain (`name` already normalized).
    ///
    /// # Errors
    /// [`Error::Query`] or [`Error::Corrupt`].
    pub async fn get_domain(&self, name: &str) -> Result<Option<DomainRow>, Error> {
        let row = sqlx::query(&format!(
            "SELECT {DOMAIN_COLUMNS} FROM domains WHERE name = $1"
        ))
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref()
            .map(|row| domain_from_row(&self.secrets, row))
            .transpose()
    }

    /// How many auto-created inboxes each domain has, by domain name.
    ///
    /// # Errors
    /// [`Error::Query`].
    pub async fn auto_inbox_counts(&self) -> Result<std::collections::HashMap<String, u64>, Error> {
        let rows = sqlx::query(
            "SELECT auto_domain, COUNT(*) AS inboxes FROM inboxes \
             WHERE auto_domain IS NOT NULL GROUP BY auto_domain",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut counts = std::collections::HashMap::with_capacity(rows.len());
        for row in rows {
            let inboxes: i64 = row.try_get("inboxes")?;
            counts.insert(
                row.try_get("auto_domain")?,
                u64::try_from(inboxes).unwrap_or(0),
            );
        }
        Ok(counts)
    }

    /// Creates or replaces an API-managed domain (`created_at`/`updated_at` of `domain` are
    /// ignored). A config-declared domain is left as it is.
    ///
    /// # Errors
    /// [`Error::Query`].
    pub async fn put_domain(&self, domain: &DomainRow) -> Result<DomainChange, Error> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        bump_directory_version(&mut tx).await?;
        let source: Option<String> =
            sqlx::query_scalar("SELECT source FROM domains WHERE name = $1")
                .bind(&domain.name)
                .fetch_optional(&mut *tx)
                .await?;
        if source.as_deref() == Some("config") {
            tx.rollback().await?;
            return Ok(DomainChange::ConfigOwned);
        }
        sqlx::query(
            "INSERT INTO domains (name, source, catch_all, auto_create, max_auto_inboxes, \
             auto_create_per_minute, template_json, created_at, updated_at) \
             VALUES ($1, 'api', $2, $3, $4, $5, $6, $7, $7) \
             ON CONFLICT (name) DO UPDATE SET catch_all = $2, auto_create = $3, \
             max_auto_inboxes = $4, auto_create_per_minute = $5, template_json = $6, \
             updated_at = $7",
        )
        .bind(&domain.name)
        .bind(domain.catch_all.clone())
        .bind(i64::from(domain.auto_create))
        .bind(clamp_i64(domain.max_auto_inboxes))
        .bind(clamp_i64(domain.auto_create_per_minute))
        .bind(stored_template(
            &self.secrets,
            &domain.name,
            &domain.template,
        )?)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(if source.is_some() {
            DomainChange::Updated
        } else {
            DomainChange::Created
        })
    }

    /// Deletes an API-managed domain. Its inboxes, auto-created ones included, stay: they are
    /// ordinary inboxes and keep their own addresses.
    ///
    /// # Errors
    /// [`Error::Query`].
    pub async fn delete_domain(&self, name: &str) -> Result<DomainChange, Error> {
        let mut tx = self.pool.begin().await?;
        bump_directory_version(&mut tx).await?;
        let source: Option<String> =
            sqlx::query_scalar("SELECT source FROM domains WHERE name = $1")
                .bind(name)
                .fetch_optional(&mut *tx)
                .await?;
        let refused = match source.as_deref() {
            None => Some(DomainChange::NotFound),
            Some("config") => Some(DomainChange::ConfigOwned),
            Some(_) => None,
        };
        if let Some(refused) = refused {
            tx.rollback().await?;
            return Ok(refused);
        }
        sqlx::query("DELETE FROM domains WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(DomainChange::Deleted)
    }

    /// Creates `inbox` (its id and one address set, the rest from the domain's template) for
    /// `domain` unless its address already has an inbox, the id is taken, the domain is at
    /// `max_auto_inboxes` or made `per_minute` inboxes in the last minute.
    ///
    /// Atomic across nodes: the transaction takes the directory marker's row first, as every
    /// inbox change does, so two nodes creating the same inbox run one after the other and the
    /// second finds the address taken ([`AutoCreate::Exists`]); the cap and rate counts are read
    /// under that lock too. Nothing is written unless the inbox is made.
    ///
    /// # Errors
    /// [`Error::Query`] or [`Error::Corrupt`].
    pub async fn auto_create_inbox(
        &self,
        domain: &str,
        inbox: &InboxConfig,
        max_auto_inboxes: u64,
        per_minute: u64,
    ) -> Result<AutoCreate, Error> {
        let Some(address) = inbox.addresses.first() else {
            return Err(Error::Corrupt(
                "an auto-created inbox needs an address".to_owned(),
            ));
        };
        let now = now_ms();
        let secret = self.secrets.seal_opt(
            Place::InboxWebhook,
            &[inbox.id.as_str()],
            inbox.webhook_secret.as_deref(),
        )?;
        let mut tx = self.pool.begin().await?;
        bump_directory_version(&mut tx).await?;
        let owner: Option<String> =
            sqlx::query_scalar("SELECT inbox_id FROM inbox_addresses WHERE address = $1")
                .bind(address)
                .fetch_optional(&mut *tx)
                .await?;
        if let Some(owner) = owner {
            tx.rollback().await?;
            return Ok(AutoCreate::Exists(owner));
        }
        let counts = sqlx::query(
            "SELECT COUNT(*) AS total, \
             COALESCE(SUM(CASE WHEN created_at > $2 THEN 1 ELSE 0 END), 0) AS recent \
             FROM inboxes WHERE auto_domain = $1",
        )
        .bind(domain)
        .bind(now - 60_000)
        .fetch_one(&mut *tx)
        .await?;
        let total: i64 = counts.try_get("total")?;
        let recent: i64 = counts.try_get("recent")?;
        // Refusals roll back at once: the marker's row lock is held until they do.
        if total >= clamp_i64(max_auto_inboxes) {
            tx.rollback().await?;
            return Ok(AutoCreate::CapReached);
        }
        if recent >= clamp_i64(per_minute) {
            tx.rollback().await?;
            return Ok(AutoCreate::RateLimited);
        }
        let inserted = sqlx::query(
            "INSERT INTO inboxes (id, source, auto_domain, status, webhook_url, webhook_enabled, \
             webhook_secret, webhook_signature, webhook_payload, webhook_verify_tls, \
             webhook_ordered, created_at, updated_at, webhook_signature_header, \
             webhook_signature_format, sender_policy, webhook_events, webhook_endpoint_json) \
             VALUES ($1, 'auto', $2, 'enabled', $3, 1, $4, $5, $6, $7, $8, $9, $9, $10, $11, \
             $12, $13, $14) \
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(&inbox.id)
        .bind(domain)
        .bind(inbox.webhook_url.clone())
        .bind(secret)
        .bind(inbox.signature.as_str())
        .bind(inbox.payload.as_str())
        .bind(i64::from(inbox.verify_tls))
        .bind(i64::from(inbox.ordered))
        .bind(now)
        .bind(inbox.signature_header.clone())
        .bind(inbox.signature_format.as_str())
        .bind(super::inboxes::sender_policy_json(&inbox.sender_policy())?)
        .bind(events_json(&inbox.events()))
        .bind(endpoint_settings_json(&inbox.endpoint_settings())?)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted == 0 {
            tx.rollback().await?;
            return Ok(AutoCreate::IdTaken);
        }
        sqlx::query("INSERT INTO inbox_addresses (address, inbox_id) VALUES ($1, $2)")
            .bind(address)
            .bind(&inbox.id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(AutoCreate::Created)
    }
}

/// Counts and limits are `u64` in the config and `BIGINT` in the database; nothing sensible is
/// past `i64::MAX`.
fn clamp_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// The template's key that holds a secret.
const TEMPLATE_SECRET: &str = "webhook_secret";

/// The stored form of a domain's template: its webhook secret sealed (see [`crate::secrets`]),
/// bound to the domain's name.
///
/// # Errors
/// [`Error::Secret`].
pub(super) fn stored_template(
    secrets: &Keyring,
    name: &str,
    template: &Map<String, Value>,
) -> Result<String, Error> {
    let mut template = template.clone();
    if let Some(Value::String(secret)) = template.get(TEMPLATE_SECRET) {
        let sealed = secrets.seal(Place::DomainTemplate, &[name], secret)?;
        template.insert(TEMPLATE_SECRET.to_owned(), Value::String(sealed));
    }
    Ok(Value::Object(template).to_string())
}

/// A stored template as given, its webhook secret decrypted.
///
/// # Errors
/// [`Error::Corrupt`] when it is not a JSON object, [`Error::Secret`].
pub(super) fn template_from_json(
    secrets: &Keyring,
    name: &str,
    template_json: &str,
) -> Result<Map<String, Value>, Error> {
    let mut template = match serde_json::from_str::<Value>(template_json) {
        Ok(Value::Object(template)) => template,
        _ => {
            return Err(Error::Corrupt(format!(
                "the template of domain {name} is not a JSON object"
            )));
        }
    };
    if let Some(Value::String(stored)) = template.get(TEMPLATE_SECRET) {
        let secret = secrets.open(Place::DomainTemplate, &[name], stored)?;
        template.insert(TEMPLATE_SECRET.to_owned(), Value::String(secret));
    }
    Ok(template)
}

fn domain_from_row(secrets: &Keyring, row: &AnyRow) -> Result<DomainRow, Error> {
    let name: String = row.try_get("name")?;
    let template_json: String = row.try_get("template_json")?;
    let template = template_from_json(secrets, &name, &template_json)?;
    let count = |column: &str| -> Result<u64, Error> {
        let value: i64 = row.try_get(column)?;
        Ok(u64::try_from(value).unwrap_or(0))
    };
    Ok(DomainRow {
        source: row.try_get("source")?,
        catch_all: row.try_get("catch_all")?,
        auto_create: row.try_get::<i64, _>("auto_create")? != 0,
        max_auto_inboxes: count("max_auto_inboxes")?,
        auto_create_per_minute: count("auto_create_per_minute")?,
        template,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        name,
    })
}
