//! `[http]`: the API and dashboard listener, its admin keys (redacted in `Debug`) and the file
//! that keeps the key made on a first run without them, with defaults and validation.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use super::{Error, invalid};

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    pub listen: SocketAddr,
    /// Bearer keys with full access to the API.
    pub admin_keys: Vec<String>,
    /// Without `admin_keys`, the admin key is made once and kept in this file (mode 0600).
    pub admin_key_file: PathBuf,
    /// The gateway's address as clients reach it (`https://mx.example.com`), the base of the
    /// links it hands out; unset is `http://<listen>`.
    pub public_url: Option<String>,
    /// Seconds between the comments that keep an idle event stream open through proxies.
    pub event_stream_heartbeat_s: u64,
    /// Event streams (and MCP waits) one key may hold open at once; past it, 429.
    pub event_streams_per_key: usize,
    /// On PostgreSQL, how often (ms) a node looks for messages other nodes committed, to wake
    /// its event streams.
    pub event_stream_poll_ms: u64,
}

impl fmt::Debug for HttpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpConfig")
            .field("listen", &self.listen)
            .field(
                "admin_keys",
                &format_args!("[{} redacted]", self.admin_keys.len()),
            )
            .field("admin_key_file", &self.admin_key_file)
            .field("public_url", &self.public_url)
            .field("event_stream_heartbeat_s", &self.event_stream_heartbeat_s)
            .field("event_streams_per_key", &self.event_streams_per_key)
            .field("event_stream_poll_ms", &self.event_stream_poll_ms)
            .finish()
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            admin_keys: Vec::new(),
            admin_key_file: PathBuf::from("./data/admin_key"),
            public_url: None,
            event_stream_heartbeat_s: 15,
            event_streams_per_key: 20,
            event_stream_poll_ms: 500,
        }
    }
}

impl HttpConfig {
    /// The base of the links the gateway hands out, without a trailing `/`: `public_url`, or
    /// the address the listener is bound to.
    pub fn public_base(&self, bound: Option<SocketAddr>) -> String {
        match &self.public_url {
            Some(url) => url.trim_end_matches('/').to_owned(),
            None => format!("http://{}", bound.unwrap_or(self.listen)),
        }
    }

    pub(super) fn validate(&self) -> Result<(), Error> {
        if self.admin_keys.iter().any(|key| key.trim().is_empty()) {
            return Err(invalid("http.admin_keys", "keys must not be empty"));
        }
        if self.admin_key_file.as_os_str().is_empty() {
            return Err(invalid("http.admin_key_file", "must not be empty"));
        }
        if let Some(public_url) = &self.public_url {
            let parsed = url::Url::parse(public_url)
                .map_err(|err| invalid("http.public_url", format!("not a valid URL: {err}")))?;
            if !matches!(parsed.scheme(), "http" | "https")
                || parsed.host_str().is_none()
                || parsed.query().is_some()
            {
                return Err(invalid(
                    "http.public_url",
                    "must be http(s)://host[:port][/path], without a query",
                ));
            }
        }
        if self.event_stream_heartbeat_s == 0 {
            return Err(invalid(
                "http.event_stream_heartbeat_s",
                "must be at least 1",
            ));
        }
        if self.event_streams_per_key == 0 {
            return Err(invalid("http.event_streams_per_key", "must be at least 1"));
        }
        if self.event_stream_poll_ms == 0 {
            return Err(invalid("http.event_stream_poll_ms", "must be at least 1"));
        }
        Ok(())
    }

    pub fn event_stream_heartbeat(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.event_stream_heartbeat_s)
    }

    pub fn event_stream_poll(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.event_stream_poll_ms)
    }
}
