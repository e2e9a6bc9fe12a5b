//! Per-inbox API keys: stored by their hash, listed without it, revoked by id. Part of
//! [`crate::db`], which owns every SQL statement.

use sqlx::Row;

use super::{Db, Error};

#[derive(Debug, Clone)]
pub struct ApiKeyRow {
    pub id: String,
    pub inbox_id: String,
    pub name: Option<String>,
    /// The key's first characters, to tell keys apart; never enough to use.
    pub prefix: Option<String>,
    pub created_at: i64,
}

impl Db {
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
}
