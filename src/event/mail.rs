//! The `mail.received` event: the AgentMail fields at the top level ([`MailEvent`]), the
//! BotMailRoom fields in `email` ([`Email`]), and how one is built from a parsed message and its
//! context.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::auth::Auth;
use super::{EventId, InboxId, MessageId, ThreadId, size};
pub use crate::model::TrustTier;
use crate::model::{Direction, Envelope, SpamVerdict, rfc3339};
use crate::parse::bounce::Bounce;
use crate::parse::{Mailbox, ParsedMessage, catch_panic};
use crate::prompt::{self, Templates};

/// The `mail.received` event. Fields in wire order (alphabetical, see the module docs of
/// [`crate::event`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default)]
#[schema(as = MailReceivedEvent)]
pub struct MailEvent {
    /// The inbox id.
    #[schema(value_type = String)]
    pub agent_id: InboxId,
    pub auth: Auth,
    /// What a delivery status notification says; only on bounces (`traffic_types` has
    /// `bounce`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bounce: Option<Bounce>,
    /// `outbound` on a reply the inbox sent (stored in its thread, never delivered as an
    /// event); absent on received mail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direction: Option<Direction>,
    pub email: Email,
    /// The SMTP `MAIL FROM`; empty for the null sender.
    pub envelope_from: String,
    /// The envelope recipients that resolved to this inbox.
    pub envelope_to: Vec<String>,
    #[schema(value_type = String)]
    pub event_id: EventId,
    /// Only the sender's new text; `null` when the size cap left it out.
    pub extracted_text: Option<String>,
    pub helo: String,
    pub is_duplicate: bool,
    #[schema(value_type = String)]
    pub message_id: MessageId,
    /// Set when the size cap left bodies out: names them and the raw message's URL.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub omitted_reason: Option<String>,
    pub peer_trust_tier: TrustTier,
    /// Which sender-policy rules the message broke; only when verification ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy_violations: Option<Vec<String>>,
    /// Only when verification ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quarantined: Option<bool>,
    pub rate_limited: bool,
    /// The envelope address that reached this inbox, as sent in `RCPT TO`; the first in RCPT
    /// order when several did.
    pub recipient: String,
    /// The text after `+` in the recipient's local part; `null` without one.
    pub recipient_tag: Option<String>,
    #[schema(value_type = Option<String>)]
    pub remote_ip: Option<IpAddr>,
    pub s3_bucket: String,
    pub s3_key: String,
    /// The From address.
    pub sender: Option<String>,
    pub sender_verified: bool,
    /// Size of the raw message in bytes.
    pub size: u64,
    /// rspamd's verdict; only when `spam.rspamd_url` is set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spam: Option<SpamVerdict>,
    pub subject: String,
    #[schema(value_type = String)]
    pub thread_id: ThreadId,
    pub timestamp: String,
    /// The TLS the message came over; `null` for a plaintext session.
    pub tls: Option<crate::model::TlsFacts>,
    pub traffic_types: Vec<String>,
    /// `mail.received`.
    #[serde(rename = "type")]
    #[schema(value_type = String, example = "mail.received")]
    pub kind: MailReceived,
    pub warnings: Vec<String>,
}

/// The `type` of a mail event: always `mail.received`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum MailReceived {
    #[default]
    #[serde(rename = "mail.received")]
    MailReceived,
}

/// The BotMailRoom email object (SPEC.md), plus `thread_id` and `extracted_text`. Fields in wire
/// order.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default)]
pub struct Email {
    /// `plain_text` and `html` are the two sides of one multipart/alternative.
    pub alternative_content: bool,
    pub attachments: Vec<Attachment>,
    pub bcc_addresses: Vec<Address>,
    pub cc_addresses: Vec<Address>,
    /// The Date header at the sender's offset, or the arrival time.
    pub date: String,
    /// `outbound` on an email the inbox sent (an agent's reply, in `previous_emails`); absent
    /// on received mail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direction: Option<Direction>,
    pub extracted_text: Option<String>,
    /// SPEC gives it no `|null`: a mail without a From has an empty address here.
    pub from_address: Address,
    pub html: Option<String>,
    pub id: MessageId,
    pub in_reply_to_id: Option<String>,
    pub inbox_id: InboxId,
    /// The Message-ID header, without angle brackets.
    pub message_id: Option<String>,
    pub plain_text: Option<String>,
    /// The earlier emails of the thread, oldest first; `null` on the emails inside the list.
    #[schema(no_recursion)]
    pub previous_emails: Option<Vec<Email>>,
    pub prompt: Option<String>,
    pub references: Option<Vec<String>>,
    pub reply_to_addresses: Vec<Address>,
    pub subject: String,
    pub thread_id: ThreadId,
    pub thread_prompt: Option<String>,
    pub timestamp: String,
    pub to_addresses: Vec<Address>,
}

/// One mailbox of an address list.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default)]
pub struct Address {
    pub address: String,
    pub name: Option<String>,
}

impl From<&Mailbox> for Address {
    fn from(mailbox: &Mailbox) -> Self {
        Self {
            address: mailbox.address.clone(),
            name: mailbox.name.clone(),
        }
    }
}

/// One attachment, described (the bytes stay in the raw message).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default)]
pub struct Attachment {
    pub content_encoding: Option<String>,
    pub content_id: Option<String>,
    pub content_type: String,
    /// A link that downloads the decoded bytes without an API key until `expires_at`, when
    /// `attachments.url_ttl_s > 0`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub download_url: Option<String>,
    /// When `download_url` stops working (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    pub filename: Option<String>,
    /// `att_<n>`, by position in the message.
    pub id: String,
    pub size: u64,
}

impl From<&crate::parse::Attachment> for Attachment {
    fn from(attachment: &crate::parse::Attachment) -> Self {
        Self {
            content_encoding: attachment.content_encoding.clone(),
            content_id: attachment.content_id.clone(),
            content_type: attachment.content_type.clone(),
            download_url: None,
            expires_at: None,
            filename: attachment.filename.clone(),
            id: attachment.id.clone(),
            size: u64::try_from(attachment.size).unwrap_or(u64::MAX),
        }
    }
}

/// What verification concluded for one inbox's copy: the fields set over the unverified
/// defaults. An event built without them says `sender_verified: false`, `unverified`, and has
/// no `quarantined` or `policy_violations`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Flags {
    pub sender_verified: bool,
    pub peer_trust_tier: TrustTier,
    pub traffic_types: Vec<String>,
    pub rate_limited: bool,
    /// Intake's guess; the commit decides on the fingerprint index and corrects the stored event.
    pub is_duplicate: bool,
    pub quarantined: bool,
    pub policy_violations: Vec<String>,
    pub auth: Auth,
    /// rspamd's verdict, when it was asked.
    pub spam: Option<SpamVerdict>,
}

/// The thread a message joined or started, as the event reports it.
#[derive(Debug, Clone, Default)]
pub struct Thread {
    pub thread_id: String,
    /// The earlier emails, oldest first, each without a thread of its own.
    pub previous_emails: Vec<Email>,
    /// The thread has emails older than `previous_emails` that the event leaves out, so the
    /// thread prompt must not read as the whole conversation.
    pub earlier_left_out: bool,
}

/// What the event says about where and when the message arrived.
pub struct EventContext<'a> {
    pub event_id: &'a str,
    pub message_id: &'a str,
    pub agent_id: &'a str,
    pub received_at_ms: i64,
    pub envelope: &'a Envelope,
    /// Envelope recipients that resolved to this inbox.
    pub inbox_recipients: &'a [String],
    pub s3_bucket: &'a str,
    pub s3_key: &'a str,
    pub size: usize,
    /// Largest serialized event; past it bodies are left out with an `omitted_reason`.
    pub max_payload_bytes: usize,
    /// The thread this message joined or started.
    pub thread: &'a Thread,
    pub templates: &'a Templates,
    /// Received mail, or a reply the inbox sent.
    pub direction: Direction,
}

/// Builds the event. The result is stored once and sent as is (per payload format) on every
/// attempt, so `event_id` and content are stable across retries and resends.
pub fn build(ctx: &EventContext<'_>, parsed: &ParsedMessage) -> MailEvent {
    build_with_flags(ctx, parsed, None)
}

/// Builds the event with the fields verification computed set over the defaults. The size cap
/// runs once, on the finished event, so `omitted_reason` names every field left out.
pub fn build_with_flags(
    ctx: &EventContext<'_>,
    parsed: &ParsedMessage,
    flags: Option<Flags>,
) -> MailEvent {
    let timestamp = rfc3339(ctx.received_at_ms);
    let date = parsed.date_ms.map_or_else(
        || rfc3339(ctx.received_at_ms),
        |ms| senders_date(ms, parsed.date_offset_s),
    );
    let rendered = prompt::render_email(ctx.templates, parsed, &date);
    let previous = &ctx.thread.previous_emails;
    let mut entries: Vec<prompt::ThreadEntry<'_>> = previous
        .iter()
        .map(|email| prompt::ThreadEntry {
            prompt: email
                .prompt
                .as_deref()
                .unwrap_or("(this email was too large to include; fetch its raw message)"),
            sent_by_inbox: email
                .direction
                .is_some_and(|direction| direction.is_outbound()),
        })
        .collect();
    entries.push(prompt::ThreadEntry {
        prompt: &rendered.prompt,
        sent_by_inbox: ctx.direction.is_outbound(),
    });
    let direction = ctx.direction.is_outbound().then_some(ctx.direction);
    let subject = parsed.subject.as_deref().unwrap_or("");
    let thread_subject = previous
        .first()
        .map_or(subject, |email| email.subject.as_str());
    let thread_prompt = prompt::render_thread(
        ctx.templates,
        thread_subject,
        &entries,
        ctx.thread.earlier_left_out,
    );
    let addresses = |mailboxes: &[Mailbox]| mailboxes.iter().map(Address::from).collect();
    let email = Email {
        alternative_content: parsed.alternative_content,
        attachments: parsed.attachments.iter().map(Attachment::from).collect(),
        bcc_addresses: bcc_addresses(parsed, ctx.inbox_recipients),
        cc_addresses: addresses(&parsed.cc),
        date,
        direction,
        extracted_text: Some(rendered.extracted_text.clone()),
        // SPEC gives from_address no `|null`, so a mail without a From keeps the shape with an
        // empty address, and `warnings` says why.
        from_address: parsed.from.as_ref().map(Address::from).unwrap_or_default(),
        html: parsed.html.clone(),
        id: ctx.message_id.into(),
        in_reply_to_id: parsed.in_reply_to.clone(),
        inbox_id: ctx.agent_id.into(),
        message_id: parsed.message_id.clone(),
        plain_text: parsed.plain_text.clone(),
        previous_emails: (!previous.is_empty()).then(|| previous.clone()),
        prompt: Some(rendered.prompt),
        references: (!parsed.references.is_empty()).then(|| parsed.references.clone()),
        reply_to_addresses: addresses(&parsed.reply_to),
        subject: subject.to_owned(),
        thread_id: ctx.thread.thread_id.as_str().into(),
        thread_prompt: Some(thread_prompt),
        timestamp: timestamp.clone(),
        to_addresses: addresses(&parsed.to),
    };
    // Without verification the defaults stand, and the fields only verification sets
    // (`quarantined`, `policy_violations`) are absent rather than guessed.
    let (flags, checked) = match flags {
        Some(flags) => (flags, true),
        None => (Flags::default(), false),
    };
    // The first of this inbox's envelope addresses, as sent; a context without the envelope's
    // recipients (a test event) names the first resolved address.
    let recipient = ctx
        .envelope
        .recipients
        .iter()
        .find(|recipient| recipient.inbox_id == ctx.agent_id)
        .map(|recipient| recipient.as_sent.clone())
        .or_else(|| ctx.inbox_recipients.first().cloned())
        .unwrap_or_default();
    let mut event = MailEvent {
        agent_id: ctx.agent_id.into(),
        auth: flags.auth,
        // Only what counts as a bounce, by the same rule as the `bounce` traffic type.
        bounce: parsed
            .bounce
            .clone()
            .filter(|bounce| bounce.counts(ctx.envelope.mail_from.is_none())),
        direction,
        envelope_from: ctx.envelope.mail_from.clone().unwrap_or_default(),
        envelope_to: ctx.inbox_recipients.to_vec(),
        event_id: ctx.event_id.into(),
        extracted_text: Some(rendered.extracted_text),
        helo: ctx.envelope.helo.clone(),
        is_duplicate: flags.is_duplicate,
        message_id: ctx.message_id.into(),
        omitted_reason: None,
        peer_trust_tier: flags.peer_trust_tier,
        policy_violations: checked.then_some(flags.policy_violations),
        quarantined: checked.then_some(flags.quarantined),
        rate_limited: flags.rate_limited,
        recipient_tag: recipient_tag(&recipient),
        recipient,
        remote_ip: ctx.envelope.remote_ip,
        s3_bucket: ctx.s3_bucket.to_owned(),
        s3_key: ctx.s3_key.to_owned(),
        sender: parsed.from.as_ref().map(|from| from.address.clone()),
        sender_verified: flags.sender_verified,
        size: u64::try_from(ctx.size).unwrap_or(u64::MAX),
        spam: flags.spam,
        subject: email.subject.clone(),
        thread_id: email.thread_id.clone(),
        timestamp,
        tls: ctx.envelope.tls.clone(),
        traffic_types: flags.traffic_types,
        kind: MailReceived::MailReceived,
        warnings: parsed.warnings.clone(),
        email,
    };
    size::enforce_cap(&mut event, ctx.max_payload_bytes);
    event
}

/// [`build_with_flags`], guarded: should building panic on some message (a renderer on a
/// shape no test has seen), the event is built again from the header fields alone, with a
/// warning naming the failure, so the message is still stored and delivered. Building runs
/// before the `250`; a panic there would end the session with the mail never accepted.
pub fn build_guarded(
    ctx: &EventContext<'_>,
    parsed: &ParsedMessage,
    flags: Option<Flags>,
) -> MailEvent {
    build_or_fall_back(ctx, parsed, flags, build_with_flags)
}

pub(super) fn build_or_fall_back(
    ctx: &EventContext<'_>,
    parsed: &ParsedMessage,
    flags: Option<Flags>,
    builder: impl FnOnce(&EventContext<'_>, &ParsedMessage, Option<Flags>) -> MailEvent,
) -> MailEvent {
    let failure = match catch_panic(|| builder(ctx, parsed, flags.clone())) {
        Ok(event) => return event,
        Err(failure) => failure,
    };
    let warning = format!(
        "building the event failed ({failure}): bodies, attachments and the earlier emails \
         were left out; fetch GET /v1/messages/{}/raw",
        ctx.message_id
    );
    let headers_only = ParsedMessage {
        from: parsed.from.clone(),
        to: parsed.to.clone(),
        cc: parsed.cc.clone(),
        bcc: parsed.bcc.clone(),
        reply_to: parsed.reply_to.clone(),
        subject: parsed.subject.clone(),
        date_ms: parsed.date_ms,
        date_offset_s: parsed.date_offset_s,
        message_id: parsed.message_id.clone(),
        in_reply_to: parsed.in_reply_to.clone(),
        references: parsed.references.clone(),
        bounce: parsed.bounce.clone(),
        warnings: parsed
            .warnings
            .iter()
            .cloned()
            .chain([warning.clone()])
            .collect(),
        ..ParsedMessage::default()
    };
    let alone = Thread {
        thread_id: ctx.thread.thread_id.clone(),
        ..Thread::default()
    };
    let bare_ctx = EventContext {
        thread: &alone,
        ..*ctx
    };
    catch_panic(|| build_with_flags(&bare_ctx, &headers_only, flags.clone())).unwrap_or_else(
        // Not even the header fields could be shown: the ids and the warning still make an
        // event a handler can act on.
        |_| {
            build_with_flags(
                &bare_ctx,
                &ParsedMessage {
                    warnings: vec![warning],
                    ..ParsedMessage::default()
                },
                flags,
            )
        },
    )
}

/// The Date header in ISO 8601 at the sender's own offset (`2026-04-16T14:00:00.000+02:00`),
/// the same instant as in UTC; an offset beyond a day (a broken header) falls back to UTC.
fn senders_date(ms: i64, offset_s: Option<i32>) -> String {
    let offset = offset_s.and_then(chrono::FixedOffset::east_opt);
    match (chrono::DateTime::from_timestamp_millis(ms), offset) {
        (Some(utc), Some(offset)) => utc
            .with_timezone(&offset)
            .format("%Y-%m-%dT%H:%M:%S%.3f%:z")
            .to_string(),
        _ => rfc3339(ms),
    }
}

/// The text after the first `+` of an address's local part; `None` without one or when empty.
pub fn recipient_tag(address: &str) -> Option<String> {
    let local = address.rsplit_once('@').map_or(address, |(local, _)| local);
    local
        .split_once('+')
        .map(|(_, tag)| tag)
        .filter(|tag| !tag.is_empty())
        .map(str::to_owned)
}

/// Recipients of this inbox that the visible To/Cc headers do not name were Bcc'd.
fn bcc_addresses(parsed: &ParsedMessage, inbox_recipients: &[String]) -> Vec<Address> {
    let mut out: Vec<Address> = parsed.bcc.iter().map(Address::from).collect();
    for recipient in inbox_recipients {
        let visible = parsed
            .to
            .iter()
            .chain(&parsed.cc)
            .chain(&parsed.bcc)
            .any(|mailbox| mailbox.address.eq_ignore_ascii_case(recipient));
        if !visible {
            out.push(Address {
                address: recipient.clone(),
                name: None,
            });
        }
    }
    out
}
