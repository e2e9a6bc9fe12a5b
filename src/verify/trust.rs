//! What the verdict and the headers mean for an agent: `peer_trust_tier`, `traffic_types` and
//! the per-inbox policy (required passes, allow and block lists).
//!
//! Pure: no IO, no clock. Inputs are the verdict, facts read from the header section, and the
//! lists from config; the intake stage supplies them and acts on the answers.

use std::collections::BTreeMap;

use super::AuthVerdict;

/// Header facts the flags depend on, read from the raw header section.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderFacts {
    pub from_headers: usize,
    /// Mailboxes named across all From headers (`From: a@x, b@x` is one header, two authors).
    pub from_addresses: usize,
    /// `Auto-Submitted` with a value other than `no` (RFC 3834).
    pub auto_submitted: bool,
    pub list_id: bool,
    pub list_unsubscribe: bool,
    /// `Precedence: bulk`, `list` or `junk`.
    pub bulk_precedence: bool,
}

/// Reads the header section (up to the first empty line), unfolding nothing it does not need.
/// `from_mailboxes` is [`ParsedMessage::from_mailboxes`](crate::parse::ParsedMessage): the
/// parser has already read the From headers' address lists, so they are not parsed again here.
pub fn header_facts(raw: &[u8], from_mailboxes: usize) -> HeaderFacts {
    let mut facts = HeaderFacts {
        from_addresses: from_mailboxes,
        ..HeaderFacts::default()
    };
    for line in raw.split(|byte| *byte == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            break;
        }
        if line.starts_with(b" ") || line.starts_with(b"\t") {
            continue;
        }
        let Some(colon) = line.iter().position(|byte| *byte == b':') else {
            continue;
        };
        let name = String::from_utf8_lossy(&line[..colon])
            .trim()
            .to_ascii_lowercase();
        let value = String::from_utf8_lossy(&line[colon + 1..])
            .trim()
            .to_ascii_lowercase();
        match name.as_str() {
            "from" => facts.from_headers += 1,
            "auto-submitted" => facts.auto_submitted |= !value.is_empty() && value != "no",
            "list-id" => facts.list_id = true,
            "list-unsubscribe" => facts.list_unsubscribe = true,
            "precedence" => {
                facts.bulk_precedence |= matches!(value.as_str(), "bulk" | "list" | "junk");
            }
            _ => {}
        }
    }
    facts
}

impl HeaderFacts {
    /// Exactly one From header naming exactly one mailbox: the only case where "the author"
    /// means one address an agent can act on.
    pub fn single_author(&self) -> bool {
        self.from_headers == 1 && self.from_addresses == 1
    }

    /// More than one author claimed, in several headers or one list.
    fn several_authors(&self) -> bool {
        self.from_headers > 1 || self.from_addresses > 1
    }
}

/// Everything the tier and the traffic types are computed from.
pub struct Facts<'a> {
    pub verdict: &'a AuthVerdict,
    pub headers: &'a HeaderFacts,
    /// The RFC 5322 From address.
    pub from: Option<&'a str>,
    /// The envelope sender; `None` is the null sender of bounces.
    pub envelope_from: Option<&'a str>,
    /// The From address is an inbox of this gateway.
    pub from_is_gateway_inbox: bool,
    /// The From address is on the inbox's or the config's allow list.
    pub allow_listed: bool,
}

/// `sender_verified`: DMARC passed for the From domain *and* the message has one author.
/// mail-auth still runs DMARC when several From addresses share a domain, and a pass then
/// vouches only for the domain, not for which of the addresses wrote the message.
pub fn sender_verified(facts: &Facts<'_>) -> bool {
    facts.verdict.dmarc_pass() && facts.headers.single_author()
}

/// `trusted | verified | unverified | suspicious`.
///
/// `suspicious` wins: several From headers or addresses, a DMARC failure under a `quarantine`
/// or `reject` policy, or an SPF or DKIM failure without a verified sender to outweigh it.
/// `trusted` needs the allow list *and* a verified sender, because an allow-listed From
/// address is trivial to forge.
pub fn trust_tier(facts: &Facts<'_>) -> &'static str {
    let verdict = facts.verdict;
    let verified = sender_verified(facts);
    let dmarc_enforced_fail = verdict.dmarc.as_ref().is_some_and(|dmarc| {
        dmarc.result == "fail" && matches!(dmarc.policy, "reject" | "quarantine")
    });
    let auth_fail = verdict.spf.as_ref().is_some_and(|spf| spf.result == "fail")
        || verdict.dkim.iter().any(|dkim| dkim.result == "fail");
    if facts.headers.several_authors() || dmarc_enforced_fail || (auth_fail && !verified) {
        "suspicious"
    } else if verified && facts.allow_listed {
        "trusted"
    } else if verified {
        "verified"
    } else {
        "unverified"
    }
}

/// Local parts that mark a machine sender.
const AUTOMATED_LOCAL_PARTS: [&str; 8] = [
    "noreply",
    "no-reply",
    "no_reply",
    "donotreply",
    "do-not-reply",
    "mailer-daemon",
    "postmaster",
    "bounce",
];

/// `human`, `automated`, `bulk`, `peer`, plus the configured type of the From domain.
/// `human` means neither automated nor bulk.
pub fn traffic_types(
    facts: &Facts<'_>,
    sender_domain_types: &BTreeMap<String, String>,
) -> Vec<String> {
    let mut types = Vec::new();
    let machine_address = |address: &str| {
        address.rsplit_once('@').is_some_and(|(local, _)| {
            let local = local.to_ascii_lowercase();
            AUTOMATED_LOCAL_PARTS
                .iter()
                .any(|pattern| local == *pattern || local.starts_with(&format!("{pattern}+")))
                || local.starts_with("bounce")
        })
    };
    let automated = facts.headers.auto_submitted
        || facts.envelope_from.is_none()
        || facts.from.is_some_and(machine_address)
        || facts.envelope_from.is_some_and(machine_address);
    let bulk =
        facts.headers.list_id || facts.headers.list_unsubscribe || facts.headers.bulk_precedence;
    if !automated && !bulk {
        types.push("human".to_owned());
    }
    if automated {
        types.push("automated".to_owned());
    }
    if bulk {
        types.push("bulk".to_owned());
    }
    if facts.from_is_gateway_inbox {
        types.push("peer".to_owned());
    }
    if let Some(domain) = facts.from.and_then(domain_of) {
        for (configured, kind) in sender_domain_types {
            if domain_matches(&domain, configured) && !types.contains(kind) {
                types.push(kind.clone());
            }
        }
    }
    types
}

/// True when `address` is on `list`: an entry is an address (`a@example.com`), a domain
/// (`example.com`, which also covers its subdomains) or `@example.com`.
pub fn sender_listed(list: &[String], address: &str) -> bool {
    let address = address.to_ascii_lowercase();
    let domain = domain_of(&address);
    list.iter().any(|entry| {
        let entry = entry.trim().to_ascii_lowercase();
        if entry.contains('@') && !entry.starts_with('@') {
            entry == address
        } else {
            domain
                .as_deref()
                .is_some_and(|domain| domain_matches(domain, entry.trim_start_matches('@')))
        }
    })
}

fn domain_of(address: &str) -> Option<String> {
    address
        .rsplit_once('@')
        .map(|(_, domain)| domain.trim_end_matches('.').to_ascii_lowercase())
        .filter(|domain| !domain.is_empty())
}

fn domain_matches(domain: &str, configured: &str) -> bool {
    let configured = configured.trim_end_matches('.').to_ascii_lowercase();
    domain == configured || domain.ends_with(&format!(".{configured}"))
}

/// An inbox's acceptance rules (config `[[inbox]]` policy keys).
#[derive(Debug, Clone, Default)]
pub struct InboxPolicy {
    pub spf_pass_required: bool,
    pub dkim_pass_required: bool,
    pub dmarc_pass_required: bool,
    /// When not empty, only these senders (From address, DMARC pass) are acceptable.
    pub allow_senders: Vec<String>,
    /// Senders refused whatever their authentication (From or envelope sender).
    pub block_senders: Vec<String>,
}

/// Why the message breaks the inbox's policy; empty when it does not.
pub fn policy_violations(policy: &InboxPolicy, facts: &Facts<'_>) -> Vec<String> {
    let verdict = facts.verdict;
    let mut violations = Vec::new();
    let blocked = |address: Option<&str>| {
        address.is_some_and(|address| sender_listed(&policy.block_senders, address))
    };
    if blocked(facts.from) || blocked(facts.envelope_from) {
        violations.push("sender is blocked".to_owned());
    }
    let verified_and_allowed = sender_verified(facts)
        && facts
            .from
            .is_some_and(|from| sender_listed(&policy.allow_senders, from));
    if !policy.allow_senders.is_empty() && !verified_and_allowed {
        violations.push("sender is not on the verified allow list".to_owned());
    }
    if policy.spf_pass_required && verdict.spf.as_ref().is_none_or(|spf| spf.result != "pass") {
        violations.push("SPF did not pass".to_owned());
    }
    if policy.dkim_pass_required && !verdict.dkim.iter().any(|dkim| dkim.result == "pass") {
        violations.push("no DKIM signature passed".to_owned());
    }
    if policy.dmarc_pass_required && !verdict.dmarc_pass() {
        violations.push("DMARC did not pass".to_owned());
    }
    violations
}

/// What identifies a message for duplicate detection: its Message-ID, or without one a hash
/// of the author, subject, date and body (the header section changes on every hop).
///
/// Line endings are normalised first: the same message may arrive with CRLF from one relay
/// and bare LF from another (SMTP stores bare-LF lines with CRLF, provider ingress may not),
/// and the header section ends at the first empty line either way.
pub fn fingerprint(message_id: Option<&str>, raw: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    if let Some(id) = message_id.map(str::trim).filter(|id| !id.is_empty()) {
        return format!("mid:{}", id.to_ascii_lowercase());
    }
    let mut hasher = Sha256::new();
    let mut lines = raw
        .split(|byte| *byte == b'\n')
        .map(|line| line.strip_suffix(b"\r").unwrap_or(line));
    for line in lines.by_ref() {
        if line.is_empty() {
            break;
        }
        let lower = line.to_ascii_lowercase();
        if ["from:", "subject:", "date:", "to:"]
            .iter()
            .any(|name| lower.starts_with(name.as_bytes()))
        {
            hasher.update(line.trim_ascii());
            hasher.update(b"\n");
        }
    }
    // A separator the header lines above can never produce, so a header cannot pass for body.
    hasher.update(b"\0");
    for line in lines {
        hasher.update(line);
        hasher.update(b"\n");
    }
    format!("sha256:{}", hex::encode(hasher.finalize()))
}
