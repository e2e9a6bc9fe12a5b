//! What replies need of the database besides the write path: the Idempotency-Key reservations
//! that make a retried reply request answer the first one's reply, and the count of an inbox's
//! recent replies its send rate is held to. Part of [`crate::db`], which owns every SQL
//! statement.

use sqlx::Row;

use super::{Db, Error};

/// What reserving an Idempotency-Key found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyReservation {
    /// The key is now this request's.
    Reserved,
    /// An earlier request holds it for its reply: that reply's message id, and when the key
    /// was taken.
    Taken { message_id: String, created_at: i64 },
}

impl Db {
    /// Reserves `key` of `inbox_id` for the reply `message_id`, unless a request already holds
    /// it. Two requests racing on one key: one reserves, the other finds it taken.
    ///
    /// # Errors
    /// [`Error::Query`].
    pub async fn reserve_reply_key(
        &self,
        inbox_id: &str,
        key: &str,
        message_id: &str,
        now: i64,
    ) -> Result<KeyReservation, Error> {
        let inserted = sqlx::query(
            "INSERT INTO reply_requests (inbox_id, idempotency_key, message_id, created_at) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (inbox_id, idempotency_key) DO NOTHING",
        )
        .bind(inbox_id)
        .bind(key)
        .bind(message_id)
        .bind(now)
        .execute(&self.pool)
        .await?
        .rows_affected();
        if inserted == 1 {
            return Ok(KeyReservation::Reserved);
        }
        let row = sqlx::query(
            "SELECT message_id, created_at FROM reply_requests \
             WHERE inbox_id = $1 AND idempotency_key = $2",
        )
        .bind(inbox_id)
        .bind(key)
        .fetch_optional(&self.pool)
        .await?;
        match row {
            Some(row) => Ok(KeyReservation::Taken {
                message_id: row.try_get("message_id")?,
                created_at: row.try_get("created_at")?,
            }),
            // Released between the two statements: the caller may try again.
            None => Ok(KeyReservation::Taken {
                message_id: String::new(),
                created_at: now,
            }),
        }
    }

    /// Gives a key back (its reply was not accepted), only while it still names `message_id`.
    ///
    /// # Errors
    /// [`Error::Query`].
    pub async fn release_reply_key(
        &self,
        inbox_id: &str,
        key: &str,
        message_id: &str,
    ) -> Result<(), Error> {
        sqlx::query(
            "DELETE FROM reply_requests \
             WHERE inbox_id = $1 AND idempotency_key = $2 AND message_id = $3",
        )
        .bind(inbox_id)
        .bind(key)
        .bind(message_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Replies `inbox_id` stored since `since` (ms), across every node.
    ///
    /// # Errors
    /// [`Error::Query`].
    pub async fn count_replies_since(&self, inbox_id: &str, since: i64) -> Result<i64, Error> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS n FROM messages \
             WHERE inbox_id = $1 AND direction = 'outbound' AND received_at >= $2",
        )
        .bind(inbox_id)
        .bind(since)
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get("n")?)
    }
}
