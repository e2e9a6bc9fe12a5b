//! Notification rules (SPEC "Notification rules"): an inbox's rules with their filters and
//! channels, and the checks every rule passes, whether the API or the dashboard sets it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{PayloadFormat, SignatureFormat, SignatureScheme};

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
    pub fn validate(&self, allow_http: bool) -> Result<(), String> {
        if self.id.trim().is_empty() || self.id.len() > 64 {
            return Err("id: must be 1-64 characters".to_owned());
        }
        for tier in &self.filters.trust_tiers {
            if !TRUST_TIERS.contains(&tier.as_str()) {
                return Err(format!("filters.trust_tiers: unknown tier `{tier}`"));
            }
        }
        if let Some(webhook) = &self.channels.webhook {
            super::validate_webhook_url(&webhook.url, allow_http)
                .map_err(|message| format!("channels.webhook.url: {message}"))?;
            if !(webhook.timeout_s > 0.0 && webhook.timeout_s <= 300.0) {
                return Err("channels.webhook.timeout_s: must be in (0, 300]".to_owned());
            }
            if webhook.max_retries > 10 {
                return Err("channels.webhook.max_retries: must be at most 10".to_owned());
            }
            if let Some(header) = &webhook.signature_header {
                super::validate_signature_header(header)
                    .map_err(|message| format!("channels.webhook.signature_header: {message}"))?;
            }
            let signature_header = webhook
                .signature_header
                .as_deref()
                .unwrap_or(super::DEFAULT_HMAC_HEADER);
            for name in webhook.custom_headers.keys() {
                // A custom header is added beside the signature, so one named like the
                // signature header would send two values and no receiver could verify.
                let signs_in_it = webhook.signature == SignatureScheme::HmacSha256
                    && name.eq_ignore_ascii_case(signature_header);
                if super::is_reserved_header(name)
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
                if super::normalize_address(recipient).is_none() {
                    return Err(format!(
                        "channels.email.recipients: `{recipient}` is not an address"
                    ));
                }
            }
        }
        Ok(())
    }
}
