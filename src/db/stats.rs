//! Statistics computed from the stored jobs and attempts: the counts and histograms `/metrics`
//! reports, and the delivery statistics per endpoint (inbox API, dashboard). Read-only. Part of
//! [`crate::db`], which owns every SQL statement.

use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Db, Error};
use crate::model::{AttemptOutcome, Channel};

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

/// How one endpoint of an inbox has been doing, over every attempt recorded.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EndpointStats {
    pub inbox_id: String,
    /// `inbox` for the inbox webhook, `rule:<id>` for a notification rule.
    pub endpoint_ref: String,
    pub channel: Channel,
    pub attempts: i64,
    /// Attempts the endpoint accepted (2xx, or the relay took the mail).
    pub delivered: i64,
    /// `delivered / attempts`, 0 to 1; absent before the first attempt.
    pub success_rate: Option<f64>,
    /// When the last attempt started, ms since the epoch.
    pub last_triggered_ms: Option<i64>,
    pub last_status_code: Option<i64>,
    pub last_outcome: Option<AttemptOutcome>,
}

/// Attempt outcomes in which the endpoint took the event: a 2xx from a webhook, or the relay
/// taking an email forward. `delivered` counts these, and `last_succeeded` reads them.
const SUCCESS_OUTCOMES: &str = "('delivered', 'forwarded')";

impl EndpointStats {
    /// Whether the newest attempt succeeded (the outcomes [`SUCCESS_OUTCOMES`] counts).
    pub fn last_succeeded(&self) -> bool {
        self.last_outcome.is_some_and(AttemptOutcome::succeeded)
    }
}

impl Db {
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

    /// Delivery statistics per endpoint; only of inbox `only` when given.
    ///
    /// # Errors
    /// [`Error::Query`].
    pub async fn endpoint_stats(&self, only: Option<&str>) -> Result<Vec<EndpointStats>, Error> {
        let totals = sqlx::query(&format!(
            "SELECT d.inbox_id, d.endpoint_ref, d.channel, COUNT(a.id) AS attempts, \
             SUM(CASE WHEN a.outcome IN {SUCCESS_OUTCOMES} THEN 1 ELSE 0 END) AS delivered, \
             MAX(a.started_at) AS last_triggered \
             FROM delivery_attempts a JOIN deliveries d ON d.id = a.delivery_id \
             WHERE ($1 = '' OR d.inbox_id = $1) \
             GROUP BY d.inbox_id, d.endpoint_ref, d.channel \
             ORDER BY d.inbox_id, d.endpoint_ref, d.channel"
        ))
        .bind(only.unwrap_or_default())
        .fetch_all(&self.pool)
        .await?;
        let mut stats = Vec::with_capacity(totals.len());
        for row in &totals {
            let inbox_id: String = row.try_get("inbox_id")?;
            let endpoint_ref: String = row.try_get("endpoint_ref")?;
            let channel_name: String = row.try_get("channel")?;
            let channel = Channel::parse(&channel_name).unwrap_or(Channel::Webhook);
            let attempts: i64 = row.try_get("attempts")?;
            let delivered: i64 = row.try_get::<Option<i64>, _>("delivered")?.unwrap_or(0);
            let last_triggered: Option<i64> = row.try_get("last_triggered")?;
            // The newest attempt, for the last status: looked up per endpoint by its time, one
            // pass over the endpoint's attempts, where a correlated MAX per attempt row would
            // grow with the square of the attempt log.
            let latest = sqlx::query(
                "SELECT a.status_code, a.outcome FROM delivery_attempts a \
                 JOIN deliveries d ON d.id = a.delivery_id \
                 WHERE d.inbox_id = $1 AND d.endpoint_ref = $2 AND d.channel = $3 \
                 AND a.started_at = $4 ORDER BY a.id DESC LIMIT 1",
            )
            .bind(&inbox_id)
            .bind(&endpoint_ref)
            .bind(&channel_name)
            .bind(last_triggered)
            .fetch_optional(&self.pool)
            .await?;
            let (last_status_code, last_outcome) = match &latest {
                Some(last) => (
                    last.try_get("status_code")?,
                    AttemptOutcome::parse(&last.try_get::<String, _>("outcome")?),
                ),
                None => (None, None),
            };
            #[allow(clippy::cast_precision_loss)] // counts far below 2^52
            let success_rate = (attempts > 0).then(|| delivered as f64 / attempts as f64);
            stats.push(EndpointStats {
                inbox_id,
                endpoint_ref,
                channel,
                attempts,
                delivered,
                success_rate,
                last_triggered_ms: last_triggered,
                last_status_code,
                last_outcome,
            });
        }
        Ok(stats)
    }
}
