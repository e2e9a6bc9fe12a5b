//! `[retention]` and `[attachments]`: how long stored mail is kept and how the pruner runs, and
//! the lifetime of signed attachment URLs.

use std::time::Duration;

use serde::Deserialize;

use super::{Error, invalid, positive_seconds, seconds};

/// The longest retention a key takes: a hundred years, far beyond any sensible setting, and far
/// enough below what the millisecond arithmetic holds that no cutoff overflows.
pub const MAX_RETENTION_DAYS: f64 = 36_500.0;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Days a message is kept (fractions allowed); 0 keeps everything for ever. An inbox's own
    /// `retention_days` overrides it.
    pub days: f64,
    /// Seconds between two runs of the pruner.
    pub interval_s: f64,
    /// Messages one statement batch of the pruner looks at.
    pub batch_size: u32,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            days: 0.0,
            interval_s: 3600.0,
            batch_size: 200,
        }
    }
}

impl RetentionConfig {
    pub(super) fn validate(&self) -> Result<(), Error> {
        retention_days("retention.days", self.days)?;
        positive_seconds("retention.interval_s", self.interval_s)?;
        if self.batch_size == 0 || self.batch_size > 10_000 {
            return Err(invalid(
                "retention.batch_size",
                "must be between 1 and 10000",
            ));
        }
        Ok(())
    }

    pub fn interval(&self) -> Duration {
        seconds(self.interval_s)
    }
}

/// A retention in days: 0 (for ever) or a positive number up to [`MAX_RETENTION_DAYS`].
///
/// # Errors
/// [`Error::Invalid`] naming `key`.
pub fn retention_days(key: &str, days: f64) -> Result<(), Error> {
    if days.is_finite() && (0.0..=MAX_RETENTION_DAYS).contains(&days) {
        Ok(())
    } else {
        Err(invalid(
            key,
            "must be a number of days from 0 (keep for ever) to 36500",
        ))
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AttachmentsConfig {
    /// Seconds a signed attachment URL in an event works; 0 leaves the URLs out.
    pub url_ttl_s: f64,
}

impl Default for AttachmentsConfig {
    fn default() -> Self {
        Self {
            url_ttl_s: 86_400.0,
        }
    }
}

impl AttachmentsConfig {
    pub(super) fn validate(&self) -> Result<(), Error> {
        if self.url_ttl_s != 0.0 {
            positive_seconds("attachments.url_ttl_s", self.url_ttl_s)?;
        }
        Ok(())
    }

    /// `None` when signed URLs are off.
    pub fn url_ttl(&self) -> Option<Duration> {
        (self.url_ttl_s > 0.0).then(|| seconds(self.url_ttl_s))
    }
}
