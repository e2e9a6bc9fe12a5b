//! Rate-limit buckets (leaky buckets, one row per bucket) and the fingerprints of duplicate
//! detection. Counting a message and recording its fingerprint are critical-path writes (see
//! `write`); the reads, the test setter and the pruning schedule are here. Part of
//! [`crate::db`], which owns every SQL statement.

use super::{Db, Error, write};

#[derive(Debug, Clone)]
pub struct NewFingerprint {
    pub fingerprint: String,
    /// Fingerprints of the inbox older than this fall out of the duplicate window.
    pub forget_before: i64,
}

/// How often accepted messages prune fingerprints that left the duplicate window.
const FINGERPRINT_PRUNE_EVERY_MS: i64 = 60_000;

/// When accepted messages last pruned old fingerprints. Owned by the database's group
/// committer (see `write`), the only writer of accepted messages.
#[derive(Debug, Default)]
pub(super) struct FingerprintPrune {
    last: i64,
}

impl FingerprintPrune {
    /// Whether a message received at `received_at` should prune old fingerprints. Lookups only
    /// see the duplicate window, so old rows are dead weight, not wrong answers: they are pruned
    /// once a minute, not on every message.
    pub(super) fn due(&mut self, received_at: i64) -> bool {
        if self.is_due(received_at) {
            self.last = received_at;
            true
        } else {
            false
        }
    }

    /// Whether [`Self::due`] would say so, without taking the turn.
    pub(super) fn is_due(&self, received_at: i64) -> bool {
        received_at - self.last >= FINGERPRINT_PRUNE_EVERY_MS
    }
}

impl Db {
    /// True when this inbox received a message with this fingerprint at or after `since`.
    ///
    /// # Errors
    /// [`Error::Query`].
    pub async fn fingerprint_seen(
        &self,
        inbox_id: &str,
        fingerprint: &str,
        since: i64,
    ) -> Result<bool, Error> {
        let found: Option<String> = sqlx::query_scalar(
            "SELECT message_id FROM message_fingerprints \
             WHERE inbox_id = $1 AND fingerprint = $2 AND received_at >= $3 LIMIT 1",
        )
        .bind(inbox_id)
        .bind(fingerprint)
        .bind(since)
        .fetch_optional(&self.pool)
        .await?;
        Ok(found.is_some())
    }

    /// The stored buckets among `buckets`: (bucket, level in thousandths of a message, when it
    /// was written). Absent buckets are empty.
    ///
    /// # Errors
    /// [`Error::Query`].
    pub async fn rate_buckets(&self, buckets: &[&str]) -> Result<Vec<(String, i64, i64)>, Error> {
        if buckets.is_empty() {
            return Ok(Vec::new());
        }
        if self.writes.takes_reads() {
            let buckets = buckets.iter().map(|bucket| (*bucket).to_owned()).collect();
            return self.writes.read_levels(buckets).await;
        }
        write::read_levels_on_pool(&self.pool, self.backend, buckets).await
    }

    /// Adds one message to each bucket, draining it first by `drain_per_ms` thousandths per
    /// millisecond since its last write, and returns the new levels in order. One statement per
    /// bucket does the read, the drain and the write atomically, so concurrent sessions and nodes
    /// never lose a count and never retry; one transaction for all of a message's buckets means
    /// one commit (one WAL sync on SQLite) instead of one per bucket.
    ///
    /// # Errors
    /// [`Error::Query`].
    pub async fn add_to_rate_buckets(
        &self,
        buckets: &[(&str, f64)],
        now: i64,
    ) -> Result<Vec<i64>, Error> {
        let buckets = buckets
            .iter()
            .map(|(bucket, drain)| ((*bucket).to_owned(), *drain))
            .collect();
        self.writes.count(write::RateCount { buckets, now }).await
    }

    /// Sets a bucket's level as of `updated_at` (tests age a bucket with it).
    ///
    /// # Errors
    /// [`Error::Query`].
    pub async fn set_rate_bucket(
        &self,
        bucket: &str,
        level_milli: i64,
        updated_at: i64,
    ) -> Result<(), Error> {
        sqlx::query(
            "INSERT INTO rate_buckets (bucket, level_milli, updated_at) VALUES ($1, $2, $3) \
             ON CONFLICT (bucket) DO UPDATE SET level_milli = $2, updated_at = $3",
        )
        .bind(bucket)
        .bind(level_milli)
        .bind(updated_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
