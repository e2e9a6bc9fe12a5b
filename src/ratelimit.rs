//! Rate limits per envelope sender, sender domain and inbox: leaky buckets whose state lives in
//! the database, so every node and every restart sees the same levels.
//!
//! Each accepted message adds one to its three buckets; a bucket drains its soft limit once per
//! window. Above the soft level the event says `rate_limited: true`; at the hard level RCPT is
//! refused with `451 4.7.1`, so the sender retries later. A database error never refuses mail
//! here: it is logged and the message counts as under the limits (storage errors are caught
//! where they matter, before the 250).

use std::net::IpAddr;

use crate::config::RateLimitConfig;
use crate::db::Db;
use crate::model::now_ms;

/// Writes lost to a concurrent writer before a bucket update gives up for this message.
const MAX_SWAPS: usize = 8;

#[derive(Clone)]
pub struct RateLimiter {
    config: RateLimitConfig,
    db: Db,
}

/// One bucket and its limits.
struct Bucket {
    key: String,
    soft: u64,
    hard: u64,
}

impl RateLimiter {
    pub fn new(config: &RateLimitConfig, db: Db) -> Self {
        Self {
            config: config.clone(),
            db,
        }
    }

    fn sender_buckets(&self, mail_from: Option<&str>, remote_ip: Option<IpAddr>) -> Vec<Bucket> {
        let config = &self.config;
        let mut buckets = Vec::with_capacity(2);
        match mail_from.map(str::to_ascii_lowercase) {
            Some(sender) => {
                if let Some((_, domain)) = sender.rsplit_once('@') {
                    buckets.push(Bucket {
                        key: format!("domain:{domain}"),
                        soft: config.domain_soft,
                        hard: config.domain_hard,
                    });
                }
                buckets.push(Bucket {
                    key: format!("sender:{sender}"),
                    soft: config.sender_soft,
                    hard: config.sender_hard,
                });
            }
            // Bounces have no sender to count; the connecting address stands in for it.
            None => buckets.push(Bucket {
                key: format!(
                    "sender:<>@{}",
                    remote_ip.map(|ip| ip.to_string()).unwrap_or_default()
                ),
                soft: config.sender_soft,
                hard: config.sender_hard,
            }),
        }
        buckets
    }

    fn inbox_bucket(&self, inbox_id: &str) -> Bucket {
        Bucket {
            key: format!("inbox:{inbox_id}"),
            soft: self.config.inbox_soft,
            hard: self.config.inbox_hard,
        }
    }

    /// Thousandths of a message a bucket drains in `elapsed_ms`: its soft limit per window, or
    /// its hard limit when the soft one is off, so that a bucket always empties in time.
    fn drained(&self, bucket: &Bucket, elapsed_ms: i64) -> i64 {
        let per_window = if bucket.soft > 0 {
            bucket.soft
        } else {
            bucket.hard
        };
        let per_ms = per_window as f64 / self.config.window_s;
        (per_ms * elapsed_ms.max(0) as f64) as i64
    }

    /// True when a bucket of this recipient is at its hard limit (asked at RCPT).
    pub async fn over_hard_limit(
        &self,
        mail_from: Option<&str>,
        remote_ip: Option<IpAddr>,
        inbox_id: &str,
    ) -> bool {
        let now = now_ms();
        let mut buckets = self.sender_buckets(mail_from, remote_ip);
        buckets.push(self.inbox_bucket(inbox_id));
        for bucket in buckets {
            if bucket.hard == 0 {
                continue;
            }
            match self.db.rate_bucket(&bucket.key).await {
                Ok(Some((level, updated_at))) => {
                    let level = (level - self.drained(&bucket, now - updated_at)).max(0);
                    if level >= milli(bucket.hard) {
                        return true;
                    }
                }
                Ok(None) => {}
                Err(err) => tracing::warn!(error = %err, "reading a rate bucket failed"),
            }
        }
        false
    }

    /// Counts one message against its sender and sender domain; true when either is now above
    /// its soft limit.
    pub async fn count_sender(&self, mail_from: Option<&str>, remote_ip: Option<IpAddr>) -> bool {
        self.count(self.sender_buckets(mail_from, remote_ip)).await
    }

    /// Counts one message against an inbox; true when it is now above its soft limit.
    pub async fn count_inbox(&self, inbox_id: &str) -> bool {
        self.count(vec![self.inbox_bucket(inbox_id)]).await
    }

    async fn count(&self, buckets: Vec<Bucket>) -> bool {
        let mut over_soft = false;
        for bucket in buckets {
            if bucket.soft == 0 && bucket.hard == 0 {
                continue;
            }
            match self.add_one(&bucket).await {
                Ok(level) => over_soft |= bucket.soft != 0 && level > milli(bucket.soft),
                Err(err) => {
                    tracing::warn!(error = %err, bucket = bucket.key, "counting a message failed");
                }
            }
        }
        over_soft
    }

    async fn add_one(&self, bucket: &Bucket) -> Result<i64, crate::db::Error> {
        let mut level = 0;
        for _ in 0..MAX_SWAPS {
            let now = now_ms();
            let seen = self.db.rate_bucket(&bucket.key).await?;
            level = match seen {
                Some((level, updated_at)) => {
                    (level - self.drained(bucket, now - updated_at)).max(0) + 1000
                }
                None => 1000,
            };
            if self
                .db
                .swap_rate_bucket(&bucket.key, seen, level, now)
                .await?
            {
                return Ok(level);
            }
        }
        Ok(level)
    }
}

/// A limit in the buckets' unit, thousandths of a message.
fn milli(limit: u64) -> i64 {
    i64::try_from(limit.saturating_mul(1000)).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DatabaseConfig;

    async fn limiter(dir: &tempfile::TempDir, config: RateLimitConfig) -> RateLimiter {
        let db = Db::connect(&DatabaseConfig {
            url: format!("sqlite://{}", dir.path().join("rate.db").display()),
            max_connections: 2,
        })
        .await
        .expect("db");
        db.migrate().await.expect("migrate");
        RateLimiter::new(&config, db)
    }

    #[tokio::test]
    async fn buckets_fill_per_sender_and_drain_their_soft_limit_per_window() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = RateLimitConfig {
            window_s: 3600.0,
            sender_soft: 1,
            sender_hard: 2,
            domain_soft: 0,
            domain_hard: 0,
            inbox_soft: 0,
            inbox_hard: 0,
        };
        let limiter = limiter(&dir, config).await;
        let alice = Some("alice@example.org");
        assert!(!limiter.count_sender(alice, None).await);
        assert!(
            limiter.count_sender(alice, None).await,
            "second is over soft"
        );
        assert!(limiter.over_hard_limit(alice, None, "agent").await);
        assert!(
            !limiter
                .over_hard_limit(Some("bob@example.org"), None, "agent")
                .await
        );

        // The same level written one window ago has drained by the soft limit (one message).
        let key = "sender:alice@example.org";
        let seen = limiter.db.rate_bucket(key).await.expect("read");
        let an_hour_ago = now_ms() - 3_600_000;
        assert!(
            limiter
                .db
                .swap_rate_bucket(key, seen, 2000, an_hour_ago)
                .await
                .expect("write")
        );
        assert!(!limiter.over_hard_limit(alice, None, "agent").await);
        assert!(
            limiter.count_sender(alice, None).await,
            "1 left + 1 new > 1"
        );
        assert!(limiter.over_hard_limit(alice, None, "agent").await);
    }

    #[tokio::test]
    async fn bounces_are_counted_per_connecting_address_and_zero_turns_a_limit_off() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = RateLimitConfig {
            window_s: 3600.0,
            sender_soft: 1,
            sender_hard: 1,
            domain_soft: 0,
            domain_hard: 0,
            inbox_soft: 0,
            inbox_hard: 0,
        };
        let limiter = limiter(&dir, config).await;
        let first: IpAddr = "192.0.2.1".parse().expect("ip");
        let second: IpAddr = "192.0.2.2".parse().expect("ip");
        assert!(!limiter.count_sender(None, Some(first)).await);
        assert!(limiter.over_hard_limit(None, Some(first), "agent").await);
        assert!(!limiter.over_hard_limit(None, Some(second), "agent").await);
        for _ in 0..5 {
            assert!(!limiter.count_inbox("agent").await, "inbox limits are off");
        }
    }
}
