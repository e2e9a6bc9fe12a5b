//! `[rate_limit]`: the leaky buckets per sender, sender domain and inbox — window and soft and
//! hard levels — with defaults and validation.

use std::time::Duration;

use serde::Deserialize;

use super::{Error, invalid, positive_seconds, seconds};

/// Leaky buckets per envelope sender, sender domain and inbox: each accepted message adds one,
/// and a bucket drains its soft limit once per window. Above the soft level events carry
/// `rate_limited: true`; at the hard level RCPT is answered `451 4.7.1`. 0 turns a limit off.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    pub window_s: f64,
    pub sender_soft: u64,
    pub sender_hard: u64,
    pub domain_soft: u64,
    pub domain_hard: u64,
    pub inbox_soft: u64,
    pub inbox_hard: u64,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            window_s: 3600.0,
            sender_soft: 100,
            sender_hard: 500,
            domain_soft: 1000,
            domain_hard: 5000,
            inbox_soft: 5000,
            inbox_hard: 20000,
        }
    }
}

impl RateLimitConfig {
    /// `window_s`: the time in which a bucket drains its soft limit.
    pub fn window(&self) -> Duration {
        seconds(self.window_s)
    }

    pub(super) fn validate(&self) -> Result<(), Error> {
        positive_seconds("rate_limit.window_s", self.window_s)?;
        for (key, soft, hard) in [
            ("rate_limit.sender_hard", self.sender_soft, self.sender_hard),
            ("rate_limit.domain_hard", self.domain_soft, self.domain_hard),
            ("rate_limit.inbox_hard", self.inbox_soft, self.inbox_hard),
        ] {
            if hard != 0 && hard < soft {
                return Err(invalid(key, "must be 0 (off) or at least the soft limit"));
            }
        }
        Ok(())
    }
}
