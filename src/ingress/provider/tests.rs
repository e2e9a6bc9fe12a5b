use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::Sha256;

use super::*;

fn hmac_hex(secret: &str, data: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("key");
    mac.update(data);
    hex::encode(mac.finalize().into_bytes())
}

fn headers(pairs: &[(&str, String)]) -> impl Fn(&str) -> Option<String> + use<> {
    let pairs: Vec<(String, String)> = pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect();
    move |name| {
        pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    }
}

fn received_at() -> chrono::DateTime<chrono::FixedOffset> {
    chrono::DateTime::parse_from_rfc3339("2026-11-23T10:00:00+00:00").expect("date")
}

fn mailersend(payload: Value) -> Result<InboundMail, Error> {
    mailersend_mail(&payload, received_at())
}

#[test]
fn hmac_providers_accept_only_the_right_secret_and_body() {
    let body = br#"{"x":1}"#;
    let secrets = vec!["old".to_owned(), "new".to_owned()];
    for (provider, header) in [
        (Provider::MailerSend, "signature"),
        (Provider::CalCom, "x-cal-signature-256"),
    ] {
        let good = headers(&[(header, hmac_hex("new", body))]);
        assert_eq!(verify(provider, &good, body, &secrets, 0, 300), Ok(()));
        assert_eq!(
            verify(provider, &good, b"{\"x\":2}", &secrets, 0, 300),
            Err(Error::BadSignature)
        );
        let wrong = headers(&[(header, hmac_hex("other", body))]);
        assert_eq!(
            verify(provider, &wrong, body, &secrets, 0, 300),
            Err(Error::BadSignature)
        );
        assert!(matches!(
            verify(provider, &headers(&[]), body, &secrets, 0, 300),
            Err(Error::MissingSignature(_))
        ));
    }
}

#[test]
fn calendly_checks_the_timestamp_window() {
    let body = br#"{"event":"invitee.created"}"#;
    let signed = |t: i64| {
        let mut data = format!("{t}.").into_bytes();
        data.extend_from_slice(body);
        headers(&[(
            "calendly-webhook-signature",
            format!("t={t},v1={}", hmac_hex("key", &data)),
        )])
    };
    let secrets = vec!["key".to_owned()];
    assert_eq!(
        verify(Provider::Calendly, &signed(1000), body, &secrets, 1100, 300),
        Ok(())
    );
    assert_eq!(
        verify(Provider::Calendly, &signed(1000), body, &secrets, 2000, 300),
        Err(Error::StaleTimestamp)
    );
    for extreme in [i64::MIN, i64::MAX] {
        assert_eq!(
            verify(
                Provider::Calendly,
                &signed(extreme),
                body,
                &secrets,
                1100,
                300
            ),
            Err(Error::StaleTimestamp)
        );
    }
    assert_eq!(
        verify(
            Provider::Calendly,
            &signed(1000),
            body,
            &secrets,
            i64::MIN,
            300
        ),
        Err(Error::StaleTimestamp)
    );
    assert_eq!(
        verify(
            Provider::Calendly,
            &signed(i64::MAX),
            body,
            &secrets,
            i64::MAX,
            300
        ),
        Ok(())
    );
    let garbled = headers(&[("calendly-webhook-signature", "v1=abc".to_owned())]);
    assert_eq!(
        verify(Provider::Calendly, &garbled, body, &secrets, 0, 300),
        Err(Error::MalformedSignature)
    );
}

#[test]
fn sendgrid_ecdsa_signature_over_timestamp_and_body() {
    use aws_lc_rs::encoding::AsDer as _;
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair as _};
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let key = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_ASN1_SIGNING).expect("key");
    let public = BASE64.encode(key.public_key().as_der().expect("spki").as_ref());
    let body = b"--x\r\nContent-Disposition: form-data; name=\"email\"\r\n\r\nraw\r\n--x--\r\n";
    let signature = BASE64.encode(
        key.sign(&rng, &[b"1000".as_slice(), body].concat())
            .expect("sign"),
    );
    let good = headers(&[
        ("x-twilio-email-event-webhook-signature", signature.clone()),
        ("x-twilio-email-event-webhook-timestamp", "1000".to_owned()),
    ]);
    assert_eq!(
        verify(
            Provider::SendGrid,
            &good,
            body,
            std::slice::from_ref(&public),
            1000,
            300
        ),
        Ok(())
    );
    assert_eq!(
        verify(
            Provider::SendGrid,
            &good,
            b"tampered",
            std::slice::from_ref(&public),
            1000,
            300
        ),
        Err(Error::BadSignature)
    );
    let other = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_ASN1_SIGNING).expect("key");
    let other_public = BASE64.encode(other.public_key().as_der().expect("spki").as_ref());
    assert_eq!(
        verify(Provider::SendGrid, &good, body, &[other_public], 1000, 300),
        Err(Error::BadSignature)
    );
}

#[test]
fn payloads_are_read_as_documented() {
    let mail = mailersend(json!({"type": "inbound.message", "data": {
        "id": "ms1", "from": {"email": "a@x.example"},
        "recipients": {"rcptTo": [{"email": "Agent@Example.com"}], "to": {"data": [{"email": "agent@example.com"}]}},
        "subject": "Hi", "text": "line\nnext", "html": "<p>hi</p>"
    }}))
    .expect("mail");
    assert_eq!(mail.recipients, ["agent@example.com"]);
    let envelope_wins = mailersend(json!({"data": {"recipients": {
        "rcptTo": [{"email": "bcc-inbox@example.com"}],
        "to": {"data": [{"email": "someone@example.com"}]}}}}))
    .expect("mail");
    assert_eq!(envelope_wins.recipients, ["bcc-inbox@example.com"]);
    let header_fallback = mailersend(json!({"data": {"recipients": {
        "to": {"data": [{"email": "B@example.com"}, {"email": "a@example.com"}]}}}}))
    .expect("mail");
    assert_eq!(
        header_fallback.recipients,
        ["a@example.com", "b@example.com"]
    );
    let raw = String::from_utf8(mail.raw).expect("utf8");
    assert!(
        raw.contains("Subject: Hi\r\n") && raw.contains("line\r\nnext"),
        "{raw}"
    );
    assert!(mailersend(json!({"data": {"recipients": {}}})).is_err());

    let created = calcom_booking(&json!({"triggerEvent": "BOOKING_CREATED", "createdAt": "t",
        "payload": {"eventTypeId": 42, "uid": "u1", "title": "Intro", "attendees": [{"email": "p@x.example", "name": "P"}]}}))
    .expect("ok");
    let CalendarRequest::Booking(created) = created else {
        panic!("not a booking: {created:?}");
    };
    assert_eq!(created.event_type_key, "calcom:42");
    assert_eq!(created.change, BookingChange::Created);
    assert_eq!(
        created.booking.attendees[0].email.as_deref(),
        Some("p@x.example")
    );
    assert_eq!(
        calcom_booking(&json!({"triggerEvent": "MEETING_ENDED", "payload": {}})),
        Ok(CalendarRequest::Ignored {
            event_type_key: None
        })
    );
    assert_eq!(
        calcom_booking(&json!({"triggerEvent": "MEETING_ENDED", "payload": {"eventTypeId": 42}}))
            .expect("ok")
            .event_type_key(),
        Some("calcom:42")
    );

    let rescheduled = calendly_booking(&json!({"event": "invitee.created", "payload": {
        "uri": "inv1", "old_invitee": "inv0", "email": "p@x.example",
        "scheduled_event": {"event_type": "https://api.calendly.com/event_types/ET1"}}}))
    .expect("ok");
    let CalendarRequest::Booking(rescheduled) = rescheduled else {
        panic!("not a booking: {rescheduled:?}");
    };
    assert_eq!(rescheduled.change, BookingChange::Rescheduled);
    assert_eq!(
        rescheduled.event_type_key,
        "calendly:https://api.calendly.com/event_types/ET1"
    );
    let half = calendly_booking(&json!({"event": "invitee.canceled", "payload": {
        "rescheduled": true,
        "scheduled_event": {"event_type": "https://api.calendly.com/event_types/ET1"}}}));
    assert_eq!(
        half,
        Ok(CalendarRequest::Ignored {
            event_type_key: Some("calendly:https://api.calendly.com/event_types/ET1".to_owned())
        })
    );
}

#[test]
fn mime_built_without_raw_has_date_message_id_and_encoded_headers() {
    let data = json!({"data": {
        "id": "ms42",
        "from": {"email": "ann@x.example", "name": "Ånn Ørsted"},
        "recipients": {"rcptTo": [{"email": "agent@example.com"}],
            "to": {"data": [{"email": "agent@example.com", "name": "Agent"}]}},
        "subject": "Grüße aus Köln", "text": "hallo\nwelt", "html": "<p>hallo</p>",
        "date": "Mon, 23 Nov 2026 09:00:00 +0100"
    }});
    let raw = mailersend(data.clone()).expect("mail").raw;
    let head = String::from_utf8_lossy(&raw);
    let head = head.split("\r\n\r\n").next().unwrap_or_default();
    assert!(head.is_ascii(), "non-ASCII in the header block: {head}");
    let message = mail_parser::MessageParser::default()
        .parse(&raw)
        .expect("parses");
    assert_eq!(message.subject(), Some("Grüße aus Köln"));
    let from = message.from().and_then(|from| from.first()).expect("from");
    assert_eq!(
        (from.name(), from.address()),
        (Some("Ånn Ørsted"), Some("ann@x.example"))
    );
    assert_eq!(
        message
            .to()
            .and_then(|to| to.first())
            .and_then(|to| to.address()),
        Some("agent@example.com")
    );
    assert_eq!(message.message_id(), Some("ms42@mailersend.mxhook.invalid"));
    assert_eq!(
        message.date().map(|date| date.to_timestamp()),
        Some(received_at().timestamp() - 7200)
    );
    assert_eq!(message.body_text(0).as_deref(), Some("hallo\r\nwelt"));
    assert!(
        message
            .body_html(0)
            .is_some_and(|html| html.contains("<p>hallo</p>"))
    );

    // The same payload builds the same Message-ID, so a redelivery is recognised; an address
    // lettre refuses still yields a message.
    let again = mailersend(data).expect("mail").raw;
    let again = mail_parser::MessageParser::default()
        .parse(&again)
        .expect("parses");
    assert_eq!(again.message_id(), message.message_id());
    let odd = mailersend(json!({"data": {"from": {"email": "not an address"},
        "recipients": {"rcptTo": [{"email": "agent@example.com"}]}, "subject": "odd"}}))
    .expect("mail")
    .raw;
    let odd = mail_parser::MessageParser::default()
        .parse(&odd)
        .expect("parses");
    assert_eq!(odd.subject(), Some("odd"));
    assert!(odd.date().is_some() && odd.message_id().is_some());
}

#[tokio::test]
async fn a_sendgrid_form_gives_its_raw_message_and_lowercased_envelope_recipients() {
    let body = "--xYzZY\r\nContent-Disposition: form-data; name=\"envelope\"\r\n\r\n\
        {\"to\":[\"Agent@Example.com\"],\"from\":\"a@x.example\"}\r\n\
        --xYzZY\r\nContent-Disposition: form-data; name=\"email\"\r\n\r\n\
        Subject: s\r\n\r\nbody\r\n--xYzZY--\r\n";
    let mail = sendgrid_mail(
        "multipart/form-data; boundary=xYzZY",
        bytes::Bytes::from(body),
    )
    .await
    .expect("a well-formed form");
    assert_eq!(mail.recipients, ["agent@example.com"]);
    assert_eq!(mail.mail_from.as_deref(), Some("a@x.example"));
    assert_eq!(mail.raw, b"Subject: s\r\n\r\nbody");
    for (content_type, body) in [
        ("application/json", body),
        ("multipart/form-data; boundary=other", body),
        ("multipart/form-data; boundary=xYzZY", "--xYzZY--\r\n"),
    ] {
        let refused = sendgrid_mail(content_type, bytes::Bytes::from(body)).await;
        assert!(
            matches!(refused, Err(Error::BadPayload(_))),
            "{content_type}: {refused:?}"
        );
    }
}
