//! Provider ingress over the real HTTP API: payloads and signatures built as each provider
//! documents them, tampered bodies, wrong secrets, stale timestamps, unknown recipients, replays
//! and a rotated secret; accepted requests come out as signed webhooks like SMTP mail.

use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};

use crate::support::ingress::{calcom_booking, hmac_hex, post, post_calcom};
use crate::support::{GatewayOptions, TestGateway, WebhookReceiver, eventually};

const CALENDLY_TYPE: &str = "https://api.calendly.com/event_types/ET1";

async fn gateway(receiver: &WebhookReceiver) -> TestGateway {
    gateway_with(receiver, "rotation_grace_s = 1.5\n").await
}

/// The test gateway with these `[ingress]` lines.
async fn gateway_with(receiver: &WebhookReceiver, ingress_toml: &str) -> TestGateway {
    let mut options = GatewayOptions::webhook(receiver.url());
    options.extra_toml = format!("[ingress]\n{ingress_toml}");
    options.other_toml =
        format!("calendar_event_types = [\"calcom:42\", \"calendly:{CALENDLY_TYPE}\"]\n");
    TestGateway::start(options).await
}

/// A provider creation time `minutes_ago` before now: events older than the replay keys
/// (`ingress.replay_retention_s`) are not processed, so fixed dates would expire.
fn recent(minutes_ago: i64) -> String {
    (chrono::Utc::now() - chrono::Duration::minutes(minutes_ago)).to_rfc3339()
}

async fn put_secret(
    gateway: &TestGateway,
    inbox: &str,
    provider: &str,
    secret: &str,
) -> (u16, Value) {
    gateway
        .api(
            "PUT",
            &format!("/v1/inboxes/{inbox}/ingress/{provider}"),
            Some(json!({ "secret": secret })),
        )
        .await
}

fn mailersend_payload(id: &str, to: &str, subject: &str) -> Vec<u8> {
    let raw = format!(
        "From: Sender <sender@ext.example>\r\nTo: {to}\r\nSubject: {subject}\r\nMessage-ID: <{id}@ext.example>\r\n\r\nbody of {id}\r\n"
    );
    serde_json::to_vec(&json!({
        "type": "inbound.message",
        "inbound_id": "route1",
        "data": {
            "object": "message",
            "id": id,
            "raw": raw,
            "from": {"email": "sender@ext.example", "name": "Sender"},
            "recipients": {"rcptTo": [{"email": to}], "to": {"data": [{"email": to, "name": ""}]}},
            "subject": subject,
        }
    }))
    .expect("json")
}

#[tokio::test]
async fn mailersend_inbound_is_verified_replay_protected_and_delivered_like_smtp_mail() {
    let mut receiver = WebhookReceiver::start(vec![]).await;
    let gateway = gateway(&receiver).await;
    let body = mailersend_payload("ms-1", "agent@example.com", "via mailersend");

    // No secret configured and unsigned ingress not allowed: refused.
    let signature = hmac_hex("ms-secret", &[&body]);
    let (status, reply) = post(
        &gateway,
        "/v1/ingress/mailersend/inbound",
        &[("signature", signature.clone())],
        body.clone(),
    )
    .await;
    assert_eq!(status, 401, "{reply}");

    let (status, reply) = put_secret(&gateway, "agent", "mailersend", "ms-secret").await;
    assert_eq!(status, 200, "{reply}");
    assert!(
        !reply.to_string().contains("ms-secret"),
        "secret echoed: {reply}"
    );

    let mut tampered = body.clone();
    tampered.insert(tampered.len() - 1, b' ');
    let (status, _) = post(
        &gateway,
        "/v1/ingress/mailersend/inbound",
        &[("signature", signature.clone())],
        tampered,
    )
    .await;
    assert_eq!(status, 401);
    let wrong = hmac_hex("not-the-secret", &[&body]);
    let (status, _) = post(
        &gateway,
        "/v1/ingress/mailersend/inbound",
        &[("signature", wrong)],
        body.clone(),
    )
    .await;
    assert_eq!(status, 401);
    receiver.assert_silent(Duration::from_millis(300)).await;
    assert_eq!(gateway.messages("agent").await, Vec::<Value>::new());

    // The path users already configured in MailerSend works too.
    let (status, reply) = post(
        &gateway,
        "/api/v1/webhooks/mailersend/inbound",
        &[("signature", signature.clone())],
        body.clone(),
    )
    .await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["status"], "accepted");
    let event = receiver.recv().await.json();
    assert_eq!(event["type"], "mail.received");
    assert_eq!(event["agent_id"], "agent");
    assert_eq!(event["subject"], "via mailersend");
    assert_eq!(event["sender"], "sender@ext.example");
    assert_eq!(event["helo"], "mailersend");

    // A replay of the same provider event id is acknowledged and not delivered again.
    let (status, reply) = post(
        &gateway,
        "/v1/ingress/mailersend/inbound",
        &[("signature", signature)],
        body,
    )
    .await;
    assert_eq!((status, reply["status"].clone()), (200, json!("duplicate")));
    receiver.assert_silent(Duration::from_millis(300)).await;
    assert_eq!(
        gateway.messages("agent").await.len(),
        1,
        "the replay stored nothing"
    );
    assert_eq!(gateway.all_deliveries().await.len(), 1, "and made no job");

    // An unknown recipient is refused like a bad signature, so refusals do not tell which
    // addresses exist.
    let stray = mailersend_payload("ms-2", "nobody@example.com", "stray");
    let (status, stray_reply) = post(
        &gateway,
        "/v1/ingress/mailersend/inbound",
        &[("signature", hmac_hex("ms-secret", &[&stray]))],
        stray,
    )
    .await;
    assert_eq!(status, 401);
    let (_, wrong_reply) = post(
        &gateway,
        "/v1/ingress/mailersend/inbound",
        &[("signature", "00".to_owned())],
        mailersend_payload("ms-3", "agent@example.com", "x"),
    )
    .await;
    assert_eq!(stray_reply, wrong_reply, "the two refusals differ");
    let (status, _) = post(
        &gateway,
        "/v1/ingress/mailersend/inbound",
        &[("signature", "00".to_owned())],
        b"{not json".to_vec(),
    )
    .await;
    assert_eq!(status, 400);

    // The five refused requests above (no secret, tampered, wrong secret, unknown recipient,
    // bad signature) are counted; the malformed body is not a signature failure.
    assert_eq!(unauthorized_count(&gateway, "mailersend").await, 5.0);
}

#[tokio::test]
async fn a_rotated_secret_stays_valid_for_the_grace_period_only() {
    let mut receiver = WebhookReceiver::start(vec![]).await;
    let gateway = gateway(&receiver).await;
    put_secret(&gateway, "agent", "mailersend", "first").await;
    let rotated = tokio::time::Instant::now();
    put_secret(&gateway, "agent", "mailersend", "second").await;
    let old = mailersend_payload("rot-1", "agent@example.com", "old secret in grace");
    let (status, _) = post(
        &gateway,
        "/v1/ingress/mailersend/inbound",
        &[("signature", hmac_hex("first", &[&old]))],
        old,
    )
    .await;
    assert_eq!(status, 200);
    receiver.recv().await;
    // The old secret goes on verifying until the grace period (1.5 s) is over, and no longer.
    let mut tries = 0;
    let refused_after = eventually("the old secret to be refused", || {
        tries += 1;
        let probe = mailersend_payload(&format!("rot-probe-{tries}"), "agent@example.com", "probe");
        let gateway = &gateway;
        async move {
            let signature = hmac_hex("first", &[&probe]);
            let (status, _) = post(
                gateway,
                "/v1/ingress/mailersend/inbound",
                &[("signature", signature)],
                probe,
            )
            .await;
            if status == 401 {
                return Some(rotated.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            None
        }
    })
    .await;
    assert!(
        refused_after >= Duration::from_millis(1500),
        "refused {refused_after:?} after the rotation, inside the grace period"
    );
    while receiver
        .recv_timeout(Duration::from_millis(100))
        .await
        .is_some()
    {}
    let late = mailersend_payload("rot-2", "agent@example.com", "old secret after grace");
    let (status, _) = post(
        &gateway,
        "/v1/ingress/mailersend/inbound",
        &[("signature", hmac_hex("first", &[&late]))],
        late.clone(),
    )
    .await;
    assert_eq!(status, 401);
    let (status, _) = post(
        &gateway,
        "/v1/ingress/mailersend/inbound",
        &[("signature", hmac_hex("second", &[&late]))],
        late,
    )
    .await;
    assert_eq!(status, 200);

    let (_, flags) = gateway.api("GET", "/v1/inboxes/agent/ingress", None).await;
    assert_eq!(flags["providers"]["mailersend"]["configured"], true);
    assert_eq!(flags["providers"]["calcom"]["configured"], false);
    assert!(!flags.to_string().contains("second"));
    let (status, _) = gateway
        .api_as("", "GET", "/v1/inboxes/agent/ingress", None)
        .await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn calcom_and_calendly_bookings_become_calendar_events() {
    let mut receiver = WebhookReceiver::start(vec![]).await;
    let gateway = gateway(&receiver).await;
    put_secret(&gateway, "other", "calcom", "cal-secret").await;
    put_secret(&gateway, "other", "calendly", "calendly-key").await;

    let calcom = serde_json::to_vec(&json!({
        "triggerEvent": "BOOKING_CREATED",
        "createdAt": recent(0),
        "payload": {
            "type": "intro-call", "title": "Intro call", "eventTypeId": 42, "uid": "bk_1",
            "startTime": "2026-12-01T10:00:00Z", "endTime": "2026-12-01T10:30:00Z",
            "organizer": {"email": "host@example.com", "name": "Host"},
            "attendees": [{"email": "guest@ext.example", "name": "Guest"}]
        }
    }))
    .expect("json");
    let (status, _) = post(
        &gateway,
        "/v1/ingress/calcom",
        &[("x-cal-signature-256", hmac_hex("wrong", &[&calcom]))],
        calcom.clone(),
    )
    .await;
    assert_eq!(status, 401);
    let (status, reply) = post(
        &gateway,
        "/v1/ingress/calcom",
        &[("x-cal-signature-256", hmac_hex("cal-secret", &[&calcom]))],
        calcom,
    )
    .await;
    assert_eq!(status, 200, "{reply}");
    let request = receiver.recv().await;
    let event = request.json();
    assert_eq!(event["type"], "calendar.booking.created");
    assert_eq!(event["agent_id"], "other");
    assert_eq!(event["booking"]["title"], "Intro call");
    assert_eq!(
        event["booking"]["attendees"][0]["email"],
        "guest@ext.example"
    );
    assert!(
        request.header("x-agentmail-signature").is_some(),
        "calendar events are signed like mail"
    );

    let calendly = serde_json::to_vec(&json!({
        "event": "invitee.canceled",
        "created_at": recent(0),
        "payload": {
            "uri": "https://api.calendly.com/scheduled_events/EV1/invitees/INV1",
            "email": "guest@ext.example", "name": "Guest", "rescheduled": false,
            "cancellation": {"reason": "conflict"},
            "scheduled_event": {"name": "Demo", "event_type": CALENDLY_TYPE,
                "start_time": "2026-12-02T10:00:00Z", "end_time": "2026-12-02T11:00:00Z"}
        }
    }))
    .expect("json");
    let now = chrono::Utc::now().timestamp();
    let signed = |t: i64| {
        format!(
            "t={t},v1={}",
            hmac_hex("calendly-key", &[t.to_string().as_bytes(), b".", &calendly])
        )
    };
    let (status, _) = post(
        &gateway,
        "/v1/ingress/calendly",
        &[("calendly-webhook-signature", signed(now - 3600))],
        calendly.clone(),
    )
    .await;
    assert_eq!(status, 401, "a stale timestamp is refused");
    let (status, reply) = post(
        &gateway,
        "/v1/ingress/calendly",
        &[("calendly-webhook-signature", signed(now))],
        calendly,
    )
    .await;
    assert_eq!(status, 200, "{reply}");
    let event = receiver.recv().await.json();
    assert_eq!(event["type"], "calendar.booking.cancelled");
    assert_eq!(event["booking"]["cancellation_reason"], "conflict");

    let unknown_type = serde_json::to_vec(
        &json!({"triggerEvent": "BOOKING_CREATED", "payload": {"eventTypeId": 7}}),
    )
    .expect("json");
    let (status, _) = post(
        &gateway,
        "/v1/ingress/calcom",
        &[(
            "x-cal-signature-256",
            hmac_hex("cal-secret", &[&unknown_type]),
        )],
        unknown_type,
    )
    .await;
    assert_eq!(
        status, 401,
        "an unknown event type is refused as unauthenticated"
    );
}

#[tokio::test]
async fn sendgrid_inbound_parse_is_verified_with_ecdsa_p256() {
    use aws_lc_rs::encoding::AsDer as _;
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair as _};
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut receiver = WebhookReceiver::start(vec![]).await;
    let gateway = gateway(&receiver).await;
    let key = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_ASN1_SIGNING).expect("key");
    let public = b64.encode(key.public_key().as_der().expect("spki").as_ref());
    put_secret(&gateway, "agent", "sendgrid", &public).await;

    let raw = "From: grid@ext.example\r\nTo: agent@example.com\r\nSubject: via sendgrid\r\n\r\nparsed by sendgrid\r\n";
    let boundary = "xYzZY";
    let form = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"envelope\"\r\n\r\n{{\"to\":[\"agent@example.com\"],\"from\":\"grid@ext.example\"}}\r\n\
--{boundary}\r\nContent-Disposition: form-data; name=\"email\"\r\n\r\n{raw}\r\n--{boundary}--\r\n"
    )
    .into_bytes();
    let timestamp = chrono::Utc::now().timestamp().to_string();
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let signature = b64.encode(
        key.sign(&rng, &[timestamp.as_bytes(), &form].concat())
            .expect("sign"),
    );
    let headers = |sig: &str| {
        vec![
            (
                "content-type",
                format!("multipart/form-data; boundary={boundary}"),
            ),
            ("x-twilio-email-event-webhook-signature", sig.to_owned()),
            ("x-twilio-email-event-webhook-timestamp", timestamp.clone()),
        ]
    };
    let forged = b64.encode(key.sign(&rng, b"something else").expect("sign"));
    let (status, _) = post(
        &gateway,
        "/v1/ingress/sendgrid/inbound",
        &headers(&forged),
        form.clone(),
    )
    .await;
    assert_eq!(status, 401);
    let (status, reply) = post(
        &gateway,
        "/v1/ingress/sendgrid/inbound",
        &headers(&signature),
        form,
    )
    .await;
    assert_eq!(status, 200, "{reply}");
    let event = receiver.recv().await.json();
    assert_eq!(event["subject"], "via sendgrid");
    assert_eq!(event["envelope_from"], "grid@ext.example");
    let message_id = event["message_id"].as_str().expect("id");
    let (status, stored) = gateway
        .api_bytes(&format!("/v1/messages/{message_id}/raw"))
        .await;
    assert_eq!(status, 200);
    assert!(stored == raw.as_bytes(), "raw MIME not stored as sent");
}

/// `mxhook_ingress_unauthorized_total` for one provider, as `/metrics` reports it.
async fn unauthorized_count(gateway: &TestGateway, provider: &str) -> f64 {
    gateway
        .metric(&format!(
            "mxhook_ingress_unauthorized_total{{provider=\"{provider}\"}}"
        ))
        .await
}

#[tokio::test]
async fn an_api_created_inbox_receives_bookings_for_event_types_mapped_through_the_api() {
    let mut receiver = WebhookReceiver::start(vec![]).await;
    let gateway = gateway(&receiver).await;
    let (status, created) = gateway
        .api(
            "POST",
            "/v1/inboxes",
            Some(json!({"id": "sales", "addresses": ["sales@example.com"]})),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let (status, hook) = gateway
        .api(
            "PUT",
            "/v1/inboxes/sales/webhook",
            Some(json!({"url": receiver.url()})),
        )
        .await;
    assert_eq!(status, 200, "{hook}");
    put_secret(&gateway, "sales", "calcom", "sales-cal").await;
    let path = "/v1/inboxes/sales/ingress/event-types";

    let booking = calcom_booking("BOOKING_CREATED", 77, "bk_sales", &recent(0));
    let (status, _) = post_calcom(&gateway, "sales-cal", booking.clone()).await;
    assert_eq!(status, 401, "not mapped yet");

    // Malformed entries and a type another inbox holds (the config maps calcom:42 to `other`).
    let (status, _) = gateway
        .api("PUT", path, Some(json!({"event_types": ["zoom:1"]})))
        .await;
    assert_eq!(status, 400);
    let (status, body) = gateway
        .api(
            "PUT",
            path,
            Some(json!({"event_types": ["calcom:77", "calcom:42"]})),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    let (status, body) = gateway
        .api("PUT", path, Some(json!({"event_types": ["calcom:77"]})))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["event_types"],
        json!([{"event_type": "calcom:77", "source": "api"}])
    );
    let (_, other) = gateway
        .api("GET", "/v1/inboxes/other/ingress/event-types", None)
        .await;
    assert_eq!(
        other["event_types"],
        json!([
            {"event_type": "calcom:42", "source": "config"},
            {"event_type": format!("calendly:{CALENDLY_TYPE}"), "source": "config"}
        ]),
        "config entries are seeded into the same table"
    );
    // Listing an inbox's own config entry keeps it as it is.
    let (status, body) = gateway
        .api(
            "PUT",
            "/v1/inboxes/other/ingress/event-types",
            Some(json!({"event_types": ["calcom:42", "calcom:43"]})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["event_types"][0],
        json!({"event_type": "calcom:42", "source": "config"})
    );
    assert_eq!(
        body["event_types"][1],
        json!({"event_type": "calcom:43", "source": "api"})
    );
    let (status, _) = gateway.api_as("", "GET", path, None).await;
    assert_eq!(status, 401, "the mapping API needs the admin key");

    let (status, reply) = post_calcom(&gateway, "sales-cal", booking).await;
    assert_eq!(status, 200, "{reply}");
    let event = receiver.recv().await.json();
    assert_eq!(event["type"], "calendar.booking.created");
    assert_eq!(event["agent_id"], "sales");
    assert_eq!(event["booking"]["event_type_id"], "77");

    let (status, _) = gateway.api("DELETE", path, None).await;
    assert_eq!(status, 204);
    let (_, body) = gateway.api("GET", path, None).await;
    assert_eq!(body["event_types"], json!([]));
    let later = calcom_booking("BOOKING_CANCELLED", 77, "bk_sales", &recent(1));
    let (status, _) = post_calcom(&gateway, "sales-cal", later).await;
    assert_eq!(status, 401, "unmapped again");
    receiver.assert_silent(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn ignored_calendar_triggers_are_verified_before_they_are_acknowledged() {
    let receiver = WebhookReceiver::start(vec![]).await;
    let gateway = gateway(&receiver).await;
    put_secret(&gateway, "other", "calcom", "cal-secret").await;
    let before = unauthorized_count(&gateway, "calcom").await;

    let ended = calcom_booking("MEETING_ENDED", 42, "bk_9", &recent(0));
    let (status, _) = post_calcom(&gateway, "forged", ended.clone()).await;
    assert_eq!(status, 401, "an unsigned 'ignored' trigger is refused");
    let (status, reply) = post_calcom(&gateway, "cal-secret", ended).await;
    assert_eq!((status, reply["status"].clone()), (200, json!("ignored")));
    let unknown = calcom_booking("MEETING_ENDED", 9, "bk_9", &recent(0));
    let (status, _) = post_calcom(&gateway, "cal-secret", unknown).await;
    assert_eq!(status, 401, "no inbox can verify an unmapped event type");
    assert_eq!(unauthorized_count(&gateway, "calcom").await, before + 2.0);
}

fn mailersend_envelope(id: &str, rcpt_to: &[&str], header_to: &[&str], subject: &str) -> Vec<u8> {
    let raw = format!(
        "From: Sender <sender@ext.example>\r\nTo: {}\r\nSubject: {subject}\r\nMessage-ID: <{id}@ext.example>\r\n\r\nbody of {id}\r\n",
        header_to.join(", ")
    );
    let list = |addresses: &[&str]| -> Vec<Value> {
        addresses.iter().map(|a| json!({"email": a})).collect()
    };
    serde_json::to_vec(&json!({
        "type": "inbound.message",
        "data": {
            "id": id, "raw": raw, "subject": subject,
            "from": {"email": "sender@ext.example", "name": "Sender"},
            "recipients": {"rcptTo": list(rcpt_to), "to": {"data": list(header_to)}},
        }
    }))
    .expect("json")
}

async fn post_mailersend(gateway: &TestGateway, secret: &str, body: Vec<u8>) -> (u16, Value) {
    post(
        gateway,
        "/v1/ingress/mailersend/inbound",
        &[("signature", hmac_hex(secret, &[&body]))],
        body,
    )
    .await
}

#[tokio::test]
async fn mail_is_routed_on_the_exact_envelope_recipient() {
    let mut receiver = WebhookReceiver::start(vec![]).await;
    let gateway = gateway(&receiver).await;
    put_secret(&gateway, "agent", "mailersend", "agent-ms").await;
    put_secret(&gateway, "other", "mailersend", "other-ms").await;

    // The envelope names `agent`; header To names `other`, which must not get a copy.
    let body = mailersend_envelope(
        "ex-1",
        &["agent@example.com"],
        &["other@example.com"],
        "bcc'd",
    );
    let (status, reply) = post_mailersend(&gateway, "agent-ms", body).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(receiver.recv().await.json()["agent_id"], "agent");
    receiver.assert_silent(Duration::from_millis(300)).await;

    // No +tag fallback: only an inbox address itself routes.
    let body = mailersend_envelope("ex-2", &["agent+tag@example.com"], &[], "tagged");
    let (status, _) = post_mailersend(&gateway, "agent-ms", body).await;
    assert_eq!(status, 401);

    // Without an envelope, header To is the fallback; an alias routes to its inbox.
    let body = mailersend_envelope("ex-3", &[], &["Alias@Example.com"], "header only");
    let (status, reply) = post_mailersend(&gateway, "agent-ms", body).await;
    assert_eq!(status, 200, "{reply}");
    let event = receiver.recv().await.json();
    assert_eq!(
        (event["agent_id"].clone(), event["subject"].clone()),
        (json!("agent"), json!("header only"))
    );
}

#[tokio::test]
async fn a_multi_recipient_request_reaches_only_the_inboxes_it_verifies_for() {
    let mut receiver = WebhookReceiver::start(vec![]).await;
    let gateway = gateway(&receiver).await;
    put_secret(&gateway, "agent", "mailersend", "agent-ms").await;
    put_secret(&gateway, "other", "mailersend", "other-ms").await;
    let recipients = ["agent@example.com", "other@example.com"];
    let body = mailersend_envelope("multi-1", &recipients, &recipients, "to both");

    // Signed for `other` only (the first recipient's secret does not match): `other` gets it,
    // `agent` does not, and nothing is counted as unauthorized.
    let (status, reply) = post_mailersend(&gateway, "other-ms", body.clone()).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(receiver.recv().await.json()["agent_id"], "other");
    receiver.assert_silent(Duration::from_millis(300)).await;
    assert_eq!(gateway.messages("agent").await, Vec::<Value>::new());
    assert_eq!(unauthorized_count(&gateway, "mailersend").await, 0.0);

    // The same event id is still new for `agent`: replay keys are per inbox.
    let (status, reply) = post_mailersend(&gateway, "agent-ms", body.clone()).await;
    assert_eq!(
        (status, reply["status"].clone()),
        (200, json!("accepted")),
        "{reply}"
    );
    assert_eq!(receiver.recv().await.json()["agent_id"], "agent");
    let (status, reply) = post_mailersend(&gateway, "other-ms", body.clone()).await;
    assert_eq!((status, reply["status"].clone()), (200, json!("duplicate")));

    let (status, _) = post_mailersend(&gateway, "neither", body).await;
    assert_eq!(status, 401);
    assert_eq!(
        unauthorized_count(&gateway, "mailersend").await,
        1.0,
        "counted once"
    );
}

#[tokio::test]
async fn the_ingress_routes_are_in_the_openapi_document() {
    let receiver = WebhookReceiver::start(vec![]).await;
    let gateway = gateway(&receiver).await;
    let (status, document) = gateway.api("GET", "/openapi.json", None).await;
    assert_eq!(status, 200);
    for (method, path) in [
        ("post", "/v1/ingress/mailersend/inbound"),
        ("post", "/v1/ingress/sendgrid/inbound"),
        ("post", "/v1/ingress/calcom"),
        ("post", "/v1/ingress/calendly"),
        ("get", "/v1/inboxes/{id}/ingress"),
        ("put", "/v1/inboxes/{id}/ingress/{provider}"),
        ("delete", "/v1/inboxes/{id}/ingress/{provider}"),
        ("get", "/v1/inboxes/{id}/ingress/event-types"),
        ("put", "/v1/inboxes/{id}/ingress/event-types"),
        ("delete", "/v1/inboxes/{id}/ingress/event-types"),
    ] {
        let operation = &document["paths"][path][method];
        assert!(
            operation["responses"].is_object(),
            "{method} {path} is not documented"
        );
    }
    assert!(
        document["paths"]["/v1/ingress/calcom"]["post"]["responses"]["401"].is_object(),
        "the refusal is documented"
    );
    // The management API's routes are still there beside them.
    assert!(document["paths"]["/v1/inboxes"]["get"].is_object());
}

#[tokio::test]
async fn calendar_events_reach_rule_webhooks_email_forwards_and_botmailroom_endpoints() {
    let mut inbox_hook = WebhookReceiver::start(vec![]).await;
    let mut rule_hook = WebhookReceiver::start(vec![]).await;
    let smarthost = crate::support::smarthost::Aiosmtpd::start().await;
    let mut options = GatewayOptions::webhook(inbox_hook.url());
    options.extra_toml = format!("[forward]\nsmarthost = \"smtp://{}\"\n", smarthost.addr);
    options.other_toml = "calendar_event_types = [\"calcom:42\"]\n".to_owned();
    let gateway = TestGateway::start(options).await;
    put_secret(&gateway, "other", "calcom", "cal-secret").await;
    let (status, body) = gateway
        .api(
            "PUT",
            "/v1/inboxes/other/webhook",
            Some(json!({"url": inbox_hook.url(), "payload": "botmailroom"})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = gateway
        .api(
            "PUT",
            "/v1/inboxes/other/notifications",
            Some(json!({"rules": [{"name": "bookings", "channels": {
            "webhook": {"url": rule_hook.url()},
            "email": {"recipients": ["ops@elsewhere.example"]}}}]})),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    let booking = calcom_booking("BOOKING_CREATED", 42, "bk_rule", &recent(0));
    let (status, reply) = post_calcom(&gateway, "cal-secret", booking.clone()).await;
    assert_eq!(status, 200, "{reply}");

    let to_rule = rule_hook.recv().await.json();
    assert_eq!(to_rule["type"], "calendar.booking.created");
    assert_eq!(to_rule["booking"]["title"], "Call bk_rule");
    let to_botmailroom = inbox_hook.recv().await.json();
    assert_eq!(
        to_botmailroom, to_rule,
        "a botmailroom endpoint gets the calendar event unchanged"
    );

    let delivered = crate::support::eventually("the calendar forward", || async {
        let all = smarthost.delivered();
        (!all.is_empty()).then_some(all)
    })
    .await;
    let message = mail_parser::MessageParser::default()
        .parse(&delivered[0])
        .expect("forward parses");
    assert_eq!(
        message.subject(),
        Some("New booking: Call bk_rule (2026-12-01T10:00:00Z)")
    );
    let from = message.from().and_then(|f| f.first()).expect("from");
    assert_eq!(from.name(), Some("Cal.com via mxhook"));
    assert_eq!(
        message
            .reply_to()
            .and_then(|r| r.first())
            .and_then(|a| a.address()),
        Some("guest@ext.example")
    );
    let text = message.body_text(0).expect("text part");
    for line in [
        "**Call bk_rule**",
        "When: 2026-12-01T10:00:00Z to 2026-12-01T10:30:00Z",
        "Organizer: Host <host@example.com>",
        "Attendees: Guest <guest@ext.example>",
    ] {
        assert!(text.contains(line), "no `{line}` in {text}");
    }
    assert!(!text.contains("Cancellation"), "{text}");
    let attachment = message.attachments().next().expect("JSON attached");
    assert!(
        mail_parser::MimeHeaders::is_content_type(attachment, "application", "json"),
        "attachment is not application/json"
    );
    assert!(
        attachment.contents() == booking.as_slice(),
        "the webhook JSON is attached as received"
    );
}

fn calendly_body(event: &str, invitee: &str, extra: Value) -> Vec<u8> {
    let mut payload = json!({
        "uri": format!("https://api.calendly.com/scheduled_events/EV1/invitees/{invitee}"),
        "email": "guest@ext.example", "name": "Guest",
        "scheduled_event": {"name": "Demo", "event_type": CALENDLY_TYPE,
            "start_time": "2026-12-03T10:00:00Z", "end_time": "2026-12-03T11:00:00Z"}
    });
    if let (Some(payload), Value::Object(extra)) = (payload.as_object_mut(), extra) {
        payload.extend(extra);
    }
    serde_json::to_vec(&json!({"event": event, "payload": payload})).expect("json")
}

async fn post_calendly(gateway: &TestGateway, secret: &str, body: Vec<u8>) -> (u16, Value) {
    let t = chrono::Utc::now().timestamp().to_string();
    let signature = hmac_hex(secret, &[t.as_bytes(), b".", &body]);
    post(
        gateway,
        "/v1/ingress/calendly",
        &[(
            "calendly-webhook-signature",
            format!("t={t},v1={signature}"),
        )],
        body,
    )
    .await
}

#[tokio::test]
async fn calendar_webhooks_refuse_tampering_deliver_reschedules_and_replays_once() {
    let mut receiver = WebhookReceiver::start(vec![]).await;
    let gateway = gateway(&receiver).await;
    put_secret(&gateway, "other", "calcom", "cal-secret").await;
    put_secret(&gateway, "other", "calendly", "calendly-key").await;

    // Cal.com: a body changed after signing is refused; a reschedule is delivered once.
    let moved = calcom_booking("BOOKING_RESCHEDULED", 42, "bk_m", &recent(2));
    let signature = hmac_hex("cal-secret", &[&moved]);
    let mut tampered = moved.clone();
    tampered.insert(tampered.len() - 1, b' ');
    let (status, _) = post(
        &gateway,
        "/v1/ingress/calcom",
        &[("x-cal-signature-256", signature.clone())],
        tampered,
    )
    .await;
    assert_eq!(status, 401, "tampered Cal.com body");
    for expected in ["accepted", "duplicate"] {
        let (status, reply) = post(
            &gateway,
            "/v1/ingress/calcom",
            &[("x-cal-signature-256", signature.clone())],
            moved.clone(),
        )
        .await;
        assert_eq!(
            (status, reply["status"].clone()),
            (200, json!(expected)),
            "{reply}"
        );
    }
    let event = receiver.recv().await.json();
    assert_eq!(event["type"], "calendar.booking.rescheduled");
    assert_eq!(event["booking"]["uid"], "bk_m");
    receiver.assert_silent(Duration::from_millis(300)).await;

    // Calendly: wrong secret, then a body changed after signing, are refused.
    let rescheduled = calendly_body(
        "invitee.created",
        "INV2",
        json!({"old_invitee": "https://api.calendly.com/scheduled_events/EV0/invitees/INV1"}),
    );
    let (status, _) = post_calendly(&gateway, "not-the-key", rescheduled.clone()).await;
    assert_eq!(status, 401, "wrong Calendly secret");
    let t = chrono::Utc::now().timestamp().to_string();
    let signature = hmac_hex("calendly-key", &[t.as_bytes(), b".", &rescheduled]);
    let mut tampered = rescheduled.clone();
    tampered.insert(tampered.len() - 1, b' ');
    let (status, _) = post(
        &gateway,
        "/v1/ingress/calendly",
        &[(
            "calendly-webhook-signature",
            format!("t={t},v1={signature}"),
        )],
        tampered,
    )
    .await;
    assert_eq!(status, 401, "tampered Calendly body");
    // The cancellation half of a reschedule is acknowledged, not delivered; the created half
    // is the reschedule, delivered once however often it arrives.
    let half = calendly_body("invitee.canceled", "INV1", json!({"rescheduled": true}));
    let (status, reply) = post_calendly(&gateway, "calendly-key", half).await;
    assert_eq!((status, reply["status"].clone()), (200, json!("ignored")));
    for expected in ["accepted", "duplicate"] {
        let (status, reply) = post_calendly(&gateway, "calendly-key", rescheduled.clone()).await;
        assert_eq!(
            (status, reply["status"].clone()),
            (200, json!(expected)),
            "{reply}"
        );
    }
    let event = receiver.recv().await.json();
    assert_eq!(event["type"], "calendar.booking.rescheduled");
    assert_eq!(event["provider"], "calendly");
    assert_eq!(event["booking"]["start_time"], "2026-12-03T10:00:00Z");
    receiver.assert_silent(Duration::from_millis(300)).await;
    assert_eq!(unauthorized_count(&gateway, "calcom").await, 1.0);
    assert_eq!(unauthorized_count(&gateway, "calendly").await, 2.0);
}

#[tokio::test]
async fn mailersend_without_raw_mime_stores_a_built_message() {
    let mut receiver = WebhookReceiver::start(vec![]).await;
    let gateway = gateway(&receiver).await;
    put_secret(&gateway, "agent", "mailersend", "ms").await;
    let body = serde_json::to_vec(&json!({
        "type": "inbound.message",
        "data": {
            "id": "parsed-1",
            "from": {"email": "ann@ext.example", "name": "Ann Ürsel"},
            "recipients": {"rcptTo": [{"email": "agent@example.com"}],
                "to": {"data": [{"email": "agent@example.com", "name": "Agent"}]}},
            "subject": "Rückfrage zum Angebot",
            "text": "Hello from the parsed fields.\nSecond line.",
            "html": "<p>Hello from the parsed fields.</p>",
            "date": "Mon, 23 Nov 2026 09:00:00 +0000"
        }
    }))
    .expect("json");
    let (status, reply) = post_mailersend(&gateway, "ms", body).await;
    assert_eq!(status, 200, "{reply}");
    let event = receiver.recv().await.json();
    assert_eq!(event["subject"], "Rückfrage zum Angebot");
    assert_eq!(event["email"]["from_address"]["address"], "ann@ext.example");
    assert_eq!(event["email"]["from_address"]["name"], "Ann Ürsel");
    assert!(
        event["email"]["to_addresses"]
            .to_string()
            .contains("agent@example.com"),
        "{}",
        event["email"]
    );
    assert!(
        event["email"]["plain_text"]
            .as_str()
            .is_some_and(|text| text.contains("Hello from the parsed fields.")),
        "{}",
        event["email"]
    );
    assert_eq!(event["email"]["date"], "2026-11-23T09:00:00.000+00:00");
    let message_id = event["message_id"].as_str().expect("id");
    let (status, stored) = gateway
        .api_bytes(&format!("/v1/messages/{message_id}/raw"))
        .await;
    assert_eq!(status, 200);
    let stored = mail_parser::MessageParser::default()
        .parse(&stored)
        .expect("stored MIME parses");
    assert_eq!(stored.subject(), Some("Rückfrage zum Angebot"));
    assert_eq!(
        stored.message_id(),
        Some("parsed-1@mailersend.mxhook.invalid")
    );
    assert!(stored.date().is_some());
}

#[tokio::test]
async fn sendgrid_refuses_stale_timestamps_and_wrong_keys_and_acknowledges_duplicates() {
    use aws_lc_rs::encoding::AsDer as _;
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair as _};
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut receiver = WebhookReceiver::start(vec![]).await;
    let gateway = gateway(&receiver).await;
    let key = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_ASN1_SIGNING).expect("key");
    let public = b64.encode(key.public_key().as_der().expect("spki").as_ref());
    put_secret(&gateway, "agent", "sendgrid", &public).await;
    let other_key = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_ASN1_SIGNING).expect("key");

    let raw =
        "From: grid@ext.example\r\nTo: agent@example.com\r\nSubject: twice\r\n\r\nonce only\r\n";
    let form = format!(
        "--b\r\nContent-Disposition: form-data; name=\"envelope\"\r\n\r\n{{\"to\":[\"agent@example.com\"],\"from\":\"grid@ext.example\"}}\r\n\
--b\r\nContent-Disposition: form-data; name=\"email\"\r\n\r\n{raw}\r\n--b--\r\n"
    )
    .into_bytes();
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let send = |signer: &EcdsaKeyPair, timestamp: i64| {
        let timestamp = timestamp.to_string();
        let signature = b64.encode(
            signer
                .sign(&rng, &[timestamp.as_bytes(), &form].concat())
                .expect("sign"),
        );
        let headers = vec![
            ("content-type", "multipart/form-data; boundary=b".to_owned()),
            ("x-twilio-email-event-webhook-signature", signature),
            ("x-twilio-email-event-webhook-timestamp", timestamp),
        ];
        let form = form.clone();
        let gateway = &gateway;
        async move { post(gateway, "/v1/ingress/sendgrid/inbound", &headers, form).await }
    };
    let now = chrono::Utc::now().timestamp();
    let (status, _) = send(&key, now - 3600).await;
    assert_eq!(status, 401, "a stale timestamp, correctly signed");
    let (status, _) = send(&other_key, now).await;
    assert_eq!(status, 401, "signed with another key");
    receiver.assert_silent(Duration::from_millis(300)).await;
    let (status, reply) = send(&key, now).await;
    assert_eq!(
        (status, reply["status"].clone()),
        (200, json!("accepted")),
        "{reply}"
    );
    assert_eq!(receiver.recv().await.json()["subject"], "twice");
    // SendGrid sends no event id: the same body again is a duplicate by its hash.
    let (status, reply) = send(&key, now + 1).await;
    assert_eq!(
        (status, reply["status"].clone()),
        (200, json!("duplicate")),
        "{reply}"
    );
    receiver.assert_silent(Duration::from_millis(300)).await;
    assert_eq!(
        gateway.messages("agent").await.len(),
        1,
        "the duplicate stored nothing"
    );
    assert_eq!(unauthorized_count(&gateway, "sendgrid").await, 2.0);
}

#[tokio::test]
async fn a_deleted_secret_refuses_again_and_unsigned_requests_pass_only_when_allowed() {
    let mut receiver = WebhookReceiver::start(vec![]).await;
    let gateway = gateway(&receiver).await;
    put_secret(&gateway, "agent", "mailersend", "ms").await;
    let body = mailersend_payload("del-1", "agent@example.com", "before delete");
    let (status, _) = post_mailersend(&gateway, "ms", body).await;
    assert_eq!(status, 200);
    receiver.recv().await;
    let path = "/v1/inboxes/agent/ingress/mailersend";
    assert_eq!(gateway.api("DELETE", path, None).await.0, 204);
    assert_eq!(gateway.api("DELETE", path, None).await.0, 404);
    let body = mailersend_payload("del-2", "agent@example.com", "after delete");
    let (status, _) = post_mailersend(&gateway, "ms", body).await;
    assert_eq!(status, 401, "the deleted secret no longer verifies");
    receiver.assert_silent(Duration::from_millis(300)).await;

    let mut receiver = WebhookReceiver::start(vec![]).await;
    let gateway = gateway_with(&receiver, "allow_unsigned = true\n").await;
    let unsigned = mailersend_payload("open-1", "agent@example.com", "unsigned");
    let (status, reply) = post(&gateway, "/v1/ingress/mailersend/inbound", &[], unsigned).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(receiver.recv().await.json()["subject"], "unsigned");
    // A secret, once set, is required even when unsigned ingress is allowed...
    put_secret(&gateway, "agent", "mailersend", "ms").await;
    let unsigned = mailersend_payload("open-2", "agent@example.com", "unsigned again");
    let (status, _) = post(
        &gateway,
        "/v1/ingress/mailersend/inbound",
        &[],
        unsigned.clone(),
    )
    .await;
    assert_eq!(status, 401);
    // ...and after it is deleted the unsigned policy applies again.
    assert_eq!(gateway.api("DELETE", path, None).await.0, 204);
    let (status, _) = post(&gateway, "/v1/ingress/mailersend/inbound", &[], unsigned).await;
    assert_eq!(status, 200);
    assert_eq!(receiver.recv().await.json()["subject"], "unsigned again");
}

#[tokio::test]
async fn an_inbox_recreated_under_a_deleted_id_inherits_no_ingress_settings() {
    let receiver = WebhookReceiver::start(vec![]).await;
    let gateway = gateway(&receiver).await;
    let create = || {
        gateway.api(
            "POST",
            "/v1/inboxes",
            Some(json!({"id": "temp", "addresses": ["temp@example.com"]})),
        )
    };
    assert_eq!(create().await.0, 201);
    put_secret(&gateway, "temp", "calcom", "temp-secret").await;
    let (status, _) = gateway
        .api(
            "PUT",
            "/v1/inboxes/temp/ingress/event-types",
            Some(json!({"event_types": ["calcom:5"]})),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(gateway.api("DELETE", "/v1/inboxes/temp", None).await.0, 204);
    assert_eq!(create().await.0, 201);
    let (_, flags) = gateway.api("GET", "/v1/inboxes/temp/ingress", None).await;
    assert_eq!(flags["providers"]["calcom"]["configured"], false, "{flags}");
    let (_, types) = gateway
        .api("GET", "/v1/inboxes/temp/ingress/event-types", None)
        .await;
    assert_eq!(types["event_types"], json!([]));
    let booking = calcom_booking("BOOKING_CREATED", 5, "bk_old", &recent(0));
    let (status, _) = post_calcom(&gateway, "temp-secret", booking).await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn an_event_older_than_the_replay_keys_is_acknowledged_but_not_processed() {
    let mut receiver = WebhookReceiver::start(vec![]).await;
    let gateway = gateway(&receiver).await;
    put_secret(&gateway, "other", "calcom", "cal-secret").await;
    put_secret(&gateway, "agent", "mailersend", "ms").await;
    // Signed correctly, but created long before the 90 days of replay keys: it may be a replay
    // whose key was pruned.
    let old = calcom_booking("BOOKING_CREATED", 42, "bk_old", "2020-01-01T00:00:00Z");
    let (status, reply) = post_calcom(&gateway, "cal-secret", old).await;
    assert_eq!((status, reply["status"].clone()), (200, json!("expired")));
    let mut old_mail: Value =
        serde_json::from_slice(&mailersend_payload("old-1", "agent@example.com", "old"))
            .expect("json");
    old_mail["created_at"] = json!("2020-01-01T00:00:00.000000Z");
    let (status, reply) =
        post_mailersend(&gateway, "ms", serde_json::to_vec(&old_mail).expect("json")).await;
    assert_eq!((status, reply["status"].clone()), (200, json!("expired")));
    receiver.assert_silent(Duration::from_millis(300)).await;

    let recent = chrono::Utc::now().to_rfc3339();
    let fresh = calcom_booking("BOOKING_CREATED", 42, "bk_new", &recent);
    let (status, reply) = post_calcom(&gateway, "cal-secret", fresh).await;
    assert_eq!((status, reply["status"].clone()), (200, json!("accepted")));
    assert_eq!(receiver.recv().await.json()["booking"]["uid"], "bk_new");
}

/// The ingress secrets and event types are admin-only with the API's answers: no key or an
/// unknown one is 401, the inbox's own key is known but not enough (403), and neither
/// changes anything.
#[tokio::test]
async fn an_inbox_key_is_forbidden_the_ingress_settings_of_its_own_inbox() {
    let receiver = WebhookReceiver::start(vec![]).await;
    let gateway = gateway(&receiver).await;
    let (status, created) = gateway.api("POST", "/v1/inboxes/agent/keys", None).await;
    assert_eq!(status, 201, "{created}");
    let inbox_key = created["key"].as_str().expect("key").to_owned();
    let routes = [
        ("GET", "/v1/inboxes/agent/ingress", None),
        (
            "PUT",
            "/v1/inboxes/agent/ingress/mailersend",
            Some(json!({"secret": "set by an inbox key"})),
        ),
        ("DELETE", "/v1/inboxes/agent/ingress/mailersend", None),
        ("GET", "/v1/inboxes/agent/ingress/event-types", None),
        (
            "PUT",
            "/v1/inboxes/agent/ingress/event-types",
            Some(json!({"event_types": ["calcom:7"]})),
        ),
        ("DELETE", "/v1/inboxes/agent/ingress/event-types", None),
    ];
    for (method, path, body) in &routes {
        let (status, answer) = gateway.api_as(&inbox_key, method, path, body.clone()).await;
        assert_eq!(
            status, 403,
            "{method} {path} with the inbox's key: {answer}"
        );
        assert_eq!(answer["error"]["code"], "forbidden", "{answer}");
        let (status, answer) = gateway
            .api_as("mxk_not_a_key", method, path, body.clone())
            .await;
        assert_eq!(status, 401, "{method} {path} with an unknown key: {answer}");
    }
    let (status, secrets) = gateway.api("GET", "/v1/inboxes/agent/ingress", None).await;
    assert_eq!(status, 200, "{secrets}");
    assert_eq!(
        secrets["providers"]["mailersend"]["configured"], false,
        "an inbox key set a secret: {secrets}"
    );
    let (status, types) = gateway
        .api("GET", "/v1/inboxes/agent/ingress/event-types", None)
        .await;
    assert_eq!(status, 200, "{types}");
    assert!(
        !types.to_string().contains("calcom:7"),
        "an inbox key mapped an event type: {types}"
    );
}
