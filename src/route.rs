//! Notification rules (SPEC "Notification rules"): which channels an event goes to.
//!
//! Pure: a function from an event's flags and an inbox's rules to routes. No IO, no clock. The
//! inbox webhook receives every event and is not a rule; rules add routes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::{DeliveryConfig, PayloadFormat, SignatureFormat, SignatureScheme};

/// One notification rule of an inbox.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default = "enabled_by_default")]
    pub enabled: bool,
    #[serde(default)]
    pub filters: Filters,
    #[serde(default)]
    pub channels: Channels,
}

/// Every filter that is set must match; unset (null or empty) filters match everything.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Filters {
    #[serde(default)]
    pub sender_verified: Option<bool>,
    #[serde(default)]
    pub traffic_types: Vec<String>,
    #[serde(default)]
    pub sender_domains: Vec<String>,
    #[serde(default)]
    pub trust_tiers: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Channels {
    #[serde(default)]
    pub webhook: Option<WebhookChannel>,
    #[serde(default)]
    pub email: Option<EmailChannel>,
}

/// A rule's webhook, with the endpoint settings of SPEC "Delivery".
#[derive(Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookChannel {
    #[serde(default = "enabled_by_default")]
    pub enabled: bool,
    pub url: String,
    #[serde(default = "default_signature")]
    pub signature: SignatureScheme,
    #[serde(default = "default_payload")]
    pub payload: PayloadFormat,
    /// The `hmac-sha256` scheme's header; `None` is `X-Webhook-Signature`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature_header: Option<String>,
    /// The `hmac-sha256` scheme's value format.
    #[serde(default)]
    pub signature_format: SignatureFormat,
    /// Write-only: accepted on input, never serialized back out.
    #[serde(default, skip_serializing)]
    pub secret: Option<String>,
    #[serde(default)]
    pub custom_headers: BTreeMap<String, String>,
    #[serde(default = "default_timeout_s")]
    pub timeout_s: f64,
    #[serde(default = "default_max_retries")]
    pub max_retries: u32,
    #[serde(default = "enabled_by_default")]
    pub verify_tls: bool,
    /// One thread's events in acceptance order.
    #[serde(default)]
    pub ordered: bool,
    /// Set by the dispatcher when it switches the channel off (410 Gone, failing too long).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled_reason: Option<String>,
}

impl std::fmt::Debug for WebhookChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookChannel")
            .field("enabled", &self.enabled)
            .field("url", &self.url)
            .field("signature", &self.signature)
            .field("payload", &self.payload)
            .field("signature_header", &self.signature_header)
            .field("signature_format", &self.signature_format)
            .field("secret", &self.secret.as_ref().map(|_| "redacted"))
            .field(
                "custom_headers",
                &self.custom_headers.keys().collect::<Vec<_>>(),
            )
            .field("timeout_s", &self.timeout_s)
            .field("max_retries", &self.max_retries)
            .field("verify_tls", &self.verify_tls)
            .field("ordered", &self.ordered)
            .field("disabled_reason", &self.disabled_reason)
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EmailChannel {
    #[serde(default = "enabled_by_default")]
    pub enabled: bool,
    pub recipients: Vec<String>,
}

fn enabled_by_default() -> bool {
    true
}
fn default_signature() -> SignatureScheme {
    SignatureScheme::Agentmail
}
fn default_payload() -> PayloadFormat {
    PayloadFormat::Mxhook
}
fn default_timeout_s() -> f64 {
    30.0
}
fn default_max_retries() -> u32 {
    6
}

/// Trust tiers and traffic types a filter may name (SPEC "The mail.received event").
const TRUST_TIERS: [&str; 4] = ["trusted", "verified", "unverified", "suspicious"];

impl Rule {
    /// Checks a rule as the API receives it; the message names the field.
    ///
    /// # Errors
    /// A message naming the offending field.
    pub fn validate(&self, delivery: &DeliveryConfig) -> Result<(), String> {
        if self.id.trim().is_empty() || self.id.len() > 64 {
            return Err("id: must be 1-64 characters".to_owned());
        }
        for tier in &self.filters.trust_tiers {
            if !TRUST_TIERS.contains(&tier.as_str()) {
                return Err(format!("filters.trust_tiers: unknown tier `{tier}`"));
            }
        }
        if let Some(webhook) = &self.channels.webhook {
            crate::config::validate_webhook_url(&webhook.url, delivery)
                .map_err(|message| format!("channels.webhook.url: {message}"))?;
            if !(webhook.timeout_s > 0.0 && webhook.timeout_s <= 300.0) {
                return Err("channels.webhook.timeout_s: must be in (0, 300]".to_owned());
            }
            if webhook.max_retries > 10 {
                return Err("channels.webhook.max_retries: must be at most 10".to_owned());
            }
            if let Some(header) = &webhook.signature_header {
                crate::config::validate_signature_header(header)
                    .map_err(|message| format!("channels.webhook.signature_header: {message}"))?;
            }
            let signature_header = webhook
                .signature_header
                .as_deref()
                .unwrap_or(crate::deliver::signature::DEFAULT_HMAC_HEADER);
            for name in webhook.custom_headers.keys() {
                // A custom header is added beside the signature, so one named like the
                // signature header would send two values and no receiver could verify.
                let signs_in_it = webhook.signature == SignatureScheme::HmacSha256
                    && name.eq_ignore_ascii_case(signature_header);
                if crate::config::is_reserved_header(name)
                    || signs_in_it
                    || name.is_empty()
                    || !name.bytes().all(|b| b.is_ascii_graphic() && b != b':')
                {
                    return Err(format!(
                        "channels.webhook.custom_headers: `{name}` cannot be set"
                    ));
                }
            }
        }
        if let Some(email) = &self.channels.email {
            if email.recipients.is_empty() && email.enabled {
                return Err("channels.email.recipients: list at least one address".to_owned());
            }
            for recipient in &email.recipients {
                if crate::config::normalize_address(recipient).is_none() {
                    return Err(format!(
                        "channels.email.recipients: `{recipient}` is not an address"
                    ));
                }
            }
        }
        Ok(())
    }
}

/// The flags of an event that filters look at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventFlags {
    pub sender_verified: bool,
    pub traffic_types: Vec<String>,
    pub sender_domain: Option<String>,
    pub trust_tier: String,
}

impl EventFlags {
    /// Reads the flags from a `mail.received` event; missing fields read as the least trusted
    /// values.
    pub fn from_event(event: &Value) -> Self {
        Self {
            sender_verified: event["sender_verified"].as_bool().unwrap_or(false),
            traffic_types: event["traffic_types"]
                .as_array()
                .map(|types| {
                    types
                        .iter()
                        .filter_map(Value::as_str)
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default(),
            sender_domain: event["sender"]
                .as_str()
                .and_then(|sender| sender.rsplit_once('@'))
                .map(|(_, domain)| domain.to_ascii_lowercase()),
            trust_tier: event["peer_trust_tier"]
                .as_str()
                .unwrap_or("unverified")
                .to_owned(),
        }
    }
}

impl Filters {
    pub fn matches(&self, flags: &EventFlags) -> bool {
        let verified_ok = self
            .sender_verified
            .is_none_or(|wanted| wanted == flags.sender_verified);
        let types_ok = self.traffic_types.is_empty()
            || self
                .traffic_types
                .iter()
                .any(|wanted| flags.traffic_types.contains(wanted));
        let domains_ok = self.sender_domains.is_empty()
            || flags.sender_domain.as_deref().is_some_and(|domain| {
                self.sender_domains.iter().any(|wanted| {
                    let wanted = wanted.trim_start_matches("*.").to_ascii_lowercase();
                    domain == wanted || domain.ends_with(&format!(".{wanted}"))
                })
            });
        let tiers_ok = self.trust_tiers.is_empty() || self.trust_tiers.contains(&flags.trust_tier);
        verified_ok && types_ok && domains_ok && tiers_ok
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
        .filter(|rule| rule.enabled && rule.filters.matches(flags))
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
