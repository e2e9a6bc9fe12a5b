//! The events besides `mail.received` and the bookings (SPEC "Event types and subscriptions"):
//! `mail.quarantined`, a held-back mail reduced to its headers' metadata and the reason, and the
//! operational events the gateway raises about itself, `delivery.dead` and `endpoint.disabled`.
//! Fields in wire order (alphabetical, see [`crate::event`]).

use serde::{Deserialize, Serialize};

use super::auth::Auth;
use super::mail::{Address, MailEvent};
use super::{EventId, InboxId, MessageId, ThreadId};
use crate::model::TrustTier;

/// A mail the inbox policy quarantined: the `mail.received` event without its `email` content
/// (no bodies, prompts, attachments, thread), with the headers' metadata and why it was held.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default)]
#[schema(as = MailQuarantinedEvent)]
pub struct QuarantinedEvent {
    /// The inbox id.
    #[schema(value_type = String)]
    pub agent_id: InboxId,
    pub auth: Auth,
    pub envelope_from: String,
    pub envelope_to: Vec<String>,
    /// The message's event id: the same one its `mail.received` event would have had.
    #[schema(value_type = String)]
    pub event_id: EventId,
    pub headers: HeaderMetadata,
    #[schema(value_type = String)]
    pub message_id: MessageId,
    pub peer_trust_tier: TrustTier,
    /// The sender-policy rules the mail broke.
    pub reason: Vec<String>,
    /// As the mail's `mail.received` event gives it.
    pub recipient: String,
    pub recipient_tag: Option<String>,
    #[schema(value_type = Option<String>)]
    pub remote_ip: Option<std::net::IpAddr>,
    pub sender: Option<String>,
    pub size: u64,
    #[schema(value_type = String)]
    pub thread_id: ThreadId,
    pub timestamp: String,
    /// As the mail's `mail.received` event gives it.
    pub tls: Option<crate::model::TlsFacts>,
    /// `mail.quarantined`.
    #[serde(rename = "type")]
    #[schema(value_type = String, example = "mail.quarantined")]
    pub kind: MailQuarantined,
}

/// The headers of a quarantined mail that say what it is, without its content.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default)]
#[schema(as = QuarantinedHeaders)]
pub struct HeaderMetadata {
    /// The Date header at the sender's offset, or the arrival time.
    pub date: String,
    pub from_address: Address,
    /// The Message-ID header, without angle brackets.
    pub message_id: Option<String>,
    pub subject: String,
    pub to_addresses: Vec<Address>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum MailQuarantined {
    #[default]
    #[serde(rename = "mail.quarantined")]
    MailQuarantined,
}

impl QuarantinedEvent {
    /// The reduced event of a quarantined mail event.
    pub fn of(mail: &MailEvent) -> Self {
        Self {
            agent_id: mail.agent_id.clone(),
            auth: mail.auth.clone(),
            envelope_from: mail.envelope_from.clone(),
            envelope_to: mail.envelope_to.clone(),
            event_id: mail.event_id.clone(),
            headers: HeaderMetadata {
                date: mail.email.date.clone(),
                from_address: mail.email.from_address.clone(),
                message_id: mail.email.message_id.clone(),
                subject: mail.email.subject.clone(),
                to_addresses: mail.email.to_addresses.clone(),
            },
            message_id: mail.message_id.clone(),
            peer_trust_tier: mail.peer_trust_tier,
            reason: mail.policy_violations.clone().unwrap_or_default(),
            recipient: mail.recipient.clone(),
            recipient_tag: mail.recipient_tag.clone(),
            remote_ip: mail.remote_ip,
            sender: mail.sender.clone(),
            size: mail.size,
            thread_id: mail.thread_id.clone(),
            timestamp: mail.timestamp.clone(),
            tls: mail.tls.clone(),
            kind: MailQuarantined::MailQuarantined,
        }
    }
}

/// `delivery.dead`: a delivery was dead-lettered (its last retry failed, or its endpoint was
/// switched off or removed).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default)]
#[schema(as = DeliveryDeadEvent)]
pub struct DeliveryDead {
    /// The inbox id.
    #[schema(value_type = String)]
    pub agent_id: InboxId,
    /// Attempts the delivery made, the last included.
    pub attempts: i64,
    pub delivery_id: String,
    /// The endpoint it went to: `inbox` or `rule:<id>`.
    pub endpoint: String,
    /// The dead delivery's event (the idempotency key its receiver saw).
    #[schema(value_type = String)]
    pub event_id: EventId,
    /// This operational event's own id, its deliveries' `webhook-id`.
    #[schema(value_type = String)]
    pub id: EventId,
    pub last_error: Option<String>,
    pub last_status_code: Option<u16>,
    /// The message the dead delivery carried.
    #[schema(value_type = String)]
    pub message_id: MessageId,
    pub timestamp: String,
    /// `delivery.dead`.
    #[serde(rename = "type")]
    #[schema(value_type = String, example = "delivery.dead")]
    pub kind: DeliveryDeadType,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeliveryDeadType {
    #[default]
    #[serde(rename = "delivery.dead")]
    DeliveryDead,
}

/// `endpoint.disabled`: the gateway switched an endpoint off (410 Gone, or failing past
/// `delivery.disable_after_s`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default)]
#[schema(as = EndpointDisabledEvent)]
pub struct EndpointDisabled {
    /// The inbox id.
    #[schema(value_type = String)]
    pub agent_id: InboxId,
    /// `inbox` or `rule:<id>`.
    pub endpoint: String,
    /// This operational event's own id, its deliveries' `webhook-id`.
    #[schema(value_type = String)]
    pub id: EventId,
    pub reason: String,
    pub timestamp: String,
    /// `endpoint.disabled`.
    #[serde(rename = "type")]
    #[schema(value_type = String, example = "endpoint.disabled")]
    pub kind: EndpointDisabledType,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum EndpointDisabledType {
    #[default]
    #[serde(rename = "endpoint.disabled")]
    EndpointDisabled,
}
