//! `[auth]`: sender authentication (SPF, DKIM, DMARC, ARC) — on or off, the DNS servers and
//! timeouts, the senders trusted for every inbox, sender-domain traffic types and the duplicate
//! window — with defaults and validation.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde::Deserialize;

use super::{Error, invalid, positive_seconds, seconds, validate_sender_entries};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Run SPF, DKIM, DMARC and ARC; off, events say `auth.checked: false` and no DNS is asked.
    pub enabled: bool,
    /// DNS servers for SPF/DKIM/DMARC lookups; empty means the system resolver.
    pub nameservers: Vec<String>,
    /// Seconds one DNS query may take (two attempts per server).
    pub dns_timeout_s: f64,
    /// Seconds all checks of one message may take; past it the verdict is `temperror`.
    pub verify_timeout_s: f64,
    /// Senders trusted for every inbox once DMARC passes: addresses or domains.
    pub allow_senders: Vec<String>,
    /// From domain (and its subdomains) → an extra entry in `traffic_types`.
    pub sender_domain_types: BTreeMap<String, String>,
    /// Seconds within which a message with the same Message-ID (or content) for the same inbox
    /// is flagged `is_duplicate`.
    pub duplicate_window_s: f64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            nameservers: Vec::new(),
            dns_timeout_s: 5.0,
            verify_timeout_s: 20.0,
            allow_senders: Vec::new(),
            sender_domain_types: BTreeMap::new(),
            duplicate_window_s: 7.0 * 24.0 * 3600.0,
        }
    }
}

impl AuthConfig {
    /// `dns_timeout_s`: how long one DNS query may take.
    pub fn dns_timeout(&self) -> Duration {
        seconds(self.dns_timeout_s)
    }

    /// `verify_timeout_s`: how long all checks of one message may take.
    pub fn verify_timeout(&self) -> Duration {
        seconds(self.verify_timeout_s)
    }

    /// `duplicate_window_s`: how far back a same Message-ID (or content) makes a duplicate.
    pub fn duplicate_window(&self) -> Duration {
        seconds(self.duplicate_window_s)
    }

    pub(super) fn validate(&self) -> Result<(), Error> {
        positive_seconds("auth.dns_timeout_s", self.dns_timeout_s)?;
        positive_seconds("auth.verify_timeout_s", self.verify_timeout_s)?;
        positive_seconds("auth.duplicate_window_s", self.duplicate_window_s)?;
        for server in &self.nameservers {
            if server.parse::<SocketAddr>().is_err() && server.parse::<IpAddr>().is_err() {
                return Err(invalid(
                    "auth.nameservers",
                    format!("`{server}` is not an address (\"127.0.0.1:5353\" or \"9.9.9.9\")"),
                ));
            }
        }
        validate_sender_entries("auth.allow_senders", &self.allow_senders)
    }
}
