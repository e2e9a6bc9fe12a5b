//! Nouns that cross stage boundaries: ids, the SMTP envelope, inboxes and delivery states, and
//! the vocabulary the config, the API and the pipeline share (addresses, sender policies,
//! notification rules, how an endpoint signs and shapes its payloads).
//!
//! No behaviour beyond constructors, formatting and the checks a noun owns; no IO.

use std::net::IpAddr;

use serde::Serialize;

mod address;
mod policy;
mod provider;
mod rule;
mod subscription;
mod trust;
mod webhook;

pub use address::{is_valid_inbox_id, normalize_address, validate_webhook_url};
pub use policy::{
    PolicyAction, SPAM_TEMPERROR, SenderPolicy, SpamAction, SpamVerdict, normalize_sender_entry,
};
pub use provider::Provider;
pub use rule::{Channels, EmailChannel, Filters, Rule, SubjectPattern, WebhookChannel};
pub use subscription::{
    DELIVERY_DEAD, ENDPOINT_DISABLED, EVENT_TYPES, EventPattern, MAIL_QUARANTINED, MAIL_RECEIVED,
    Subscription, is_operational,
};
pub use trust::TrustTier;
pub use webhook::{
    DEFAULT_HMAC_HEADER, EndpointSettings, MAX_RETRIES, MAX_TIMEOUT_S, PayloadFormat,
    SignatureFormat, SignatureScheme, is_reserved_header, validate_endpoint_settings,
    validate_signature_header,
};

/// A prefixed, time-sortable id such as `msg_01jd3k…`: 48 bits of milliseconds since the epoch
/// followed by 80 random bits, in lowercase Crockford base32 (the ULID layout), so ids sort by
/// creation time in the database and in object listings.
pub fn new_id(prefix: &str) -> String {
    const ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";
    let millis = u128::try_from(now_ms().max(0)).unwrap_or(0) & ((1 << 48) - 1);
    let value = (millis << 80) | (rand::random::<u128>() & ((1 << 80) - 1));
    let mut out = String::with_capacity(prefix.len() + 27);
    out.push_str(prefix);
    out.push('_');
    for idx in (0..26).rev() {
        let digit = (value >> (idx * 5)) & 0x1f;
        out.push(char::from(ALPHABET[digit as usize]));
    }
    out
}

/// Milliseconds since the Unix epoch; every stored time uses this unit.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// A duration in the milliseconds every stored time uses, saturating (config durations are
/// validated far below the limit).
pub fn duration_ms(duration: std::time::Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// RFC 3339 rendering with an explicit `+00:00` offset, as the AgentMail payload has it.
pub fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .format("%Y-%m-%dT%H:%M:%S%.3f+00:00")
        .to_string()
}

/// What the SMTP session learned about one transaction.
#[derive(Debug, Clone, Default)]
pub struct Envelope {
    pub remote_ip: Option<IpAddr>,
    pub helo: String,
    /// The reverse path; `None` is the null sender `<>` of bounces.
    pub mail_from: Option<String>,
    /// Accepted recipients with the inbox each one resolved to, in RCPT order.
    pub recipients: Vec<Recipient>,
    pub smtputf8: bool,
    /// The TLS the message came over (after STARTTLS); `None` for plaintext.
    pub tls: Option<TlsFacts>,
}

/// The event's `tls`: what STARTTLS negotiated.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct TlsFacts {
    /// `TLSv1.2` or `TLSv1.3`.
    pub version: String,
    /// The IANA name of the cipher suite, e.g. `TLS_AES_256_GCM_SHA384`.
    pub cipher: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipient {
    /// Lowercased.
    pub address: String,
    /// As the client sent it (`RCPT TO`, the ingress request).
    pub as_sent: String,
    pub inbox_id: String,
}

/// An agent inbox as the pipeline sees it.
#[derive(Debug, Clone)]
pub struct Inbox {
    pub id: String,
    pub addresses: Vec<String>,
    pub webhook: Option<WebhookEndpoint>,
    /// Notification rules: routes added to the inbox webhook, per event.
    pub rules: Vec<Rule>,
    /// What intake does with mail that fails the inbox's authentication or list checks.
    pub sender_policy: crate::model::SenderPolicy,
}

/// Where and how one event is POSTed.
#[derive(Clone)]
pub struct WebhookEndpoint {
    pub url: String,
    pub enabled: bool,
    pub secret: Option<String>,
    /// The secret replaced by the last rotation, while its grace period runs: deliveries are
    /// signed with both, so receivers can switch over without dropping events.
    pub previous_secret: Option<String>,
    /// When the grace period of `previous_secret` ends (ms since the epoch).
    pub previous_secret_expires_at: Option<i64>,
    pub signature: SignatureScheme,
    pub payload: PayloadFormat,
    /// The `hmac-sha256` scheme's header; `None` is `X-Webhook-Signature`.
    pub signature_header: Option<String>,
    /// The `hmac-sha256` scheme's value format.
    pub signature_format: SignatureFormat,
    /// Extra request headers (a rule webhook's `custom_headers`).
    pub custom_headers: std::collections::BTreeMap<String, String>,
    /// Per-endpoint request timeout; `None` uses `delivery.timeout_s`.
    pub timeout: Option<std::time::Duration>,
    /// Per-endpoint retries; `None` uses `delivery.max_retries`.
    pub max_retries: Option<u32>,
    /// Whether the receiver's TLS certificate must verify (SPEC default true). Off, any
    /// certificate is accepted; the SSRF guard and the no-redirect policy still apply.
    pub verify_tls: bool,
    /// Why the dispatcher switched the endpoint off (410 Gone, failing too long), if it did.
    pub disabled_reason: Option<String>,
    /// Deliver one thread's events in acceptance order (a job waits for the earlier ones).
    pub ordered: bool,
    /// The event types it receives (SPEC "Event types and subscriptions"). A rule's webhook
    /// has its rule's `filters.event_types`, which routing checks before this is built.
    pub events: Subscription,
    /// What the `event-data` payload names the endpoint (`webhook.name`): the rule's name;
    /// `None` for the inbox webhook, which its inbox id names.
    pub name: Option<String>,
}

impl WebhookEndpoint {
    /// Forgets the previous secret once its grace period has ended at `now` (ms).
    pub fn expire_previous_secret(&mut self, now: i64) {
        if self
            .previous_secret_expires_at
            .is_none_or(|until| until <= now)
        {
            self.previous_secret = None;
        }
    }

    /// A rule's webhook, signed with its inbox's secrets (rules carry no secret of their own, so
    /// one receiver-side key verifies everything an inbox sends).
    pub fn for_rule(
        rule_name: &str,
        channel: &WebhookChannel,
        inbox: Option<&WebhookEndpoint>,
    ) -> Self {
        Self {
            url: channel.url.clone(),
            enabled: channel.enabled,
            secret: inbox.and_then(|inbox| inbox.secret.clone()),
            previous_secret: inbox.and_then(|inbox| inbox.previous_secret.clone()),
            previous_secret_expires_at: inbox.and_then(|inbox| inbox.previous_secret_expires_at),
            signature: channel.signature(),
            payload: channel.payload(),
            signature_header: channel.signature_header.clone(),
            signature_format: channel.signature_format(),
            custom_headers: channel.custom_headers.clone().unwrap_or_default(),
            timeout: Some(channel.timeout()),
            max_retries: Some(channel.max_retries()),
            verify_tls: channel.verify_tls(),
            disabled_reason: channel.disabled_reason.clone(),
            ordered: channel.ordered(),
            events: Subscription::default(),
            name: Some(rule_name.to_owned()),
        }
    }
}

impl std::fmt::Debug for WebhookEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookEndpoint")
            .field("url", &self.url)
            .field("enabled", &self.enabled)
            .field("secret", &self.secret.as_ref().map(|_| "redacted"))
            .field(
                "previous_secret",
                &self.previous_secret.as_ref().map(|_| "redacted"),
            )
            .field("signature", &self.signature)
            .field("payload", &self.payload)
            .field("signature_header", &self.signature_header)
            .field("signature_format", &self.signature_format)
            .field("verify_tls", &self.verify_tls)
            .field("ordered", &self.ordered)
            .field("events", &self.events)
            .finish()
    }
}

/// Life of one delivery job. `Dead` is the dead-letter queue: shown by the API, resendable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryStatus {
    Pending,
    Delivered,
    Dead,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Delivered => "delivered",
            Self::Dead => "dead",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        [Self::Pending, Self::Delivered, Self::Dead]
            .into_iter()
            .find(|status| status.as_str() == value)
    }
}

/// The kind of channel a delivery goes out on: a signed POST, an email forward through the
/// smarthost, or an agent's reply (the stored message itself) through the smarthost. Stored as
/// its name in `deliveries.channel`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Channel {
    Webhook,
    Email,
    Reply,
}

impl Channel {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Webhook => "webhook",
            Self::Email => "email",
            Self::Reply => "reply",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        [Self::Webhook, Self::Email, Self::Reply]
            .into_iter()
            .find(|channel| channel.as_str() == value)
    }
}

/// Which way a stored message went: received by the inbox, or sent by it (an agent's reply).
/// Stored as its name in `messages.direction`; events show it only on outbound mail, so the
/// payloads of received mail keep their shape.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    serde::Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    #[default]
    Inbound,
    Outbound,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Inbound => "inbound",
            Self::Outbound => "outbound",
        }
    }

    pub fn is_outbound(&self) -> bool {
        *self == Self::Outbound
    }
}

/// What one delivery attempt came to. Stored as its name in `delivery_attempts.outcome` and
/// shown as that name by the API, the dashboard and the metrics' `outcome` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AttemptOutcome {
    /// The webhook answered 2xx.
    Delivered,
    /// The smarthost took an email forward.
    Forwarded,
    /// The webhook answered, but not 2xx.
    HttpError,
    /// No answer: connect, TLS or timeout failure, or the smarthost refused.
    Error,
    /// Nothing was sent: the endpoint was gone, switched off or refused by the URL policy.
    NotSent,
}

impl AttemptOutcome {
    const ALL: [Self; 5] = [
        Self::Delivered,
        Self::Forwarded,
        Self::HttpError,
        Self::Error,
        Self::NotSent,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Delivered => "delivered",
            Self::Forwarded => "forwarded",
            Self::HttpError => "http_error",
            Self::Error => "error",
            Self::NotSent => "not_sent",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|outcome| outcome.as_str() == value)
    }

    /// Whether the endpoint took the event.
    pub fn succeeded(self) -> bool {
        matches!(self, Self::Delivered | Self::Forwarded)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_prefixed_unique_and_sort_by_time() {
        let first = new_id("msg");
        std::thread::sleep(std::time::Duration::from_millis(2));
        let second = new_id("msg");
        assert!(first.starts_with("msg_"));
        assert_eq!(first.len(), 4 + 26);
        assert!(first < second, "{first} should sort before {second}");
        assert_ne!(new_id("evt"), new_id("evt"));
    }

    #[test]
    fn rfc3339_has_explicit_utc_offset() {
        assert_eq!(rfc3339(1_776_340_800_000), "2026-04-16T12:00:00.000+00:00");
    }
}
