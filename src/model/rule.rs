//! Notification rules (SPEC "Notification rules"): an inbox's rules with their filters and
//! channels, and the checks every rule passes, whether the API or the dashboard sets it.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{PayloadFormat, SignatureFormat, SignatureScheme, Subscription, TrustTier};

/// One notification rule of an inbox, in the wire shape SPEC.md gives: what the API and the
/// dashboard take and answer, what the database stores, and what routing and the dispatcher
/// read. Optional endpoint settings stay as sent (an unset one is not echoed back); readers get
/// their defaults through the accessors.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Filled with a fresh `rule_…` id when a rule is stored without one.
    #[serde(default, deserialize_with = "null_as_empty")]
    #[schema(value_type = Option<String>)]
    pub id: String,
    pub name: String,
    #[serde(default = "enabled_by_default")]
    pub enabled: bool,
    #[serde(default)]
    pub filters: Filters,
    #[serde(default)]
    pub channels: Channels,
}

/// Every filter that is set must match; unset (null or empty) filters match everything.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = RuleFilters)]
pub struct Filters {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender_verified: Option<bool>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub traffic_types: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sender_domains: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trust_tiers: Vec<TrustTier>,
    /// The event types the rule's channels receive; unset is `["mail.received", "calendar.*"]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(value_type = Vec<String>, example = json!(["mail.*"]))]
    pub event_types: Vec<String>,
    /// Envelope addresses that reached the inbox: exact (case-insensitive) or the globs
    /// `*@domain` and `local+*@domain`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recipients: Vec<String>,
    /// The recipient's `+tag`, exact and case-insensitive.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recipient_tags: Vec<String>,
    /// A regular expression the subject must match somewhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub subject_matches: Option<SubjectPattern>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub has_attachments: Option<bool>,
    /// rspamd's action on the message as the event's `spam.action` names it (`no action`,
    /// `add header`, `reject`, …, or `temperror`); a message that was not scored matches none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(example = json!(["reject", "add header"]))]
    pub spam_actions: Vec<String>,
}

/// The largest compiled form a `subject_matches` pattern may take, so one rule cannot make
/// every message's routing slow or the gateway's memory large.
const SUBJECT_PATTERN_SIZE_LIMIT: usize = 1 << 20;

/// A rule's `subject_matches`: the pattern as sent (what GET echoes) and its compiled form,
/// compiled once when the rule is read, so routing never compiles. A pattern that does not
/// compile is kept, refused by [`Rule::validate`], and matches nothing should it be stored.
#[derive(Debug, Clone)]
pub struct SubjectPattern {
    pattern: String,
    compiled: Result<regex::Regex, String>,
}

impl SubjectPattern {
    pub fn new(pattern: &str) -> Self {
        let compiled = regex::RegexBuilder::new(pattern)
            .size_limit(SUBJECT_PATTERN_SIZE_LIMIT)
            .build()
            .map_err(|err| match err {
                regex::Error::CompiledTooBig(_) => "the expression is too large".to_owned(),
                err => format!("not a valid regular expression: {err}"),
            });
        Self {
            pattern: pattern.to_owned(),
            compiled,
        }
    }

    pub fn as_str(&self) -> &str {
        &self.pattern
    }

    /// Why the pattern does not compile, if it does not.
    pub fn error(&self) -> Option<&str> {
        self.compiled.as_ref().err().map(String::as_str)
    }

    pub fn is_match(&self, subject: &str) -> bool {
        self.compiled
            .as_ref()
            .is_ok_and(|regex| regex.is_match(subject))
    }
}

impl PartialEq for SubjectPattern {
    fn eq(&self, other: &Self) -> bool {
        self.pattern == other.pattern
    }
}

impl Serialize for SubjectPattern {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.pattern)
    }
}

impl<'de> Deserialize<'de> for SubjectPattern {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(Self::new(&String::deserialize(deserializer)?))
    }
}

impl Filters {
    /// The rule's subscription: its `event_types`, or the default when unset. A stored list
    /// that no longer reads (it was validated when set) subscribes to nothing rather than to
    /// more than was asked.
    pub fn subscription(&self) -> Subscription {
        if self.event_types.is_empty() {
            return Subscription::default();
        }
        Subscription::parse(&self.event_types).unwrap_or(Subscription(Vec::new()))
    }

    /// Why `subject_matches` is refused, when it is set and does not compile.
    pub fn subject_pattern_error(&self) -> Option<&str> {
        self.subject_matches
            .as_ref()
            .and_then(SubjectPattern::error)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = RuleChannels)]
pub struct Channels {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<WebhookChannel>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<EmailChannel>,
}

/// A rule's webhook, with the endpoint settings of SPEC "Delivery". It has no secret of its
/// own: it signs with its inbox's, so one receiver-side key verifies everything an inbox sends.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = RuleWebhook)]
pub struct WebhookChannel {
    #[serde(default = "enabled_by_default")]
    pub enabled: bool,
    pub url: String,
    /// The webhook's own label, stored and shown (the `event-data` payload names the rule).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Free text about the webhook, stored and shown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub signature: Option<SignatureScheme>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub payload: Option<PayloadFormat>,
    /// The hmac-sha256 scheme's header (default X-Webhook-Signature).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature_header: Option<String>,
    /// The hmac-sha256 scheme's value: sha256=hex (default) or hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub signature_format: Option<SignatureFormat>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_headers: Option<BTreeMap<String, String>>,
    /// Whole seconds, default 30, at most 300.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_s: Option<u32>,
    /// Default 6, at most 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify_tls: Option<bool>,
    /// One thread's events in acceptance order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ordered: Option<bool>,
    /// Set by the gateway when it switches the channel off (410 Gone, failing too long);
    /// dropped when the channel is enabled again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled_reason: Option<String>,
}

impl WebhookChannel {
    pub fn signature(&self) -> SignatureScheme {
        self.signature.unwrap_or(SignatureScheme::Agentmail)
    }
    pub fn payload(&self) -> PayloadFormat {
        self.payload.unwrap_or(PayloadFormat::Mxhook)
    }
    pub fn signature_format(&self) -> SignatureFormat {
        self.signature_format.unwrap_or_default()
    }
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(u64::from(self.timeout_s.unwrap_or(DEFAULT_TIMEOUT_S)))
    }
    pub fn max_retries(&self) -> u32 {
        self.max_retries.unwrap_or(DEFAULT_MAX_RETRIES)
    }
    pub fn verify_tls(&self) -> bool {
        self.verify_tls.unwrap_or(true)
    }
    pub fn ordered(&self) -> bool {
        self.ordered.unwrap_or(false)
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = RuleEmail)]
pub struct EmailChannel {
    #[serde(default = "enabled_by_default")]
    pub enabled: bool,
    pub recipients: Vec<String>,
}

fn enabled_by_default() -> bool {
    true
}

/// The longest `name` or `description` of a rule's webhook, in bytes.
const MAX_WEBHOOK_TEXT: usize = 1000;

/// A rule webhook's defaults (SPEC "Delivery": endpoint settings).
const DEFAULT_TIMEOUT_S: u32 = 30;
const DEFAULT_MAX_RETRIES: u32 = 6;

/// Reads a missing or `null` id as empty, which the API fills before storing.
fn null_as_empty<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    Ok(Option::<String>::deserialize(deserializer)?.unwrap_or_default())
}

impl Rule {
    /// Checks a rule as the API receives it; the message names the field.
    ///
    /// # Errors
    /// A message naming the offending field.
    pub fn validate(&self, allow_http: bool) -> Result<(), String> {
        if self.id.trim().is_empty() || self.id.len() > 64 {
            return Err("id: must be 1-64 characters".to_owned());
        }
        Subscription::parse(&self.filters.event_types)
            .map_err(|message| format!("filters.event_types: {message}"))?;
        if let Some(message) = self.filters.subject_pattern_error() {
            return Err(format!("filters.subject_matches: {message}"));
        }
        if let Some(webhook) = &self.channels.webhook {
            super::validate_webhook_url(&webhook.url, allow_http)
                .map_err(|message| format!("channels.webhook.url: {message}"))?;
            if let Some(header) = &webhook.signature_header {
                super::validate_signature_header(header)
                    .map_err(|message| format!("channels.webhook.signature_header: {message}"))?;
            }
            super::validate_endpoint_settings(
                webhook.custom_headers.as_ref().unwrap_or(&BTreeMap::new()),
                webhook.timeout_s,
                webhook.max_retries,
                webhook.signature(),
                webhook.signature_header.as_deref(),
            )
            .map_err(|(field, message)| format!("channels.webhook.{field}: {message}"))?;
            for (field, text) in [
                ("name", &webhook.name),
                ("description", &webhook.description),
            ] {
                if text
                    .as_ref()
                    .is_some_and(|text| text.len() > MAX_WEBHOOK_TEXT)
                {
                    return Err(format!(
                        "channels.webhook.{field}: must be at most {MAX_WEBHOOK_TEXT} bytes"
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
