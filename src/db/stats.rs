//! Statistics computed from the stored jobs and attempts: the counts and histograms `/metrics`
//! reports, the delivery statistics per endpoint (inbox API, dashboard) and the hourly delivery
//! health of an inbox's endpoints (the dashboard's charts). Read-only. Part of
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

/// How many attempts of one endpoint of an inbox ended one way within one hour of a window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HourlyOutcomes {
    pub endpoint_ref: String,
    pub channel: Channel,
    /// Hours since the window's start (0 is the oldest hour).
    pub hour: i64,
    pub outcome: AttemptOutcome,
    pub attempts: i64,
}

/// One attempt's latency within a window, for percentiles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HourlyLatency {
    pub endpoint_ref: String,
    pub channel: Channel,
    pub hour: i64,
    pub latency_ms: i64,
}

/// The attempts of one inbox's endpoints since a time, by hour: counts by outcome, and the
/// latencies of the attempts that sent something (the newest `max_latencies` of them).
#[derive(Debug, Clone, Default)]
pub struct DeliveryHealth {
    pub outcomes: Vec<HourlyOutcomes>,
    pub latencies: Vec<HourlyLatency>,
}

/// Milliseconds in the hour buckets of [`Db::delivery_health`].
const HOUR_MS: i64 = 3_600_000;

impl Db {
    /// The attempts of inbox `inbox_id`'s endpoints started at or after `since_ms`, by hour
    /// (hour 0 starts at `since_ms`): counts per outcome, and latencies for percentiles. Only
    /// attempts that sent something have a latency (a `not_sent` attempt took no time
    /// anyone waited for), and only the newest `max_latencies`, which bounds the rows a page
    /// reads however busy the inbox.
    ///
    /// The hour is integer division of the time since `since_ms`, which SQLite and PostgreSQL
    /// both compute on BIGINT the same way (every value is non-negative, so no rounding
    /// question arises); it is grouped by position, which both read alike, where PostgreSQL
    /// would have to match a repeated expression with a parameter in it.
    ///
    /// # Errors
    /// [`Error::Query`], [`Error::Corrupt`] for an outcome mxhook does not write.
    pub async fn delivery_health(
        &self,
        inbox_id: &str,
        since_ms: i64,
        max_latencies: i64,
    ) -> Result<DeliveryHealth, Error> {
        let hour = format!("((a.started_at - $2) / {HOUR_MS})");
        let rows = sqlx::query(&format!(
            "SELECT d.endpoint_ref, d.channel, {hour} AS hour, a.outcome, COUNT(*) AS n \
             FROM delivery_attempts a JOIN deliveries d ON d.id = a.delivery_id \
             WHERE d.inbox_id = $1 AND a.started_at >= $2 \
             GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4"
        ))
        .bind(inbox_id)
        .bind(since_ms)
        .fetch_all(&self.pool)
        .await?;
        let mut outcomes = Vec::with_capacity(rows.len());
        for row in &rows {
            let outcome: String = row.try_get("outcome")?;
            outcomes.push(HourlyOutcomes {
                endpoint_ref: row.try_get("endpoint_ref")?,
                channel: channel_of(row)?,
                hour: row.try_get("hour")?,
                outcome: AttemptOutcome::parse(&outcome).ok_or_else(|| {
                    Error::Corrupt(format!(
                        "an attempt of inbox {inbox_id} has outcome `{outcome}`"
                    ))
                })?,
                attempts: row.try_get("n")?,
            });
        }
        let rows = sqlx::query(&format!(
            "SELECT d.endpoint_ref, d.channel, {hour} AS hour, a.latency_ms \
             FROM delivery_attempts a JOIN deliveries d ON d.id = a.delivery_id \
             WHERE d.inbox_id = $1 AND a.started_at >= $2 AND a.outcome <> 'not_sent' \
             ORDER BY a.started_at DESC LIMIT $3"
        ))
        .bind(inbox_id)
        .bind(since_ms)
        .bind(max_latencies)
        .fetch_all(&self.pool)
        .await?;
        let mut latencies = Vec::with_capacity(rows.len());
        for row in &rows {
            latencies.push(HourlyLatency {
                endpoint_ref: row.try_get("endpoint_ref")?,
                channel: channel_of(row)?,
                hour: row.try_get("hour")?,
                latency_ms: row.try_get("latency_ms")?,
            });
        }
        Ok(DeliveryHealth {
            outcomes,
            latencies,
        })
    }
}

/// A row's channel as the dispatcher reads it: every channel but email is the webhook.
fn channel_of(row: &AnyRow) -> Result<Channel, Error> {
    let channel: String = row.try_get("channel")?;
    Ok(Channel::parse(&channel).unwrap_or(Channel::Webhook))
}
