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

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn error_of(toml: &str) -> String {
        Config::from_toml_str(toml)
            .expect_err("refused")
            .to_string()
    }

    #[test]
    fn spam_keys_are_checked_by_name() {
        let config = Config::from_toml_str("").expect("defaults");
        assert!(!config.spam.enabled());
        assert_eq!(config.spam.timeout(), std::time::Duration::from_secs(5));
        let config = Config::from_toml_str(
            "[spam]\nrspamd_url = \"http://127.0.0.1:11333\"\ntimeout_s = 2.5\n",
        )
        .expect("valid");
        assert!(config.spam.enabled());
        assert!(error_of("[spam]\nrspamd_url = \"ftp://x\"\n").contains("spam.rspamd_url"));
        assert!(error_of("[spam]\nrspamd_url = \"not a url\"\n").contains("spam.rspamd_url"));
        assert!(error_of("[spam]\ntimeout_s = 0\n").contains("spam.timeout_s"));
        let inbox = "[[inbox]]\nid = \"a\"\naddresses = [\"a@example.com\"]\n";
        assert!(
            error_of(&format!("{inbox}spam_action = \"drop\"\n")).contains("inbox[0].spam_action")
        );
        let config = Config::from_toml_str(&format!(
            "{inbox}spam_action = \"reject\"\nspam_score_threshold = 8\n"
        ))
        .expect("valid");
        let policy = config.inboxes[0].sender_policy();
        assert_eq!(policy.spam_action, crate::model::SpamAction::Reject);
        assert_eq!(policy.spam_score_threshold, Some(8.0));
    }
}
