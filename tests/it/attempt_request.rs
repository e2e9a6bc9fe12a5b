//! Issue 25: every webhook attempt logs the request it sent (headers and the exact body signed),
//! served by `GET /v1/deliveries/{id}/attempts/{n}/request`, its `/body` download and the
//! dashboard's message page, so a user debugging a verifier can compare byte for byte. A custom
//! header's value (possibly the receiver's credential) is never shown.

use serde_json::{Value, json};

use crate::support::gateway::{API_KEY, SECRET};
use crate::support::{
    GatewayOptions, Received, Reply, SmtpClient, TestGateway, WebhookReceiver, escaped, eventually,
    python_verifies_agentmail, rand_token, simple_message,
};
use crate::ui::Ui;

/// Headers the HTTP client adds on the wire, which the log does not list.
const TRANSPORT_HEADERS: &[&str] = &["host", "content-length", "accept", "accept-encoding"];

#[tokio::test]
async fn mxhook_payload_attempts_log_the_exact_request() {
    logged_requests_match_what_the_receiver_got("mxhook").await;
}

#[tokio::test]
async fn event_data_payload_attempts_log_the_exact_request() {
    logged_requests_match_what_the_receiver_got("event-data").await;
}

/// The receiver answers 500 and then 200: two attempts, each logged with its own request,
/// compared with what the receiver got over the API, the raw download and the dashboard.
async fn logged_requests_match_what_the_receiver_got(payload: &str) {
    let mut receiver = WebhookReceiver::start(vec![Reply::Status(500), Reply::Status(200)]).await;
    let gateway = TestGateway::start(GatewayOptions::webhook(receiver.url())).await;
    let token = format!("credential-{}", rand_token());
    let (status, body) = gateway
        .api(
            "PUT",
            "/v1/inboxes/agent/webhook",
            Some(json!({
                "url": receiver.url(),
                "payload": payload,
                "custom_headers": {"X-Api-Token": token},
            })),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    let subject = format!("Logged <request> & \"quotes\" {}", rand_token());
    let mut smtp = SmtpClient::connect(gateway.smtp).await;
    let (code, text) = smtp
        .send_message(
            "sender@client.example",
            &["agent@example.com"],
            &simple_message(
                "sender@client.example",
                "agent@example.com",
                &subject,
                "Grüße </pre><script>x()</script>\r\n",
            ),
        )
        .await;
    assert_eq!(code, 250, "{text}");
    let received = [receiver.recv().await, receiver.recv().await];
    assert_eq!(
        received[0].header("x-api-token").as_deref(),
        Some(token.as_str())
    );

    let delivery = eventually("the delivery to be delivered with two attempts", || async {
        gateway
            .all_deliveries()
            .await
            .into_iter()
            .find(|delivery| delivery["status"] == "delivered" && delivery["attempts"] == 2)
    })
    .await;
    let delivery_id = delivery["id"].as_str().expect("delivery id").to_owned();
    let message_id = delivery["message_id"]
        .as_str()
        .expect("message id")
        .to_owned();
    let attempts = gateway.attempts(&delivery_id).await;
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    assert_eq!(attempts[0]["status_code"], 500, "{attempts:?}");
    for attempt in &attempts {
        assert_eq!(attempt["request_logged"], true, "{attempt}");
        assert!(attempt.get("headers").is_none() && attempt.get("body").is_none());
    }

    let mut ui = Ui::new(&gateway);
    ui.login(API_KEY).await;
    let page = ui.get(&format!("/ui/messages/{message_id}")).await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(!page.body.contains(&token), "the credential is on the page");

    for (index, got) in received.iter().enumerate() {
        let number = index + 1;
        let base = format!("/v1/deliveries/{delivery_id}/attempts/{number}/request");
        let (status, request) = gateway.api("GET", &base, None).await;
        assert_eq!(status, 200, "{request}");
        assert!(
            !request.to_string().contains(&token),
            "the credential is served: {request}"
        );
        let body = request["body"].as_str().expect("a body");
        assert!(
            body.as_bytes() == &got.body[..],
            "attempt {number}: the logged body is not the body sent:\n{body}\n{}",
            String::from_utf8_lossy(&got.body)
        );
        assert_eq!(request["body_bytes"], got.body.len());
        let headers = header_pairs(&request);
        same_headers(&headers, got, &token);

        let timestamp = header(&headers, "x-agentmail-timestamp");
        let signature = header(&headers, "x-agentmail-signature");
        assert!(
            python_verifies_agentmail(SECRET, &timestamp, body.as_bytes(), &signature),
            "attempt {number}: the logged signature does not verify over the logged body"
        );

        let (status, raw) = gateway.api_bytes(&format!("{base}/body")).await;
        assert_eq!(status, 200);
        assert_eq!(
            raw,
            got.body.to_vec(),
            "attempt {number}: the download differs"
        );
        let (status, bytes, content_type) = ui_download(&ui, &page.body, number).await;
        assert_eq!(status, 200);
        assert_eq!(content_type, "application/json");
        assert_eq!(
            bytes,
            got.body.to_vec(),
            "attempt {number}: the dashboard download differs"
        );

        let shown = section(&page.body, number);
        assert!(
            shown.contains(&format!(
                "<pre class=\"request-body\">{}</pre>",
                escaped(body)
            )),
            "attempt {number}: the page does not show the body as sent: {shown}"
        );
        for (name, value) in &headers {
            assert!(
                shown.contains(&escaped(&format!("{name}: {value}"))),
                "attempt {number}: the page does not show {name}: {shown}"
            );
        }
    }
    // mxhook sends the stored event itself (logged without a copy); event-data builds another
    // body (logged compressed): both paths are covered.
    let (_, message) = gateway
        .api("GET", &format!("/v1/messages/{message_id}"), None)
        .await;
    let sent: Value = serde_json::from_slice(&received[0].body).expect("JSON body");
    assert_eq!(sent == message, payload == "mxhook", "{sent}");
    gateway.stop().await;
}

fn header_pairs(request: &Value) -> Vec<(String, String)> {
    request["headers"]
        .as_array()
        .expect("headers")
        .iter()
        .map(|pair| {
            (
                pair[0].as_str().expect("name").to_owned(),
                pair[1].as_str().expect("value").to_owned(),
            )
        })
        .collect()
}

fn header(headers: &[(String, String)], name: &str) -> String {
    headers
        .iter()
        .find(|(key, _)| key.eq_ignore_ascii_case(name))
        .map(|(_, value)| value.clone())
        .unwrap_or_else(|| panic!("no {name} among {headers:?}"))
}

/// The logged headers are the headers received, less transport ones, with the same values; the
/// custom header's value is hidden.
fn same_headers(logged: &[(String, String)], got: &Received, token: &str) {
    let mut logged_names: Vec<String> =
        logged.iter().map(|(name, _)| name.to_lowercase()).collect();
    logged_names.sort();
    let mut got_names: Vec<String> = got
        .headers
        .keys()
        .map(|name| name.as_str().to_owned())
        .filter(|name| !TRANSPORT_HEADERS.contains(&name.as_str()))
        .collect();
    got_names.sort();
    assert_eq!(logged_names, got_names, "logged {logged:?}");
    for (name, value) in logged {
        let sent = got.header(name).unwrap_or_default();
        if name.eq_ignore_ascii_case("x-api-token") {
            assert_eq!(value, "[hidden]");
            assert_eq!(sent, token);
        } else {
            assert_eq!(value, &sent, "header {name}");
        }
    }
}

/// The part of the message page showing attempt `number`'s request.
fn section(page: &str, number: usize) -> &str {
    let marker = format!("<details class=\"sent-request\" data-attempt=\"{number}\">");
    let start = page
        .find(&marker)
        .unwrap_or_else(|| panic!("no request of attempt {number} on the page"));
    let end = page[start..].find("</details>").expect("end of section") + start;
    &page[start..end]
}

/// Follows the page's download link of attempt `number` with the dashboard session.
async fn ui_download(ui: &Ui, page: &str, number: usize) -> (u16, Vec<u8>, String) {
    let shown = section(page, number);
    let start = shown.find("<a href=\"").expect("a download link") + "<a href=\"".len();
    let end = shown[start..].find('"').expect("end of link") + start;
    let href = shown[start..end].replace("&#x2f;", "/");
    let response = ui.get_response(&href).await;
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    (
        status,
        response.bytes().await.expect("body").to_vec(),
        content_type,
    )
}
