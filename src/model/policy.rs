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
#[derive(Debug, Clone, Default, PartialEq, Deserialize, serde::Serialize)]
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
    /// What happens to mail rspamd scores as spam (see [`SpamVerdict::is_spam`]). Left out of
    /// the stored JSON at its default, so a policy without it reads as before.
    #[serde(skip_serializing_if = "SpamAction::is_tag")]
    pub spam_action: SpamAction,
    /// The score from which mail counts as spam; unset is rspamd's own `required_score`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spam_score_threshold: Option<f64>,
    /// Mail for this inbox only over TLS: in a plaintext session RCPT is answered `530 5.7.0`
    /// (SPEC "Edge"). Left out of the stored JSON when off.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub require_tls: bool,
}

/// How an inbox treats mail rspamd scores as spam.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SpamAction {
    /// Accept and deliver; the event carries the verdict.
    #[default]
    Tag,
    /// Held like a policy quarantine: stored, visible by API, only `mail.quarantined` goes out.
    Quarantine,
    /// `550 5.7.1` at the end of DATA when every inbox the message reaches rejects it; an inbox
    /// that rejects among others that accept holds its copy in quarantine instead.
    Reject,
}

impl SpamAction {
    fn is_tag(&self) -> bool {
        *self == Self::Tag
    }
}

/// rspamd's verdict on a message, as the event carries it (SPEC "Content safety"): the score,
/// the score rspamd rejects at, its action (`no action`, `greylist`, `add header`, `rewrite
/// subject`, `soft reject`, `reject`) and the symbols that fired; or only `action:
/// "temperror"` when rspamd could not be asked.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, serde::Serialize, utoipa::ToSchema)]
#[serde(default)]
pub struct SpamVerdict {
    /// As rspamd names it, or `temperror`.
    pub action: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub required_score: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub score: Option<f64>,
    /// The names of the symbols that fired, sorted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub symbols: Option<Vec<String>>,
}

/// The `action` of a verdict rspamd did not give.
pub const SPAM_TEMPERROR: &str = "temperror";

impl SpamVerdict {
    pub fn temperror() -> Self {
        Self {
            action: SPAM_TEMPERROR.to_owned(),
            ..Self::default()
        }
    }

    /// Whether this verdict makes the message spam for an inbox whose `spam_score_threshold` is
    /// `threshold`: the score reaches it, or rspamd's `required_score` when the inbox sets none.
    /// A `temperror` (rspamd down or slow) never does: the mail is delivered rather than held.
    pub fn is_spam(&self, threshold: Option<f64>) -> bool {
        let Some(score) = self.score else {
            return false;
        };
        match threshold.or(self.required_score) {
            Some(threshold) => score >= threshold,
            None => self.action == "reject",
        }
    }
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
