//! The `mail.received` event (SPEC.md "The mail.received event"): the AgentMail fields at the top
//! level, the BotMailRoom fields in `email`, and the per-endpoint payload variants.
//!
//! Pure: it takes what the earlier stages learned and returns JSON. Fields a later stage will fill
//! (authentication verdicts) carry honest defaults here, never guesses.

use serde_json::{Value, json};

use crate::model::PayloadFormat;
use crate::model::{Envelope, rfc3339};
use crate::parse::{Mailbox, ParsedMessage, catch_panic};
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
    build_with_flags(ctx, parsed, None)
}

/// Builds the event with the fields verification computed (`sender_verified`,
/// `peer_trust_tier`, `traffic_types`, `rate_limited`, `is_duplicate`, `quarantined`, `auth`,
/// …) set over the defaults. The size cap runs once, on the finished event, so
/// `omitted_reason` names every field left out.
pub fn build_with_flags(
    ctx: &EventContext<'_>,
    parsed: &ParsedMessage,
    flags: Option<Value>,
) -> Value {
    let timestamp = rfc3339(ctx.received_at_ms);
    let date = parsed.date_ms.map_or_else(
        || rfc3339(ctx.received_at_ms),
        |ms| senders_date(ms, parsed.date_offset_s),
    );
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
    let thread_prompt = prompt::render_thread(
        ctx.templates,
        thread_subject,
        &prompts,
        ctx.thread.earlier_left_out,
    );
    let email = json!({
        "id": ctx.message_id,
        "inbox_id": ctx.agent_id,
        // SPEC gives from_address no `|null`, so a mail without a From keeps the shape with an
        // empty address, and `warnings` says why.
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
    if let (Some(event), Some(Value::Object(flags))) = (event.as_object_mut(), flags) {
        for (key, value) in flags {
            event.insert(key, value);
        }
    }
    enforce_size_cap(&mut event, ctx.max_payload_bytes);
    event
}

/// [`build_with_flags`], guarded: should building panic on some message (a renderer on a
/// shape no test has seen), the event is built again from the header fields alone, with a
/// warning naming the failure, so the message is still stored and delivered. Building runs
/// before the `250`; a panic there would end the session with the mail never accepted.
pub fn build_guarded(
    ctx: &EventContext<'_>,
    parsed: &ParsedMessage,
    flags: Option<Value>,
) -> Value {
    build_or_fall_back(ctx, parsed, flags, build_with_flags)
}

fn build_or_fall_back(
    ctx: &EventContext<'_>,
    parsed: &ParsedMessage,
    flags: Option<Value>,
    builder: impl FnOnce(&EventContext<'_>, &ParsedMessage, Option<Value>) -> Value,
) -> Value {
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
///
/// BotMailRoom's client types `prompt`, `thread_prompt` and an attachment's `filename` as
/// strings that are never null, and its handlers validate payloads against those types, so a
/// null there (an earlier email's `thread_prompt`, a prompt left out by the size cap, an
/// attachment without a name) is sent as `""`: what was left out is still named in
/// `omitted_reason`, and an unnamed attachment still has its `id`.
fn botmailroom_email(email: &Value) -> Value {
    let mut out = serde_json::Map::new();
    for field in BOTMAILROOM_FIELDS {
        let mut value = email.get(*field).cloned().unwrap_or(Value::Null);
        match *field {
            "prompt" | "thread_prompt" if value.is_null() => value = json!(""),
            "attachments" => {
                for attachment in value.as_array_mut().into_iter().flatten() {
                    if attachment.get("filename").is_some_and(Value::is_null) {
                        attachment["filename"] = json!("");
                    }
                }
            }
            _ => {}
        }
        out.insert((*field).to_owned(), value);
    }
    Value::Object(out)
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

/// The event as JSON text. Written straight into a byte buffer: `Value`'s `Display` goes
/// through a formatter adapter, one call per token, about twice the work for a large event.
pub fn to_json(event: &Value) -> String {
    // Serializing a `Value` cannot fail (its keys are strings); the fallback only keeps this
    // function total.
    serde_json::to_string(event).unwrap_or_else(|_| event.to_string())
}

/// A bound the JSON length of `value` never exceeds, found without formatting anything: every
/// string byte counted as its longest escape (`\u00XX`), every number as the longest a number
/// prints as. Nearly every event is far below the cap, and this spares it a serialization.
fn json_len_upper_bound(value: &Value) -> usize {
    const LONGEST_ESCAPE: usize = 6;
    const LONGEST_NUMBER: usize = 40;
    let string = |text: &str| 2 + LONGEST_ESCAPE.saturating_mul(text.len());
    match value {
        Value::Null | Value::Bool(_) => 5,
        Value::Number(_) => LONGEST_NUMBER,
        Value::String(text) => string(text),
        Value::Array(items) => items.iter().fold(2, |total: usize, item| {
            total.saturating_add(json_len_upper_bound(item) + 1)
        }),
        Value::Object(fields) => fields.iter().fold(2, |total: usize, (key, item)| {
            total.saturating_add(string(key) + json_len_upper_bound(item) + 2)
        }),
    }
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
    if json_len_upper_bound(event) <= max_bytes {
        return;
    }
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
    let message_id = event["message_id"].as_str().unwrap_or_default().to_owned();
    if let Some(object) = event.as_object_mut() {
        object.insert(
            "omitted_reason".to_owned(),
            json!(format!(
                "payload larger than {max_bytes} bytes: left out {}; fetch GET /v1/messages/{message_id}/raw",
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
        ..Thread::default()
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
            earlier_left_out: false,
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
    fn omitted_reason_names_every_field_left_out_with_the_flags_counted() {
        let envelope = Envelope::default();
        let body = "x".repeat(5_000);
        let raw = format!("From: a@example.org\r\nSubject: big\r\n\r\n{body}\r\n");
        let parsed = crate::parse::parse(raw.as_bytes());
        let ctx = context(&envelope, &[], 16_384);
        // Alone, the event fits once the two prompts are out; the verdicts added at intake
        // push the plain text out too, and the reason must still name all three.
        let alone = build(&ctx, &parsed);
        let reason = alone["omitted_reason"].as_str().expect("reason");
        assert!(
            reason.contains("left out thread_prompt, prompt;"),
            "{reason}"
        );
        let flags = json!({ "auth": { "checked": true, "reason": "v".repeat(4_000) } });
        let flagged = build_with_flags(&ctx, &parsed, Some(flags));
        assert!(serde_json::to_vec(&flagged).expect("json").len() <= 16_384);
        assert!(flagged["email"]["plain_text"].is_null());
        assert_eq!(flagged["auth"]["checked"], true);
        let reason = flagged["omitted_reason"].as_str().expect("reason");
        assert!(
            reason.contains("left out thread_prompt, prompt, plain_text;"),
            "{reason}"
        );
        assert!(
            reason.ends_with("fetch GET /v1/messages/msg_1/raw"),
            "{reason}"
        );
    }

    #[test]
    fn a_panic_while_building_still_gives_an_event_with_the_headers_and_a_warning() {
        let envelope = Envelope::default();
        let parsed = crate::parse::parse(
            b"From: Ann <a@example.org>\r\nTo: agent@example.com\r\nSubject: boom\r\n\
              Message-ID: <m1@example.org>\r\n\r\nbody text\r\n",
        );
        let flags = json!({ "quarantined": false, "peer_trust_tier": "verified" });
        let ctx = context(&envelope, &[], 1 << 20);
        let event = build_or_fall_back(&ctx, &parsed, Some(flags), |_, _, _| {
            panic!("renderer exploded")
        });
        assert_eq!(event["type"], "mail.received");
        assert_eq!(event["message_id"], "msg_1");
        assert_eq!(event["thread_id"], "thr_1");
        assert_eq!(event["peer_trust_tier"], "verified");
        assert_eq!(event["subject"], "boom");
        assert_eq!(event["email"]["from_address"]["address"], "a@example.org");
        assert_eq!(event["email"]["message_id"], "m1@example.org");
        assert!(event["email"]["plain_text"].is_null());
        let warnings = event["warnings"].to_string();
        assert!(
            warnings.contains("renderer exploded") && warnings.contains("/v1/messages/msg_1/raw"),
            "{warnings}"
        );
        let bmr = payload_for(&event, PayloadFormat::Botmailroom);
        assert_eq!(
            bmr.as_object().map(serde_json::Map::len),
            Some(BOTMAILROOM_FIELDS.len())
        );
    }

    #[test]
    fn a_mail_without_from_keeps_the_address_shape_and_says_why_it_is_empty() {
        let envelope = Envelope::default();
        let parsed =
            crate::parse::parse(b"To: agent@example.com\r\nSubject: anonymous\r\n\r\nhi\r\n");
        let event = build(&context(&envelope, &[], 1 << 20), &parsed);
        // SPEC marks the fields that may be null; from_address is not one of them.
        assert_eq!(
            event["email"]["from_address"],
            json!({ "address": "", "name": null })
        );
        assert!(event["sender"].is_null());
        let warnings = event["warnings"].as_array().expect("warnings");
        assert!(warnings.contains(&json!("no From address")), "{warnings:?}");
    }

    #[test]
    fn the_date_keeps_the_senders_offset() {
        let envelope = Envelope::default();
        for (header, expected) in [
            (
                "Thu, 16 Apr 2026 14:00:00 +0200",
                "2026-04-16T14:00:00.000+02:00",
            ),
            (
                "Thu, 16 Apr 2026 07:30:00 -0430",
                "2026-04-16T07:30:00.000-04:30",
            ),
            (
                "Thu, 16 Apr 2026 12:00:00 +0000",
                "2026-04-16T12:00:00.000+00:00",
            ),
        ] {
            let raw = format!("From: a@example.org\r\nDate: {header}\r\n\r\nhi\r\n");
            let parsed = crate::parse::parse(raw.as_bytes());
            let event = build(&context(&envelope, &[], 1 << 20), &parsed);
            assert_eq!(event["email"]["date"], expected, "{header}");
            let prompt = event["email"]["prompt"].as_str().expect("prompt");
            assert!(
                prompt.contains(&format!("**Date:** {expected}")),
                "{prompt}"
            );
        }
    }

    #[test]
    fn the_length_bound_is_never_below_the_json_length() {
        let values = [
            json!(null),
            json!(true),
            json!(-1.234_567_890_123_456_7e-300),
            json!(i64::MIN),
            json!(u64::MAX),
            json!("\u{0}\u{1f}\"\\ plain é \u{2028}"),
            json!({"a\n": [1, "two", {"x": null, "y": [false, 0.5]}], "": {}}),
            json!([[], {}, "", [[[null]]]]),
        ];
        for value in values {
            let length = serde_json::to_vec(&value).expect("json").len();
            assert!(
                json_len_upper_bound(&value) >= length,
                "{value}: bound {} < {length}",
                json_len_upper_bound(&value)
            );
            assert_eq!(to_json(&value), value.to_string());
        }
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
