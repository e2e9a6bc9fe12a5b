//! Notification rules (SPEC "Notification rules"): which channels an event goes to.
//!
//! Pure: a function from an event's type and flags and an inbox's rules to routes. No IO, no
//! clock. The inbox webhook is not a rule: it receives the events its `events` subscribe to
//! ([`inbox_webhook_wants`]); rules add routes.

use crate::event::{Event, TrustTier};
use crate::model::{Filters, Inbox, MAIL_QUARANTINED, Rule, WebhookEndpoint, is_operational};

/// The type and flags of an event that subscriptions and filters look at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventFlags {
    pub event_type: &'static str,
    pub sender_verified: bool,
    pub traffic_types: Vec<String>,
    pub sender_domain: Option<String>,
    pub trust_tier: TrustTier,
    /// The envelope address that reached the inbox, as sent.
    pub recipient: Option<String>,
    pub recipient_tag: Option<String>,
    pub subject: String,
    pub has_attachments: bool,
    /// The event's `spam.action`, when the message was scored.
    pub spam_action: Option<String>,
}

impl EventFlags {
    /// Reads the flags from an event. An event that is no received mail has no sender to
    /// verify: it reads as the least trusted values, as a mail without verification does.
    pub fn from_event(event: &Event) -> Self {
        let Event::Mail(mail) = event else {
            return Self::without_sender(event.event_type());
        };
        Self {
            event_type: event.event_type(),
            sender_verified: mail.sender_verified,
            traffic_types: mail.traffic_types.clone(),
            sender_domain: mail
                .sender
                .as_deref()
                .and_then(|sender| sender.rsplit_once('@'))
                .map(|(_, domain)| domain.to_ascii_lowercase()),
            trust_tier: mail.peer_trust_tier,
            recipient: Some(mail.recipient.clone()).filter(|recipient| !recipient.is_empty()),
            recipient_tag: mail.recipient_tag.clone(),
            subject: mail.subject.clone(),
            has_attachments: !mail.email.attachments.is_empty(),
            spam_action: mail.spam.as_ref().map(|spam| spam.action.clone()),
        }
    }

    /// The flags of an event of `event_type` that has no sender (bookings, operational events).
    pub fn without_sender(event_type: &'static str) -> Self {
        Self {
            event_type,
            sender_verified: false,
            traffic_types: Vec::new(),
            sender_domain: None,
            trust_tier: TrustTier::Unverified,
            recipient: None,
            recipient_tag: None,
            subject: String::new(),
            has_attachments: false,
            spam_action: None,
        }
    }

    /// Whether an email forward can carry the event: only an event with a message to forward
    /// (a received mail, a booking). A quarantined mail is held back, and an operational event
    /// has no message of its own.
    fn forwardable(&self) -> bool {
        self.event_type != MAIL_QUARANTINED && !is_operational(self.event_type)
    }
}

/// Whether the inbox webhook receives an event of `event_type`.
pub fn inbox_webhook_wants(webhook: &WebhookEndpoint, event_type: &str) -> bool {
    webhook.enabled && webhook.events.matches(event_type)
}

/// The webhooks of `inbox` that an operational event of `event_type` about the endpoint
/// `about` (`inbox` or `rule:<id>`) goes to, as (endpoint ref, endpoint): those subscribed to
/// it, never the endpoint it is about (SPEC "Event types and subscriptions").
pub fn operational_webhooks(
    inbox: &Inbox,
    event_type: &'static str,
    about: &str,
) -> Vec<(String, WebhookEndpoint)> {
    let mut out = Vec::new();
    if about != "inbox"
        && let Some(webhook) = inbox
            .webhook
            .as_ref()
            .filter(|webhook| inbox_webhook_wants(webhook, event_type))
    {
        out.push(("inbox".to_owned(), webhook.clone()));
    }
    let flags = EventFlags::without_sender(event_type);
    for route in routes(&inbox.rules, &flags, |_| false) {
        let Route::Webhook { rule_id } = route else {
            continue;
        };
        let endpoint_ref = format!("rule:{rule_id}");
        if endpoint_ref == about {
            continue;
        }
        let rule = inbox.rules.iter().find(|rule| rule.id == rule_id);
        if let Some((rule, channel)) =
            rule.and_then(|rule| Some((rule, rule.channels.webhook.as_ref()?)))
        {
            out.push((
                endpoint_ref,
                WebhookEndpoint::for_rule(&rule.name, channel, inbox.webhook.as_ref()),
            ));
        }
    }
    out
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
    let recipients_ok = filters.recipients.is_empty()
        || flags.recipient.as_deref().is_some_and(|recipient| {
            filters
                .recipients
                .iter()
                .any(|wanted| recipient_matches(wanted, recipient))
        });
    let tags_ok = filters.recipient_tags.is_empty()
        || flags.recipient_tag.as_deref().is_some_and(|tag| {
            filters
                .recipient_tags
                .iter()
                .any(|wanted| wanted.eq_ignore_ascii_case(tag))
        });
    let subject_ok = filters
        .subject_matches
        .as_ref()
        .is_none_or(|pattern| pattern.is_match(&flags.subject));
    let attachments_ok = filters
        .has_attachments
        .is_none_or(|wanted| wanted == flags.has_attachments);
    let spam_ok = filters.spam_actions.is_empty()
        || flags.spam_action.as_deref().is_some_and(|action| {
            filters
                .spam_actions
                .iter()
                .any(|wanted| wanted.eq_ignore_ascii_case(action))
        });
    let subscribed = filters.subscription().matches(flags.event_type);
    subscribed
        && verified_ok
        && types_ok
        && domains_ok
        && tiers_ok
        && recipients_ok
        && tags_ok
        && subject_ok
        && attachments_ok
        && spam_ok
}

/// Whether `recipient` is the filter entry `wanted`: the same address (case-insensitive), any
/// local part at the domain (`*@domain`), or the local part with any tag (`local+*@domain`).
fn recipient_matches(wanted: &str, recipient: &str) -> bool {
    let (Some((wanted_local, wanted_domain)), Some((local, domain))) =
        (wanted.rsplit_once('@'), recipient.rsplit_once('@'))
    else {
        return wanted.eq_ignore_ascii_case(recipient);
    };
    if !wanted_domain.eq_ignore_ascii_case(domain) {
        return false;
    }
    if wanted_local == "*" {
        return true;
    }
    match wanted_local.strip_suffix("+*") {
        Some(base) => local
            .split_once('+')
            .is_some_and(|(untagged, _)| untagged.eq_ignore_ascii_case(base)),
        None => wanted_local.eq_ignore_ascii_case(local),
    }
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
        if let Some(email) = rule
            .channels
            .email
            .as_ref()
            .filter(|email| email.enabled && flags.forwardable())
        {
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
