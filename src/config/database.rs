//! `[database]`: the database URL, the pool size and how often the inbox directory looks for
//! changes made elsewhere, with defaults and validation.

use std::time::Duration;

use serde::Deserialize;

use super::{Error, invalid, positive_seconds, seconds};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    pub url: String,
    pub max_connections: u32,
    /// Seconds between checks for inbox changes made through another node (or before this one
    /// started); a change reaches this node's RCPT directory within about this long.
    pub directory_refresh_s: f64,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: "sqlite://./data/mxhook.db".to_owned(),
            max_connections: 8,
            directory_refresh_s: 2.0,
        }
    }
}

impl DatabaseConfig {
    /// `directory_refresh_s`: the interval between inbox directory checks.
    pub fn directory_refresh(&self) -> Duration {
        seconds(self.directory_refresh_s)
    }

    pub(super) fn validate(&self) -> Result<(), Error> {
        let url = &self.url;
        if !(url.starts_with("sqlite:")
            || url.starts_with("postgres:")
            || url.starts_with("postgresql:"))
        {
            return Err(invalid(
                "database.url",
                "must start with sqlite:// or postgres://",
            ));
        }
        if self.max_connections == 0 {
            return Err(invalid(
                "database.max_connections",
                "must be greater than 0",
            ));
        }
        positive_seconds("database.directory_refresh_s", self.directory_refresh_s)
    }
}
