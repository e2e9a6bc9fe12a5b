//! The body one endpoint receives, by its payload format: the event as it is (`mxhook`), the
//! BotMailRoom email object (`botmailroom`), or the event wrapped in an envelope that names its
//! type (`event-data`, `event-data-ts`). Borrowed from the event, written once.

use serde::Serialize;

use super::mail::{Address, Attachment, Email, MailEvent};
use super::{Event, InboxId, MessageId};
use crate::model::PayloadFormat;

/// The body to POST: serialize it.
#[derive(Debug, Serialize)]
#[serde(untagged)]
#[allow(clippy::large_enum_variant)] // made, written and dropped once per attempt
pub enum Payload<'a> {
    Event(&'a Event),
    BotMailRoom(BotMailRoomEmail<'a>),
    EventData(EventData<'a>),
    EventDataTs(EventDataTs<'a>),
}

/// Who the body is for and when it is sent: what the envelope formats say besides the event.
#[derive(Debug, Clone)]
pub struct Recipient<'a> {
    /// The endpoint id: `inbox` or `rule:<id>`.
    pub endpoint_id: &'a str,
    /// The rule's name, or the inbox id for the inbox webhook.
    pub endpoint_name: &'a str,
    pub sent_at: chrono::DateTime<chrono::Utc>,
}

/// `event-data`: the agent-platform envelope. Fields in the order SPEC.md lists them.
#[derive(Debug, Serialize)]
pub struct EventData<'a> {
    event: &'static str,
    webhook: EndpointName<'a>,
    /// ISO 8601 UTC with microseconds and `Z`.
    timestamp: String,
    data: &'a Event,
}

/// The `webhook` object of `event-data`.
#[derive(Debug, Serialize)]
pub struct EndpointName<'a> {
    id: &'a str,
    name: &'a str,
}

/// `event-data-ts`: the event with its type and the send time in unix milliseconds.
#[derive(Debug, Serialize)]
pub struct EventDataTs<'a> {
    event: &'static str,
    data: &'a Event,
    ts: i64,
}

/// The body to POST for one endpoint. The envelope formats need to know who it is for and
/// when; use [`payload_for_endpoint`] for them (here they name no endpoint and the current time).
pub fn payload_for(event: &Event, format: PayloadFormat) -> Payload<'_> {
    payload_for_endpoint(
        event,
        format,
        &Recipient {
            endpoint_id: "",
            endpoint_name: "",
            sent_at: chrono::Utc::now(),
        },
    )
}

/// The body to POST to `recipient`.
pub fn payload_for_endpoint<'a>(
    event: &'a Event,
    format: PayloadFormat,
    recipient: &Recipient<'a>,
) -> Payload<'a> {
    match (format, event) {
        (PayloadFormat::Botmailroom, Event::Mail(mail)) => {
            Payload::BotMailRoom(BotMailRoomEmail::of_event(mail))
        }
        // A calendar, quarantined or operational event has no `email` to reshape; it goes as
        // it is.
        (PayloadFormat::Mxhook | PayloadFormat::Botmailroom, _) => Payload::Event(event),
        (PayloadFormat::EventData, _) => Payload::EventData(EventData {
            event: event.event_type(),
            webhook: EndpointName {
                id: recipient.endpoint_id,
                name: recipient.endpoint_name,
            },
            timestamp: recipient
                .sent_at
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            data: event,
        }),
        (PayloadFormat::EventDataTs, _) => Payload::EventDataTs(EventDataTs {
            event: event.event_type(),
            data: event,
            ts: recipient.sent_at.timestamp_millis(),
        }),
    }
}

/// Exactly the BotMailRoom fields of an `email` object (SPEC.md), so a BotMailRoom handler sees
/// no field it does not know; the root one also says what the size cap left out. Fields in wire
/// order (alphabetical).
///
/// BotMailRoom's client types `prompt`, `thread_prompt` and an attachment's `filename` as
/// strings that are never null, and its handlers validate payloads against those types, so a
/// null there (an earlier email's `thread_prompt`, a prompt left out by the size cap, an
/// attachment without a name) is sent as `""`: what was left out is still named in
/// `omitted_reason`, and an unnamed attachment still has its `id`.
#[derive(Debug, Serialize)]
pub struct BotMailRoomEmail<'a> {
    alternative_content: bool,
    attachments: Vec<BotMailRoomAttachment<'a>>,
    bcc_addresses: &'a [Address],
    cc_addresses: &'a [Address],
    date: &'a str,
    from_address: &'a Address,
    html: Option<&'a str>,
    id: &'a MessageId,
    in_reply_to_id: Option<&'a str>,
    inbox_id: &'a InboxId,
    message_id: Option<&'a str>,
    /// Left-out bodies are never silent (SPEC), so the reason travels here too.
    #[serde(skip_serializing_if = "Option::is_none")]
    omitted_reason: Option<&'a str>,
    plain_text: Option<&'a str>,
    previous_emails: Option<Vec<BotMailRoomEmail<'a>>>,
    prompt: &'a str,
    references: Option<&'a [String]>,
    reply_to_addresses: &'a [Address],
    subject: &'a str,
    thread_prompt: &'a str,
    timestamp: &'a str,
    to_addresses: &'a [Address],
}

/// An attachment as BotMailRoom types it: `filename` never null.
#[derive(Debug, Serialize)]
pub struct BotMailRoomAttachment<'a> {
    content_encoding: Option<&'a str>,
    content_id: Option<&'a str>,
    content_type: &'a str,
    filename: &'a str,
    id: &'a str,
    size: u64,
}

impl<'a> BotMailRoomEmail<'a> {
    /// The root email of a mail event, with the event's `timestamp` and `omitted_reason`.
    fn of_event(event: &'a MailEvent) -> Self {
        let mut email = Self::of_email(&event.email);
        email.timestamp = &event.timestamp;
        email.omitted_reason = event.omitted_reason.as_deref();
        email
    }

    fn of_email(email: &'a Email) -> Self {
        Self {
            alternative_content: email.alternative_content,
            attachments: email
                .attachments
                .iter()
                .map(BotMailRoomAttachment::of)
                .collect(),
            bcc_addresses: &email.bcc_addresses,
            cc_addresses: &email.cc_addresses,
            date: &email.date,
            from_address: &email.from_address,
            html: email.html.as_deref(),
            id: &email.id,
            in_reply_to_id: email.in_reply_to_id.as_deref(),
            inbox_id: &email.inbox_id,
            message_id: email.message_id.as_deref(),
            omitted_reason: None,
            plain_text: email.plain_text.as_deref(),
            previous_emails: email
                .previous_emails
                .as_ref()
                .map(|previous| previous.iter().map(Self::of_email).collect()),
            prompt: email.prompt.as_deref().unwrap_or_default(),
            references: email.references.as_deref(),
            reply_to_addresses: &email.reply_to_addresses,
            subject: &email.subject,
            thread_prompt: email.thread_prompt.as_deref().unwrap_or_default(),
            timestamp: &email.timestamp,
            to_addresses: &email.to_addresses,
        }
    }
}

impl<'a> BotMailRoomAttachment<'a> {
    fn of(attachment: &'a Attachment) -> Self {
        Self {
            content_encoding: attachment.content_encoding.as_deref(),
            content_id: attachment.content_id.as_deref(),
            content_type: &attachment.content_type,
            filename: attachment.filename.as_deref().unwrap_or_default(),
            id: &attachment.id,
            size: attachment.size,
        }
    }
}
