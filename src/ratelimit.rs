//! Rate limits per envelope sender, sender domain and inbox: leaky buckets whose state lives in
//! the database, so every node and every restart sees the same levels.
//!
//! Each accepted message adds one to its three buckets; a bucket drains its soft limit once per
//! window. Above the soft level the event says `rate_limited: true`; at the hard level RCPT is
//! refused with `451 4.7.1`, so the sender retries later. A database error never refuses mail
//! here: it is logged and the message counts as under the limits (storage errors are caught
//! where they matter, before the 250).
//!
//! RCPT asks for levels once per recipient, which on PostgreSQL is a round trip per session.
//! A node remembers the levels its own counts and reads returned ([`KNOWN_FOR_MS`]) and
//! answers RCPT from them when they settle it with room to spare: a level at or over the hard
//! limit refuses (drained, it is still a lower bound of the shared level), one under half of
//! it accepts. In between, or for a bucket it has not seen lately, it reads the database. So
//! on one node the answer is what the read would have said; on several, counts other nodes
//! made in the last second can be missed only while a bucket is below half its hard limit.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use crate::config::RateLimitConfig;
use crate::db::Db;
use crate::model::now_ms;

/// How long a level this node learned answers RCPT without a read.
const KNOWN_FOR_MS: i64 = 1_000;

/// Buckets a node remembers at most; past it the stale ones are forgotten, then all.
const MAX_KNOWN: usize = 10_000;

#[derive(Clone)]
pub struct RateLimiter {
    config: RateLimitConfig,
    db: Db,
    known: Arc<Mutex<HashMap<String, Known>>>,
}

/// A bucket's level as this node last learned it.
#[derive(Clone, Copy)]
struct Known {
    level_milli: i64,
    /// When the level was that (the bucket drains from here).
    updated_at: i64,
    /// When this node learned it.
    learned_at: i64,
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
            known: Arc::default(),
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

    /// Thousandths of a message a bucket drains per millisecond: its soft limit per window, or
    /// its hard limit when the soft one is off, so that a bucket always empties in time.
    fn drain_per_ms(&self, bucket: &Bucket) -> f64 {
        let per_window = if bucket.soft > 0 {
            bucket.soft
        } else {
            bucket.hard
        };
        per_window as f64 / self.config.window_s
    }

    /// Thousandths of a message a bucket drains in `elapsed_ms`.
    fn drained(&self, bucket: &Bucket, elapsed_ms: i64) -> i64 {
        (self.drain_per_ms(bucket) * elapsed_ms.max(0) as f64) as i64
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
        buckets.retain(|bucket| bucket.hard != 0);
        if let Some(over) = self.settled_from_memory(&buckets, now) {
            return over;
        }
        let keys: Vec<&str> = buckets.iter().map(|bucket| bucket.key.as_str()).collect();
        let stored = match self.db.rate_buckets(&keys).await {
            Ok(stored) => stored,
            Err(err) => {
                tracing::warn!(error = %err, "reading the rate buckets failed");
                return false;
            }
        };
        for bucket in &buckets {
            let (level, updated_at) = stored
                .iter()
                .find(|(key, _, _)| *key == bucket.key)
                .map_or((0, now), |(_, level, updated_at)| (*level, *updated_at));
            self.learn(bucket, level, updated_at, now);
        }
        stored.iter().any(|(key, level, updated_at)| {
            buckets.iter().any(|bucket| {
                &bucket.key == key
                    && (level - self.drained(bucket, now - updated_at)).max(0) >= milli(bucket.hard)
            })
        })
    }

    /// The RCPT answer from levels learned in the last [`KNOWN_FOR_MS`], when they settle it:
    /// `Some(true)` when a bucket is at its hard limit, `Some(false)` when every bucket is known
    /// and under half of it, `None` when the database must be asked.
    fn settled_from_memory(&self, buckets: &[Bucket], now: i64) -> Option<bool> {
        let known = self
            .known
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut all_low = true;
        for bucket in buckets {
            let Some(level) = known
                .get(&bucket.key)
                .filter(|known| now - known.learned_at <= KNOWN_FOR_MS)
                .map(|known| {
                    (known.level_milli - self.drained(bucket, now - known.updated_at)).max(0)
                })
            else {
                all_low = false;
                continue;
            };
            if level >= milli(bucket.hard) {
                return Some(true);
            }
            all_low &= level < milli(bucket.hard) / 2;
        }
        all_low.then_some(false)
    }

    /// Remembers a bucket's level at `updated_at`, learned at `now`; of two fresh levels the
    /// higher one now is kept (counts committed together report levels in between).
    fn learn(&self, bucket: &Bucket, level_milli: i64, updated_at: i64, now: i64) {
        let mut known = self
            .known
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let level_now =
            |known: &Known| known.level_milli - self.drained(bucket, now - known.updated_at);
        let learned = Known {
            level_milli,
            updated_at,
            learned_at: now,
        };
        if let Some(existing) = known.get(&bucket.key)
            && now - existing.learned_at <= KNOWN_FOR_MS
            && level_now(existing) > level_now(&learned)
        {
            return;
        }
        if known.len() >= MAX_KNOWN && !known.contains_key(&bucket.key) {
            known.retain(|_, entry| now - entry.learned_at <= KNOWN_FOR_MS);
            if known.len() >= MAX_KNOWN {
                known.clear();
            }
        }
        known.insert(bucket.key.clone(), learned);
    }

    /// Counts one message against its sender, its sender domain and each of its inboxes, all
    /// in one commit. For each inbox (in order): true when the sender, the sender domain or
    /// that inbox is now above its soft limit.
    pub async fn count_message(
        &self,
        mail_from: Option<&str>,
        remote_ip: Option<IpAddr>,
        inbox_ids: &[&str],
    ) -> Vec<bool> {
        let sender_buckets = self.sender_buckets(mail_from, remote_ip);
        let sender_count = sender_buckets.len();
        let buckets: Vec<Bucket> = sender_buckets
            .into_iter()
            .chain(inbox_ids.iter().map(|inbox_id| self.inbox_bucket(inbox_id)))
            .collect();
        let counted: Vec<(usize, &Bucket)> = buckets
            .iter()
            .enumerate()
            .filter(|(_, bucket)| bucket.soft != 0 || bucket.hard != 0)
            .collect();
        let mut over_soft = vec![false; buckets.len()];
        if !counted.is_empty() {
            let keys: Vec<(&str, f64)> = counted
                .iter()
                .map(|(_, bucket)| (bucket.key.as_str(), self.drain_per_ms(bucket)))
                .collect();
            let counted_at = now_ms();
            match self.db.add_to_rate_buckets(&keys, counted_at).await {
                Ok(levels) => {
                    for ((index, bucket), level) in counted.iter().zip(levels) {
                        over_soft[*index] = bucket.soft != 0 && level > milli(bucket.soft);
                        self.learn(bucket, level, counted_at, counted_at);
                    }
                }
                Err(err) => tracing::warn!(error = %err, "counting a message failed"),
            }
        }
        let sender_over = over_soft[..sender_count].iter().any(|over| *over);
        over_soft[sender_count..]
            .iter()
            .map(|inbox_over| sender_over || *inbox_over)
            .collect()
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
            ..DatabaseConfig::default()
        })
        .await
        .expect("db");
        db.migrate().await.expect("migrate");
        RateLimiter::new(&config, db)
    }

    /// Limits per envelope sender only (sender domain and inbox off).
    fn sender_limits(window_s: f64, sender_soft: u64, sender_hard: u64) -> RateLimitConfig {
        RateLimitConfig {
            window_s,
            sender_soft,
            sender_hard,
            domain_soft: 0,
            domain_hard: 0,
            inbox_soft: 0,
            inbox_hard: 0,
        }
    }

    #[tokio::test]
    async fn buckets_fill_per_sender_and_drain_their_soft_limit_per_window() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = sender_limits(3600.0, 1, 2);
        let limiter = limiter(&dir, config).await;
        let alice = Some("alice@example.org");
        assert_eq!(
            limiter.count_message(alice, None, &["agent"]).await,
            [false]
        );
        assert_eq!(
            limiter.count_message(alice, None, &["agent"]).await,
            [true],
            "second is over soft"
        );
        assert!(limiter.over_hard_limit(alice, None, "agent").await);
        assert!(
            !limiter
                .over_hard_limit(Some("bob@example.org"), None, "agent")
                .await
        );

        // The same level written one window ago has drained by the soft limit (one message).
        // Read by a node that has not counted it itself (another node, or this one a second
        // later), so the database answers.
        let key = "sender:alice@example.org";
        let an_hour_ago = now_ms() - 3_600_000;
        limiter
            .db
            .set_rate_bucket(key, 2000, an_hour_ago)
            .await
            .expect("write");
        let limiter = RateLimiter::new(&limiter.config, limiter.db.clone());
        assert!(!limiter.over_hard_limit(alice, None, "agent").await);
        assert_eq!(
            limiter.count_message(alice, None, &["agent"]).await,
            [true],
            "1 left + 1 new > 1"
        );
        assert!(limiter.over_hard_limit(alice, None, "agent").await);
    }

    /// RCPT is answered from the levels this node's own counts returned while they are fresh
    /// and far from the hard limit; near it, or a second later, the shared level is read, so
    /// counts another node made are seen.
    #[tokio::test]
    async fn rcpt_trusts_fresh_levels_far_from_the_limit_and_reads_near_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = sender_limits(3600.0, 0, 10);
        let limiter = limiter(&dir, config).await;
        let alice = Some("alice@example.org");
        let key = "sender:alice@example.org";
        limiter.count_message(alice, None, &["agent"]).await;
        // Another node fills the bucket behind this one's back (past the limit, so the
        // second of draining below leaves it there).
        limiter
            .db
            .set_rate_bucket(key, 10_500, now_ms())
            .await
            .expect("write");
        assert!(
            !limiter.over_hard_limit(alice, None, "agent").await,
            "1 of 10 a moment ago settles it here"
        );
        tokio::time::sleep(std::time::Duration::from_millis(
            u64::try_from(KNOWN_FOR_MS).expect("positive") + 100,
        ))
        .await;
        assert!(
            limiter.over_hard_limit(alice, None, "agent").await,
            "a second later the shared level is read"
        );

        // Half way to the hard limit the node reads at once.
        let bob = Some("bob@example.org");
        for _ in 0..5 {
            limiter.count_message(bob, None, &["agent"]).await;
        }
        assert!(!limiter.over_hard_limit(bob, None, "agent").await);
        limiter
            .db
            .set_rate_bucket("sender:bob@example.org", 10_500, now_ms())
            .await
            .expect("write");
        assert!(
            limiter.over_hard_limit(bob, None, "agent").await,
            "5 of 10 is near enough to read"
        );
        // A level this node counted to the hard limit refuses without a read.
        let carol = Some("carol@example.org");
        for _ in 0..10 {
            limiter.count_message(carol, None, &["agent"]).await;
        }
        limiter
            .db
            .set_rate_bucket("sender:carol@example.org", 0, now_ms())
            .await
            .expect("write");
        assert!(limiter.over_hard_limit(carol, None, "agent").await);
    }

    /// Counts arriving together share one statement in the group commit; each still gets the
    /// level it would have had alone, so exactly the counts past the soft limit say so.
    #[tokio::test]
    async fn counts_committed_together_each_see_their_own_level() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = sender_limits(3600.0, 10, 100);
        let limiter = limiter(&dir, config).await;
        let alice = Some("alice@example.org");
        let counts = futures_util::future::join_all(
            (0..20).map(|_| limiter.count_message(alice, None, &["agent"])),
        )
        .await;
        let over: usize = counts.iter().filter(|flags| flags[..] == [true]).count();
        assert_eq!(over, 10, "{counts:?}");
        let stored = level(&limiter, "sender:alice@example.org").await;
        assert!((19_990..=20_000).contains(&stored), "{stored}");
    }

    /// The stored level of one bucket, in thousandths of a message.
    async fn level(limiter: &RateLimiter, key: &str) -> i64 {
        let stored = limiter.db.rate_buckets(&[key]).await.expect("read");
        stored.first().map_or(0, |(_, level, _)| *level)
    }

    #[tokio::test]
    async fn two_senders_of_one_domain_fill_the_domain_bucket_while_their_own_stay_low() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = RateLimitConfig {
            // Nothing measurable drains while the test runs, however slowly.
            window_s: 1e9,
            sender_soft: 10,
            sender_hard: 20,
            domain_soft: 1,
            domain_hard: 2,
            inbox_soft: 0,
            inbox_hard: 0,
        };
        let limiter = limiter(&dir, config).await;
        let alice = Some("alice@example.org");
        let bob = Some("Bob@Example.org");
        assert_eq!(
            limiter.count_message(alice, None, &["agent"]).await,
            [false]
        );
        assert!(!limiter.over_hard_limit(bob, None, "agent").await);
        assert_eq!(
            limiter.count_message(bob, None, &["agent"]).await,
            [true],
            "the domain's second message is over its soft limit"
        );
        assert_eq!(level(&limiter, "sender:alice@example.org").await, 1000);
        assert_eq!(level(&limiter, "sender:bob@example.org").await, 1000);
        assert_eq!(level(&limiter, "domain:example.org").await, 2000);
        // Any sender of the domain is held back now, even one never seen; another domain is not.
        assert!(
            limiter
                .over_hard_limit(Some("carol@example.org"), None, "agent")
                .await
        );
        assert!(
            !limiter
                .over_hard_limit(Some("carol@elsewhere.test"), None, "agent")
                .await
        );
    }

    #[tokio::test]
    async fn two_domains_fill_one_inbox_bucket_while_another_inbox_still_accepts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = RateLimitConfig {
            // Nothing measurable drains while the test runs, however slowly.
            window_s: 1e9,
            sender_soft: 10,
            sender_hard: 20,
            domain_soft: 10,
            domain_hard: 20,
            inbox_soft: 1,
            inbox_hard: 2,
        };
        let limiter = limiter(&dir, config).await;
        assert_eq!(
            limiter
                .count_message(Some("alice@one.test"), None, &["agent"])
                .await,
            [false]
        );
        assert_eq!(
            limiter
                .count_message(Some("bob@two.test"), None, &["agent", "other"])
                .await,
            [true, false],
            "only the inbox that got two messages is over its soft limit"
        );
        assert_eq!(level(&limiter, "domain:one.test").await, 1000);
        assert_eq!(level(&limiter, "domain:two.test").await, 1000);
        let carol = Some("carol@three.test");
        assert!(limiter.over_hard_limit(carol, None, "agent").await);
        assert!(!limiter.over_hard_limit(carol, None, "other").await);
        assert_eq!(
            limiter.count_message(carol, None, &["other"]).await,
            [true],
            "the other inbox reaches its own soft limit with its second message"
        );
        assert!(limiter.over_hard_limit(carol, None, "other").await);
    }

    #[tokio::test]
    async fn bounces_are_counted_per_connecting_address_and_zero_turns_a_limit_off() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = sender_limits(3600.0, 1, 1);
        let limiter = limiter(&dir, config).await;
        let first: IpAddr = "192.0.2.1".parse().expect("ip");
        let second: IpAddr = "192.0.2.2".parse().expect("ip");
        assert_eq!(
            limiter.count_message(None, Some(first), &[]).await,
            [] as [bool; 0]
        );
        assert!(limiter.over_hard_limit(None, Some(first), "agent").await);
        assert!(!limiter.over_hard_limit(None, Some(second), "agent").await);
        for _ in 0..5 {
            assert_eq!(
                limiter.count_message(None, Some(second), &["agent"]).await,
                [false],
                "inbox limits are off and the sender is under its soft limit once"
            );
            limiter
                .db
                .set_rate_bucket("sender:<>@192.0.2.2", 0, now_ms())
                .await
                .expect("reset");
        }
    }

    #[tokio::test]
    async fn concurrent_sessions_never_lose_a_count() {
        let dir = tempfile::tempdir().expect("tempdir");
        // A window so long that nothing measurable drains during the test.
        let config = sender_limits(1e12, 0, 1_000_000);
        let limiter = limiter(&dir, config).await;
        let sessions: Vec<_> = (0..40)
            .map(|_| {
                let limiter = limiter.clone();
                tokio::spawn(async move {
                    limiter
                        .count_message(Some("carol@example.org"), None, &["agent"])
                        .await
                })
            })
            .collect();
        for session in sessions {
            session.await.expect("session");
        }
        let stored = limiter
            .db
            .rate_buckets(&["sender:carol@example.org"])
            .await
            .expect("read");
        let [(_, level, _)] = stored.as_slice() else {
            panic!("one bucket expected, got {stored:?}");
        };
        assert_eq!(*level, 40_000);
    }
}
