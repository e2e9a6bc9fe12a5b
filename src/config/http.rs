//! `[http]`: the API and dashboard listener and its admin keys (redacted in `Debug`), with
//! defaults and validation.

use std::fmt;
use std::net::SocketAddr;

use serde::Deserialize;

use super::{Error, invalid};

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    pub listen: SocketAddr,
    /// Bearer keys with full access to the API.
    pub admin_keys: Vec<String>,
}

impl fmt::Debug for HttpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpConfig")
            .field("listen", &self.listen)
            .field(
                "admin_keys",
                &format_args!("[{} redacted]", self.admin_keys.len()),
            )
            .finish()
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            admin_keys: Vec::new(),
        }
    }
}

impl HttpConfig {
    pub(super) fn validate(&self) -> Result<(), Error> {
        if self.admin_keys.iter().any(|key| key.trim().is_empty()) {
            return Err(invalid("http.admin_keys", "keys must not be empty"));
        }
        Ok(())
    }
}
