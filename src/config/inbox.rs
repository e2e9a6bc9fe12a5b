//! `[[inbox]]`: one inbox declared in the file — its id and addresses, webhook, signing,
//! payload, ordering, calendar event types and sender policy (secret redacted in `Debug`) —
//! with the defaults of its keys and its validation, including what two inboxes may not share.

use std::collections::{BTreeMap, HashSet};
use std::fmt;

use serde::Deserialize;

use crate::model::{
    EndpointSettings, PayloadFormat, PolicyAction, SenderPolicy, SignatureFormat, SignatureScheme,
    SpamAction, Subscription, is_valid_inbox_id, normalize_address, validate_signature_header,
    validate_webhook_url,
};

use super::{Error, invalid, validate_sender_entries};

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InboxConfig {
    pub id: String,
    pub addresses: Vec<String>,
    #[serde(default)]
    pub webhook_url: Option<String>,
    #[serde(default)]
    pub webhook_secret: Option<String>,
    #[serde(default = "default_signature")]
    pub signature: SignatureScheme,
    #[serde(default = "default_payload")]
    pub payload: PayloadFormat,
    /// The `hmac-sha256` scheme's header (default `X-Webhook-Signature`).
    #[serde(default)]
    pub signature_header: Option<String>,
    /// The `hmac-sha256` scheme's value: `sha256=hex` (default) or `hex`.
    #[serde(default)]
    pub signature_format: SignatureFormat,
    /// Whether the webhook receiver's TLS certificate must verify; false accepts any
    /// certificate (self-signed receivers on a private network).
    #[serde(default = "default_true")]
    pub verify_tls: bool,
    /// Deliver one thread's events to the webhook in the order the messages were accepted: a
    /// delivery waits while an earlier one of its thread is pending (retries included).
    #[serde(default)]
    pub ordered: bool,
    /// The event types the webhook receives: types, `prefix.*` patterns and `*` (SPEC "Event
    /// types and subscriptions"); unset is `["mail.received", "calendar.*"]`.
    #[serde(default)]
    pub events: Option<Vec<String>>,
    /// Extra request headers of every webhook delivery (`{ X-Team = "ops" }`).
    #[serde(default)]
    pub custom_headers: BTreeMap<String, String>,
    /// The webhook's request timeout in whole seconds (at most 300); unset is
    /// `delivery.timeout_s`.
    #[serde(default)]
    pub timeout_s: Option<u32>,
    /// The webhook's retries before dead-lettering (at most 10); unset is
    /// `delivery.max_retries`.
    #[serde(default)]
    pub max_retries: Option<u32>,
    /// Calendar event types whose bookings this inbox receives, as `calcom:<eventTypeId>` or
    /// `calendly:<event type URI>`.
    #[serde(default)]
    pub calendar_event_types: Vec<String>,
    #[serde(default)]
    pub spf_pass_required: bool,
    #[serde(default)]
    pub dkim_pass_required: bool,
    #[serde(default)]
    pub dmarc_pass_required: bool,
    /// Addresses or domains; when set, only these senders (with a DMARC pass) meet the policy,
    /// and they are `trusted`.
    #[serde(default)]
    pub allow_senders: Vec<String>,
    /// Addresses or domains that never meet the policy.
    #[serde(default)]
    pub block_senders: Vec<String>,
    #[serde(default)]
    pub policy_action: PolicyAction,
    /// What happens to mail rspamd scores as spam: tag (default), quarantine or reject.
    #[serde(default)]
    pub spam_action: SpamAction,
    /// The score from which mail counts as spam; unset is rspamd's `required_score`.
    #[serde(default)]
    pub spam_score_threshold: Option<f64>,
    /// Mail for this inbox only over TLS: in a plaintext session RCPT gets `530 5.7.0`.
    #[serde(default)]
    pub require_tls: bool,
    /// Days this inbox's messages are kept (fractions allowed, 0 for ever); unset is
    /// `retention.days`.
    #[serde(default)]
    pub retention_days: Option<f64>,
}

impl fmt::Debug for InboxConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InboxConfig")
            .field("id", &self.id)
            .field("addresses", &self.addresses)
            .field("webhook_url", &self.webhook_url)
            .field(
                "webhook_secret",
                &self.webhook_secret.as_ref().map(|_| "redacted"),
            )
            .field("signature", &self.signature)
            .field("payload", &self.payload)
            .field("signature_header", &self.signature_header)
            .field("signature_format", &self.signature_format)
            .field("verify_tls", &self.verify_tls)
            .field("ordered", &self.ordered)
            .field("events", &self.events)
            // Header values may be the receiver's credentials: only the names.
            .field(
                "custom_headers",
                &self.custom_headers.keys().collect::<Vec<_>>(),
            )
            .field("timeout_s", &self.timeout_s)
            .field("max_retries", &self.max_retries)
            .field("calendar_event_types", &self.calendar_event_types)
            .field("spf_pass_required", &self.spf_pass_required)
            .field("dkim_pass_required", &self.dkim_pass_required)
            .field("dmarc_pass_required", &self.dmarc_pass_required)
            .field("allow_senders", &self.allow_senders)
            .field("block_senders", &self.block_senders)
            .field("policy_action", &self.policy_action)
            .field("spam_action", &self.spam_action)
            .field("spam_score_threshold", &self.spam_score_threshold)
            .field("require_tls", &self.require_tls)
            .field("retention_days", &self.retention_days)
            .finish()
    }
}

fn default_signature() -> SignatureScheme {
    SignatureScheme::Agentmail
}

fn default_payload() -> PayloadFormat {
    PayloadFormat::Mxhook
}

fn default_true() -> bool {
    true
}

/// What the inboxes checked so far have taken: an id, an address or a calendar event type
/// belongs to one inbox, so a later inbox naming it again is refused.
#[derive(Default)]
pub(super) struct Claimed<'a> {
    ids: HashSet<&'a str>,
    addresses: HashSet<String>,
    calendar_event_types: HashSet<&'a str>,
}

impl InboxConfig {
    /// The policy keys of this `[[inbox]]`, as the inbox row stores them.
    pub fn sender_policy(&self) -> SenderPolicy {
        SenderPolicy {
            spf_pass_required: self.spf_pass_required,
            dkim_pass_required: self.dkim_pass_required,
            dmarc_pass_required: self.dmarc_pass_required,
            allow_senders: self.allow_senders.clone(),
            block_senders: self.block_senders.clone(),
            policy_action: self.policy_action,
            spam_action: self.spam_action,
            spam_score_threshold: self.spam_score_threshold,
            require_tls: self.require_tls,
        }
    }

    /// The webhook's subscription (`events`, checked by [`Self::validate`]).
    pub fn events(&self) -> Subscription {
        self.events
            .as_deref()
            .and_then(|events| Subscription::parse(events).ok())
            .unwrap_or_default()
    }

    /// The webhook's delivery settings, as the inbox row stores them.
    pub fn endpoint_settings(&self) -> EndpointSettings {
        EndpointSettings {
            custom_headers: self.custom_headers.clone(),
            timeout_s: self.timeout_s,
            max_retries: self.max_retries,
        }
    }

    /// Checks the `idx`-th `[[inbox]]` (keys are named `inbox[idx].…`) and claims its id,
    /// addresses and calendar event types in `claimed`. `allow_http` is `delivery.allow_http`.
    pub(super) fn validate<'a>(
        &'a self,
        idx: usize,
        allow_http: bool,
        claimed: &mut Claimed<'a>,
    ) -> Result<(), Error> {
        if let Some(days) = self.retention_days {
            super::retention::retention_days(&format!("inbox[{idx}].retention_days"), days)?;
        }
        let key = |field: &str| format!("inbox[{idx}].{field}");
        if !is_valid_inbox_id(&self.id) {
            return Err(invalid(
                key("id"),
                "must be 1-64 characters of a-z, A-Z, 0-9, `.`, `_`, `-`, not starting with `.`",
            ));
        }
        if !claimed.ids.insert(self.id.as_str()) {
            return Err(invalid(
                key("id"),
                format!("`{}` is declared twice", self.id),
            ));
        }
        if self.addresses.is_empty() {
            return Err(invalid(key("addresses"), "must list at least one address"));
        }
        if self
            .spam_score_threshold
            .is_some_and(|threshold| !threshold.is_finite())
        {
            return Err(invalid(key("spam_score_threshold"), "must be a number"));
        }
        for address in &self.addresses {
            let normalized = normalize_address(address).ok_or_else(|| {
                invalid(
                    key("addresses"),
                    format!("`{address}` is not a plain local@domain address"),
                )
            })?;
            if !claimed.addresses.insert(normalized) {
                return Err(invalid(
                    key("addresses"),
                    format!("`{address}` belongs to more than one inbox"),
                ));
            }
        }
        if let Some(url) = &self.webhook_url {
            validate_webhook_url(url, allow_http)
                .map_err(|message| invalid(key("webhook_url"), message))?;
        }
        if let Some(events) = &self.events {
            Subscription::parse(events).map_err(|message| invalid(key("events"), message))?;
        }
        if let Some(header) = &self.signature_header {
            validate_signature_header(header)
                .map_err(|message| invalid(key("signature_header"), message))?;
        }
        self.endpoint_settings()
            .validate(self.signature, self.signature_header.as_deref())
            .map_err(|(field, message)| invalid(key(field), message))?;
        for (field, entries) in [
            ("allow_senders", &self.allow_senders),
            ("block_senders", &self.block_senders),
        ] {
            validate_sender_entries(&key(field), entries)?;
        }
        for event_type in &self.calendar_event_types {
            let known = ["calcom:", "calendly:"].iter().any(|prefix| {
                event_type
                    .strip_prefix(prefix)
                    .is_some_and(|id| !id.is_empty())
            });
            if !known {
                return Err(invalid(
                    key("calendar_event_types"),
                    format!("`{event_type}` is not `calcom:<id>` or `calendly:<event type URI>`"),
                ));
            }
            if !claimed.calendar_event_types.insert(event_type.as_str()) {
                return Err(invalid(
                    key("calendar_event_types"),
                    format!("`{event_type}` belongs to more than one inbox"),
                ));
            }
        }
        if let Some(secret) = &self.webhook_secret {
            if secret.is_empty() {
                return Err(invalid(key("webhook_secret"), "must not be empty when set"));
            }
            if self.signature == SignatureScheme::Standard {
                crate::signature::decode_standard_secret(secret).map_err(|_| {
                    invalid(
                        key("webhook_secret"),
                        "the standard scheme needs a `whsec_<base64>` secret",
                    )
                })?;
            }
        }
        Ok(())
    }
}
