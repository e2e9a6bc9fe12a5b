//! Endpoint health: the record of how long an endpoint has been failing, and switching an
//! endpoint off (with its reason) when it failed too long or answered 410. Part of
//! [`crate::db`], which owns every SQL statement.

use super::inboxes::bump_directory_version;
use super::jobs::{INSERT_RAISED_DELIVERY, RaisedEvent};
use super::{Db, Error};
use crate::model::{Rule, now_ms};

impl Db {
    /// Switches off the endpoint a job delivers to (the inbox webhook, or a rule's webhook
    /// channel) and stores why. Its pending jobs fall due at once, so they dead-letter with the
    /// reason instead of waiting out their retry delays.
    ///
    /// # Errors
    /// [`Error::Query`].
    ///
    /// `raised` (its `endpoint.disabled` event) is committed with the switch-off, or not at all.
    pub async fn disable_endpoint(
        &self,
        inbox_id: &str,
        endpoint_ref: &str,
        reason: &str,
        raised: Option<&RaisedEvent>,
    ) -> Result<(), Error> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        // The disabled endpoint must stop receiving new jobs on every node, not only this one.
        bump_directory_version(&mut tx).await?;
        if let Some(rule_id) = endpoint_ref.strip_prefix("rule:") {
            // The write comes first (see record_attempt): touch the row, then read it.
            sqlx::query("UPDATE inboxes SET updated_at = $1 WHERE id = $2")
                .bind(now)
                .bind(inbox_id)
                .execute(&mut *tx)
                .await?;
            let stored: Option<Option<String>> =
                sqlx::query_scalar("SELECT notifications_json FROM inboxes WHERE id = $1")
                    .bind(inbox_id)
                    .fetch_optional(&mut *tx)
                    .await?;
            if let Some(Ok(mut rules)) = stored
                .flatten()
                .map(|json| serde_json::from_str::<Vec<Rule>>(&json))
            {
                for rule in rules.iter_mut().filter(|rule| rule.id == rule_id) {
                    if let Some(webhook) = rule.channels.webhook.as_mut() {
                        webhook.enabled = false;
                        webhook.disabled_reason = Some(reason.to_owned());
                    }
                }
                let json =
                    serde_json::to_string(&rules).map_err(|err| Error::Corrupt(err.to_string()))?;
                sqlx::query("UPDATE inboxes SET notifications_json = $1 WHERE id = $2")
                    .bind(json)
                    .bind(inbox_id)
                    .execute(&mut *tx)
                    .await?;
            }
        } else {
            sqlx::query(
                "UPDATE inboxes SET webhook_enabled = 0, webhook_disabled_reason = $1, \
                 updated_at = $2 WHERE id = $3",
            )
            .bind(reason)
            .bind(now)
            .bind(inbox_id)
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query(
            "UPDATE deliveries SET next_attempt_at = $1 WHERE inbox_id = $2 \
             AND endpoint_ref = $3 AND channel = 'webhook' AND status = 'pending'",
        )
        .bind(now)
        .bind(inbox_id)
        .bind(endpoint_ref)
        .execute(&mut *tx)
        .await?;
        if let Some(raised) = raised {
            for delivery in &raised.deliveries {
                sqlx::query(INSERT_RAISED_DELIVERY)
                    .bind(&delivery.id)
                    .bind(&raised.message_id)
                    .bind(&raised.inbox_id)
                    .bind(&raised.event_id)
                    .bind(delivery.channel.as_str())
                    .bind(&delivery.endpoint_ref)
                    .bind(&delivery.target)
                    .bind(now)
                    .bind(&raised.event_json)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        // Enabled again later, the endpoint starts with a clean record.
        sqlx::query("DELETE FROM endpoint_failures WHERE inbox_id = $1 AND endpoint_ref = $2")
            .bind(inbox_id)
            .bind(endpoint_ref)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Notes the outcome of a webhook attempt for the failing-period check. A success clears
    /// the endpoint's record; a failure returns since when the endpoint has been failing
    /// without a success (this failure's time when it is the first).
    ///
    /// # Errors
    /// [`Error::Query`].
    pub async fn note_endpoint_outcome(
        &self,
        inbox_id: &str,
        endpoint_ref: &str,
        url: &str,
        success: bool,
        now: i64,
    ) -> Result<Option<i64>, Error> {
        // A read first: nearly every success finds nothing to clear and nearly every failure
        // of a failing endpoint finds its record, and a read does not take SQLite's write lock.
        let failing_since: Option<i64> = sqlx::query_scalar(
            "SELECT failing_since FROM endpoint_failures WHERE inbox_id = $1 \
             AND endpoint_ref = $2 AND url = $3",
        )
        .bind(inbox_id)
        .bind(endpoint_ref)
        .bind(url)
        .fetch_optional(&self.pool)
        .await?;
        match (success, failing_since) {
            (true, None) => Ok(None),
            (true, Some(_)) => {
                sqlx::query(
                    "DELETE FROM endpoint_failures WHERE inbox_id = $1 AND endpoint_ref = $2 \
                     AND url = $3",
                )
                .bind(inbox_id)
                .bind(endpoint_ref)
                .bind(url)
                .execute(&self.pool)
                .await?;
                Ok(None)
            }
            (false, Some(since)) => Ok(Some(since)),
            (false, None) => {
                // Another node may record the same first failure at the same moment; either
                // time will do, so the conflict is ignored.
                sqlx::query(
                    "INSERT INTO endpoint_failures (inbox_id, endpoint_ref, url, failing_since) \
                     VALUES ($1, $2, $3, $4) ON CONFLICT (inbox_id, endpoint_ref, url) DO NOTHING",
                )
                .bind(inbox_id)
                .bind(endpoint_ref)
                .bind(url)
                .bind(now)
                .execute(&self.pool)
                .await?;
                Ok(Some(now))
            }
        }
    }
}
