use serde_json::{Value, json};

use super::mail::build_or_fall_back;
use super::size::json_len_upper_bound;
use super::*;
use crate::model::{Envelope, PayloadFormat};
use crate::prompt::Templates;

static NO_THREAD: std::sync::LazyLock<Thread> = std::sync::LazyLock::new(|| Thread {
    thread_id: "thr_1".to_owned(),
    ..Thread::default()
});
static TEMPLATES: std::sync::LazyLock<Templates> = std::sync::LazyLock::new(Templates::default);

/// The BotMailRoom email fields (SPEC.md).
const BOTMAILROOM_FIELDS: usize = 20;

fn context<'a>(envelope: &'a Envelope, recipients: &'a [String], max: usize) -> EventContext<'a> {
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
        direction: crate::model::Direction::Inbound,
    }
}

/// The event as a handler reads it.
fn value(event: &impl serde::Serialize) -> Value {
    serde_json::to_value(event).expect("an event is JSON")
}

fn botmailroom(event: &MailEvent) -> Value {
    value(&payload_for(
        &Event::Mail(event.clone()),
        PayloadFormat::Botmailroom,
    ))
}

#[test]
fn bcc_recipient_is_reported_and_botmailroom_payload_is_the_email_object() {
    let envelope = Envelope::default();
    let recipients = vec!["hidden@example.com".to_owned()];
    let parsed = crate::parse::parse(
        b"From: a@example.org\r\nTo: b@example.org\r\nSubject: s\r\n\r\nhello\r\n",
    );
    let built = build(&context(&envelope, &recipients, 1 << 20), &parsed);
    let event = value(&built);
    assert_eq!(
        event["email"]["bcc_addresses"][0]["address"],
        "hidden@example.com"
    );
    assert_eq!(event["timestamp"], "2026-04-16T12:00:00.000+00:00");
    let bmr = botmailroom(&built);
    assert_eq!(bmr["id"], "msg_1");
    assert_eq!(bmr["timestamp"], event["timestamp"]);
    assert!(bmr.get("event_id").is_none());
}

#[test]
fn earlier_emails_go_first_when_the_event_is_too_large() {
    let envelope = Envelope::default();
    let thread = Thread {
        thread_id: "thr_big".to_owned(),
        previous_emails: vec![Email {
            id: "msg_0".into(),
            prompt: Some("y".repeat(30_000)),
            ..Email::default()
        }],
        earlier_left_out: false,
    };
    let parsed = crate::parse::parse(b"From: a@example.org\r\nSubject: Re: big\r\n\r\nshort\r\n");
    let mut ctx = context(&envelope, &[], 32_000);
    ctx.thread = &thread;
    let event = value(&build(&ctx, &parsed));
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
    let alone = value(&build(&ctx, &parsed));
    let reason = alone["omitted_reason"].as_str().expect("reason");
    assert!(
        reason.contains("left out thread_prompt, prompt;"),
        "{reason}"
    );
    let flags = Flags {
        auth: Auth {
            checked: true,
            dkim: vec![Dkim {
                reason: Some("v".repeat(4_000)),
                ..Dkim::default()
            }],
            ..Auth::default()
        },
        ..Flags::default()
    };
    let flagged = value(&build_with_flags(&ctx, &parsed, Some(flags)));
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
    let flags = Flags {
        quarantined: false,
        peer_trust_tier: TrustTier::Verified,
        ..Flags::default()
    };
    let ctx = context(&envelope, &[], 1 << 20);
    let built = build_or_fall_back(&ctx, &parsed, Some(flags), |_, _, _| {
        panic!("renderer exploded")
    });
    let event = value(&built);
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
    let bmr = botmailroom(&built);
    assert_eq!(
        bmr.as_object().map(serde_json::Map::len),
        Some(BOTMAILROOM_FIELDS)
    );
}

#[test]
fn a_mail_without_from_keeps_the_address_shape_and_says_why_it_is_empty() {
    let envelope = Envelope::default();
    let parsed = crate::parse::parse(b"To: agent@example.com\r\nSubject: anonymous\r\n\r\nhi\r\n");
    let event = value(&build(&context(&envelope, &[], 1 << 20), &parsed));
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
        let event = value(&build(&context(&envelope, &[], 1 << 20), &parsed));
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
    let event = value(&build(&context(&envelope, &[], 8192), &parsed));
    assert!(serde_json::to_vec(&event).expect("json").len() <= 8192);
    assert!(event["email"]["plain_text"].is_null());
    let reason = event["omitted_reason"].as_str().expect("reason");
    assert!(reason.contains("plain_text"), "{reason}");
    assert_eq!(event["subject"], "big");
}

/// Events stored before the types existed were JSON maps, which sort their keys; a typed event
/// must write the same bytes (a receiver's signature check, a stored event re-read and resent),
/// so every struct declares its fields in that order. Checked on events that set every field.
#[test]
fn typed_events_write_their_fields_in_the_order_stored_events_have() {
    let envelope = Envelope {
        remote_ip: Some("192.0.2.1".parse().expect("ip")),
        helo: "client.example".to_owned(),
        mail_from: Some("s@client.example".to_owned()),
        ..Envelope::default()
    };
    let earlier = Thread {
        thread_id: "thr_1".to_owned(),
        previous_emails: vec![Email {
            id: "msg_0".into(),
            prompt: Some("earlier".to_owned()),
            attachments: vec![Attachment::default()],
            ..Email::default()
        }],
        earlier_left_out: true,
    };
    let parsed = crate::parse::parse(
        b"From: Ann <a@example.org>\r\nTo: b@example.org\r\nCc: c@example.org\r\n\
          Reply-To: r@example.org\r\nSubject: Re: s\r\nMessage-ID: <m2@example.org>\r\n\
          In-Reply-To: <m1@example.org>\r\nReferences: <m1@example.org>\r\n\
          Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/html\r\n\r\n\
          <p>hello</p>\r\n--b\r\nContent-Type: application/pdf; name=a.pdf\r\n\r\nx\r\n--b--\r\n",
    );
    let recipients = vec!["agent@example.com".to_owned()];
    let mut ctx = context(&envelope, &recipients, 1 << 20);
    ctx.thread = &earlier;
    let flags = Flags {
        policy_violations: vec!["spf".to_owned()],
        quarantined: true,
        auth: Auth {
            arc: Some(ArcChain::default()),
            checked: true,
            dkim: vec![Dkim::default()],
            dmarc: Some(Dmarc::default()),
            spf: Some(Spf::default()),
        },
        ..Flags::default()
    };
    let mut mail = build_with_flags(&ctx, &parsed, Some(flags));
    mail.omitted_reason = Some("reason".to_owned());
    let calendar = CalendarEvent {
        agent_id: "agent".into(),
        booking: Booking {
            attendees: vec![Person::default()],
            ..Booking::default()
        },
        event_id: "evt_1".into(),
        message_id: "msg_1".into(),
        payload: json!({"b": 1, "a": [2]}),
        provider: crate::model::Provider::CalCom,
        s3_bucket: "b".to_owned(),
        s3_key: "k".to_owned(),
        timestamp: "t".to_owned(),
        change: BookingChange::Rescheduled,
    };
    let mail = Event::Mail(mail);
    let calendar = Event::Calendar(calendar);
    for event in [&mail, &calendar] {
        let text = to_json(event);
        assert_eq!(text, value(event).to_string(), "{text}");
        assert_eq!(
            &Event::from_json(&text).expect("reads back"),
            event,
            "{text}"
        );
    }
    let payload = to_json(&payload_for(&mail, PayloadFormat::Botmailroom));
    assert_eq!(
        payload,
        serde_json::from_str::<Value>(&payload)
            .expect("json")
            .to_string()
    );
    assert_eq!(
        to_json(&payload_for(&calendar, PayloadFormat::Botmailroom)),
        to_json(&calendar),
        "a calendar event goes to a BotMailRoom endpoint as it is"
    );
}

/// The bound over a typed event is the bound over the same event as a JSON value: the cap
/// decides as it did when the event was one.
#[test]
fn the_bound_of_a_typed_event_is_the_bound_of_its_json() {
    let envelope = Envelope::default();
    let parsed = crate::parse::parse(
        b"From: Ann <a@example.org>\r\nTo: b@example.org\r\nSubject: s\r\n\r\nhello \"\\\r\n",
    );
    let event = build(&context(&envelope, &[], 1 << 20), &parsed);
    assert_eq!(
        json_len_upper_bound(&event),
        json_len_upper_bound(&value(&event))
    );
}

/// The commit corrects intake's duplicate guess in the stored text: only the flag changes.
#[test]
fn the_duplicate_flag_is_set_in_the_stored_event_and_nothing_else_changes() {
    let envelope = Envelope::default();
    let parsed = crate::parse::parse(b"From: a@example.org\r\nSubject: s \"q\"\r\n\r\nhi\r\n");
    let mut event = build(&context(&envelope, &[], 1 << 20), &parsed);
    let stored = to_json(&event);
    assert_eq!(with_duplicate_flag(&stored, false), None);
    event.is_duplicate = true;
    let flagged = with_duplicate_flag(&stored, true).expect("the guess was wrong");
    assert_eq!(flagged, to_json(&event));
    assert_eq!(with_duplicate_flag(&flagged, true), None);
    // The same flag read without parsing, as the PostgreSQL commit checks the guess.
    assert_eq!(super::stored_duplicate_flag(&stored), Some(false));
    assert_eq!(super::stored_duplicate_flag(&flagged), Some(true));
    assert_eq!(
        super::stored_duplicate_flag("{\"kind\":\"calendar\"}"),
        None
    );
}

#[test]
fn envelope_payloads_wrap_the_event_with_its_type_endpoint_and_send_time() {
    let envelope = Envelope::default();
    let recipients = vec!["agent@example.com".to_owned()];
    let parsed = crate::parse::parse(b"From: a@example.org\r\nSubject: s\r\n\r\nhello\r\n");
    let event = Event::Mail(build(&context(&envelope, &recipients, 1 << 20), &parsed));
    let sent_at = chrono::DateTime::from_timestamp_micros(1_776_340_800_123_456).expect("time");
    let recipient = Recipient {
        endpoint_id: "rule:rule_1",
        endpoint_name: "Platform agent",
        sent_at,
    };
    let event_text = to_json(&event);

    let data = to_json(&payload_for_endpoint(
        &event,
        PayloadFormat::EventData,
        &recipient,
    ));
    assert_eq!(
        data,
        format!(
            "{{\"event\":\"mail.received\",\"webhook\":{{\"id\":\"rule:rule_1\",\
             \"name\":\"Platform agent\"}},\"timestamp\":\"2026-04-16T12:00:00.123456Z\",\
             \"data\":{event_text}}}"
        )
    );
    let data_ts = to_json(&payload_for_endpoint(
        &event,
        PayloadFormat::EventDataTs,
        &recipient,
    ));
    assert_eq!(
        data_ts,
        format!("{{\"event\":\"mail.received\",\"data\":{event_text},\"ts\":1776340800123}}")
    );
}
