//! The `mail.received` event (SPEC.md "The mail.received event"): the AgentMail fields at the top
//! level, the BotMailRoom fields in `email`, and the per-endpoint payload variants.
//!
//! Pure: it takes what the earlier stages learned and returns JSON. Fields a later stage will fill
//! (authentication verdicts, threading) carry honest defaults here, never guesses.

use serde_json::{Value, json};

use crate::config::PayloadFormat;
use crate::model::{Envelope, rfc3339};
use crate::parse::{Mailbox, ParsedMessage};

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
}

/// Builds the event. The result is stored once and sent as is (per payload format) on every
/// attempt, so `event_id` and content are stable across retries and resends.
pub fn build(ctx: &EventContext<'_>, parsed: &ParsedMessage) -> Value {
    let timestamp = rfc3339(ctx.received_at_ms);
    let prompt = render_prompt(parsed, ctx.received_at_ms);
    let email = json!({
        "id": ctx.message_id,
        "inbox_id": ctx.agent_id,
        "from_address": parsed.from.as_ref().map(mailbox_json).unwrap_or_else(|| json!({"address": "", "name": null})),
        "to_addresses": parsed.to.iter().map(mailbox_json).collect::<Vec<_>>(),
        "cc_addresses": parsed.cc.iter().map(mailbox_json).collect::<Vec<_>>(),
        "bcc_addresses": bcc_addresses(parsed, ctx.inbox_recipients),
        "reply_to_addresses": parsed.reply_to.iter().map(mailbox_json).collect::<Vec<_>>(),
        "subject": parsed.subject.as_deref().unwrap_or(""),
        "date": rfc3339(parsed.date_ms.unwrap_or(ctx.received_at_ms)),
        "plain_text": parsed.plain_text,
        "html": parsed.html,
        "alternative_content": parsed.alternative_content,
        "message_id": parsed.message_id,
        "in_reply_to_id": parsed.in_reply_to,
        "references": (!parsed.references.is_empty()).then_some(&parsed.references),
        "previous_emails": null,
        "attachments": parsed.attachments,
        "prompt": prompt,
        "thread_prompt": prompt,
        "timestamp": timestamp,
    });
    let mut event = json!({
        "type": "mail.received",
        "event_id": ctx.event_id,
        "agent_id": ctx.agent_id,
        "message_id": ctx.message_id,
        "sender": parsed.from.as_ref().map(|from| from.address.as_str()),
        "envelope_from": ctx.envelope.mail_from.as_deref().unwrap_or(""),
        "envelope_to": ctx.inbox_recipients,
        "subject": parsed.subject.as_deref().unwrap_or(""),
        "timestamp": timestamp,
        "sender_verified": false,
        "peer_trust_tier": "unverified",
        "traffic_types": [],
        "rate_limited": false,
        "is_duplicate": false,
        "s3_bucket": ctx.s3_bucket,
        "s3_key": ctx.s3_key,
        "size": ctx.size,
        "remote_ip": ctx.envelope.remote_ip.map(|ip| ip.to_string()),
        "helo": ctx.envelope.helo,
        "auth": { "checked": false, "spf": null, "dkim": [], "dmarc": null, "arc": null },
        "warnings": parsed.warnings,
        "email": email,
    });
    enforce_size_cap(&mut event, ctx.max_payload_bytes);
    event
}

/// Sets the fields verification computed (`sender_verified`, `peer_trust_tier`,
/// `traffic_types`, `rate_limited`, `is_duplicate`, `quarantined`, `auth`, …) on a built event,
/// then applies the size cap again.
pub fn apply_flags(event: &mut Value, flags: Value, max_payload_bytes: usize) {
    if let (Some(event), Value::Object(flags)) = (event.as_object_mut(), flags) {
        for (key, value) in flags {
            event.insert(key, value);
        }
    }
    enforce_size_cap(event, max_payload_bytes);
}

/// The body to POST for one endpoint.
pub fn payload_for(event: &Value, format: PayloadFormat) -> Value {
    match format {
        PayloadFormat::Mxhook => event.clone(),
        PayloadFormat::Botmailroom => {
            let mut email = event.get("email").cloned().unwrap_or_else(|| json!({}));
            if let (Some(email), Some(timestamp)) = (email.as_object_mut(), event.get("timestamp"))
            {
                email.insert("timestamp".to_owned(), timestamp.clone());
            }
            email
        }
    }
}

fn mailbox_json(mailbox: &Mailbox) -> Value {
    json!({ "address": mailbox.address, "name": mailbox.name })
}

/// Recipients of this inbox that the visible To/Cc headers do not name were Bcc'd.
fn bcc_addresses(parsed: &ParsedMessage, inbox_recipients: &[String]) -> Vec<Value> {
    let mut out: Vec<Value> = parsed.bcc.iter().map(mailbox_json).collect();
    for recipient in inbox_recipients {
        let visible = parsed
            .to
            .iter()
            .chain(&parsed.cc)
            .chain(&parsed.bcc)
            .any(|mailbox| mailbox.address.eq_ignore_ascii_case(recipient));
        if !visible {
            out.push(json!({ "address": recipient, "name": null }));
        }
    }
    out
}

/// The message as markdown for an LLM: a header block, the body, the attachment list.
fn render_prompt(parsed: &ParsedMessage, received_at_ms: i64) -> String {
    let list = |mailboxes: &[Mailbox]| {
        mailboxes
            .iter()
            .map(display_mailbox)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut out = String::new();
    if let Some(from) = &parsed.from {
        out.push_str(&format!("**From:** {}\n", display_mailbox(from)));
    }
    if !parsed.to.is_empty() {
        out.push_str(&format!("**To:** {}\n", list(&parsed.to)));
    }
    if !parsed.cc.is_empty() {
        out.push_str(&format!("**Cc:** {}\n", list(&parsed.cc)));
    }
    out.push_str(&format!(
        "**Date:** {}\n",
        rfc3339(parsed.date_ms.unwrap_or(received_at_ms))
    ));
    out.push_str(&format!(
        "**Subject:** {}\n\n",
        parsed.subject.as_deref().unwrap_or("(no subject)")
    ));
    match parsed.body_as_text.as_deref().map(str::trim) {
        Some(body) if !body.is_empty() => out.push_str(body),
        _ => out.push_str("(no text body)"),
    }
    out.push('\n');
    if !parsed.attachments.is_empty() {
        out.push_str("\n**Attachments:**\n");
        for attachment in &parsed.attachments {
            out.push_str(&format!(
                "- {} ({}, {} bytes)\n",
                attachment.filename.as_deref().unwrap_or("(unnamed)"),
                attachment.content_type,
                attachment.size
            ));
        }
    }
    out
}

fn display_mailbox(mailbox: &Mailbox) -> String {
    match &mailbox.name {
        Some(name) => format!("{name} <{}>", mailbox.address),
        None => mailbox.address.clone(),
    }
}

/// Leaves out the large fields, biggest first, until the event fits, naming each one in
/// `omitted_reason` so a handler knows to fetch the raw message instead.
fn enforce_size_cap(event: &mut Value, max_bytes: usize) {
    const OMITTABLE: [&str; 4] = ["html", "thread_prompt", "prompt", "plain_text"];
    let size = |event: &Value| {
        serde_json::to_vec(event)
            .map(|v| v.len())
            .unwrap_or(usize::MAX)
    };
    if size(event) <= max_bytes {
        return;
    }
    let mut omitted = Vec::new();
    for field in OMITTABLE {
        if let Some(email) = event.get_mut("email").and_then(Value::as_object_mut)
            && email.get(field).is_some_and(|value| !value.is_null())
        {
            email.insert(field.to_owned(), Value::Null);
            omitted.push(field);
        }
        if size(event) <= max_bytes {
            break;
        }
    }
    if let Some(object) = event.as_object_mut() {
        object.insert(
            "omitted_reason".to_owned(),
            json!(format!(
                "payload larger than {max_bytes} bytes: left out {}; fetch GET /v1/messages/{{id}}/raw",
                omitted.join(", ")
            )),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context<'a>(
        envelope: &'a Envelope,
        recipients: &'a [String],
        max: usize,
    ) -> EventContext<'a> {
        EventContext {
            event_id: "evt_1",
            message_id: "msg_1",
            agent_id: "agent",
            received_at_ms: 1_776_340_800_000,
            envelope,
            inbox_recipients: recipients,
            s3_bucket: "mxhook",
            s3_key: "inbound/agent/msg_1.eml",
            size: 10,
            max_payload_bytes: max,
        }
    }

    #[test]
    fn bcc_recipient_is_reported_and_botmailroom_payload_is_the_email_object() {
        let envelope = Envelope::default();
        let recipients = vec!["hidden@example.com".to_owned()];
        let parsed = crate::parse::parse(
            b"From: a@example.org\r\nTo: b@example.org\r\nSubject: s\r\n\r\nhello\r\n",
        );
        let event = build(&context(&envelope, &recipients, 1 << 20), &parsed);
        assert_eq!(
            event["email"]["bcc_addresses"][0]["address"],
            "hidden@example.com"
        );
        assert_eq!(event["timestamp"], "2026-04-16T12:00:00.000+00:00");
        let bmr = payload_for(&event, PayloadFormat::Botmailroom);
        assert_eq!(bmr["id"], "msg_1");
        assert_eq!(bmr["timestamp"], event["timestamp"]);
        assert!(bmr.get("event_id").is_none());
    }

    #[test]
    fn oversize_bodies_are_left_out_with_a_reason() {
        let envelope = Envelope::default();
        let body = "x".repeat(20_000);
        let raw = format!("From: a@example.org\r\nSubject: big\r\n\r\n{body}\r\n");
        let parsed = crate::parse::parse(raw.as_bytes());
        let event = build(&context(&envelope, &[], 8192), &parsed);
        assert!(serde_json::to_vec(&event).expect("json").len() <= 8192);
        assert!(event["email"]["plain_text"].is_null());
        let reason = event["omitted_reason"].as_str().expect("reason");
        assert!(reason.contains("plain_text"), "{reason}");
        assert_eq!(event["subject"], "big");
    }
}
