//! Provider webhooks as the providers send them: HMAC signatures, raw posts to the ingress
//! routes, and a Cal.com booking body.

use hmac::Mac as _;
use serde_json::{Value, json};

use super::TestGateway;

/// Hex HMAC-SHA256 over `parts` in order, as most providers sign.
pub fn hmac_hex(secret: &str, parts: &[&[u8]]) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("key");
    for part in parts {
        mac.update(part);
    }
    hex::encode(mac.finalize().into_bytes())
}

/// A provider's POST to an ingress route, with its headers: the status and the JSON answer.
pub async fn post(
    gateway: &TestGateway,
    path: &str,
    headers: &[(&str, String)],
    body: Vec<u8>,
) -> (u16, Value) {
    let mut request = super::http_client()
        .post(format!("http://{}{path}", gateway.http))
        .body(body);
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// A Cal.com webhook body for a booking of `event_type_id` (`trigger` e.g. `BOOKING_CREATED`).
pub fn calcom_booking(trigger: &str, event_type_id: u64, uid: &str, created_at: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "triggerEvent": trigger,
        "createdAt": created_at,
        "payload": {
            "title": format!("Call {uid}"), "eventTypeId": event_type_id, "uid": uid,
            "startTime": "2026-12-01T10:00:00Z", "endTime": "2026-12-01T10:30:00Z",
            "organizer": {"email": "host@example.com", "name": "Host"},
            "attendees": [{"email": "guest@ext.example", "name": "Guest"}]
        }
    }))
    .expect("json")
}

/// Posts a booking signed as Cal.com signs it (hex HMAC-SHA256 of the body).
pub async fn post_calcom(gateway: &TestGateway, secret: &str, body: Vec<u8>) -> (u16, Value) {
    post(
        gateway,
        "/v1/ingress/calcom",
        &[("x-cal-signature-256", hmac_hex(secret, &[&body]))],
        body,
    )
    .await
}
