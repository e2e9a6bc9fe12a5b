//! `[forward]`: the email-forward channel's outgoing relay and sender address (credentials
//! redacted in `Debug`), with validation.

use std::fmt;

use serde::Deserialize;

use crate::model::normalize_address;

use super::{Error, invalid};

/// The email-forward channel's outgoing relay.
#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ForwardConfig {
    /// `smtp://host:port` (STARTTLS when offered; `?tls=required` to insist) or
    /// `smtps://host:port`; credentials as `smtp://user:pass@host`. Unset: email channels fail
    /// their deliveries with a clear error and stay resendable.
    pub smarthost: Option<String>,
    /// Envelope and header From of forwards; defaults to `mxhook@<smtp.hostname>`.
    pub from_address: Option<String>,
}

impl fmt::Debug for ForwardConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = self
            .smarthost
            .as_deref()
            .and_then(|url| url::Url::parse(url).ok())
            .map(|url| format!("{}://{}", url.scheme(), url.host_str().unwrap_or_default()));
        f.debug_struct("ForwardConfig")
            .field("smarthost", &host)
            .field("from_address", &self.from_address)
            .finish()
    }
}

impl ForwardConfig {
    pub(super) fn validate(&self) -> Result<(), Error> {
        if let Some(smarthost) = &self.smarthost {
            let parsed = url::Url::parse(smarthost)
                .map_err(|err| invalid("forward.smarthost", format!("not a valid URL: {err}")))?;
            if !matches!(parsed.scheme(), "smtp" | "smtps") || parsed.host_str().is_none() {
                return Err(invalid(
                    "forward.smarthost",
                    "must be smtp://host[:port] or smtps://host[:port]",
                ));
            }
        }
        if let Some(from) = &self.from_address
            && normalize_address(from).is_none()
        {
            return Err(invalid(
                "forward.from_address",
                "must be a local@domain address",
            ));
        }
        Ok(())
    }
}
