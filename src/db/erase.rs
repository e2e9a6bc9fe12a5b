//! Removing and releasing stored messages: the erasure of one message (an erasure request, the
//! retention pruner, an inbox purge), the release of a quarantined one, and the reads the
//! store check needs. Part of [`crate::db`], which owns every SQL statement.
//!
//! An erasure removes the row (with its event), its deliveries, their attempts and the
//! duplicate fingerprint it held in one transaction; the caller removes the raw object after
//! the commit. A crash in between leaves an object no row points at, never a row without its
//! object; `mxhook check-store` finds and removes such objects.
//!
//! **Never sent after the erasure.** A delivery that some node holds a live lease on may be in
//! flight: its dispatcher has the event in memory and would send it whatever the database now
//! says. So the transaction first locks every delivery row of the message (a claim on
//! PostgreSQL skips locked rows, and one that locked a row first is waited for, its lease then
//! seen), and when one is leased and its lease has not run out, nothing is removed and the
//! caller is told to wait: the attempt ends in a record (which clears the lease) well within
//! the lease, and a lease that runs out belongs to a node that died.

use sqlx::Row;

use super::jobs::NewDelivery;
use super::{Backend, Db, Error};

/// What an erasure came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Erasure {
    /// The rows are gone; the raw object under this key is next.
    Erased { storage_key: String },
    /// There is no such message.
    Missing,
    /// A delivery of it is leased to a node until this time (ms): try again later.
    InFlight { leased_until: i64 },
    /// Only when asked to keep such messages: a delivery of it is still pending.
    Pending,
}

/// The one message an erasure removes: `$1` message id.
const LOCK_DELIVERIES: &str = "UPDATE deliveries SET updated_at = updated_at \
    WHERE message_id = $1 RETURNING status, locked_until";

const ERASE_STATEMENTS: &[&str] = &[
    "DELETE FROM delivery_attempts WHERE delivery_id IN \
     (SELECT id FROM deliveries WHERE message_id = $1)",
    "DELETE FROM deliveries WHERE message_id = $1",
    "DELETE FROM message_fingerprints WHERE message_id = $1",
];

/// A message old enough to prune.
#[derive(Debug, Clone)]
pub struct PruneCandidate {
    pub id: String,
    pub inbox_id: String,
}

impl Db {
    /// Removes one message with its deliveries, attempts and fingerprint, unless a delivery of
    /// it is in flight (see the module docs) or, with `keep_pending`, still pending at all.
    ///
    /// # Errors
    /// [`Error::Query`]; nothing is removed then.
    pub async fn erase_message(
        &self,
        id: &str,
        now: i64,
        keep_pending: bool,
    ) -> Result<Erasure, Error> {
        let mut tx = self.pool.begin().await?;
        // A write first: on SQLite it takes the write lock at once (a deferred transaction that
        // read first could fail when another writer committed meanwhile), and on PostgreSQL it
        // locks every delivery row of the message against claims until the commit.
        let deliveries = sqlx::query(LOCK_DELIVERIES)
            .bind(id)
            .fetch_all(&mut *tx)
            .await?;
        let mut leased_until = None;
        let mut pending = false;
        for row in &deliveries {
            let status: String = row.try_get("status")?;
            let locked_until: Option<i64> = row.try_get("locked_until")?;
            if status == "pending" {
                pending = true;
                if let Some(until) = locked_until.filter(|until| *until >= now) {
                    leased_until = Some(leased_until.map_or(until, |seen: i64| seen.max(until)));
                }
            }
        }
        if let Some(leased_until) = leased_until {
            tx.rollback().await?;
            return Ok(Erasure::InFlight { leased_until });
        }
        if pending && keep_pending {
            tx.rollback().await?;
            return Ok(Erasure::Pending);
        }
        for statement in ERASE_STATEMENTS {
            sqlx::query(statement).bind(id).execute(&mut *tx).await?;
        }
        let key = sqlx::query(
            "DELETE FROM messages WHERE id = $1 RETURNING storage_key, inbox_id, thread_id",
        )
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(key) = key else {
            tx.rollback().await?;
            return Ok(Erasure::Missing);
        };
        let storage_key: String = key.try_get("storage_key")?;
        let inbox_id: String = key.try_get("inbox_id")?;
        sqlx::query(
            "INSERT INTO erased_objects (storage_key, erased_at) VALUES ($1, $2) \
             ON CONFLICT (storage_key) DO NOTHING",
        )
        .bind(&storage_key)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if let Some(thread_id) = key.try_get::<Option<String>, _>("thread_id")? {
            sqlx::query(
                "INSERT INTO thread_removals (inbox_id, thread_id, removed_at) \
                 VALUES ($1, $2, $3) ON CONFLICT (inbox_id, thread_id) DO NOTHING",
            )
            .bind(&inbox_id)
            .bind(&thread_id)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(Erasure::Erased { storage_key })
    }

    /// Marks a quarantined message released and adds the delivery jobs it would have had,
    /// with its event as it will now be sent. The jobs of its `mail.quarantined` event that
    /// are still to be sent keep carrying that reduced event (they read the message's event
    /// only while it is quarantined). False when it is not quarantined (any more).
    ///
    /// # Errors
    /// [`Error::Query`]; nothing is changed then.
    pub async fn release_message(
        &self,
        id: &str,
        event_json: &str,
        reduced_event: &str,
        deliveries: &[NewDelivery],
        now: i64,
    ) -> Result<bool, Error> {
        let mut tx = self.pool.begin().await?;
        let released = sqlx::query(
            "UPDATE messages SET quarantined = 0, event_json = $1, event_lz4 = NULL \
             WHERE id = $2 AND quarantined <> 0 RETURNING inbox_id, event_id, thread_id",
        )
        .bind(event_json)
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(released) = released else {
            tx.rollback().await?;
            return Ok(false);
        };
        let inbox_id: String = released.try_get("inbox_id")?;
        let event_id: String = released.try_get("event_id")?;
        let thread_id: Option<String> = released.try_get("thread_id")?;
        sqlx::query(
            "UPDATE deliveries SET delivery_event = $1 \
             WHERE message_id = $2 AND delivery_event IS NULL",
        )
        .bind(reduced_event)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        for delivery in deliveries {
            sqlx::query(
                "INSERT INTO deliveries (id, message_id, inbox_id, event_id, channel, \
                 endpoint_ref, target, status, attempts, failures, next_attempt_at, created_at, \
                 updated_at, thread_id, ordered) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, 'pending', 0, 0, $8, $8, $8, $9, $10)",
            )
            .bind(&delivery.id)
            .bind(id)
            .bind(&inbox_id)
            .bind(&event_id)
            .bind(delivery.channel.as_str())
            .bind(&delivery.endpoint_ref)
            .bind(&delivery.target)
            .bind(now)
            .bind(thread_id.as_deref())
            .bind(i64::from(delivery.ordered))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Whether a message of this thread was erased or pruned: its history is not whole.
    ///
    /// # Errors
    /// [`Error::Query`].
    pub async fn thread_lost_messages(
        &self,
        inbox_id: &str,
        thread_id: &str,
    ) -> Result<bool, Error> {
        let row = sqlx::query(
            "SELECT 1 AS one FROM thread_removals WHERE inbox_id = $1 AND thread_id = $2",
        )
        .bind(inbox_id)
        .bind(thread_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.is_some())
    }

    /// The gateway key `name` (current, previous), made from `fresh` when there is none yet;
    /// nodes starting together agree on the first one written.
    ///
    /// # Errors
    /// [`Error::Query`].
    pub async fn gateway_key(
        &self,
        name: &str,
        fresh: &str,
        now: i64,
    ) -> Result<(String, Option<String>), Error> {
        let place = crate::secrets::Place::GatewayKey;
        sqlx::query(
            "INSERT INTO gateway_keys (name, secret, rotated_at) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(self.secrets.seal(place, &[name], fresh)?)
        .bind(now)
        .execute(&self.pool)
        .await?;
        let row = sqlx::query("SELECT secret, previous_secret FROM gateway_keys WHERE name = $1")
            .bind(name)
            .fetch_one(&self.pool)
            .await?;
        let secret: String = row.try_get("secret")?;
        let previous: Option<String> = row.try_get("previous_secret")?;
        Ok((
            self.secrets.open(place, &[name], &secret)?,
            self.secrets.open_opt(place, &[name], previous.as_deref())?,
        ))
    }

    /// Replaces the gateway key `name` with `fresh`, keeping the current one as the previous.
    ///
    /// # Errors
    /// [`Error::Query`].
    pub async fn rotate_gateway_key(&self, name: &str, fresh: &str, now: i64) -> Result<(), Error> {
        sqlx::query(
            "UPDATE gateway_keys SET previous_secret = secret, secret = $1, rotated_at = $2 \
             WHERE name = $3",
        )
        .bind(
            self.secrets
                .seal(crate::secrets::Place::GatewayKey, &[name], fresh)?,
        )
        .bind(now)
        .bind(name)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Records that `inbox_id` is to be erased whole, and disables it so it takes no more mail.
    /// False when there is no such inbox.
    ///
    /// # Errors
    /// [`Error::Query`].
    pub async fn start_purge(&self, inbox_id: &str, key_id: &str, now: i64) -> Result<bool, Error> {
        let mut tx = self.pool.begin().await?;
        let disabled =
            sqlx::query("UPDATE inboxes SET status = 'disabled', updated_at = $1 WHERE id = $2")
                .bind(now)
                .bind(inbox_id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        if disabled == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        sqlx::query("UPDATE directory_version SET version = version + 1 WHERE id = 1")
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO inbox_purges (inbox_id, requested_at, requested_by, removed) \
             VALUES ($1, $2, $3, 0) ON CONFLICT (inbox_id) DO NOTHING",
        )
        .bind(inbox_id)
        .bind(now)
        .bind(key_id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// The inboxes being purged.
    ///
    /// # Errors
    /// [`Error::Query`].
    pub async fn purges(&self) -> Result<Vec<String>, Error> {
        let rows = sqlx::query("SELECT inbox_id FROM inbox_purges ORDER BY requested_at")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| row.try_get("inbox_id").map_err(Into::into))
            .collect()
    }

    /// A purge's progress: (messages removed so far, messages left), or `None` when the inbox
    /// is not being purged.
    ///
    /// # Errors
    /// [`Error::Query`].
    pub async fn purge_progress(&self, inbox_id: &str) -> Result<Option<(i64, i64)>, Error> {
        let row = sqlx::query(
            "SELECT p.removed, (SELECT COUNT(*) FROM messages m WHERE m.inbox_id = p.inbox_id) \
             AS remaining FROM inbox_purges p WHERE p.inbox_id = $1",
        )
        .bind(inbox_id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| Ok((row.try_get("removed")?, row.try_get("remaining")?)))
            .transpose()
    }

    /// Adds to a purge's count of removed messages.
    ///
    /// # Errors
    /// [`Error::Query`].
    pub async fn count_purged(&self, inbox_id: &str, removed: i64) -> Result<(), Error> {
        sqlx::query("UPDATE inbox_purges SET removed = removed + $1 WHERE inbox_id = $2")
            .bind(removed)
            .bind(inbox_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Ends a purge whose inbox has no message left: the purge record goes, and the inbox
    /// with it (by [`Db::delete_inbox`], called next).
    ///
    /// # Errors
    /// [`Error::Query`].
    pub async fn finish_purge(&self, inbox_id: &str) -> Result<(), Error> {
        sqlx::query("DELETE FROM inbox_purges WHERE inbox_id = $1")
            .bind(inbox_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Up to `limit` raw objects of erased messages still to remove from the store.
    ///
    /// # Errors
    /// [`Error::Query`].
    pub async fn erased_objects(&self, limit: i64) -> Result<Vec<String>, Error> {
        let rows = sqlx::query(
            "SELECT storage_key FROM erased_objects ORDER BY erased_at, storage_key LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| row.try_get("storage_key").map_err(Into::into))
            .collect()
    }

    /// The object of an erased message is gone from the store.
    ///
    /// # Errors
    /// [`Error::Query`].
    pub async fn forget_erased_object(&self, storage_key: &str) -> Result<(), Error> {
        sqlx::query("DELETE FROM erased_objects WHERE storage_key = $1")
            .bind(storage_key)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The id of the per-inbox API key with this hash, for logs naming who asked.
    ///
    /// # Errors
    /// [`Error::Query`].
    pub async fn api_key_id_for_hash(&self, key_hash: &str) -> Result<Option<String>, Error> {
        let row = sqlx::query("SELECT id FROM api_keys WHERE key_hash = $1")
            .bind(key_hash)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| row.try_get("id"))
            .transpose()
            .map_err(Into::into)
    }

    /// Up to `limit` messages of `inbox_id`, oldest first, whatever their deliveries.
    ///
    /// # Errors
    /// [`Error::Query`].
    pub async fn inbox_message_ids(
        &self,
        inbox_id: &str,
        limit: i64,
    ) -> Result<Vec<String>, Error> {
        let rows = sqlx::query(
            "SELECT id FROM messages WHERE inbox_id = $1 ORDER BY received_at, id LIMIT $2",
        )
        .bind(inbox_id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| row.try_get("id").map_err(Into::into))
            .collect()
    }

    /// Up to `limit` messages of `inbox_id` received before `before` (ms) with no pending
    /// delivery, oldest first.
    ///
    /// # Errors
    /// [`Error::Query`].
    pub async fn prune_candidates(
        &self,
        inbox_id: &str,
        before: i64,
        limit: i64,
    ) -> Result<Vec<PruneCandidate>, Error> {
        let rows = sqlx::query(
            "SELECT m.id, m.inbox_id FROM messages m WHERE m.inbox_id = $1 \
             AND m.received_at < $2 AND NOT EXISTS (SELECT 1 FROM deliveries d \
             WHERE d.message_id = m.id AND d.status = 'pending') \
             ORDER BY m.received_at, m.id LIMIT $3",
        )
        .bind(inbox_id)
        .bind(before)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(PruneCandidate {
                    id: row.try_get("id")?,
                    inbox_id: row.try_get("inbox_id")?,
                })
            })
            .collect()
    }

    /// The inboxes that have stored messages.
    ///
    /// # Errors
    /// [`Error::Query`].
    pub async fn inboxes_with_messages(&self) -> Result<Vec<String>, Error> {
        let rows = sqlx::query("SELECT DISTINCT inbox_id FROM messages")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| row.try_get("inbox_id").map_err(Into::into))
            .collect()
    }

    /// Every stored message's object key, by message id, in id order from `after`: the
    /// store check's side of the comparison, read in pages.
    ///
    /// # Errors
    /// [`Error::Query`].
    pub async fn storage_keys(
        &self,
        after: &str,
        limit: i64,
    ) -> Result<Vec<(String, String)>, Error> {
        let rows =
            sqlx::query("SELECT id, storage_key FROM messages WHERE id > $1 ORDER BY id LIMIT $2")
                .bind(after)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?;
        rows.iter()
            .map(|row| Ok((row.try_get("id")?, row.try_get("storage_key")?)))
            .collect()
    }

    /// Whether a message row points at `storage_key`.
    ///
    /// # Errors
    /// [`Error::Query`].
    pub async fn storage_key_in_use(&self, storage_key: &str) -> Result<bool, Error> {
        let row = sqlx::query("SELECT 1 AS one FROM messages WHERE storage_key = $1 LIMIT 1")
            .bind(storage_key)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.is_some())
    }

    /// Each inbox's own `retention_days`, where it has one.
    ///
    /// # Errors
    /// [`Error::Query`].
    pub async fn inbox_retention(&self) -> Result<Vec<(String, f64)>, Error> {
        let rows =
            sqlx::query("SELECT id, retention_days FROM inboxes WHERE retention_days IS NOT NULL")
                .fetch_all(&self.pool)
                .await?;
        rows.iter()
            .map(|row| Ok((row.try_get("id")?, row.try_get("retention_days")?)))
            .collect()
    }

    /// Sets (or with `None` clears) an inbox's own retention. False when there is no such
    /// inbox.
    ///
    /// # Errors
    /// [`Error::Query`].
    pub async fn set_inbox_retention(
        &self,
        inbox_id: &str,
        days: Option<f64>,
    ) -> Result<bool, Error> {
        // A NULL is written by a statement of its own: a prepared statement whose parameter was
        // first bound as a NULL keeps that parameter's type on PostgreSQL, and a number bound
        // to it later is refused.
        let result = match days {
            Some(days) => {
                sqlx::query("UPDATE inboxes SET retention_days = $1 WHERE id = $2")
                    .bind(days)
                    .bind(inbox_id)
                    .execute(&self.pool)
                    .await?
            }
            None => {
                sqlx::query("UPDATE inboxes SET retention_days = NULL WHERE id = $1")
                    .bind(inbox_id)
                    .execute(&self.pool)
                    .await?
            }
        };
        Ok(result.rows_affected() > 0)
    }

    /// The pruner's turn: on PostgreSQL an advisory lock held by one pooled connection (so one
    /// node prunes at a time, and a node that dies frees it with its session); `None` when
    /// another node holds it. SQLite has one node, which always has its turn.
    ///
    /// # Errors
    /// [`Error::Query`].
    pub async fn try_prune_lock(&self) -> Result<Option<PruneLock>, Error> {
        if self.backend != Backend::Postgres {
            return Ok(Some(PruneLock { conn: None }));
        }
        let mut conn = self.pool.acquire().await?;
        let row = sqlx::query("SELECT pg_try_advisory_lock($1) AS locked")
            .bind(PRUNE_LOCK)
            .fetch_one(&mut *conn)
            .await?;
        let locked: bool = row.try_get("locked")?;
        Ok(locked.then_some(PruneLock { conn: Some(conn) }))
    }
}

/// The PostgreSQL advisory lock of the retention pruner.
const PRUNE_LOCK: i64 = 7262738;

/// The pruner's turn, given back by [`PruneLock::release`].
pub struct PruneLock {
    conn: Option<sqlx::pool::PoolConnection<sqlx::Any>>,
}

impl PruneLock {
    /// Gives the turn back. Should the unlock fail, the connection is closed instead, which
    /// ends the session and so the lock, rather than returning a locked session to the pool.
    pub async fn release(mut self) {
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        let unlocked = sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(PRUNE_LOCK)
            .execute(&mut *conn)
            .await;
        if unlocked.is_err() {
            let _ = conn.close().await;
        }
    }
}

impl Drop for PruneLock {
    /// A turn dropped without [`PruneLock::release`] (its task was cancelled) must not return
    /// a locked session to the pool: the connection is taken out of it and closed.
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            drop(conn.detach());
        }
    }
}
