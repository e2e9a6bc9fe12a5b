//! `[replies]` and `[dkim]`: how often an inbox may send replies, and the DKIM keys replies are
//! signed with, with defaults and validation. The key files are read and parsed when the reply
//! stage starts, which names the key on failure.

use std::path::PathBuf;

use serde::Deserialize;

use super::{Error, invalid};

/// Replies an inbox sends through `POST /v1/messages/{id}/reply`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RepliesConfig {
    /// Replies one inbox may send in any hour, counted across nodes from the stored replies;
    /// past it the API answers 429. 0 refuses every reply. A leaked inbox key then sends at
    /// most this much mail in the gateway's name.
    pub max_per_hour: u32,
}

impl Default for RepliesConfig {
    fn default() -> Self {
        Self { max_per_hour: 100 }
    }
}

/// `[dkim]`: the keys replies are signed with, one per From domain.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DkimConfig {
    pub keys: Vec<DkimKeyConfig>,
}

/// One signing key: a reply whose From is at `domain` is signed `d=domain; s=selector` with the
/// RSA or Ed25519 private key in `key_file` (PEM, PKCS#1 or PKCS#8).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DkimKeyConfig {
    pub domain: String,
    pub selector: String,
    pub key_file: PathBuf,
}

impl DkimConfig {
    pub(super) fn validate(&self) -> Result<(), Error> {
        let mut domains: Vec<String> = Vec::new();
        for (idx, key) in self.keys.iter().enumerate() {
            let name = |field: &str| format!("dkim.keys[{idx}].{field}");
            let domain = key.domain.trim().trim_end_matches('.').to_ascii_lowercase();
            if !is_dns_name(&domain) {
                return Err(invalid(name("domain"), "must be a domain name"));
            }
            if domains.contains(&domain) {
                return Err(invalid(
                    name("domain"),
                    format!("`{domain}` has more than one key"),
                ));
            }
            domains.push(domain);
            if !is_dns_name(&key.selector) {
                return Err(invalid(
                    name("selector"),
                    "must be a DNS label (letters, digits, `-`, dots between labels)",
                ));
            }
            if key.key_file.as_os_str().is_empty() {
                return Err(invalid(
                    name("key_file"),
                    "must name the private key's file",
                ));
            }
        }
        Ok(())
    }
}

fn is_dns_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_')
        })
}
