//! An inbox's sender policy, the same noun for the config file, the API and intake.

use serde::Deserialize;

use super::normalize_address;

/// How an inbox treats mail that breaks its policy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PolicyAction {
    /// Accept and deliver; the event lists the violations.
    #[default]
    Tag,
    /// `550 5.7.1` at the end of DATA; nothing is stored.
    Reject,
    /// Stored and visible by API, but not delivered.
    Quarantine,
}

/// An inbox's sender policy, the same whether the config file or the API set it: which
/// authentication results are required, allow and block lists (addresses or domains), and what
/// happens to mail that breaks it. Stored on the inbox row, read by intake through the directory.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SenderPolicy {
    pub spf_pass_required: bool,
    pub dkim_pass_required: bool,
    pub dmarc_pass_required: bool,
    /// When set, only these senders (with a DMARC pass) meet the policy, and they are `trusted`.
    pub allow_senders: Vec<String>,
    /// Senders that never meet the policy (From or envelope sender).
    pub block_senders: Vec<String>,
    pub policy_action: PolicyAction,
}

/// An allow or block list entry, lowercased: an address (`user@example.com`) or a domain
/// (`example.com`, which covers its subdomains); `None` when it is neither.
pub fn normalize_sender_entry(entry: &str) -> Option<String> {
    let entry = entry.trim();
    // `@example.com` is how many allow lists write a domain; the matcher reads it so too.
    let entry = entry.strip_prefix('@').unwrap_or(entry);
    if entry.contains('@') {
        return normalize_address(entry);
    }
    // A domain is checked as the domain part of an address would be.
    normalize_address(&format!("postmaster@{entry}"))
        .map(|_| entry.trim_end_matches('.').to_lowercase())
}
