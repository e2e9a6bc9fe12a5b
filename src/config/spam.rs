//! `[spam]`: spam scoring by rspamd — its URL (empty is off) and how long one check may take —
//! with defaults and validation.

use std::time::Duration;

use serde::Deserialize;

use super::{Error, invalid, positive_seconds, seconds};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpamConfig {
    /// rspamd's normal worker, `http://host:11333`; empty turns scoring off.
    pub rspamd_url: String,
    /// Seconds one check may take; past it (or on any error) the verdict is `temperror` and
    /// the mail is accepted all the same.
    pub timeout_s: f64,
}

impl Default for SpamConfig {
    fn default() -> Self {
        Self {
            rspamd_url: String::new(),
            timeout_s: 5.0,
        }
    }
}

impl SpamConfig {
    /// Whether messages are scored.
    pub fn enabled(&self) -> bool {
        !self.rspamd_url.trim().is_empty()
    }

    /// `timeout_s`: how long one check may take.
    pub fn timeout(&self) -> Duration {
        seconds(self.timeout_s)
    }

    pub(super) fn validate(&self) -> Result<(), Error> {
        positive_seconds("spam.timeout_s", self.timeout_s)?;
        if self.enabled() {
            let url = url::Url::parse(self.rspamd_url.trim())
                .map_err(|err| invalid("spam.rspamd_url", format!("not a valid URL: {err}")))?;
            if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
                return Err(invalid(
                    "spam.rspamd_url",
                    "must be http://host[:port] or https://host[:port]",
                ));
            }
        }
        Ok(())
    }
}
