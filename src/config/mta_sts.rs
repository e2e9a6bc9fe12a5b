//! `[mta_sts]`: the MTA-STS policy (RFC 8461) the gateway serves at
//! `GET /.well-known/mta-sts.txt`, and the `_mta-sts` TXT record that announces it.
//!
//! Senders fetch the policy from `https://mta-sts.<domain>/.well-known/mta-sts.txt`, so the
//! operator points that name at a TLS proxy in front of the HTTP port; the TXT record's `id`
//! must change whenever the policy does, so it is derived from the policy text itself.

use serde::Deserialize;
use sha2::Digest as _;

use super::{Error, invalid};

/// RFC 8461 §3.2: at most 31557600 seconds (about a year).
const MAX_AGE_LIMIT: u64 = 31_557_600;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MtaStsConfig {
    /// `enforce`, `testing` or `none`.
    pub mode: Mode,
    /// The MX host names senders may deliver to (`mx.example.com`, or `*.example.com`).
    #[serde(default)]
    pub mx: Vec<String>,
    /// Seconds a sender caches the policy.
    #[serde(default = "default_max_age")]
    pub max_age: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Enforce,
    Testing,
    None,
}

fn default_max_age() -> u64 {
    604_800
}

impl MtaStsConfig {
    /// The policy file, lines ended by CRLF as RFC 8461 §3.2 writes them.
    pub fn policy(&self) -> String {
        let mode = match self.mode {
            Mode::Enforce => "enforce",
            Mode::Testing => "testing",
            Mode::None => "none",
        };
        let mut text = format!("version: STSv1\r\nmode: {mode}\r\n");
        for mx in &self.mx {
            text.push_str(&format!("mx: {mx}\r\n"));
        }
        text.push_str(&format!("max_age: {}\r\n", self.max_age));
        text
    }

    /// The policy id the TXT record announces: changes whenever the policy text does.
    pub fn policy_id(&self) -> String {
        let digest = sha2::Sha256::digest(self.policy().as_bytes());
        hex::encode(&digest[..10])
    }

    /// The TXT record value for `_mta-sts.<domain>`.
    pub fn txt_record(&self) -> String {
        format!("v=STSv1; id={}", self.policy_id())
    }

    pub(super) fn validate(&self) -> Result<(), Error> {
        if self.mode != Mode::None && self.mx.is_empty() {
            return Err(invalid(
                "mta_sts.mx",
                "list the MX host names senders may deliver to",
            ));
        }
        for mx in &self.mx {
            let host = mx.strip_prefix("*.").unwrap_or(mx);
            let valid = !host.is_empty()
                && host.len() <= 253
                && host.split('.').all(|label| {
                    !label.is_empty()
                        && label.len() <= 63
                        && label
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                        && !label.starts_with('-')
                        && !label.ends_with('-')
                });
            if !valid {
                return Err(invalid(
                    "mta_sts.mx",
                    format!("`{mx}` is not a host name (mx.example.com or *.example.com)"),
                ));
            }
        }
        if !(1..=MAX_AGE_LIMIT).contains(&self.max_age) {
            return Err(invalid(
                "mta_sts.max_age",
                "must be between 1 and 31557600 seconds (RFC 8461)",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::Config;

    #[test]
    fn policy_text_id_and_validation() {
        let config = Config::from_toml_str(
            "[mta_sts]\nmode = \"enforce\"\nmx = [\"mx1.example.com\", \"*.mx.example.net\"]\nmax_age = 86400",
        )
        .expect("valid");
        let sts = config.mta_sts.expect("configured");
        assert_eq!(
            sts.policy(),
            "version: STSv1\r\nmode: enforce\r\nmx: mx1.example.com\r\nmx: *.mx.example.net\r\nmax_age: 86400\r\n"
        );
        let txt = sts.txt_record();
        assert!(txt.starts_with("v=STSv1; id="), "{txt}");
        let id = sts.policy_id();
        assert!(id.len() <= 32 && id.bytes().all(|b| b.is_ascii_alphanumeric()));
        let mut changed = sts.clone();
        changed.max_age = 86401;
        assert_ne!(changed.policy_id(), id);

        for (toml, key) in [
            ("mode = \"enforce\"", "mta_sts.mx"),
            ("mode = \"strict\"\nmx = [\"a.example\"]", "mta_sts.mode"),
            ("mode = \"testing\"\nmx = [\"bad host\"]", "mta_sts.mx"),
            (
                "mode = \"testing\"\nmx = [\"a.example\"]\nmax_age = 0",
                "mta_sts.max_age",
            ),
        ] {
            let err = Config::from_toml_str(&format!("[mta_sts]\n{toml}"))
                .expect_err("refused")
                .to_string();
            assert!(err.contains(key), "{toml}: {err}");
        }
        assert!(Config::from_toml_str("[mta_sts]\nmode = \"none\"").is_ok());
    }
}
