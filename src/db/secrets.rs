//! The stored secrets as a whole (their columns are listed here; each value is sealed and
//! opened by [`crate::secrets`]): the startup check that every encrypted one opens with the
//! configured keys, and re-encrypting them all under the current key (`mxhook
//! rotate-secrets-key`). Part of [`crate::db`], which owns every SQL statement.

use sqlx::Row;

use super::domains::{stored_template, template_from_json};
use super::{Db, Error, placeholders};
use crate::secrets::{Keyring, Place, Stored, stored_key_id};

/// How many rows one rotation transaction changes at most: short transactions, so a running
/// gateway's writes wait for a few milliseconds at most.
const BATCH: usize = 100;

/// A table with secret columns: its row key (which the secrets are bound to) and the columns.
struct SecretTable {
    place: Place,
    table: &'static str,
    keys: &'static [&'static str],
    columns: &'static [&'static str],
}

const SECRET_TABLES: [SecretTable; 3] = [
    SecretTable {
        place: Place::InboxWebhook,
        table: "inboxes",
        keys: &["id"],
        columns: &["webhook_secret", "webhook_previous_secret"],
    },
    SecretTable {
        place: Place::IngressSecret,
        table: "ingress_secrets",
        keys: &["inbox_id", "provider"],
        columns: &["secret", "previous_secret"],
    },
    SecretTable {
        place: Place::GatewayKey,
        table: "gateway_keys",
        keys: &["name"],
        columns: &["secret", "previous_secret"],
    },
];

/// What the rotation did with the values of one place.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct PlaceCounts {
    /// Plaintext values now encrypted.
    pub encrypted: u64,
    /// Values under an earlier key now under the current one.
    pub reencrypted: u64,
    /// Values already under the current key, left as they are.
    pub unchanged: u64,
    /// Values another writer changed between the read and the write: left as that writer
    /// wrote them (a node with the current key writes under it; run the command again to
    /// catch any other).
    pub changed_meanwhile: u64,
}

/// What `mxhook rotate-secrets-key` did, by place (see [`Place::as_str`]).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RotationReport {
    /// The id of the key every value is now under.
    pub key_id: String,
    pub places: std::collections::BTreeMap<&'static str, PlaceCounts>,
}

impl RotationReport {
    /// Values changed by this run.
    pub fn changed(&self) -> u64 {
        self.places
            .values()
            .map(|counts| counts.encrypted + counts.reencrypted)
            .sum()
    }

    /// Values a concurrent write kept this run from changing.
    pub fn changed_meanwhile(&self) -> u64 {
        self.places
            .values()
            .map(|counts| counts.changed_meanwhile)
            .sum()
    }
}

/// One value to rewrite: the column, the row key, the stored value read and its replacement.
struct Rewrite {
    column: &'static str,
    key: Vec<String>,
    old: String,
    new: String,
    reencrypted: bool,
}

impl Db {
    /// Checks that every encrypted secret in the database is under a configured key, so a node
    /// missing a key fails at startup, naming `secrets.key` and the key id, instead of failing
    /// each delivery and each provider request.
    ///
    /// # Errors
    /// [`Error::Secret`] ([`crate::secrets::Error::UnknownKey`] or `Malformed`), [`Error::Query`].
    pub async fn check_secret_keys(&self) -> Result<(), Error> {
        for table in &SECRET_TABLES {
            for column in table.columns {
                // The prefix up to the key id: one row per key, however many values.
                let heads: Vec<String> = sqlx::query_scalar(&format!(
                    "SELECT DISTINCT substr({column}, 1, 16) FROM {} WHERE {column} LIKE 'enc:%'",
                    table.table
                ))
                .fetch_all(&self.pool)
                .await?;
                for head in heads {
                    self.known_key(&head, table.place)?;
                }
            }
        }
        let templates = sqlx::query(
            "SELECT name, template_json FROM domains WHERE template_json LIKE '%enc:%'",
        )
        .fetch_all(&self.pool)
        .await?;
        for row in templates {
            let name: String = row.try_get("name")?;
            let json: String = row.try_get("template_json")?;
            template_from_json(&self.secrets, &name, &json)?;
        }
        Ok(())
    }

    fn known_key(&self, stored: &str, place: Place) -> Result<(), Error> {
        match stored_key_id(stored, place)? {
            Some(id) if !self.secrets.has_key(&id) => {
                Err(Error::Secret(crate::secrets::Error::UnknownKey {
                    key_id: id,
                    place: place.to_string(),
                }))
            }
            _ => Ok(()),
        }
    }

    /// Re-encrypts every stored secret under the current key (plaintext ones included), a batch
    /// of rows per transaction. Each value is replaced only if it is still what was read, so a
    /// secret rotated meanwhile through the API is never overwritten with the old one. Safe
    /// while gateways run: the secrets themselves do not change, only their stored form.
    ///
    /// # Errors
    /// [`Error::Secret`] without a current key ([`crate::secrets::Error::NoKey`]) or when a value
    /// does not open (its key is not configured); [`Error::Query`].
    pub async fn rotate_secrets(&self) -> Result<RotationReport, Error> {
        let current = self
            .secrets
            .current_id()
            .ok_or(crate::secrets::Error::NoKey)?
            .to_owned();
        let mut report = RotationReport {
            key_id: current.clone(),
            places: std::collections::BTreeMap::new(),
        };
        for table in &SECRET_TABLES {
            let counts = self.rotate_table(table, &current).await?;
            report.places.insert(table.place.as_str(), counts);
        }
        let counts = self.rotate_templates(&current).await?;
        report.places.insert(Place::DomainTemplate.as_str(), counts);
        Ok(report)
    }

    async fn rotate_table(&self, table: &SecretTable, current: &str) -> Result<PlaceCounts, Error> {
        let keys = table.keys.join(", ");
        let columns = table.columns.join(", ");
        let mut counts = PlaceCounts::default();
        let mut cursor: Option<Vec<String>> = None;
        loop {
            let after = match cursor {
                Some(_) => format!("WHERE ({keys}) > ({})", placeholders(1, table.keys.len())),
                None => String::new(),
            };
            let select = format!(
                "SELECT {keys}, {columns} FROM {} {after} ORDER BY {keys} LIMIT {BATCH}",
                table.table
            );
            let mut query = sqlx::query(&select);
            for value in cursor.iter().flatten() {
                query = query.bind(value.clone());
            }
            let rows = query.fetch_all(&self.pool).await?;
            let mut rewrites = Vec::new();
            for row in &rows {
                let key = table
                    .keys
                    .iter()
                    .map(|column| row.try_get::<String, _>(*column))
                    .collect::<Result<Vec<_>, _>>()?;
                let parts: Vec<&str> = key.iter().map(String::as_str).collect();
                for &column in table.columns {
                    let stored: Option<String> = row.try_get(column)?;
                    let Some(stored) = stored else { continue };
                    if let Some(rewrite) =
                        self.rewrite(table.place, &parts, column, stored, current, &mut counts)?
                    {
                        rewrites.push(rewrite);
                    }
                }
                cursor = Some(key);
            }
            self.apply(table, rewrites, &mut counts).await?;
            if rows.len() < BATCH {
                return Ok(counts);
            }
        }
    }

    /// What to write for one stored value: `None` when it is already under `current`.
    fn rewrite(
        &self,
        place: Place,
        key: &[&str],
        column: &'static str,
        stored: String,
        current: &str,
        counts: &mut PlaceCounts,
    ) -> Result<Option<Rewrite>, Error> {
        let reencrypted = match Keyring::status(&stored, place)? {
            Stored::Encrypted(id) if id == current => {
                counts.unchanged += 1;
                return Ok(None);
            }
            Stored::Encrypted(_) => true,
            Stored::Plaintext => false,
        };
        let secret = self.secrets.open(place, key, &stored)?;
        Ok(Some(Rewrite {
            column,
            key: key.iter().map(|part| (*part).to_owned()).collect(),
            new: self.secrets.seal(place, key, &secret)?,
            old: stored,
            reencrypted,
        }))
    }

    async fn apply(
        &self,
        table: &SecretTable,
        rewrites: Vec<Rewrite>,
        counts: &mut PlaceCounts,
    ) -> Result<(), Error> {
        if rewrites.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        for rewrite in rewrites {
            let column = rewrite.column;
            let matches: Vec<String> = table
                .keys
                .iter()
                .enumerate()
                .map(|(idx, key)| format!("{key} = ${}", idx + 2))
                .collect();
            let update = format!(
                "UPDATE {} SET {column} = $1 WHERE {} AND {column} = ${}",
                table.table,
                matches.join(" AND "),
                table.keys.len() + 2
            );
            let mut query = sqlx::query(&update).bind(rewrite.new);
            for part in rewrite.key {
                query = query.bind(part);
            }
            let written = query
                .bind(rewrite.old)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            match (written, rewrite.reencrypted) {
                (0, _) => counts.changed_meanwhile += 1,
                (_, true) => counts.reencrypted += 1,
                (_, false) => counts.encrypted += 1,
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// [`Self::rotate_table`] for the webhook secret inside each domain's template JSON.
    async fn rotate_templates(&self, current: &str) -> Result<PlaceCounts, Error> {
        let place = Place::DomainTemplate;
        let mut counts = PlaceCounts::default();
        let mut cursor: Option<String> = None;
        loop {
            let rows = match &cursor {
                Some(after) => {
                    sqlx::query(&format!(
                        "SELECT name, template_json FROM domains WHERE name > $1 \
                         ORDER BY name LIMIT {BATCH}"
                    ))
                    .bind(after.clone())
                    .fetch_all(&self.pool)
                    .await?
                }
                None => {
                    sqlx::query(&format!(
                        "SELECT name, template_json FROM domains ORDER BY name LIMIT {BATCH}"
                    ))
                    .fetch_all(&self.pool)
                    .await?
                }
            };
            let mut rewrites = Vec::new();
            for row in &rows {
                let name: String = row.try_get("name")?;
                let stored: String = row.try_get("template_json")?;
                let raw: serde_json::Value =
                    serde_json::from_str(&stored).unwrap_or(serde_json::Value::Null);
                if let Some(secret) = raw.get("webhook_secret").and_then(|v| v.as_str()) {
                    let reencrypted = match Keyring::status(secret, place)? {
                        Stored::Encrypted(id) if id == current => None,
                        Stored::Encrypted(_) => Some(true),
                        Stored::Plaintext => Some(false),
                    };
                    match reencrypted {
                        None => counts.unchanged += 1,
                        Some(reencrypted) => {
                            let template = template_from_json(&self.secrets, &name, &stored)?;
                            rewrites.push(Rewrite {
                                column: "template_json",
                                new: stored_template(&self.secrets, &name, &template)?,
                                key: vec![name.clone()],
                                old: stored,
                                reencrypted,
                            });
                        }
                    }
                }
                cursor = Some(name);
            }
            let table = SecretTable {
                place,
                table: "domains",
                keys: &["name"],
                columns: &["template_json"],
            };
            self.apply(&table, rewrites, &mut counts).await?;
            if rows.len() < BATCH {
                return Ok(counts);
            }
        }
    }
}
