//! The statements behind provider ingress: per-inbox provider secrets, the calendar event types
//! each inbox receives, and the replay keys of provider events already processed. Part of
//! [`crate::db`], which owns every SQL statement.

use sqlx::Row;

use super::{Db, Error};
use crate::model::now_ms;
use crate::secrets::Place;

/// One calendar event type an inbox receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventTypeRow {
    /// `calcom:<id>` or `calendly:<event type URI>`.
    pub event_type: String,
    /// `config` (seeded from the config file at every start) or `api`.
    pub source: String,
}

/// Per-inbox provider secrets.
impl Db {
    /// The secrets valid now for one inbox and provider: the current one, and the previous one
    /// while its grace period runs.
    ///
    /// # Errors
    /// [`Error::Query`].
    pub async fn ingress_secrets(
        &self,
        inbox_id: &str,
        provider: &str,
        now: i64,
    ) -> Result<Vec<String>, Error> {
        let row = sqlx::query(
            "SELECT secret, previous_secret, previous_valid_until FROM ingress_secrets \
             WHERE inbox_id = $1 AND provider = $2",
        )
        .bind(inbox_id)
        .bind(provider)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else {
            return Ok(Vec::new());
        };
        let key = [inbox_id, provider];
        let stored: String = row.try_get("secret")?;
        let mut secrets = vec![self.secrets.open(Place::IngressSecret, &key, &stored)?];
        let previous: Option<String> = row.try_get("previous_secret")?;
        let valid_until: Option<i64> = row.try_get("previous_valid_until")?;
        if let (Some(previous), Some(until)) = (previous, valid_until)
            && until > now
        {
            secrets.push(self.secrets.open(Place::IngressSecret, &key, &previous)?);
        }
        Ok(secrets)
    }

    /// Sets an inbox's secret for a provider; the one it replaces stays valid until
    /// `previous_valid_until`.
    ///
    /// # Errors
    /// [`Error::Query`].
    pub async fn set_ingress_secret(
        &self,
        inbox_id: &str,
        provider: &str,
        secret: &str,
        previous_valid_until: i64,
    ) -> Result<(), Error> {
        let now = now_ms();
        // Sealed under the same place as the previous secret it becomes, so the statement can
        // move it there as it is.
        let secret = self
            .secrets
            .seal(Place::IngressSecret, &[inbox_id, provider], secret)?;
        sqlx::query(
            "INSERT INTO ingress_secrets (inbox_id, provider, secret, previous_secret, \
             previous_valid_until, updated_at) VALUES ($1, $2, $3, NULL, NULL, $4) \
             ON CONFLICT (inbox_id, provider) DO UPDATE SET \
             previous_secret = ingress_secrets.secret, previous_valid_until = $5, \
             secret = $3, updated_at = $4",
        )
        .bind(inbox_id)
        .bind(provider)
        .bind(&secret)
        .bind(now)
        .bind(previous_valid_until)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Removes an inbox's secret for a provider. Returns whether there was one.
    ///
    /// # Errors
    /// [`Error::Query`].
    pub async fn delete_ingress_secret(
        &self,
        inbox_id: &str,
        provider: &str,
    ) -> Result<bool, Error> {
        let result =
            sqlx::query("DELETE FROM ingress_secrets WHERE inbox_id = $1 AND provider = $2")
                .bind(inbox_id)
                .bind(provider)
                .execute(&self.pool)
                .await?;
        Ok(result.rows_affected() > 0)
    }

    /// The providers an inbox has a secret for.
    ///
    /// # Errors
    /// [`Error::Query`].
    pub async fn ingress_providers(&self, inbox_id: &str) -> Result<Vec<String>, Error> {
        let providers = sqlx::query_scalar(
            "SELECT provider FROM ingress_secrets WHERE inbox_id = $1 ORDER BY provider",
        )
        .bind(inbox_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(providers)
    }
}

/// Calendar event types → inboxes.
impl Db {
    /// The inbox that receives bookings of this event type, if it still exists.
    ///
    /// # Errors
    /// [`Error::Query`].
    pub async fn ingress_event_type_inbox(
        &self,
        event_type: &str,
    ) -> Result<Option<String>, Error> {
        let inbox = sqlx::query_scalar(
            "SELECT t.inbox_id FROM ingress_event_types t JOIN inboxes i ON i.id = t.inbox_id \
             WHERE t.event_type = $1",
        )
        .bind(event_type)
        .fetch_optional(&self.pool)
        .await?;
        Ok(inbox)
    }

    /// The event types an inbox receives, in order.
    ///
    /// # Errors
    /// [`Error::Query`].
    pub async fn ingress_event_types(&self, inbox_id: &str) -> Result<Vec<EventTypeRow>, Error> {
        let rows = sqlx::query(
            "SELECT event_type, source FROM ingress_event_types WHERE inbox_id = $1 \
             ORDER BY event_type",
        )
        .bind(inbox_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(EventTypeRow {
                    event_type: row.try_get("event_type")?,
                    source: row.try_get("source")?,
                })
            })
            .collect()
    }

    /// Makes the config file's `(event type, inbox)` pairs current: each is mapped to its inbox
    /// (the file wins over an API mapping, as it does for inboxes), and config entries the file
    /// no longer declares are removed. API entries are left alone.
    ///
    /// # Errors
    /// [`Error::Query`].
    pub async fn seed_config_event_types(&self, entries: &[(String, String)]) -> Result<(), Error> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        for (event_type, inbox_id) in entries {
            let previous: Option<String> = sqlx::query_scalar(
                "SELECT inbox_id FROM ingress_event_types WHERE event_type = $1",
            )
            .bind(event_type)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(previous) = previous.filter(|previous| previous != inbox_id) {
                tracing::warn!(
                    event_type,
                    from = previous,
                    to = inbox_id,
                    "calendar event type moved to the inbox the config file names"
                );
            }
            sqlx::query(
                "INSERT INTO ingress_event_types (event_type, inbox_id, source, created_at) \
                 VALUES ($1, $2, 'config', $3) ON CONFLICT (event_type) DO UPDATE SET \
                 inbox_id = $2, source = 'config'",
            )
            .bind(event_type)
            .bind(inbox_id)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        let seeded: Vec<String> = sqlx::query_scalar(
            "SELECT event_type FROM ingress_event_types WHERE source = 'config'",
        )
        .fetch_all(&mut *tx)
        .await?;
        for event_type in seeded {
            if !entries.iter().any(|(declared, _)| *declared == event_type) {
                sqlx::query("DELETE FROM ingress_event_types WHERE event_type = $1")
                    .bind(&event_type)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// Replaces the API-set event types of an inbox with `event_types`. Entries the config file
    /// gives this inbox stay. A type mapped to another existing inbox is refused as a
    /// [`Error::Conflict`] and nothing changes; one left behind by a deleted inbox is taken over.
    ///
    /// # Errors
    /// [`Error::Conflict`], [`Error::Query`].
    pub async fn set_ingress_event_types(
        &self,
        inbox_id: &str,
        event_types: &[String],
    ) -> Result<(), Error> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        for event_type in event_types {
            let owner: Option<String> = sqlx::query_scalar(
                "SELECT t.inbox_id FROM ingress_event_types t JOIN inboxes i ON i.id = t.inbox_id \
                 WHERE t.event_type = $1",
            )
            .bind(event_type)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(owner) = owner.filter(|owner| owner != inbox_id) {
                return Err(Error::Conflict(format!(
                    "`{event_type}` is already mapped to inbox `{owner}`"
                )));
            }
        }
        sqlx::query("DELETE FROM ingress_event_types WHERE inbox_id = $1 AND source = 'api'")
            .bind(inbox_id)
            .execute(&mut *tx)
            .await?;
        for event_type in event_types {
            sqlx::query(
                "INSERT INTO ingress_event_types (event_type, inbox_id, source, created_at) \
                 VALUES ($1, $2, 'api', $3) ON CONFLICT (event_type) DO UPDATE SET \
                 inbox_id = $2, source = CASE WHEN ingress_event_types.inbox_id = $2 \
                 THEN ingress_event_types.source ELSE 'api' END",
            )
            .bind(event_type)
            .bind(inbox_id)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

/// Replay keys of provider events already processed, per inbox.
impl Db {
    /// Whether `inbox_id` already processed this provider event (keys recorded before replay
    /// keys named the inbox count for every inbox).
    ///
    /// # Errors
    /// [`Error::Query`].
    pub async fn ingress_seen(
        &self,
        provider: &str,
        inbox_id: &str,
        event_key: &str,
    ) -> Result<bool, Error> {
        let seen: Option<i64> = sqlx::query_scalar(
            "SELECT received_at FROM ingress_replays WHERE provider = $1 \
             AND inbox_id IN ($2, '') AND event_key = $3 LIMIT 1",
        )
        .bind(provider)
        .bind(inbox_id)
        .bind(event_key)
        .fetch_optional(&self.pool)
        .await?;
        Ok(seen.is_some())
    }

    /// Records a processed provider event for an inbox (a concurrent duplicate is ignored).
    ///
    /// # Errors
    /// [`Error::Query`].
    pub async fn mark_ingress_seen(
        &self,
        provider: &str,
        inbox_id: &str,
        event_key: &str,
    ) -> Result<(), Error> {
        sqlx::query(
            "INSERT INTO ingress_replays (provider, inbox_id, event_key, received_at) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (provider, inbox_id, event_key) DO NOTHING",
        )
        .bind(provider)
        .bind(inbox_id)
        .bind(event_key)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Forgets replay keys recorded before `before` (ms). Returns how many.
    ///
    /// # Errors
    /// [`Error::Query`].
    pub async fn prune_ingress_seen(&self, before: i64) -> Result<u64, Error> {
        let result = sqlx::query("DELETE FROM ingress_replays WHERE received_at < $1")
            .bind(before)
            .execute(&self.pool)
            .await?;
        Ok(result.rows_affected())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DatabaseConfig;

    /// Replay keys are per inbox, keys from before they named one count for every inbox, and
    /// pruning forgets only keys older than the cutoff.
    #[tokio::test]
    async fn replay_keys_are_per_inbox_and_pruned_by_age() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Db::connect(&DatabaseConfig {
            url: format!("sqlite://{}", dir.path().join("ingress.db").display()),
            ..DatabaseConfig::default()
        })
        .await
        .expect("db");
        db.migrate().await.expect("migrate");

        db.mark_ingress_seen("calcom", "a", "evt-1")
            .await
            .expect("mark");
        assert!(db.ingress_seen("calcom", "a", "evt-1").await.expect("seen"));
        assert!(!db.ingress_seen("calcom", "b", "evt-1").await.expect("seen"));
        assert!(
            !db.ingress_seen("calendly", "a", "evt-1")
                .await
                .expect("seen")
        );

        sqlx::query(
            "INSERT INTO ingress_replays (provider, inbox_id, event_key, received_at) \
             VALUES ('calcom', '', 'legacy', 1)",
        )
        .execute(&db.pool)
        .await
        .expect("legacy row");
        assert!(
            db.ingress_seen("calcom", "b", "legacy")
                .await
                .expect("seen")
        );

        assert_eq!(db.prune_ingress_seen(2).await.expect("prune"), 1);
        assert!(
            !db.ingress_seen("calcom", "b", "legacy")
                .await
                .expect("seen")
        );
        assert!(db.ingress_seen("calcom", "a", "evt-1").await.expect("seen"));
        assert_eq!(db.prune_ingress_seen(now_ms() + 1).await.expect("prune"), 1);
        assert!(!db.ingress_seen("calcom", "a", "evt-1").await.expect("seen"));
    }
}
