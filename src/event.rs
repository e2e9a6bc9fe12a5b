//! The `mail.received` event (SPEC.md "The mail.received event"): the AgentMail fields at the top
//! level, the BotMailRoom fields in `email`, and the per-endpoint payload variants.
//!
//! Pure: it takes what the earlier stages learned and returns JSON. Fields a later stage will fill
//! (authentication verdicts) carry honest defaults here, never guesses.

use serde_json::{Value, json};

use crate::config::PayloadFormat;
use crate::model::{Envelope, rfc3339};
use crate::parse::{Mailbox, ParsedMessage};
use crate::prompt::{self, Templates};
use crate::thread::Thread;

/// The BotMailRoom email fields (SPEC.md), in order: `payload = "botmailroom"` sends exactly
/// these, so a BotMailRoom handler sees no field it does not know.
const BOTMAILROOM_FIELDS: &[&str] = &[
    "id",
    "inbox_id",
    "from_address",
    "to_addresses",
    "cc_addresses",
    "bcc_addresses",
    "reply_to_addresses",
    "subject",
    "date",
    "plain_text",
    "html",
    "alternative_content",
    "message_id",
    "in_reply_to_id",
    "references",
    "previous_emails",
    "attachments",
    "prompt",
    "thread_prompt",
    "timestamp",
];

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
}

/// Builds the event. The result is stored once and sent as is (per payload format) on every
/// attempt, so `event_id` and content are stable across retries and resends.
pub fn build(ctx: &EventContext<'_>, parsed: &ParsedMessage) -> Value {
    let timestamp = rfc3339(ctx.received_at_ms);
    let date = rfc3339(parsed.date_ms.unwrap_or(ctx.received_at_ms));
    let rendered = prompt::render_email(ctx.templates, parsed, &date);
    let previous = &ctx.thread.previous_emails;
    let mut prompts: Vec<&str> = previous
        .iter()
        .map(|email| {
            email["prompt"]
                .as_str()
                .unwrap_or("(this email was too large to include; fetch its raw message)")
        })
        .collect();
    prompts.push(&rendered.prompt);
    let subject = parsed.subject.as_deref().unwrap_or("");
    let thread_subject = previous
        .first()
        .and_then(|email| email["subject"].as_str())
        .unwrap_or(subject);
    let thread_prompt = prompt::render_thread(ctx.templates, thread_subject, &prompts);
    let email = json!({
        "id": ctx.message_id,
        "inbox_id": ctx.agent_id,
        "from_address": parsed.from.as_ref().map(mailbox_json).unwrap_or_else(|| json!({"address": "", "name": null})),
        "to_addresses": parsed.to.iter().map(mailbox_json).collect::<Vec<_>>(),
        "cc_addresses": parsed.cc.iter().map(mailbox_json).collect::<Vec<_>>(),
        "bcc_addresses": bcc_addresses(parsed, ctx.inbox_recipients),
        "reply_to_addresses": parsed.reply_to.iter().map(mailbox_json).collect::<Vec<_>>(),
        "subject": subject,
        "date": date,
        "plain_text": parsed.plain_text,
        "html": parsed.html,
        "alternative_content": parsed.alternative_content,
        "message_id": parsed.message_id,
        "in_reply_to_id": parsed.in_reply_to,
        "references": (!parsed.references.is_empty()).then_some(&parsed.references),
        "previous_emails": (!previous.is_empty()).then_some(previous),
        "attachments": parsed.attachments,
        "prompt": rendered.prompt,
        "thread_prompt": thread_prompt,
        "timestamp": timestamp,
        "thread_id": ctx.thread.thread_id,
        "extracted_text": rendered.extracted_text,
    });
    let mut event = json!({
        "type": "mail.received",
        "event_id": ctx.event_id,
        "agent_id": ctx.agent_id,
        "message_id": ctx.message_id,
        "sender": parsed.from.as_ref().map(|from| from.address.as_str()),
        "envelope_from": ctx.envelope.mail_from.as_deref().unwrap_or(""),
        "envelope_to": ctx.inbox_recipients,
        "subject": subject,
        "timestamp": timestamp,
        "thread_id": ctx.thread.thread_id,
        "extracted_text": rendered.extracted_text,
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
        // A calendar event (provider ingress) has no `email` to reshape; it goes as it is.
        PayloadFormat::Botmailroom
            if event["type"]
                .as_str()
                .is_some_and(|kind| kind.starts_with("calendar.")) =>
        {
            event.clone()
        }
        PayloadFormat::Botmailroom => {
            let email = event.get("email").cloned().unwrap_or_else(|| json!({}));
            let mut out = botmailroom_email(&email);
            if let Some(out) = out.as_object_mut() {
                if let Some(timestamp) = event.get("timestamp") {
                    out.insert("timestamp".to_owned(), timestamp.clone());
                }
                if let Some(previous) = email.get("previous_emails").and_then(Value::as_array) {
                    out.insert(
                        "previous_emails".to_owned(),
                        previous.iter().map(botmailroom_email).collect(),
                    );
                }
                // Left-out bodies are never silent (SPEC), so the reason travels here too.
                if let Some(reason) = event.get("omitted_reason") {
                    out.insert("omitted_reason".to_owned(), reason.clone());
                }
            }
            out
        }
    }
}

/// Exactly the BotMailRoom fields of an `email` object, in SPEC order.
fn botmailroom_email(email: &Value) -> Value {
    let mut out = serde_json::Map::new();
    for field in BOTMAILROOM_FIELDS {
        out.insert(
            (*field).to_owned(),
            email.get(*field).cloned().unwrap_or(Value::Null),
        );
    }
    Value::Object(out)
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

/// The length of `value` as JSON, counted without building the text.
fn serialized_len(value: &Value) -> usize {
    struct Counter(usize);
    impl std::io::Write for Counter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut counter = Counter(0);
    match serde_json::to_writer(&mut counter, value) {
        Ok(()) => counter.0,
        Err(_) => usize::MAX,
    }
}

/// Leaves out the large fields, biggest first, until the event fits, naming each one in
/// `omitted_reason` so a handler knows to fetch the raw message instead.
fn enforce_size_cap(event: &mut Value, max_bytes: usize) {
    // Biggest and most redundant first: the earlier emails are also in thread_prompt, and the
    // html is also in prompt (as markdown).
    const OMITTABLE: [&str; 6] = [
        "previous_emails",
        "html",
        "thread_prompt",
        "prompt",
        "plain_text",
        "extracted_text",
    ];
    let mut total = serialized_len(event);
    if total <= max_bytes {
        return;
    }
    // Room for the omitted_reason itself, so the event with it still fits.
    let budget = max_bytes.saturating_sub(256);
    let mut omitted = Vec::new();
    for field in OMITTABLE {
        if total <= budget {
            break;
        }
        let mut left_out = |object: &mut serde_json::Map<String, Value>| {
            if let Some(value) = object.get_mut(field).filter(|value| !value.is_null()) {
                // Swapping a value for `null` changes only its own bytes, so the new size
                // follows without serializing the whole event again.
                total = total.saturating_sub(serialized_len(value)) + "null".len();
                *value = Value::Null;
                true
            } else {
                false
            }
        };
        if event
            .get_mut("email")
            .and_then(Value::as_object_mut)
            .is_some_and(&mut left_out)
        {
            omitted.push(field);
            if field == "extracted_text"
                && let Some(object) = event.as_object_mut()
            {
                left_out(object);
            }
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

    static NO_THREAD: std::sync::LazyLock<Thread> = std::sync::LazyLock::new(|| Thread {
        thread_id: "thr_1".to_owned(),
        previous_emails: Vec::new(),
    });
    static TEMPLATES: std::sync::LazyLock<Templates> = std::sync::LazyLock::new(Templates::default);

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
            thread: &NO_THREAD,
            templates: &TEMPLATES,
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
    fn earlier_emails_go_first_when_the_event_is_too_large() {
        let envelope = Envelope::default();
        let thread = Thread {
            thread_id: "thr_big".to_owned(),
            previous_emails: vec![json!({"id": "msg_0", "prompt": "y".repeat(30_000)})],
        };
        let parsed =
            crate::parse::parse(b"From: a@example.org\r\nSubject: Re: big\r\n\r\nshort\r\n");
        let mut ctx = context(&envelope, &[], 32_000);
        ctx.thread = &thread;
        let event = build(&ctx, &parsed);
        assert!(serde_json::to_vec(&event).expect("json").len() <= 32_000);
        assert!(event["email"]["previous_emails"].is_null());
        let reason = event["omitted_reason"].as_str().expect("reason");
        assert!(reason.contains("previous_emails"), "{reason}");
        // The thread prompt still holds both, so the agent keeps the context.
        let thread_prompt = event["email"]["thread_prompt"]
            .as_str()
            .expect("thread prompt");
        assert!(thread_prompt.contains("yyyy") && thread_prompt.contains("short"));
        assert_eq!(event["email"]["extracted_text"], "short");
        assert_eq!(event["thread_id"], "thr_big");
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
