//! Keeping and removing mail (SPEC "Data lifecycle"), end to end on the configured database
//! backend and on both stores (the filesystem and the in-process S3 server): erasure answers
//! 204 and then 404 for the event, the raw bytes and the attachments, and never lets a pending
//! or in-flight delivery go out after the 204; attachments come decoded with safe headers; a
//! quarantined message is released once; the pruner removes exactly the expired, delivered
//! messages and leaves the store with no orphan.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::s3::TestS3;
use crate::support::{
    GatewayOptions, Reply, SmtpClient, TestGateway, WebhookReceiver, eventually, simple_message,
};

/// A message with two attachments: a PDF in base64 whose name tries to leave the download
/// directory and split the header, and a quoted-printable CSV with a UTF-8 name.
const WITH_ATTACHMENTS: &str = "From: Jane <jane@client.example>\r\nTo: agent@example.com\r\n\
Subject: the files\r\nDate: Thu, 16 Apr 2026 12:00:00 +0000\r\nMessage-ID: <files@client.example>\r\n\
MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"XYZ\"\r\n\r\n\
--XYZ\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nsee attached\r\n\
--XYZ\r\nContent-Type: application/pdf\r\n\
Content-Disposition: attachment; filename=\"../../x/re\\\"port.pdf\"\r\n\
Content-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQKJcfs4gplbmQ=\r\n\
--XYZ\r\nContent-Type: text/csv; charset=utf-8\r\n\
Content-Disposition: attachment; filename*=UTF-8''gr%C3%BC%C3%9Fe.csv\r\n\
Content-Transfer-Encoding: quoted-printable\r\n\r\na,b=0D=0A1,=C3=BC\r\n--XYZ--\r\n";

#[derive(Clone, Copy, Debug)]
enum Storage {
    Fs,
    S3,
}

/// A gateway on `storage` (the S3 server is returned to be kept alive).
async fn gateway_on(
    storage: Storage,
    mut options: GatewayOptions,
) -> (TestGateway, Option<TestS3>) {
    let s3 = match storage {
        Storage::Fs => None,
        Storage::S3 => {
            let s3 = TestS3::start().await;
            options.storage_toml = Some(s3.storage_toml(10.0));
            Some(s3)
        }
    };
    (TestGateway::start(options).await, s3)
}

/// Whether the raw object of `message_id` in `inbox` is in the store.
fn object_exists(
    gateway: &TestGateway,
    s3: Option<&TestS3>,
    inbox: &str,
    message_id: &str,
) -> bool {
    let key = format!("inbound/{inbox}/{message_id}.eml");
    match s3 {
        Some(s3) => s3.keys().contains(&key),
        None => gateway.dir.path().join("mail").join(&key).exists(),
    }
}

async fn send_to(gateway: &TestGateway, to: &str, message: &[u8]) -> String {
    let mut client = SmtpClient::connect(gateway.smtp).await;
    let (code, text) = client
        .send_message("jane@client.example", &[to], message)
        .await;
    assert_eq!(code, 250, "{text}");
    text.rsplit(' ').next().expect("queued as id").to_owned()
}

/// GET with a key; the status, the headers and the body bytes.
async fn get_as(
    gateway: &TestGateway,
    key: &str,
    path: &str,
) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    let response = crate::support::http_client()
        .get(format!("http://{}{path}", gateway.http))
        .bearer_auth(key)
        .send()
        .await
        .expect("API request");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (
        status,
        headers,
        response.bytes().await.expect("body").to_vec(),
    )
}

async fn inbox_key(gateway: &TestGateway, inbox: &str) -> String {
    let (status, created) = gateway
        .api(
            "POST",
            &format!("/v1/inboxes/{inbox}/keys"),
            Some(json!({"name": "t"})),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    created["key"].as_str().expect("key").to_owned()
}

async fn erasure_removes_everything_of_the_message(storage: Storage) {
    let mut receiver = WebhookReceiver::start(vec![]).await;
    let (gateway, s3) = gateway_on(storage, GatewayOptions::webhook(receiver.url())).await;
    let id = send_to(&gateway, "agent@example.com", WITH_ATTACHMENTS.as_bytes()).await;
    let event = receiver.recv().await.json();
    assert_eq!(event["message_id"], id.as_str());
    assert_eq!(
        event["email"]["attachments"].as_array().map(Vec::len),
        Some(2)
    );
    let kept = send_to(
        &gateway,
        "agent@example.com",
        &simple_message("jane@client.example", "agent@example.com", "stays", "x"),
    )
    .await;
    receiver.recv().await;
    assert!(object_exists(&gateway, s3.as_ref(), "agent", &id));
    let deliveries_before = gateway.all_deliveries().await;
    assert!(
        deliveries_before
            .iter()
            .any(|d| d["message_id"] == id.as_str())
    );

    // Another inbox's key does not see it; the inbox's own key may erase it.
    let other_key = inbox_key(&gateway, "other").await;
    let own_key = inbox_key(&gateway, "agent").await;
    let path = format!("/v1/messages/{id}");
    let (status, _) = gateway.api_as(&other_key, "DELETE", &path, None).await;
    assert_eq!(status, 404);
    let (status, body) = gateway.api_as(&own_key, "DELETE", &path, None).await;
    assert_eq!(status, 204, "{body}");

    for read in [
        path.clone(),
        format!("{path}/raw"),
        format!("{path}/attachments/att_0"),
        format!("{path}/attachments/att_1"),
    ] {
        let (status, _, _) = get_as(&gateway, crate::support::gateway::API_KEY, &read).await;
        assert_eq!(status, 404, "GET {read} after the erasure");
    }
    let (status, _) = gateway.api("DELETE", &path, None).await;
    assert_eq!(status, 404, "a second erasure finds nothing");
    assert!(
        !object_exists(&gateway, s3.as_ref(), "agent", &id),
        "the raw object is still stored"
    );
    assert!(
        gateway
            .all_deliveries()
            .await
            .iter()
            .all(|d| d["message_id"] != id.as_str()),
        "a delivery of the erased message is still listed"
    );
    assert!(
        gateway
            .messages("agent")
            .await
            .iter()
            .all(|m| m["id"] != id.as_str()),
        "the erased message is still listed"
    );
    // The other message is untouched.
    assert!(object_exists(&gateway, s3.as_ref(), "agent", &kept));
    let (status, _) = gateway
        .api("GET", &format!("/v1/messages/{kept}"), None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        gateway
            .metric("mxhook_lifecycle_total{what=\"erased\"}")
            .await,
        1.0
    );
    gateway.stop().await;
}

#[tokio::test]
async fn erasure_removes_the_event_raw_bytes_attachments_and_deliveries_on_the_filesystem() {
    erasure_removes_everything_of_the_message(Storage::Fs).await;
}

#[tokio::test]
async fn erasure_removes_the_event_raw_bytes_attachments_and_deliveries_on_s3() {
    erasure_removes_everything_of_the_message(Storage::S3).await;
}

#[tokio::test]
async fn a_pending_retry_of_an_erased_message_is_never_sent() {
    // The first attempt fails; the retry is due about a second later.
    let mut receiver = WebhookReceiver::start(vec![Reply::Status(503)]).await;
    let mut options = GatewayOptions::webhook(receiver.url());
    options.retry_base_s = 1.0;
    let gateway = TestGateway::start(options).await;
    let id = send_to(
        &gateway,
        "agent@example.com",
        &simple_message("jane@client.example", "agent@example.com", "retry", "x"),
    )
    .await;
    receiver.recv().await;
    eventually("the failed attempt to be recorded", || async {
        let pending = gateway.deliveries("pending").await;
        pending
            .iter()
            .any(|d| d["message_id"] == id.as_str() && d["attempts"] == 1)
            .then_some(())
    })
    .await;
    let (status, body) = gateway
        .api("DELETE", &format!("/v1/messages/{id}"), None)
        .await;
    assert_eq!(status, 204, "{body}");
    receiver.assert_silent(Duration::from_secs(3)).await;
    assert!(gateway.deliveries("pending").await.is_empty());
    gateway.stop().await;
}

#[tokio::test]
async fn an_erasure_during_a_delivery_attempt_waits_for_it_and_nothing_is_sent_after_the_204() {
    let gate = std::sync::Arc::new(tokio::sync::Notify::new());
    // The attempt hangs until the gate opens: the dispatcher holds the event in memory, and an
    // erasure that answered meanwhile could not stop it any more.
    let mut receiver = WebhookReceiver::start(vec![
        Reply::Wait(std::sync::Arc::clone(&gate)),
        Reply::Status(200),
    ])
    .await;
    let mut options = GatewayOptions::webhook(receiver.url());
    options.retry_base_s = 0.05;
    let gateway = TestGateway::start(options).await;
    let id = send_to(
        &gateway,
        "agent@example.com",
        &simple_message("jane@client.example", "agent@example.com", "in flight", "x"),
    )
    .await;
    receiver.recv().await;

    let http = gateway.http;
    let path = format!("/v1/messages/{id}");
    let erasure = tokio::spawn(async move {
        crate::support::api_at(
            http,
            crate::support::gateway::API_KEY,
            "DELETE",
            &path,
            None,
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !erasure.is_finished(),
        "the erasure answered while the attempt was in flight"
    );
    gate.notify_one();
    let (status, body) = tokio::time::timeout(crate::support::SOON, erasure)
        .await
        .expect("the erasure answers once the attempt ended")
        .expect("join");
    assert_eq!(status, 204, "{body}");
    receiver.assert_silent(Duration::from_secs(2)).await;
    let (status, _) = gateway
        .api("GET", &format!("/v1/messages/{id}"), None)
        .await;
    assert_eq!(status, 404);
    gateway.stop().await;
}

#[tokio::test]
async fn an_attachment_is_served_decoded_with_its_type_a_safe_filename_and_nosniff() {
    let mut receiver = WebhookReceiver::start(vec![]).await;
    let gateway = TestGateway::start(GatewayOptions::webhook(receiver.url())).await;
    let id = send_to(&gateway, "agent@example.com", WITH_ATTACHMENTS.as_bytes()).await;
    let event = receiver.recv().await.json();
    let attachments = event["email"]["attachments"]
        .as_array()
        .cloned()
        .expect("attachments");
    assert_eq!(attachments[0]["id"], "att_0");
    assert_eq!(attachments[1]["id"], "att_1");

    let (status, headers, body) = get_as(
        &gateway,
        crate::support::gateway::API_KEY,
        &format!("/v1/messages/{id}/attachments/att_0"),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body, b"%PDF-1.4\n%\xc7\xec\xe2\nend");
    assert_eq!(
        body.len() as u64,
        attachments[0]["size"].as_u64().expect("size")
    );
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(header("content-type"), "application/pdf");
    assert_eq!(header("x-content-type-options"), "nosniff");
    let disposition = header("content-disposition");
    assert!(
        disposition.starts_with("attachment; filename=\""),
        "{disposition}"
    );
    assert!(!disposition.contains(".."), "{disposition}");
    assert!(!disposition.contains('/'), "{disposition}");
    assert!(disposition.contains("report.pdf"), "{disposition}");

    // An inbox key of the message's inbox reads it; the other inbox's key does not see it.
    let own_key = inbox_key(&gateway, "agent").await;
    let other_key = inbox_key(&gateway, "other").await;
    let path = format!("/v1/messages/{id}/attachments/att_1");
    let (status, headers, body) = get_as(&gateway, &own_key, &path).await;
    assert_eq!(status, 200);
    assert_eq!(body, "a,b\r\n1,ü".as_bytes());
    assert_eq!(headers["content-type"], "text/csv");
    let disposition = headers["content-disposition"].to_str().expect("ascii");
    assert!(
        disposition.ends_with("filename*=UTF-8''gr%C3%BC%C3%9Fe.csv"),
        "{disposition}"
    );
    let (status, _, _) = get_as(&gateway, &other_key, &path).await;
    assert_eq!(status, 404);
    for missing in ["att_2", "att_01", "0", "..%2Fatt_0"] {
        let (status, _, _) = get_as(
            &gateway,
            crate::support::gateway::API_KEY,
            &format!("/v1/messages/{id}/attachments/{missing}"),
        )
        .await;
        assert_eq!(status, 404, "{missing}");
    }
    gateway.stop().await;
}

#[tokio::test]
async fn a_quarantined_message_is_released_once_and_delivered_whole() {
    let mut receiver = WebhookReceiver::start(vec![]).await;
    let mut options = GatewayOptions::webhook(receiver.url());
    options.agent_toml =
        "block_senders = [\"blocked.test\"]\npolicy_action = \"quarantine\"\n".to_owned();
    let gateway = TestGateway::start(options).await;
    let mut client = SmtpClient::connect(gateway.smtp).await;
    let (code, text) = client
        .send_message(
            "promo@blocked.test",
            &["agent@example.com"],
            &simple_message(
                "promo@blocked.test",
                "agent@example.com",
                "held",
                "the content",
            ),
        )
        .await;
    assert_eq!(code, 250, "{text}");
    let id = text.rsplit(' ').next().expect("id").to_owned();
    // Held: the default webhook does not subscribe to mail.quarantined.
    receiver.assert_silent(Duration::from_millis(500)).await;

    let path = format!("/v1/messages/{id}/release");
    let other_key = inbox_key(&gateway, "other").await;
    let (status, _) = gateway.api_as(&other_key, "POST", &path, None).await;
    assert_eq!(status, 404);
    let (status, released) = gateway.api("POST", &path, None).await;
    assert_eq!(status, 200, "{released}");
    assert_eq!(released["quarantined"], false);
    assert_eq!(
        released["delivery_ids"].as_array().map(Vec::len),
        Some(1),
        "{released}"
    );

    let event = receiver.recv().await.json();
    assert_eq!(event["type"], "mail.received");
    assert_eq!(event["message_id"], id.as_str());
    assert_eq!(event["quarantined"], false);
    assert!(
        event["email"]["plain_text"]
            .as_str()
            .is_some_and(|text| text.contains("the content")),
        "{event}"
    );
    let (_, stored) = gateway
        .api("GET", &format!("/v1/messages/{id}"), None)
        .await;
    assert_eq!(stored["quarantined"], false);
    let listed = gateway.messages("agent").await;
    assert!(
        listed
            .iter()
            .any(|m| m["id"] == id.as_str() && m["quarantined"] == false)
    );

    let (status, body) = gateway.api("POST", &path, None).await;
    assert_eq!(status, 409, "{body}");
    receiver.assert_silent(Duration::from_millis(500)).await;

    // A message that never was quarantined cannot be released either.
    let plain = send_to(
        &gateway,
        "other@example.com",
        &simple_message("jane@client.example", "other@example.com", "fine", "x"),
    )
    .await;
    receiver.recv().await;
    let (status, _) = gateway
        .api("POST", &format!("/v1/messages/{plain}/release"), None)
        .await;
    assert_eq!(status, 409);
    gateway.stop().await;
}

async fn retention_prunes_exactly_the_expired_delivered_messages(storage: Storage) {
    let mut receiver = WebhookReceiver::start(vec![]).await;
    // The other inbox's receiver fails for a long time: its message stays pending.
    let failing = WebhookReceiver::start(vec![Reply::Status(500); 100]).await;
    let mut options = GatewayOptions::webhook(receiver.url());
    options.other_webhook_url = Some(failing.url());
    options.retry_base_s = 120.0;
    // 0.00002 days is 1.728 s.
    options.agent_toml = "retention_days = 0.00002\n".to_owned();
    options.other_toml = "retention_days = 0.00002\n".to_owned();
    let hook = receiver.url();
    options.extra_toml = format!(
        "[[inbox]]\nid = \"keep\"\naddresses = [\"keep@example.com\"]\nwebhook_url = \"{hook}\"\n\
         [retention]\ninterval_s = 0.3\n"
    );
    let (gateway, s3) = gateway_on(storage, options).await;
    let message = |to: &str| simple_message("jane@client.example", to, "old", "x");
    let expired = send_to(&gateway, "agent@example.com", &message("agent@example.com")).await;
    let pending = send_to(&gateway, "other@example.com", &message("other@example.com")).await;
    let kept = send_to(&gateway, "keep@example.com", &message("keep@example.com")).await;
    receiver.recv().await;
    receiver.recv().await;

    eventually("the expired message to be pruned", || async {
        gateway.messages("agent").await.is_empty().then_some(())
    })
    .await;
    let (status, _) = gateway
        .api("GET", &format!("/v1/messages/{expired}"), None)
        .await;
    assert_eq!(status, 404);
    assert!(!object_exists(&gateway, s3.as_ref(), "agent", &expired));
    // Expired too, but its delivery is pending; and an inbox without a retention keeps all.
    tokio::time::sleep(Duration::from_secs(1)).await;
    for (inbox, id) in [("other", &pending), ("keep", &kept)] {
        let (status, _) = gateway
            .api("GET", &format!("/v1/messages/{id}"), None)
            .await;
        assert_eq!(status, 200, "{inbox}'s message was removed");
        assert!(
            object_exists(&gateway, s3.as_ref(), inbox, id),
            "{inbox}'s object was removed"
        );
    }
    assert!(
        gateway
            .all_deliveries()
            .await
            .iter()
            .all(|d| d["message_id"] != expired.as_str())
    );
    assert_eq!(
        gateway
            .metric("mxhook_lifecycle_total{what=\"pruned\"}")
            .await,
        1.0
    );
    assert!(
        gateway
            .metric("mxhook_lifecycle_total{what=\"prune_runs\"}")
            .await
            >= 1.0
    );
    let config = gateway_config(&gateway, s3.as_ref());
    let report = mxhook::retention::check_configured_store(&config, false)
        .await
        .expect("check-store");
    assert!(report.orphan_objects.is_empty(), "{report:?}");
    assert!(report.missing_objects.is_empty(), "{report:?}");
    drop(failing);
    gateway.stop().await;
}

/// The database and store of a running test gateway, as `mxhook check-store` would read them.
fn gateway_config(gateway: &TestGateway, s3: Option<&TestS3>) -> mxhook::config::Config {
    let mut options = GatewayOptions::no_webhook();
    options.storage_toml = s3.map(|s3| s3.storage_toml(10.0));
    let text = crate::support::gateway::config_toml(gateway.dir.path(), &options);
    mxhook::config::Config::from_toml_str(&text).expect("config")
}

#[tokio::test]
async fn retention_prunes_exactly_the_expired_delivered_messages_on_the_filesystem() {
    retention_prunes_exactly_the_expired_delivered_messages(Storage::Fs).await;
}

#[tokio::test]
async fn retention_prunes_exactly_the_expired_delivered_messages_on_s3() {
    retention_prunes_exactly_the_expired_delivered_messages(Storage::S3).await;
}

#[tokio::test]
async fn check_store_finds_and_repairs_orphans_both_ways() {
    let mut receiver = WebhookReceiver::start(vec![]).await;
    let gateway = TestGateway::start(GatewayOptions::webhook(receiver.url())).await;
    let lost = send_to(
        &gateway,
        "agent@example.com",
        &simple_message("jane@client.example", "agent@example.com", "lost", "x"),
    )
    .await;
    receiver.recv().await;
    let root = gateway.dir.path().join("mail");
    // A row whose object is gone, and an object (old enough) that no row points at.
    std::fs::remove_file(root.join(format!("inbound/agent/{lost}.eml"))).expect("remove");
    let orphan = root.join("inbound/agent/msg_orphan.eml");
    std::fs::write(&orphan, b"Subject: orphan\r\n\r\nx\r\n").expect("write");
    let old = std::time::SystemTime::now() - Duration::from_secs(7200);
    std::fs::File::options()
        .write(true)
        .open(&orphan)
        .and_then(|file| file.set_modified(old))
        .expect("age the orphan");
    let config = gateway_config(&gateway, None);
    let report = mxhook::retention::check_configured_store(&config, false)
        .await
        .expect("check-store");
    assert_eq!(
        report.orphan_objects,
        vec!["inbound/agent/msg_orphan.eml".to_owned()]
    );
    assert_eq!(report.missing_objects, vec![lost.clone()]);
    assert!(
        orphan.exists(),
        "a check without --repair removed something"
    );

    let report = mxhook::retention::check_configured_store(&config, true)
        .await
        .expect("check-store --repair");
    assert_eq!(report.repaired, 2, "{report:?}");
    assert!(!orphan.exists());
    let (status, _) = gateway
        .api("GET", &format!("/v1/messages/{lost}"), None)
        .await;
    assert_eq!(status, 404);
    let report = mxhook::retention::check_configured_store(&config, false)
        .await
        .expect("check-store");
    assert!(
        report.orphan_objects.is_empty() && report.missing_objects.is_empty(),
        "{report:?}"
    );
    let _: Value = json!(null);
    gateway.stop().await;
}

#[tokio::test]
async fn a_thread_that_lost_an_email_says_older_emails_are_left_out() {
    let mut receiver = WebhookReceiver::start(vec![]).await;
    let gateway = TestGateway::start(GatewayOptions::webhook(receiver.url())).await;
    let first = crate::support::threaded_mail(
        "Subject: plans\r\nMessage-ID: <first@client.example>",
        "alpha-body",
    );
    let second = crate::support::threaded_mail(
        "Subject: Re: plans\r\nMessage-ID: <second@client.example>\r\n\
         In-Reply-To: <first@client.example>\r\nReferences: <first@client.example>",
        "the second",
    );
    let third = crate::support::threaded_mail(
        "Subject: Re: plans\r\nMessage-ID: <third@client.example>\r\n\
         In-Reply-To: <second@client.example>\r\n\
         References: <first@client.example> <second@client.example>",
        "the third",
    );
    let first_id = send_to(&gateway, "agent@example.com", &first).await;
    receiver.recv().await;
    send_to(&gateway, "agent@example.com", &second).await;
    let event = receiver.recv().await.json();
    let prompt = event["email"]["thread_prompt"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(!prompt.contains("left out"), "{prompt}");

    let (status, _) = gateway
        .api("DELETE", &format!("/v1/messages/{first_id}"), None)
        .await;
    assert_eq!(status, 204);
    send_to(&gateway, "agent@example.com", &third).await;
    let event = receiver.recv().await.json();
    assert_eq!(
        event["email"]["previous_emails"].as_array().map(Vec::len),
        Some(1),
        "{event}"
    );
    let prompt = event["email"]["thread_prompt"].as_str().unwrap_or_default();
    assert!(
        prompt.contains("Older emails of this thread are left out"),
        "{prompt}"
    );
    assert!(!prompt.contains("alpha-body"), "{prompt}");
    gateway.stop().await;
}

#[tokio::test]
async fn an_inbox_has_its_own_retention_from_the_config_or_the_api() {
    let mut options = GatewayOptions::no_webhook();
    options.agent_toml = "retention_days = 7.5\n".to_owned();
    let gateway = TestGateway::start(options).await;
    let (_, agent) = gateway.api("GET", "/v1/inboxes/agent", None).await;
    assert_eq!(agent["retention_days"], 7.5, "{agent}");
    let (_, other) = gateway.api("GET", "/v1/inboxes/other", None).await;
    assert_eq!(other["retention_days"], Value::Null, "{other}");

    let (status, patched) = gateway
        .api(
            "PATCH",
            "/v1/inboxes/other",
            Some(json!({"retention_days": 0.25})),
        )
        .await;
    assert_eq!(status, 200, "{patched}");
    assert_eq!(patched["retention_days"], 0.25);
    // A PATCH without the field keeps it; null goes back to retention.days.
    let (_, renamed) = gateway
        .api("PATCH", "/v1/inboxes/other", Some(json!({"name": "Other"})))
        .await;
    assert_eq!(renamed["retention_days"], 0.25);
    let (_, cleared) = gateway
        .api(
            "PATCH",
            "/v1/inboxes/other",
            Some(json!({"retention_days": null})),
        )
        .await;
    assert_eq!(cleared["retention_days"], Value::Null);
    for bad in [json!(-1), json!(40000)] {
        let (status, body) = gateway
            .api(
                "PATCH",
                "/v1/inboxes/other",
                Some(json!({"retention_days": bad})),
            )
            .await;
        assert_eq!(status, 400, "{body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("retention_days")),
            "{body}"
        );
    }
    let (status, created) = gateway
        .api(
            "POST",
            "/v1/inboxes",
            Some(json!({"id": "brief", "addresses": ["brief@example.com"], "retention_days": 1})),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["retention_days"], 1.0);
    gateway.stop().await;
}

#[tokio::test]
async fn a_signed_attachment_link_works_without_a_key_until_it_expires_and_not_when_altered() {
    let mut receiver = WebhookReceiver::start(vec![]).await;
    let mut options = GatewayOptions::webhook(receiver.url());
    options.extra_toml = "[attachments]\nurl_ttl_s = 3\n".to_owned();
    let gateway = TestGateway::start(options).await;
    let id = send_to(&gateway, "agent@example.com", WITH_ATTACHMENTS.as_bytes()).await;
    let other = send_to(&gateway, "agent@example.com", WITH_ATTACHMENTS.as_bytes()).await;
    let event = receiver.recv().await.json();
    receiver.recv().await;
    assert_eq!(event["message_id"], id.as_str());
    let attachment = &event["email"]["attachments"][0];
    let url = attachment["download_url"]
        .as_str()
        .expect("download_url")
        .to_owned();
    let prefix = format!("http://{}/attachments/{id}/att_0?expires=", gateway.http);
    assert!(url.starts_with(&prefix), "{url}");
    let expires_at = attachment["expires_at"].as_str().expect("expires_at");
    let expires_at = chrono::DateTime::parse_from_rfc3339(expires_at).expect("RFC 3339");
    let left = expires_at.timestamp() - chrono::Utc::now().timestamp();
    assert!((0..=4).contains(&left), "{expires_at}");
    // The stored event is the delivered one, link included.
    let (_, stored) = gateway
        .api("GET", &format!("/v1/messages/{id}"), None)
        .await;
    assert_eq!(
        stored["email"]["attachments"][0]["download_url"],
        url.as_str()
    );

    let fetch = |url: String| async move {
        let response = crate::support::http_client()
            .get(url)
            .send()
            .await
            .expect("GET");
        let status = response.status().as_u16();
        let nosniff = response.headers().get("x-content-type-options").cloned();
        (
            status,
            nosniff,
            response.bytes().await.expect("body").to_vec(),
        )
    };
    let (status, nosniff, body) = fetch(url.clone()).await;
    assert_eq!(status, 200);
    assert_eq!(body, b"%PDF-1.4\n%\xc7\xec\xe2\nend");
    assert_eq!(
        nosniff.as_ref().and_then(|v| v.to_str().ok()),
        Some("nosniff")
    );

    let (query_start, query) = url.split_once('?').expect("query");
    let signature = query.rsplit_once("sig=").expect("sig").1;
    let mut flipped = signature.to_owned();
    let last = flipped.pop().expect("signature");
    flipped.push(if last == 'A' { 'B' } else { 'A' });
    let expires: i64 = query
        .split('&')
        .find_map(|part| part.strip_prefix("expires="))
        .and_then(|value| value.parse().ok())
        .expect("expires");
    for altered in [
        format!("{query_start}?expires={expires}&sig={flipped}"),
        format!("{query_start}?expires={}&sig={signature}", expires + 3600),
        url.replace("/att_0?", "/att_1?"),
        url.replace(&format!("/{id}/"), &format!("/{other}/")),
        query_start.to_owned(),
    ] {
        let (status, _, _) = fetch(altered.clone()).await;
        assert_eq!(status, 403, "{altered}");
    }
    // After a rotation the link signed before still works; new events are signed anew.
    let (status, body) = gateway
        .api("POST", "/v1/attachments/url-key/rotate", None)
        .await;
    assert_eq!(status, 204, "{body}");
    assert_eq!(fetch(url.clone()).await.0, 200);
    let other_key = inbox_key(&gateway, "agent").await;
    let (status, _) = gateway
        .api_as(&other_key, "POST", "/v1/attachments/url-key/rotate", None)
        .await;
    assert_eq!(status, 403);

    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        fetch(url.clone()).await.0,
        403,
        "an expired link still works"
    );

    // A fresh link of an erased message finds nothing.
    let fresh = send_to(&gateway, "agent@example.com", WITH_ATTACHMENTS.as_bytes()).await;
    let event = receiver.recv().await.json();
    assert_eq!(event["message_id"], fresh.as_str());
    let fresh_url = event["email"]["attachments"][1]["download_url"]
        .as_str()
        .expect("download_url")
        .to_owned();
    assert_eq!(fetch(fresh_url.clone()).await.0, 200);
    let (status, _) = gateway
        .api("DELETE", &format!("/v1/messages/{fresh}"), None)
        .await;
    assert_eq!(status, 204);
    assert_eq!(fetch(fresh_url).await.0, 404);
    gateway.stop().await;
}

#[tokio::test]
async fn an_inbox_purge_erases_every_message_in_the_background_then_the_inbox() {
    let mut receiver = WebhookReceiver::start(vec![]).await;
    // The other inbox's receiver fails: one of its messages has a pending retry.
    let failing = WebhookReceiver::start(vec![Reply::Status(500); 100]).await;
    let mut options = GatewayOptions::webhook(receiver.url());
    options.other_webhook_url = Some(failing.url());
    options.retry_base_s = 120.0;
    let gateway = TestGateway::start(options).await;
    let mut purged = Vec::new();
    for n in 0..3 {
        let subject = format!("purge {n}");
        purged.push(
            send_to(
                &gateway,
                "other@example.com",
                &simple_message("jane@client.example", "other@example.com", &subject, "x"),
            )
            .await,
        );
    }
    let kept = send_to(
        &gateway,
        "agent@example.com",
        &simple_message("jane@client.example", "agent@example.com", "kept", "x"),
    )
    .await;
    receiver.recv().await;

    let inbox_key = inbox_key(&gateway, "other").await;
    let (status, _) = gateway
        .api_as(&inbox_key, "DELETE", "/v1/inboxes/other?purge=true", None)
        .await;
    assert_eq!(status, 403, "an inbox key may not purge");
    let (status, progress) = gateway
        .api("DELETE", "/v1/inboxes/other?purge=true", None)
        .await;
    assert_eq!(status, 202, "{progress}");
    // The inbox is gone once its last message is: until then its GET shows the progress.
    let (status, inbox) = gateway.api("GET", "/v1/inboxes/other", None).await;
    assert!(
        status == 404 || (inbox["purge"]["state"] == "running" && inbox["status"] == "disabled"),
        "{status} {inbox}"
    );
    eventually("the purged inbox to be gone", || async {
        let (status, _) = gateway.api("GET", "/v1/inboxes/other", None).await;
        (status == 404).then_some(())
    })
    .await;
    for id in &purged {
        let (status, _) = gateway
            .api("GET", &format!("/v1/messages/{id}"), None)
            .await;
        assert_eq!(status, 404, "{id}");
        assert!(
            !gateway
                .dir
                .path()
                .join(format!("mail/inbound/other/{id}.eml"))
                .exists()
        );
    }
    assert!(
        gateway
            .all_deliveries()
            .await
            .iter()
            .all(|d| d["inbox_id"] != "other")
    );
    let (status, _) = gateway
        .api("GET", &format!("/v1/messages/{kept}"), None)
        .await;
    assert_eq!(status, 200);
    // Its address takes no more mail.
    let mut client = SmtpClient::connect(gateway.smtp).await;
    client.expect("EHLO client.test", 250).await;
    client.expect("MAIL FROM:<jane@client.example>", 250).await;
    client.expect("RCPT TO:<other@example.com>", 550).await;
    drop(failing);
    gateway.stop().await;
}

#[tokio::test]
async fn an_object_whose_removal_failed_is_removed_by_the_next_pruner_run() {
    let mut s3 = TestS3::start().await;
    let mut receiver = WebhookReceiver::start(vec![]).await;
    let mut options = GatewayOptions::webhook(receiver.url());
    options.storage_toml = Some(s3.storage_toml(2.0));
    options.extra_toml = "[retention]\ninterval_s = 0.5\n".to_owned();
    let gateway = TestGateway::start(options).await;
    let id = send_to(
        &gateway,
        "agent@example.com",
        &simple_message("jane@client.example", "agent@example.com", "s3 down", "x"),
    )
    .await;
    receiver.recv().await;
    let key = format!("inbound/agent/{id}.eml");
    assert!(s3.keys().contains(&key));

    // The store is down when the erasure removes the object: the rows are gone all the same.
    s3.stop().await;
    let (status, body) = gateway
        .api("DELETE", &format!("/v1/messages/{id}"), None)
        .await;
    assert_eq!(status, 204, "{body}");
    let (status, _) = gateway
        .api("GET", &format!("/v1/messages/{id}"), None)
        .await;
    assert_eq!(status, 404);
    assert_eq!(
        gateway
            .metric("mxhook_lifecycle_total{what=\"object_failures\"}")
            .await,
        1.0
    );
    assert!(s3.keys().contains(&key));

    s3.restart().await;
    eventually("the pruner to remove the left-behind object", || async {
        (!s3.keys().contains(&key)).then_some(())
    })
    .await;
    let config = gateway_config(&gateway, Some(&s3));
    let report = mxhook::retention::check_configured_store(&config, false)
        .await
        .expect("check-store");
    assert!(
        report.orphan_objects.is_empty() && report.missing_objects.is_empty(),
        "{report:?}"
    );
    gateway.stop().await;
}

/// `kill -9` while the pruner works through a backlog, then a restart: every expired message
/// ends up gone whole, and no object is left in the store without its row.
#[tokio::test]
async fn kill_9_in_the_middle_of_pruning_leaves_no_orphan_after_the_restart() {
    use crate::support::process::{Process, free_addr};

    let dir = tempfile::tempdir().expect("tempdir");
    let mut options = GatewayOptions::no_webhook();
    // 0.000005 days is 0.432 s; one message per batch, a run every 50 ms.
    options.agent_toml = "retention_days = 0.000005\n".to_owned();
    options.extra_toml = "[retention]\ninterval_s = 0.05\nbatch_size = 1\n".to_owned();
    let config_path = dir.path().join("mxhook.toml");
    let config_text = crate::support::gateway::config_toml(dir.path(), &options);
    std::fs::write(&config_path, &config_text).expect("write config");
    let (smtp, http) = (free_addr(), free_addr());

    let process = Process::start(dir.path(), Some(&config_path), smtp, http).await;
    let mut client = SmtpClient::connect(process.smtp).await;
    client.expect("EHLO client.test", 250).await;
    for n in 0..40 {
        let message = simple_message(
            "jane@client.example",
            "agent@example.com",
            &format!("backlog {n}"),
            "x",
        );
        client.expect("MAIL FROM:<jane@client.example>", 250).await;
        client.expect("RCPT TO:<agent@example.com>", 250).await;
        let (code, text) = client.data(&message).await;
        assert_eq!(code, 250, "{text}");
    }
    let root = dir.path().join("mail");
    // Killed while the pruner is removing the backlog one message per transaction.
    eventually("the pruner to start on the backlog", || async {
        let left = crate::support::files_ending_with(&root, &[".eml"]).len();
        (left < 40).then_some(())
    })
    .await;
    process.kill_9();

    let process = Process::start(dir.path(), Some(&config_path), smtp, http).await;
    eventually(
        "every expired message and its object to be gone",
        || async {
            let (status, body) = crate::support::api_at(
                process.http,
                crate::support::gateway::API_KEY,
                "GET",
                "/v1/inboxes/agent/messages?limit=500",
                None,
            )
            .await;
            let rows = body["messages"].as_array().map_or(usize::MAX, Vec::len);
            let objects = crate::support::files_ending_with(&root, &[".eml"]).len();
            (status == 200 && rows == 0 && objects == 0).then_some(())
        },
    )
    .await;
    let config = mxhook::config::Config::from_toml_str(&config_text).expect("config");
    let report = mxhook::retention::check_configured_store(&config, false)
        .await
        .expect("check-store");
    assert!(
        report.orphan_objects.is_empty() && report.missing_objects.is_empty(),
        "{report:?}"
    );
    process.kill_9();
}

/// Size of the attachment the streaming test downloads.
const LARGE_ATTACHMENT: usize = 20 << 20;
/// Concurrent downloads of it.
const DOWNLOADS: usize = 4;
/// What those downloads may add to the gateway's resident memory, all together: a fraction of
/// one attachment. Reading the message whole, as before, costs each download the raw message
/// and the decoded part (about 47 MB here), all held at once until the client took them.
const DOWNLOAD_MEMORY_BOUND: u64 = 8 << 20;

/// A message of a text part and a `size`-byte random binary in base64 (76-character lines, as
/// mail clients write it); the message and the attachment's bytes.
fn message_with_attachment(size: usize) -> (Vec<u8>, Vec<u8>) {
    use base64::Engine as _;
    use rand::{RngCore as _, SeedableRng as _};

    let mut data = vec![0u8; size];
    rand::rngs::StdRng::seed_from_u64(size as u64).fill_bytes(&mut data);
    let encoded = base64::engine::general_purpose::STANDARD.encode(&data);
    let mut message = b"From: Jane <jane@client.example>\r\nTo: agent@example.com\r\n\
Subject: the big file\r\nDate: Thu, 16 Apr 2026 12:00:00 +0000\r\n\
MIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=\"BIG\"\r\n\r\n--BIG\r\n\
Content-Type: text/plain; charset=utf-8\r\n\r\nthe archive\r\n--BIG\r\n\
Content-Type: application/octet-stream; name=\"archive.bin\"\r\n\
Content-Disposition: attachment; filename=\"archive.bin\"\r\n\
Content-Transfer-Encoding: base64\r\n\r\n"
        .to_vec();
    message.reserve(encoded.len() * 78 / 76 + 64);
    for line in encoded.as_bytes().chunks(76) {
        message.extend_from_slice(line);
        message.extend_from_slice(b"\r\n");
    }
    message.extend_from_slice(b"--BIG--\r\n");
    (message, data)
}

/// A field of `/proc/<pid>/status` in bytes (`VmRSS`, `VmHWM`).
fn proc_status_bytes(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let line = status
        .lines()
        .find(|line| line.starts_with(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"));
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|kib| kib.parse().ok())
        .unwrap_or_else(|| panic!("unreadable {line}"));
    kib * 1024
}

/// Downloads `url` (with `key` when given) in a streaming way: its Content-Length, and the
/// SHA-256 and length of the body. Waits at `barrier` once the response started, so that every
/// download has its response in hand before any body is read.
async fn hashed_download(
    url: String,
    key: Option<&str>,
    barrier: std::sync::Arc<tokio::sync::Barrier>,
) -> (Option<u64>, [u8; 32], u64) {
    use sha2::Digest as _;

    let mut request = crate::support::http_client().get(&url);
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let mut response = request.send().await.expect("download");
    assert_eq!(response.status(), 200, "{url}");
    assert_eq!(
        response.headers()["content-type"],
        "application/octet-stream"
    );
    assert_eq!(response.headers()["x-content-type-options"], "nosniff");
    assert!(
        response.headers()["content-disposition"]
            .to_str()
            .expect("ascii")
            .contains("filename=\"archive.bin\""),
    );
    let length = response.content_length();
    barrier.wait().await;
    let mut hasher = sha2::Sha256::new();
    let mut read = 0u64;
    while let Some(chunk) = response.chunk().await.expect("body chunk") {
        read += chunk.len() as u64;
        hasher.update(&chunk);
    }
    (length, hasher.finalize().into(), read)
}

/// Sends a message with a `size`-byte attachment through SMTP: its id and the attachment's
/// SHA-256.
async fn send_with_attachment(
    process: &crate::support::process::Process,
    size: usize,
) -> (String, [u8; 32]) {
    use sha2::Digest as _;

    let (message, data) = message_with_attachment(size);
    let mut client = SmtpClient::connect(process.smtp).await;
    let (code, text) = client
        .send_message("jane@client.example", &["agent@example.com"], &message)
        .await;
    assert_eq!(code, 250, "{text}");
    let id = text.rsplit(' ').next().expect("queued as id").to_owned();
    (id, sha2::Sha256::digest(&data).into())
}

/// `DOWNLOADS` downloads at once of attachment `att_0` (of `size` bytes) of message `id`, half
/// through the API and half through the event's signed link; the SHA-256 of each.
async fn concurrent_downloads(
    process: &crate::support::process::Process,
    id: &str,
    size: usize,
) -> Vec<[u8; 32]> {
    let key = crate::support::gateway::API_KEY;
    let (status, event) = crate::support::api_at(
        process.http,
        key,
        "GET",
        &format!("/v1/messages/{id}"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{event}");
    let attachment = &event["email"]["attachments"][0];
    assert_eq!(attachment["id"], "att_0");
    assert_eq!(attachment["size"], size as u64);
    let signed = attachment["download_url"]
        .as_str()
        .expect("download_url")
        .to_owned();
    let api_url = format!("http://{}/v1/messages/{id}/attachments/att_0", process.http);
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(DOWNLOADS));
    let downloads = (0..DOWNLOADS).map(|n| {
        let barrier = barrier.clone();
        let (url, key) = if n % 2 == 0 {
            (api_url.clone(), Some(key))
        } else {
            (signed.clone(), None)
        };
        async move { hashed_download(url, key, barrier).await }
    });
    let results = futures_util::future::join_all(downloads).await;
    results
        .into_iter()
        .enumerate()
        .map(|(n, (length, hash, read))| {
            assert_eq!(length, Some(size as u64), "download {n}");
            assert_eq!(read, size as u64, "download {n}");
            hash
        })
        .collect()
}

/// A 20 MB attachment sent through SMTP is served whole and exact, through the API and its
/// signed link, while four concurrent downloads of it grow the gateway process (the real
/// binary, its memory read from /proc) by less than `DOWNLOAD_MEMORY_BOUND`.
async fn a_large_attachment_is_streamed_exactly_in_bounded_memory(storage: Storage) {
    use crate::support::process::{Process, free_addr};

    let s3 = match storage {
        Storage::Fs => None,
        Storage::S3 => Some(TestS3::start().await),
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let mut options = GatewayOptions::no_webhook();
    options.max_message_size = 40 << 20;
    options.storage_toml = s3.as_ref().map(|s3| s3.storage_toml(30.0));
    let config_path = dir.path().join("mxhook.toml");
    let config_text = crate::support::gateway::config_toml(dir.path(), &options);
    std::fs::write(&config_path, &config_text).expect("write config");
    let process = Process::start(dir.path(), Some(&config_path), free_addr(), free_addr()).await;
    let pid = process.pid();

    // Downloads of a small attachment first, as many at once: what any first downloads cost
    // whatever their size (connections to S3, allocator arenas of the workers) is not counted.
    let (small, small_hash) = send_with_attachment(&process, 4096).await;
    for hash in concurrent_downloads(&process, &small, 4096).await {
        assert!(hash == small_hash, "the small attachment's bytes differ");
    }
    let (id, expected) = send_with_attachment(&process, LARGE_ATTACHMENT).await;
    let (status, listing) = crate::support::api_at(
        process.http,
        crate::support::gateway::API_KEY,
        "GET",
        "/v1/inboxes/agent/messages",
        None,
    )
    .await;
    assert_eq!(status, 200, "{listing}");
    assert_eq!(listing["messages"][0]["id"], id.as_str());
    assert_eq!(listing["messages"][0]["direction"], "inbound");

    // Intake is over (the event is committed); what it allocated has settled.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = proc_status_bytes(pid, "VmRSS");
    // The peak from here on: VmHWM reset to the current size where the kernel allows it, and
    // VmRSS sampled in case it does not.
    let hwm_reset = std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok();
    let sampling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let sampling = sampling.clone();
        std::thread::spawn(move || {
            let mut peak = 0;
            while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(proc_status_bytes(pid, "VmRSS"));
                std::thread::sleep(Duration::from_millis(2));
            }
            peak
        })
    };
    let hashes = concurrent_downloads(&process, &id, LARGE_ATTACHMENT).await;
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    let mut peak = sampler.join().expect("sampler");
    if hwm_reset {
        peak = peak.max(proc_status_bytes(pid, "VmHWM"));
    }
    for (n, hash) in hashes.iter().enumerate() {
        assert!(*hash == expected, "download {n}: the bytes differ");
    }
    let growth = peak.saturating_sub(before);
    eprintln!(
        "{storage:?}: {DOWNLOADS} concurrent downloads of {LARGE_ATTACHMENT} bytes: VmRSS {before} before, peak {peak} (growth {growth}, VmHWM reset: {hwm_reset})"
    );
    assert!(
        growth < DOWNLOAD_MEMORY_BOUND,
        "{DOWNLOADS} downloads grew the gateway by {growth} bytes (from {before} to {peak})"
    );
    process.kill_9();
}

#[tokio::test]
async fn a_large_attachment_is_streamed_exactly_in_bounded_memory_on_the_filesystem() {
    a_large_attachment_is_streamed_exactly_in_bounded_memory(Storage::Fs).await;
}

#[tokio::test]
async fn a_large_attachment_is_streamed_exactly_in_bounded_memory_on_s3() {
    a_large_attachment_is_streamed_exactly_in_bounded_memory(Storage::S3).await;
}

/// A message of a megabyte or more has its attachments' byte ranges recorded and streams them,
/// a quoted-printable one too; a smaller one records none (its attachments are read from the
/// whole message), and both serve the same decoded bytes.
#[tokio::test]
async fn attachments_of_large_messages_stream_and_small_ones_are_read_whole() {
    use base64::Engine as _;

    let mut options = GatewayOptions::no_webhook();
    options.max_message_size = 4 << 20;
    let gateway = TestGateway::start(options).await;
    // The same CSV beside a base64 filler that takes the message past a megabyte.
    let filler = base64::engine::general_purpose::STANDARD.encode(vec![7u8; 800 << 10]);
    let wrapped: String = filler
        .as_bytes()
        .chunks(76)
        .map(|line| format!("{}\r\n", String::from_utf8_lossy(line)))
        .collect();
    let large = WITH_ATTACHMENTS.replace(
        "--XYZ--\r\n",
        &format!(
            "--XYZ\r\nContent-Type: application/octet-stream\r\n\
             Content-Disposition: attachment; filename=\"fill.bin\"\r\n\
             Content-Transfer-Encoding: base64\r\n\r\n{wrapped}--XYZ--\r\n"
        ),
    );
    assert!(large.len() >= 1 << 20, "{} bytes", large.len());
    let small_id = send_to(&gateway, "agent@example.com", WITH_ATTACHMENTS.as_bytes()).await;
    let large_id = send_to(&gateway, "agent@example.com", large.as_bytes()).await;

    let database_url = crate::support::gateway::test_database_url(gateway.dir.path());
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&database_url)
        .await
        .expect("open the database");
    let mut recorded = Vec::new();
    for id in [&small_id, &large_id] {
        let parts: Option<String> =
            sqlx::query_scalar("SELECT attachment_parts FROM messages WHERE id = $1")
                .bind(id)
                .fetch_one(&pool)
                .await
                .expect("row");
        recorded.push(parts);
    }
    pool.close().await;
    assert_eq!(recorded[0], None, "a small message records no ranges");
    let spans: Vec<Option<Value>> = serde_json::from_str(
        recorded[1]
            .as_deref()
            .expect("the large one records ranges"),
    )
    .expect("JSON");
    assert_eq!(spans.len(), 3, "{spans:?}");
    assert_eq!(
        spans[1].as_ref().expect("the CSV's range")["encoding"],
        "quoted-printable"
    );

    let key = crate::support::gateway::API_KEY;
    for id in [&small_id, &large_id] {
        let (status, headers, body) = get_as(
            &gateway,
            key,
            &format!("/v1/messages/{id}/attachments/att_1"),
        )
        .await;
        assert_eq!(status, 200);
        assert_eq!(body, "a,b\r\n1,ü".as_bytes());
        assert_eq!(headers["content-length"], "9");
    }
    let (status, _, body) = get_as(
        &gateway,
        key,
        &format!("/v1/messages/{large_id}/attachments/att_2"),
    )
    .await;
    assert_eq!(status, 200);
    assert!(body.len() == 800 << 10 && body.iter().all(|byte| *byte == 7));
    gateway.stop().await;
}

/// Attachments with no recorded range are served from the whole message, decoded as before:
/// here a text part the parser converts from Latin-1 (which gets no range in any message) and
/// a base64 one (none, since the message is under a megabyte; the test above has both kinds).
#[tokio::test]
async fn an_attachment_without_a_recorded_range_is_served_from_the_whole_message() {
    let gateway = TestGateway::start(GatewayOptions::no_webhook()).await;
    let message = b"From: Jane <jane@client.example>\r\nTo: agent@example.com\r\n\
Subject: latin\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"L\"\r\n\r\n\
--L\r\nContent-Type: text/plain\r\n\r\nhi\r\n--L\r\n\
Content-Type: text/plain; charset=iso-8859-1\r\n\
Content-Disposition: attachment; filename=\"l.txt\"\r\n\r\nGr\xfc\xdfe\r\n--L\r\n\
Content-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=\"b.bin\"\r\n\
Content-Transfer-Encoding: base64\r\n\r\nAAEC/w==\r\n--L--\r\n";
    let id = send_to(&gateway, "agent@example.com", message).await;
    let key = crate::support::gateway::API_KEY;
    let (status, _, body) = get_as(
        &gateway,
        key,
        &format!("/v1/messages/{id}/attachments/att_0"),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body, "Grüße".as_bytes());
    let (status, headers, body) = get_as(
        &gateway,
        key,
        &format!("/v1/messages/{id}/attachments/att_1"),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body, b"\x00\x01\x02\xff");
    assert_eq!(headers["content-length"], "4");
    gateway.stop().await;
}
