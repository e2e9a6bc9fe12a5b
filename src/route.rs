//! Notification rules (SPEC "Notification rules"): which channels an event goes to.
//!
//! Pure: a function from an event's flags and an inbox's rules to routes. No IO, no clock. The
//! inbox webhook receives every event and is not a rule; rules add routes.

use crate::event::{Event, TrustTier};
use crate::model::{Filters, Rule};

/// The flags of an event that filters look at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventFlags {
    pub sender_verified: bool,
    pub traffic_types: Vec<String>,
    pub sender_domain: Option<String>,
    pub trust_tier: TrustTier,
}

impl EventFlags {
    /// Reads the flags from an event. A calendar event has no sender to verify: it reads as the
    /// least trusted values, as a mail without verification does.
    pub fn from_event(event: &Event) -> Self {
        let Event::Mail(mail) = event else {
            return Self {
                sender_verified: false,
                traffic_types: Vec::new(),
                sender_domain: None,
                trust_tier: TrustTier::Unverified,
            };
        };
        Self {
            sender_verified: mail.sender_verified,
            traffic_types: mail.traffic_types.clone(),
            sender_domain: mail
                .sender
                .as_deref()
                .and_then(|sender| sender.rsplit_once('@'))
                .map(|(_, domain)| domain.to_ascii_lowercase()),
            trust_tier: mail.peer_trust_tier,
        }
    }
}

/// Whether every filter that is set matches `flags`.
fn filters_match(filters: &Filters, flags: &EventFlags) -> bool {
    let verified_ok = filters
        .sender_verified
        .is_none_or(|wanted| wanted == flags.sender_verified);
    let types_ok = filters.traffic_types.is_empty()
        || filters
            .traffic_types
            .iter()
            .any(|wanted| flags.traffic_types.contains(wanted));
    let domains_ok = filters.sender_domains.is_empty()
        || flags.sender_domain.as_deref().is_some_and(|domain| {
            filters.sender_domains.iter().any(|wanted| {
                let wanted = wanted.trim_start_matches("*.").to_ascii_lowercase();
                domain == wanted || domain.ends_with(&format!(".{wanted}"))
            })
        });
    let tiers_ok =
        filters.trust_tiers.is_empty() || filters.trust_tiers.contains(&flags.trust_tier);
    verified_ok && types_ok && domains_ok && tiers_ok
}

/// Where one event goes because of a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Webhook {
        rule_id: String,
    },
    Email {
        rule_id: String,
        recipients: Vec<String>,
    },
}

/// The routes an event takes through `rules`, in rule order. Email recipients that are this
/// gateway's own inboxes (`is_own_address`) are dropped, so a forward can never loop back in.
pub fn routes(
    rules: &[Rule],
    flags: &EventFlags,
    is_own_address: impl Fn(&str) -> bool,
) -> Vec<Route> {
    let mut out = Vec::new();
    for rule in rules
        .iter()
        .filter(|rule| rule.enabled && filters_match(&rule.filters, flags))
    {
        if rule
            .channels
            .webhook
            .as_ref()
            .is_some_and(|webhook| webhook.enabled)
        {
            out.push(Route::Webhook {
                rule_id: rule.id.clone(),
            });
        }
        if let Some(email) = rule.channels.email.as_ref().filter(|email| email.enabled) {
            let recipients: Vec<String> = email
                .recipients
                .iter()
                .filter(|recipient| !is_own_address(&recipient.to_ascii_lowercase()))
                .cloned()
                .collect();
            if !recipients.is_empty() {
                out.push(Route::Email {
                    rule_id: rule.id.clone(),
                    recipients,
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests;
