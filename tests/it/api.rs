//! The management API over the real HTTP server: inboxes and the RCPT directory, webhook secrets
//! and rotation, per-inbox keys and cross-inbox access, message paging, bulk resend, test events,
//! readiness, metrics, and JSON errors for bad requests.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::gateway::{API_KEY, SECRET};
use crate::support::{
    GatewayOptions, Reply, SmtpClient, TestGateway, WebhookReceiver, eventually,
    python_verifies_agentmail, simple_message,
};

/// The RCPT reply code for one address, in a fresh session.
async fn rcpt(gateway: &TestGateway, address: &str) -> u16 {
    let mut client = SmtpClient::connect(gateway.smtp).await;
    client.expect("EHLO client.test", 250).await;
    client.expect("MAIL FROM:<a@sender.example>", 250).await;
    client.cmd(&format!("RCPT TO:<{address}>")).await.0
}

async fn send(gateway: &TestGateway, to: &str, subject: &str, from: &str) {
    let mut client = SmtpClient::connect(gateway.smtp).await;
    let message = simple_message(from, to, subject, "body");
    let (code, text) = client.send_message(from, &[to], &message).await;
    assert_eq!(code, 250, "{text}");
}

#[tokio::test]
async fn inbox_crud_changes_what_rcpt_accepts_at_once() {
    let gateway = TestGateway::start(GatewayOptions::no_webhook()).await;
    assert_eq!(rcpt(&gateway, "sales@example.com").await, 550);

    let (status, created) = gateway
        .api(
            "POST",
            "/v1/inboxes",
            Some(json!({"id": "sales", "name": "Sales", "addresses": ["Sales@Example.com"]})),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["addresses"], json!(["sales@example.com"]));
    assert_eq!(created["status"], "enabled");
    assert_eq!(created["source"], "api");
    assert_eq!(created["webhook"], Value::Null);
    assert_eq!(rcpt(&gateway, "sales@example.com").await, 250);

    let (status, generated) = gateway
        .api(
            "POST",
            "/v1/inboxes",
            Some(json!({"addresses": ["support@example.com"]})),
        )
        .await;
    assert_eq!(status, 201, "{generated}");
    assert!(generated["id"].as_str().expect("id").starts_with("inb_"));

    let (status, list) = gateway.api("GET", "/v1/inboxes", None).await;
    assert_eq!(status, 200);
    let ids: Vec<&str> = list["inboxes"]
        .as_array()
        .expect("inboxes")
        .iter()
        .filter_map(|inbox| inbox["id"].as_str())
        .collect();
    assert!(
        ids.contains(&"agent") && ids.contains(&"other") && ids.contains(&"sales"),
        "{list}"
    );
    let (_, agent) = gateway.api("GET", "/v1/inboxes/agent", None).await;
    assert_eq!(
        agent["source"], "config",
        "config inboxes are the same objects"
    );
    assert_eq!(
        agent["addresses"],
        json!(["agent@example.com", "alias@example.com"])
    );

    // An address belongs to one inbox; an id to one inbox.
    let (status, body) = gateway
        .api(
            "POST",
            "/v1/inboxes",
            Some(json!({"id": "thief", "addresses": ["agent@example.com"]})),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "conflict");
    let (status, _) = gateway
        .api(
            "POST",
            "/v1/inboxes",
            Some(json!({"id": "sales", "addresses": ["new@example.com"]})),
        )
        .await;
    assert_eq!(status, 409);
    let (status, _) = gateway
        .api(
            "PATCH",
            "/v1/inboxes/sales",
            Some(json!({"addresses": ["other@example.com"]})),
        )
        .await;
    assert_eq!(status, 409);
    assert_eq!(
        rcpt(&gateway, "sales@example.com").await,
        250,
        "a refused change changes nothing"
    );

    let (status, body) = gateway
        .api(
            "PATCH",
            "/v1/inboxes/sales",
            Some(json!({"status": "disabled"})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "disabled");
    assert_eq!(rcpt(&gateway, "sales@example.com").await, 550);

    let (status, body) = gateway
        .api(
            "PATCH",
            "/v1/inboxes/sales",
            Some(json!({"status": "enabled", "name": "Deals", "addresses": ["deals@example.com"]})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["name"], "Deals");
    assert_eq!(rcpt(&gateway, "deals@example.com").await, 250);
    assert_eq!(rcpt(&gateway, "sales@example.com").await, 550);

    let (status, _) = gateway.api("DELETE", "/v1/inboxes/sales", None).await;
    assert_eq!(status, 204);
    assert_eq!(rcpt(&gateway, "deals@example.com").await, 550);
    let (status, body) = gateway.api("GET", "/v1/inboxes/sales", None).await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "not_found");
    let (status, _) = gateway.api("DELETE", "/v1/inboxes/sales", None).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn webhook_secret_is_shown_once_and_rotation_signs_with_old_and_new() {
    let mut receiver = WebhookReceiver::start(Vec::new()).await;
    let gateway = TestGateway::start(GatewayOptions::no_webhook()).await;
    let (status, _) = gateway
        .api(
            "POST",
            "/v1/inboxes",
            Some(json!({"id": "hooked", "addresses": ["hooked@example.com"]})),
        )
        .await;
    assert_eq!(status, 201);
    let (status, _) = gateway.api("GET", "/v1/inboxes/hooked/webhook", None).await;
    assert_eq!(status, 404);

    let (status, body) = gateway
        .api(
            "PUT",
            "/v1/inboxes/hooked/webhook",
            Some(json!({"url": receiver.url(), "enabled": true, "rotate_secret": false})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let first_secret = body["signing_secret"]
        .as_str()
        .expect("secret on first setup")
        .to_owned();
    assert_eq!(first_secret.len(), 64, "32 random bytes, hex");
    assert_eq!(body["signature"], "agentmail");

    let (status, body) = gateway
        .api(
            "PUT",
            "/v1/inboxes/hooked/webhook",
            Some(json!({"url": receiver.url(), "enabled": true, "rotate_secret": false})),
        )
        .await;
    assert_eq!(status, 200);
    assert!(
        body.get("signing_secret").is_none(),
        "not shown again: {body}"
    );
    let (_, body) = gateway.api("GET", "/v1/inboxes/hooked/webhook", None).await;
    assert_eq!(body["has_secret"], true);
    assert!(body.get("signing_secret").is_none());
    let (_, inbox) = gateway.api("GET", "/v1/inboxes/hooked", None).await;
    assert!(!inbox.to_string().contains(&first_secret), "{inbox}");

    send(&gateway, "hooked@example.com", "first", "a@sender.example").await;
    let got = receiver.recv().await;
    let timestamp = got.header("x-agentmail-timestamp").expect("timestamp");
    let signature = got.header("x-agentmail-signature").expect("signature");
    assert!(python_verifies_agentmail(
        &first_secret,
        &timestamp,
        &got.body,
        &signature
    ));

    let (status, body) = gateway
        .api(
            "PUT",
            "/v1/inboxes/hooked/webhook",
            Some(json!({"url": receiver.url(), "enabled": true, "rotate_secret": true})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let second_secret = body["signing_secret"]
        .as_str()
        .expect("secret on rotation")
        .to_owned();
    assert_ne!(first_secret, second_secret);
    assert!(body["previous_secret_expires_at"].is_string(), "{body}");

    send(&gateway, "hooked@example.com", "second", "a@sender.example").await;
    let got = receiver.recv().await;
    let timestamp = got.header("x-agentmail-timestamp").expect("timestamp");
    let signature = got.header("x-agentmail-signature").expect("signature");
    assert_eq!(signature.split(' ').count(), 2, "{signature}");
    assert!(python_verifies_agentmail(
        &second_secret,
        &timestamp,
        &got.body,
        &signature
    ));
    assert!(
        python_verifies_agentmail(&first_secret, &timestamp, &got.body, &signature),
        "the old secret stays valid during the grace period"
    );

    // The standard scheme needs a `whsec_` secret, so switching to it issues one.
    let (status, body) = gateway.api("PUT", "/v1/inboxes/hooked/webhook", Some(json!({"url": receiver.url(), "enabled": true, "rotate_secret": false, "signature": "standard"})))
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body["signing_secret"]
            .as_str()
            .expect("new secret")
            .starts_with("whsec_")
    );
    send(&gateway, "hooked@example.com", "third", "a@sender.example").await;
    let got = receiver.recv().await;
    assert!(
        got.header("webhook-signature")
            .expect("standard signature")
            .starts_with("v1,")
    );

    let (status, body) = gateway
        .api(
            "PUT",
            "/v1/inboxes/hooked/webhook",
            Some(json!({"url": "ftp://example.com/hook", "enabled": true, "rotate_secret": false})),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .expect("message")
            .starts_with("url:")
    );

    let jobs_before = gateway.all_deliveries().await.len();
    let (status, _) = gateway
        .api("DELETE", "/v1/inboxes/hooked/webhook", None)
        .await;
    assert_eq!(status, 204);
    let (status, _) = gateway.api("GET", "/v1/inboxes/hooked/webhook", None).await;
    assert_eq!(status, 404);
    send(
        &gateway,
        "hooked@example.com",
        "unhooked",
        "a@sender.example",
    )
    .await;
    receiver.assert_silent(Duration::from_millis(500)).await;
    let stored = gateway.messages("hooked").await;
    assert_eq!(stored[0]["subject"], "unhooked", "stored all the same");
    assert_eq!(
        gateway.all_deliveries().await.len(),
        jobs_before,
        "and makes no job"
    );
}

#[tokio::test]
async fn a_rotated_out_secret_stops_signing_when_its_grace_is_over() {
    let mut receiver = WebhookReceiver::start(Vec::new()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let toml = crate::support::gateway::config_toml(dir.path(), &GatewayOptions::no_webhook());
    let mut config = mxhook::config::Config::from_toml_str(&toml).expect("config");
    config.delivery.secret_rotation_grace_s = 1.0;
    let gateway = TestGateway::start_with(dir, config).await;
    let (status, _) = gateway
        .api(
            "POST",
            "/v1/inboxes",
            Some(json!({"id": "rotating", "addresses": ["rotating@example.com"]})),
        )
        .await;
    assert_eq!(status, 201);
    let (_, first) = gateway
        .api(
            "PUT",
            "/v1/inboxes/rotating/webhook",
            Some(json!({"url": receiver.url()})),
        )
        .await;
    let first_secret = first["signing_secret"].as_str().expect("secret").to_owned();
    let (_, rotated) = gateway
        .api(
            "PUT",
            "/v1/inboxes/rotating/webhook",
            Some(json!({"url": receiver.url(), "rotate_secret": true})),
        )
        .await;
    let second_secret = rotated["signing_secret"]
        .as_str()
        .expect("secret")
        .to_owned();
    assert!(
        rotated["previous_secret_expires_at"].is_string(),
        "{rotated}"
    );

    // Waits for the grace to run out as the API reports it, not for a fixed time.
    eventually("the grace period to end", || async {
        let (_, webhook) = gateway
            .api("GET", "/v1/inboxes/rotating/webhook", None)
            .await;
        webhook["previous_secret_expires_at"]
            .is_null()
            .then_some(())
    })
    .await;
    send(
        &gateway,
        "rotating@example.com",
        "after",
        "a@sender.example",
    )
    .await;
    let got = receiver.recv().await;
    let timestamp = got.header("x-agentmail-timestamp").expect("timestamp");
    let signature = got.header("x-agentmail-signature").expect("signature");
    assert_eq!(signature.split(' ').count(), 1, "{signature}");
    assert!(python_verifies_agentmail(
        &second_secret,
        &timestamp,
        &got.body,
        &signature
    ));
    assert!(
        !python_verifies_agentmail(&first_secret, &timestamp, &got.body, &signature),
        "the old secret no longer signs"
    );
    gateway.stop().await;

    for bad in ["-1", "2592001"] {
        let toml = format!("[delivery]\nsecret_rotation_grace_s = {bad}\n");
        let err = mxhook::config::Config::from_toml_str(&toml).expect_err("refused");
        assert!(
            err.to_string().contains("delivery.secret_rotation_grace_s"),
            "{err}"
        );
    }
}

#[tokio::test]
async fn inbox_keys_reach_only_their_own_inbox() {
    let mut receiver = WebhookReceiver::start(Vec::new()).await;
    let gateway = TestGateway::start(GatewayOptions::webhook(receiver.url())).await;
    let (status, created) = gateway
        .api(
            "POST",
            "/v1/inboxes/agent/keys",
            Some(json!({"name": "agent bot"})),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let key = created["key"].as_str().expect("key").to_owned();
    assert!(key.starts_with("mxk_"));

    send(&gateway, "agent@example.com", "mine", "a@sender.example").await;
    send(&gateway, "other@example.com", "theirs", "a@sender.example").await;
    receiver.recv().await;
    receiver.recv().await;
    let (_, other_messages) = gateway.api("GET", "/v1/inboxes/other/messages", None).await;
    let other_message = other_messages["messages"][0]["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let (_, other_deliveries) = gateway
        .api("GET", "/v1/inboxes/other/deliveries", None)
        .await;
    let other_delivery = other_deliveries["deliveries"][0]["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let (status, other_key) = gateway.api("POST", "/v1/inboxes/other/keys", None).await;
    assert_eq!(status, 201, "{other_key}");
    let other_key_id = other_key["id"].as_str().expect("key id").to_owned();

    // Its own inbox is all there is.
    let (status, body) = gateway.api_as(&key, "GET", "/v1/inboxes/agent", None).await;
    assert_eq!(status, 200, "{body}");
    let (_, list) = gateway.api_as(&key, "GET", "/v1/inboxes", None).await;
    assert_eq!(list["inboxes"].as_array().expect("inboxes").len(), 1);
    assert_eq!(list["inboxes"][0]["id"], "agent");
    let (status, mine) = gateway
        .api_as(&key, "GET", "/v1/inboxes/agent/messages", None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(mine["messages"].as_array().expect("messages").len(), 1);
    let (status, deliveries) = gateway.api_as(&key, "GET", "/v1/deliveries", None).await;
    assert_eq!(status, 200);
    let deliveries = deliveries["deliveries"].as_array().expect("deliveries");
    assert_eq!(deliveries.len(), 1);
    assert_eq!(deliveries[0]["inbox_id"], "agent");

    // Everything of another inbox answers 404, as if it did not exist.
    for (method, path) in [
        ("GET", "/v1/inboxes/other".to_owned()),
        ("PATCH", "/v1/inboxes/other".to_owned()),
        ("DELETE", "/v1/inboxes/other".to_owned()),
        ("GET", "/v1/inboxes/other/webhook".to_owned()),
        ("PUT", "/v1/inboxes/other/webhook".to_owned()),
        ("DELETE", "/v1/inboxes/other/webhook".to_owned()),
        ("GET", "/v1/inboxes/other/endpoints".to_owned()),
        ("GET", "/v1/inboxes/other/notifications".to_owned()),
        ("PUT", "/v1/inboxes/other/notifications".to_owned()),
        ("GET", "/v1/inboxes/other/messages".to_owned()),
        ("GET", "/v1/inboxes/other/deliveries".to_owned()),
        (
            "POST",
            "/v1/inboxes/other/deliveries/resend-dead".to_owned(),
        ),
        ("POST", "/v1/inboxes/other/test-event".to_owned()),
        ("POST", "/v1/inboxes/other/keys".to_owned()),
        ("GET", "/v1/inboxes/other/keys".to_owned()),
        ("DELETE", format!("/v1/inboxes/other/keys/{other_key_id}")),
        ("GET", "/v1/deliveries?inbox_id=other".to_owned()),
        ("GET", format!("/v1/messages/{other_message}")),
        ("GET", format!("/v1/messages/{other_message}/raw")),
        ("GET", format!("/v1/deliveries/{other_delivery}")),
        ("GET", format!("/v1/deliveries/{other_delivery}/attempts")),
        ("POST", format!("/v1/deliveries/{other_delivery}/resend")),
    ] {
        let body =
            matches!(method, "PATCH" | "PUT").then(|| json!({"url": "http://127.0.0.1:1/x"}));
        let (status, answer) = gateway.api_as(&key, method, &path, body).await;
        assert_eq!(status, 404, "{method} {path}: {answer}");
    }
    // Nothing of the other inbox changed.
    let (_, other_webhook) = gateway.api("GET", "/v1/inboxes/other/webhook", None).await;
    assert!(other_webhook["url"].is_string(), "{other_webhook}");
    let (_, other_keys) = gateway.api("GET", "/v1/inboxes/other/keys", None).await;
    assert_eq!(other_keys["keys"][0]["id"], other_key_id.as_str());
    // Admin-only actions on its own inbox are forbidden.
    let own_key_id = created["id"].as_str().expect("key id");
    for (method, path) in [
        ("POST", "/v1/inboxes/agent/keys".to_owned()),
        ("GET", "/v1/inboxes/agent/keys".to_owned()),
        ("DELETE", format!("/v1/inboxes/agent/keys/{own_key_id}")),
    ] {
        let (status, answer) = gateway.api_as(&key, method, &path, None).await;
        assert_eq!(status, 403, "{method} {path}: {answer}");
    }
    let (status, _) = gateway
        .api_as(&key, "DELETE", "/v1/inboxes/agent", None)
        .await;
    assert_eq!(status, 403);
    let (status, _) = gateway
        .api_as(
            &key,
            "PATCH",
            "/v1/inboxes/agent",
            Some(json!({"addresses": ["unclaimed@example.com"]})),
        )
        .await;
    assert_eq!(status, 403);
    let (status, body) = gateway
        .api_as(
            &key,
            "PATCH",
            "/v1/inboxes/agent",
            Some(json!({"name": "renamed by its own key"})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = gateway
        .api_as(
            &key,
            "POST",
            "/v1/inboxes",
            Some(json!({"addresses": ["x@example.com"]})),
        )
        .await;
    assert_eq!(status, 403);
    let (status, _) = gateway.api_as(&key, "GET", "/metrics", None).await;
    assert_eq!(status, 403);
    let (status, body) = gateway
        .api_as("mxk_not-a-key", "GET", "/v1/inboxes/agent", None)
        .await;
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], "unauthorized");

    // Only the key's hash is stored.
    for entry in std::fs::read_dir(gateway.dir.path())
        .expect("data dir")
        .flatten()
    {
        if entry.path().is_file() {
            let bytes = std::fs::read(entry.path()).expect("read");
            assert!(
                !bytes
                    .windows(key.len())
                    .any(|window| window == key.as_bytes()),
                "{} holds the key",
                entry.path().display()
            );
        }
    }
}

/// One message over SMTP; returns the reply to DATA.
async fn deliver_mail(gateway: &TestGateway, from: &str, to: &str, subject: &str) -> (u16, String) {
    let mut client = SmtpClient::connect(gateway.smtp).await;
    let message = simple_message(from, to, subject, "body");
    client.send_message(from, &[to], &message).await
}

#[tokio::test]
async fn sender_policy_set_through_the_api_applies_to_the_next_message() {
    let mut receiver = WebhookReceiver::start(Vec::new()).await;
    let gateway = TestGateway::start(GatewayOptions::no_webhook()).await;
    let (status, created) = gateway
        .api(
            "POST",
            "/v1/inboxes",
            Some(json!({
                "id": "guarded",
                "addresses": ["guarded@example.com"],
                "block_senders": ["Blocked.test"],
                "policy_action": "reject",
            })),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["block_senders"], json!(["blocked.test"]));
    assert_eq!(created["policy_action"], "reject");
    assert_eq!(created["allow_senders"], json!([]));
    assert_eq!(created["dmarc_pass_required"], false);
    let (status, _) = gateway
        .api(
            "PUT",
            "/v1/inboxes/guarded/webhook",
            Some(json!({"url": receiver.url()})),
        )
        .await;
    assert_eq!(status, 200);

    let (code, text) =
        deliver_mail(&gateway, "promo@blocked.test", "guarded@example.com", "one").await;
    assert_eq!(code, 550, "{text}");
    assert!(text.starts_with("5.7.1"), "{text}");
    let (code, text) = deliver_mail(
        &gateway,
        "friend@sender.example",
        "guarded@example.com",
        "fine",
    )
    .await;
    assert_eq!(code, 250, "a sender off the list passes: {text}");
    let fine = receiver.recv().await.json();
    assert_eq!(fine["policy_violations"], json!([]));

    let (status, patched) = gateway
        .api(
            "PATCH",
            "/v1/inboxes/guarded",
            Some(json!({"policy_action": "quarantine"})),
        )
        .await;
    assert_eq!(status, 200, "{patched}");
    assert_eq!(patched["policy_action"], "quarantine");
    assert_eq!(
        patched["block_senders"],
        json!(["blocked.test"]),
        "a field left out of PATCH stays"
    );
    let (code, text) = deliver_mail(
        &gateway,
        "promo@blocked.test",
        "guarded@example.com",
        "held",
    )
    .await;
    assert_eq!(code, 250, "{text}");
    let held_id = text.rsplit(' ').next().expect("queued as id").to_owned();
    let (status, held) = gateway
        .api("GET", &format!("/v1/messages/{held_id}"), None)
        .await;
    assert_eq!(status, 200, "{held}");
    assert_eq!(held["quarantined"], true, "{held}");
    assert_eq!(held["policy_violations"], json!(["sender is blocked"]));

    // The quarantined message is findable, and filterable, through the inbox's listing.
    let (status, all) = gateway
        .api("GET", "/v1/inboxes/guarded/messages", None)
        .await;
    assert_eq!(status, 200, "{all}");
    let flags: Vec<(String, bool)> = all["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|message| {
            (
                message["id"].as_str().expect("id").to_owned(),
                message["quarantined"].as_bool().expect("quarantined flag"),
            )
        })
        .collect();
    assert_eq!(flags.len(), 2, "{all}");
    assert!(flags.contains(&(held_id.clone(), true)), "{all}");
    let (_, only_held) = gateway
        .api("GET", "/v1/inboxes/guarded/messages?quarantined=true", None)
        .await;
    assert_eq!(only_held["messages"].as_array().expect("messages").len(), 1);
    assert_eq!(only_held["messages"][0]["id"], held_id.as_str());
    let (_, not_held) = gateway
        .api(
            "GET",
            "/v1/inboxes/guarded/messages?quarantined=false",
            None,
        )
        .await;
    assert_eq!(not_held["messages"].as_array().expect("messages").len(), 1);
    assert_ne!(not_held["messages"][0]["id"], held_id.as_str());
    let (status, _) = gateway
        .api(
            "GET",
            "/v1/inboxes/guarded/messages?quarantined=maybe",
            None,
        )
        .await;
    assert_eq!(status, 400);

    let (status, patched) = gateway
        .api(
            "PATCH",
            "/v1/inboxes/guarded",
            Some(json!({"policy_action": "tag"})),
        )
        .await;
    assert_eq!(status, 200, "{patched}");
    let (code, text) = deliver_mail(
        &gateway,
        "promo@blocked.test",
        "guarded@example.com",
        "tagged",
    )
    .await;
    assert_eq!(code, 250, "{text}");
    let tagged = receiver.recv().await.json();
    assert_eq!(
        tagged["subject"], "tagged",
        "the quarantined message was never delivered"
    );
    assert_eq!(tagged["quarantined"], false);
    assert_eq!(tagged["policy_violations"], json!(["sender is blocked"]));

    // Refused values name the field; nothing changes.
    for (body, field) in [
        (json!({"policy_action": "drop"}), "policy_action"),
        (json!({"block_senders": ["not an entry"]}), "block_senders"),
        (json!({"allow_senders": ["a@b@c"]}), "allow_senders"),
        (json!({"spf_pass_required": "yes"}), "spf_pass_required"),
    ] {
        let (status, answer) = gateway
            .api("PATCH", "/v1/inboxes/guarded", Some(body))
            .await;
        assert!(matches!(status, 400 | 422), "{answer}");
        assert!(
            answer["error"]["message"]
                .as_str()
                .is_some_and(|message| message.contains(field)),
            "{answer}"
        );
    }
    let (_, inbox) = gateway.api("GET", "/v1/inboxes/guarded", None).await;
    assert_eq!(inbox["policy_action"], "tag");
    assert_eq!(inbox["block_senders"], json!(["blocked.test"]));
    gateway.stop().await;
}

#[tokio::test]
async fn config_inbox_policy_shows_in_the_api() {
    let mut options = GatewayOptions::no_webhook();
    options.extra_toml = "[[inbox]]\nid = \"strict\"\naddresses = [\"strict@example.com\"]\n\
         block_senders = [\"spam.test\"]\ndkim_pass_required = true\npolicy_action = \"reject\"\n"
        .to_owned();
    let gateway = TestGateway::start(options).await;
    let (status, inbox) = gateway.api("GET", "/v1/inboxes/strict", None).await;
    assert_eq!(status, 200, "{inbox}");
    assert_eq!(inbox["source"], "config");
    assert_eq!(inbox["block_senders"], json!(["spam.test"]));
    assert_eq!(inbox["dkim_pass_required"], true);
    assert_eq!(inbox["policy_action"], "reject");
    let (code, text) = deliver_mail(&gateway, "x@spam.test", "strict@example.com", "no").await;
    assert_eq!(code, 550, "{text}");
    gateway.stop().await;
}

#[tokio::test]
async fn inbox_keys_are_listed_without_secrets_and_revoked_at_once() {
    let gateway = TestGateway::start(GatewayOptions::no_webhook()).await;
    let (status, first) = gateway
        .api(
            "POST",
            "/v1/inboxes/agent/keys",
            Some(json!({"name": "first"})),
        )
        .await;
    assert_eq!(status, 201, "{first}");
    let (status, second) = gateway.api("POST", "/v1/inboxes/agent/keys", None).await;
    assert_eq!(status, 201, "{second}");
    let first_key = first["key"].as_str().expect("key").to_owned();
    let second_key = second["key"].as_str().expect("key").to_owned();

    let (status, listed) = gateway.api("GET", "/v1/inboxes/agent/keys", None).await;
    assert_eq!(status, 200, "{listed}");
    let keys = listed["keys"].as_array().expect("keys");
    assert_eq!(keys.len(), 2, "{listed}");
    assert_eq!(keys[0]["id"], first["id"]);
    assert_eq!(keys[0]["name"], "first");
    assert_eq!(keys[0]["prefix"].as_str(), first_key.get(..12));
    assert_eq!(keys[1]["id"], second["id"]);
    assert!(keys.iter().all(|key| key["created_at"].is_string()));
    let text = listed.to_string();
    assert!(
        !text.contains(&first_key) && !text.contains(&second_key),
        "{listed}"
    );
    assert!(keys.iter().all(|key| key.get("key").is_none()));

    let (status, _) = gateway
        .api_as(&first_key, "GET", "/v1/inboxes/agent", None)
        .await;
    assert_eq!(status, 200);
    let first_id = first["id"].as_str().expect("id");
    let (status, _) = gateway
        .api(
            "DELETE",
            &format!("/v1/inboxes/agent/keys/{first_id}"),
            None,
        )
        .await;
    assert_eq!(status, 204);
    let (status, body) = gateway
        .api_as(&first_key, "GET", "/v1/inboxes/agent", None)
        .await;
    assert_eq!(status, 401, "a revoked key is refused at once: {body}");
    let (status, _) = gateway
        .api_as(&second_key, "GET", "/v1/inboxes/agent", None)
        .await;
    assert_eq!(status, 200, "the other key still works");
    let (status, _) = gateway
        .api(
            "DELETE",
            &format!("/v1/inboxes/agent/keys/{first_id}"),
            None,
        )
        .await;
    assert_eq!(status, 404);
    let second_id = second["id"].as_str().expect("id");
    let (status, _) = gateway
        .api(
            "DELETE",
            &format!("/v1/inboxes/other/keys/{second_id}"),
            None,
        )
        .await;
    assert_eq!(status, 404, "a key is revoked only through its own inbox");
    let (_, listed) = gateway.api("GET", "/v1/inboxes/agent/keys", None).await;
    assert_eq!(listed["keys"].as_array().expect("keys").len(), 1);

    // The key body is checked like every other JSON body.
    for (body, expected) in [
        (json!({"name": 5}), 422),
        (json!({"name": "x", "scope": "all"}), 422),
        (json!(["name"]), 422),
    ] {
        let (status, answer) = gateway
            .api("POST", "/v1/inboxes/agent/keys", Some(body))
            .await;
        assert_eq!(status, expected, "{answer}");
        assert_eq!(answer["error"]["code"], "invalid_body", "{answer}");
    }
    let response = reqwest::Client::new()
        .post(format!("http://{}/v1/inboxes/agent/keys", gateway.http))
        .bearer_auth(API_KEY)
        .header("content-type", "application/json")
        .body("{\"name\": ")
        .send()
        .await
        .expect("request");
    assert_eq!(response.status().as_u16(), 400);
    gateway.stop().await;
}

#[tokio::test]
async fn messages_page_newest_first_and_filter() {
    let gateway = TestGateway::start(GatewayOptions::no_webhook()).await;
    send(
        &gateway,
        "agent@example.com",
        "Invoice 1",
        "billing@vendor.example",
    )
    .await;
    send(
        &gateway,
        "agent@example.com",
        "Hello",
        "friend@people.example",
    )
    .await;
    send(
        &gateway,
        "agent@example.com",
        "Invoice 2",
        "billing@vendor.example",
    )
    .await;
    send(
        &gateway,
        "other@example.com",
        "Invoice 3",
        "billing@vendor.example",
    )
    .await;

    let (status, page) = gateway
        .api("GET", "/v1/inboxes/agent/messages?limit=2", None)
        .await;
    assert_eq!(status, 200, "{page}");
    let subjects = |page: &Value| -> Vec<String> {
        page["messages"]
            .as_array()
            .expect("messages")
            .iter()
            .map(|message| message["subject"].as_str().unwrap_or_default().to_owned())
            .collect()
    };
    assert_eq!(subjects(&page), ["Invoice 2", "Hello"]);
    let cursor = page["next_cursor"].as_str().expect("cursor").to_owned();
    let (_, next) = gateway
        .api(
            "GET",
            &format!("/v1/inboxes/agent/messages?limit=2&cursor={cursor}"),
            None,
        )
        .await;
    assert_eq!(subjects(&next), ["Invoice 1"]);
    assert_eq!(next["next_cursor"], Value::Null);

    let (_, invoices) = gateway
        .api("GET", "/v1/inboxes/agent/messages?subject=invoice", None)
        .await;
    assert_eq!(subjects(&invoices), ["Invoice 2", "Invoice 1"]);
    let (_, friend) = gateway
        .api(
            "GET",
            "/v1/inboxes/agent/messages?sender=Friend@People.example",
            None,
        )
        .await;
    assert_eq!(subjects(&friend), ["Hello"]);
    let (_, future) = gateway
        .api(
            "GET",
            "/v1/inboxes/agent/messages?received_after=2999-01-01T00:00:00Z",
            None,
        )
        .await;
    assert_eq!(subjects(&future), Vec::<String>::new());
    let (status, body) = gateway
        .api("GET", "/v1/inboxes/agent/messages?limit=0", None)
        .await;
    assert_eq!(status, 400, "{body}");
    let (status, _) = gateway
        .api("GET", "/v1/inboxes/agent/messages?colour=red", None)
        .await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn resend_dead_requeues_an_inbox_dead_letters_and_test_events_are_delivered() {
    let mut receiver = WebhookReceiver::start(vec![Reply::Status(500); 1000]).await;
    let mut options = GatewayOptions::webhook(receiver.url());
    options.max_retries = 1;
    let gateway = TestGateway::start(options).await;
    send(&gateway, "agent@example.com", "one", "a@sender.example").await;
    send(&gateway, "agent@example.com", "two", "a@sender.example").await;
    let dead_count = || async {
        let (_, body) = gateway
            .api("GET", "/v1/inboxes/agent/deliveries?status=dead", None)
            .await;
        body["deliveries"].as_array().map_or(0, Vec::len)
    };
    eventually("both deliveries to be dead", || async {
        (dead_count().await == 2).then_some(())
    })
    .await;
    receiver.set_script(Vec::new());
    while tokio::time::timeout(Duration::from_millis(200), receiver.recv())
        .await
        .is_ok()
    {}

    let (status, body) = gateway
        .api("POST", "/v1/inboxes/agent/deliveries/resend-dead", None)
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["requeued"], 2);
    let mut subjects = Vec::new();
    while subjects.len() < 2 {
        let subject = receiver.recv().await.json()["subject"].clone();
        if !subjects.contains(&subject) {
            subjects.push(subject);
        }
    }
    subjects.sort_by_key(ToString::to_string);
    assert_eq!(subjects, [json!("one"), json!("two")]);
    eventually("both deliveries to be delivered", || async {
        let (_, body) = gateway
            .api("GET", "/v1/inboxes/agent/deliveries?status=delivered", None)
            .await;
        (body["deliveries"].as_array().map(Vec::len) == Some(2)).then_some(())
    })
    .await;
    assert_eq!(dead_count().await, 0);

    let (status, body) = gateway
        .api("POST", "/v1/inboxes/agent/test-event", None)
        .await;
    assert_eq!(status, 202, "{body}");
    let message_id = body["message_id"].as_str().expect("message id").to_owned();
    // Deliveries are at-least-once, so a repeat of an earlier event may still arrive first.
    let got = loop {
        let got = receiver.recv().await;
        if got.json()["message_id"] == message_id.as_str() {
            break got;
        }
    };
    let event = got.json();
    assert_eq!(event["type"], "mail.received");
    assert_eq!(event["agent_id"], "agent");
    assert_eq!(event["subject"], "mxhook test event");
    let timestamp = got.header("x-agentmail-timestamp").expect("timestamp");
    let signature = got.header("x-agentmail-signature").expect("signature");
    assert!(python_verifies_agentmail(
        SECRET, &timestamp, &got.body, &signature
    ));

    let (status, _) = gateway
        .api("DELETE", "/v1/inboxes/agent/webhook", None)
        .await;
    assert_eq!(status, 204);
    let (status, body) = gateway
        .api("POST", "/v1/inboxes/agent/test-event", None)
        .await;
    assert_eq!(status, 409, "{body}");
}

#[tokio::test]
async fn notification_rules_are_validated_and_stored() {
    let gateway = TestGateway::start(GatewayOptions::no_webhook()).await;
    let (status, body) = gateway
        .api("GET", "/v1/inboxes/agent/notifications", None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(body, json!([]), "GET is the bare list SPEC describes");
    let rules = json!([{
        "name": "verified humans",
        "filters": {"sender_verified": true, "traffic_types": ["human"], "trust_tiers": ["verified"]},
        "channels": {
            "webhook": {"enabled": true, "url": "https://hooks.example.com/x", "timeout_s": 10},
            "email": {"enabled": true, "recipients": ["ops@example.com"]}
        }
    }]);
    let (status, stored) = gateway
        .api("PUT", "/v1/inboxes/agent/notifications", Some(rules))
        .await;
    assert_eq!(status, 200, "{stored}");
    assert!(
        stored[0]["id"]
            .as_str()
            .expect("rule id")
            .starts_with("rule_")
    );
    let (_, fetched) = gateway
        .api("GET", "/v1/inboxes/agent/notifications", None)
        .await;
    assert_eq!(fetched, stored);

    // The wrapped form is accepted too, and answered as the list.
    let (status, wrapped) = gateway
        .api(
            "PUT",
            "/v1/inboxes/agent/notifications",
            Some(json!({"rules": fetched})),
        )
        .await;
    assert_eq!(status, 200, "{wrapped}");
    assert_eq!(wrapped, stored);

    let (status, body) = gateway
        .api(
            "PUT",
            "/v1/inboxes/agent/notifications",
            Some(json!({"rules": [{"name": "x", "filters": {"trust_tiers": ["godlike"]}}]})),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    let (status, body) = gateway.api("PUT", "/v1/inboxes/agent/notifications", Some(json!({"rules": [{"name": "x", "channels": {"email": {"recipients": ["not an address"]}}}]})))
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .expect("message")
            .contains("rules[0]")
    );

    // A wrong field is named, in either form, with what was wrong about it.
    for (rules, field, complaint) in [
        (
            json!([{"name": "x", "filters": {"sender_verified": "yes"}}]),
            "rules[0].filters.sender_verified",
            "invalid type",
        ),
        (
            json!({"rules": [{"name": "a"}, {"name": "b", "filters": {"trust_tiers": ["godlike"]}}]}),
            "rules[1].filters.trust_tiers[0]",
            "godlike",
        ),
        (
            json!([{"name": "x", "channels": {"webhook": {"url": "https://h.example.com", "colour": 1}}}]),
            "rules[0].channels.webhook",
            "colour",
        ),
        (json!({"rulez": []}), "rulez", "unknown field"),
        (json!("rules"), "a list of rules", "expected"),
    ] {
        let (status, body) = gateway
            .api(
                "PUT",
                "/v1/inboxes/agent/notifications",
                Some(rules.clone()),
            )
            .await;
        assert_eq!(status, 422, "{rules}: {body}");
        let message = body["error"]["message"].as_str().expect("message");
        assert!(
            message.contains(field) && message.contains(complaint),
            "{rules}: {message}"
        );
        assert!(!message.contains("did not match any variant"), "{message}");
    }
    let (_, unchanged) = gateway
        .api("GET", "/v1/inboxes/agent/notifications", None)
        .await;
    assert_eq!(unchanged, stored, "a refused PUT changes nothing");
}

#[tokio::test]
async fn bad_requests_get_clear_json_errors() {
    let gateway = TestGateway::start(GatewayOptions::no_webhook()).await;
    let client = reqwest::Client::new();
    let url = format!("http://{}/v1/inboxes", gateway.http);
    let raw = |body: Vec<u8>, content_type: Option<&'static str>| {
        let mut request = client.post(&url).bearer_auth(API_KEY).body(body);
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        async move {
            let response = request.send().await.expect("request");
            let status = response.status().as_u16();
            (
                status,
                response.json::<Value>().await.expect("JSON error body"),
            )
        }
    };
    let json_type = Some("application/json");
    let cases: Vec<(Vec<u8>, Option<&'static str>, u16, &str)> = vec![
        (b"{\"addresses\": [".to_vec(), json_type, 400, "bad_request"),
        (
            b"{\"addresses\": \"a@example.com\"}".to_vec(),
            json_type,
            422,
            "invalid_body",
        ),
        (
            b"{\"addresses\": [\"a@example.com\"], \"colour\": 1}".to_vec(),
            json_type,
            422,
            "invalid_body",
        ),
        (
            b"{\"addresses\": [\"a@example.com\"]}".to_vec(),
            None,
            415,
            "unsupported_media_type",
        ),
        (
            format!(
                "{{\"addresses\": [\"{}@example.com\"]}}",
                "a".repeat(100_000)
            )
            .into_bytes(),
            json_type,
            413,
            "payload_too_large",
        ),
        (
            b"{\"addresses\": [\"not-an-address\"]}".to_vec(),
            json_type,
            400,
            "bad_request",
        ),
        (
            b"{\"addresses\": []}".to_vec(),
            json_type,
            400,
            "bad_request",
        ),
        (
            b"{\"id\": \"../etc\", \"addresses\": [\"a@example.com\"]}".to_vec(),
            json_type,
            400,
            "bad_request",
        ),
    ];
    for (body, content_type, want_status, want_code) in cases {
        let shown = String::from_utf8_lossy(&body[..body.len().min(60)]).into_owned();
        let (status, answer) = raw(body, content_type).await;
        assert_eq!(status, want_status, "{shown}: {answer}");
        assert_eq!(answer["error"]["code"], want_code, "{shown}: {answer}");
        assert!(
            answer["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
    }
    let (status, body) = gateway.api("GET", "/v1/nothing-here", None).await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (404, json!("not_found"))
    );
    let (status, body) = gateway.api("PUT", "/v1/inboxes", None).await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (405, json!("method_not_allowed"))
    );
    let (status, _) = gateway.api_as("wrong", "GET", "/v1/inboxes", None).await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn readyz_and_metrics_report_from_the_database() {
    let mut receiver = WebhookReceiver::start(Vec::new()).await;
    let gateway = TestGateway::start(GatewayOptions::webhook(receiver.url())).await;
    let (status, body) = gateway.api_as("", "GET", "/readyz", None).await;
    assert_eq!(status, 200, "{body}");
    send(
        &gateway,
        "agent@example.com",
        "count me",
        "a@sender.example",
    )
    .await;
    receiver.recv().await;
    let text = eventually("metrics to show the delivery", || async {
        let (status, body) = gateway.api_bytes("/metrics").await;
        assert_eq!(status, 200);
        let text = String::from_utf8_lossy(&body).into_owned();
        text.contains("mxhook_delivery_attempts_total{outcome=\"delivered\"} 1")
            .then_some(text)
    })
    .await;
    for line in [
        "mxhook_messages_accepted_total{inbox=\"agent\"} 1",
        "mxhook_deliveries{status=\"delivered\"} 1",
        "mxhook_deliveries{status=\"dead\"} 0",
        "mxhook_queue_depth 0",
        "mxhook_delivery_attempt_duration_seconds_bucket{le=\"+Inf\"} 1",
        "mxhook_delivery_attempt_duration_seconds_count 1",
        "# TYPE mxhook_delivery_attempt_duration_seconds histogram",
        "# TYPE mxhook_delivery_latency_seconds histogram",
        "mxhook_delivery_latency_seconds_bucket{le=\"86400\"} 1",
        "mxhook_delivery_latency_seconds_bucket{le=\"+Inf\"} 1",
        "mxhook_delivery_latency_seconds_count 1",
        "# TYPE mxhook_intake_duration_seconds histogram",
        "mxhook_intake_duration_seconds_bucket{le=\"+Inf\"} 1",
        "mxhook_intake_duration_seconds_count 1",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing `{line}` in\n{text}"
        );
    }
    // Every histogram is cumulative: bucket counts never fall as the bound grows.
    for family in [
        "mxhook_delivery_attempt_duration_seconds",
        "mxhook_delivery_latency_seconds",
        "mxhook_intake_duration_seconds",
    ] {
        let counts: Vec<u64> = text
            .lines()
            .filter(|line| line.starts_with(&format!("{family}_bucket{{")))
            .map(|line| {
                line.rsplit(' ')
                    .next()
                    .and_then(|n| n.parse().ok())
                    .expect("a count")
            })
            .collect();
        assert!(counts.len() > 5, "{family}: {counts:?}");
        assert!(
            counts.windows(2).all(|pair| pair[0] <= pair[1]),
            "{family}: {counts:?}"
        );
    }
}

/// The real binary, logging at debug level to a file, is given secrets and keys to create and
/// rotate and then uses them; none of them is ever written to its log.
#[tokio::test]
async fn the_log_never_holds_a_signing_secret_or_an_api_key() {
    let mut receiver = WebhookReceiver::start(Vec::new()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("mxhook.toml");
    std::fs::write(
        &config,
        crate::support::gateway::config_toml(dir.path(), &GatewayOptions::webhook(receiver.url())),
    )
    .expect("write config");
    let log_path = dir.path().join("mxhook.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let smtp = crate::support::process::free_addr();
    let http = crate::support::process::free_addr();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_mxhook"))
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .current_dir(dir.path())
        .env("MXHOOK_SMTP__LISTEN", smtp.to_string())
        .env("MXHOOK_HTTP__LISTEN", http.to_string())
        .env("RUST_LOG", "debug")
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().expect("log handle"))
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("start mxhook");
    let client = reqwest::Client::new();
    let api = |method: &str, path: &str, key: &str, body: Option<Value>| {
        let mut request = client
            .request(
                method.parse().expect("method"),
                format!("http://{http}{path}"),
            )
            .bearer_auth(key);
        if let Some(body) = body {
            request = request.json(&body);
        }
        async move {
            let response = request.send().await.expect("API request");
            let status = response.status().as_u16();
            (
                status,
                response.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    eventually("the binary to answer /healthz", || async {
        reqwest::get(format!("http://{http}/healthz"))
            .await
            .ok()
            .filter(|response| response.status().is_success())
    })
    .await;

    let (status, _) = api(
        "POST",
        "/v1/inboxes",
        API_KEY,
        Some(json!({"id": "quiet", "addresses": ["quiet@example.com"]})),
    )
    .await;
    assert_eq!(status, 201);
    let (_, first) = api(
        "PUT",
        "/v1/inboxes/quiet/webhook",
        API_KEY,
        Some(json!({"url": receiver.url()})),
    )
    .await;
    let (_, rotated) = api(
        "PUT",
        "/v1/inboxes/quiet/webhook",
        API_KEY,
        Some(json!({"url": receiver.url(), "rotate_secret": true})),
    )
    .await;
    let (_, standard) = api(
        "PUT",
        "/v1/inboxes/quiet/webhook",
        API_KEY,
        Some(json!({"url": receiver.url(), "signature": "standard"})),
    )
    .await;
    let (_, key) = api("POST", "/v1/inboxes/quiet/keys", API_KEY, None).await;
    let mut secrets: Vec<String> = [&first, &rotated, &standard]
        .iter()
        .map(|body| body["signing_secret"].as_str().expect("secret").to_owned())
        .collect();
    let key = key["key"].as_str().expect("key").to_owned();
    secrets.extend([key.clone(), API_KEY.to_owned(), SECRET.to_owned()]);

    // Use them: a delivery signed with the secrets, calls with the keys, refused keys.
    let (status, _) = api("POST", "/v1/inboxes/quiet/test-event", &key, None).await;
    assert_eq!(status, 202);
    receiver.recv().await;
    let (status, _) = api("GET", "/v1/inboxes/quiet", &key, None).await;
    assert_eq!(status, 200);
    let wrong = format!("{key}0");
    let (status, _) = api("GET", "/v1/inboxes/quiet", &wrong, None).await;
    assert_eq!(status, 401);
    let mut smtp_client = SmtpClient::connect(smtp).await;
    let message = simple_message("a@sender.example", "agent@example.com", "hi", "body");
    let (code, _) = smtp_client
        .send_message("a@sender.example", &["agent@example.com"], &message)
        .await;
    assert_eq!(code, 250);
    receiver.recv().await;

    child.start_kill().expect("stop mxhook");
    let _ = child.wait().await;
    let log = std::fs::read_to_string(&log_path).expect("read log");
    assert!(
        log.contains("mxhook started") && log.contains("DEBUG"),
        "the log was not captured at debug level:\n{log}"
    );
    for secret in &secrets {
        assert!(
            !log.contains(secret.as_str()),
            "the log holds a secret or key ({}…)",
            secret.get(..6).unwrap_or_default()
        );
    }
}
