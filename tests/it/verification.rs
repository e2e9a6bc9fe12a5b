//! Sender verification end to end: a real DNS server (dnsmasq on a loopback port) publishes
//! SPF, DKIM and DMARC records, mail signed with a key generated here goes in over SMTP, and the
//! webhook shows the verdicts and the flags. Also duplicates, rate limits and inbox policies.

use std::time::Duration;

use base64::Engine;
use mail_auth::common::crypto::Ed25519Key;
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::DkimSigner;
use serde_json::Value;

use crate::support::dns::LocalDns;
use crate::support::{GatewayOptions, SmtpClient, TestGateway, WebhookReceiver};

/// A signing domain with a key generated for this test.
struct Signer {
    domain: &'static str,
    pkcs8: Vec<u8>,
}

impl Signer {
    fn new(domain: &'static str) -> Self {
        Self {
            domain,
            pkcs8: Ed25519Key::generate_pkcs8().expect("generate key"),
        }
    }

    fn key(&self) -> Ed25519Key {
        Ed25519Key::from_pkcs8_der(&self.pkcs8).expect("load key")
    }

    /// The records the domain publishes: SPF for loopback, the DKIM key, DMARC `p=reject`.
    fn records(&self) -> Vec<(String, String)> {
        let public = base64::engine::general_purpose::STANDARD.encode(self.key().public_key());
        vec![
            (
                self.domain.to_owned(),
                "v=spf1 ip4:127.0.0.1 -all".to_owned(),
            ),
            (
                format!("s1._domainkey.{}", self.domain),
                format!("v=DKIM1; k=ed25519; p={public}"),
            ),
            (
                format!("_dmarc.{}", self.domain),
                "v=DMARC1; p=reject".to_owned(),
            ),
        ]
    }

    fn sign(&self, message: &str) -> String {
        let signature = DkimSigner::from_key(self.key())
            .domain(self.domain)
            .selector("s1")
            .headers(["From", "To", "Subject", "Date", "Message-ID"])
            .sign(message.as_bytes())
            .expect("sign");
        format!("{}{message}", signature.to_header())
    }
}

fn message(from: &str, subject: &str, body: &str) -> String {
    format!(
        "From: <{from}>\r\nTo: agent@example.com\r\nSubject: {subject}\r\n\
         Date: Mon, 16 Nov 2026 10:00:00 +0000\r\nMessage-ID: <{}@sender.test>\r\n\r\n{body}\r\n",
        crate::support::rand_token()
    )
}

async fn send(gateway: &TestGateway, mail_from: &str, raw: &str) -> (u16, String) {
    let mut client = SmtpClient::connect(gateway.smtp).await;
    client
        .send_message(mail_from, &["agent@example.com"], raw.as_bytes())
        .await
}

async fn received_event(receiver: &mut WebhookReceiver) -> Value {
    receiver.recv().await.json()
}

/// The event of the message a 250 reply named, skipping redeliveries of earlier messages
/// (delivery is at-least-once, e.g. across a restart).
async fn event_of(receiver: &mut WebhookReceiver, reply: &(u16, String)) -> Value {
    assert_eq!(reply.0, 250, "{}", reply.1);
    let message_id = reply.1.rsplit(' ').next().expect("queued as id");
    loop {
        let event = received_event(receiver).await;
        if event["message_id"] == message_id {
            return event;
        }
    }
}

#[tokio::test]
async fn signed_tampered_and_spoofed_mail_get_their_verdicts_from_a_real_dns_server() {
    let sender = Signer::new("sender.test");
    let mut records = sender.records();
    records.push((
        "_dmarc.bank.test".to_owned(),
        "v=DMARC1; p=reject".to_owned(),
    ));
    records.push((
        "bank.test".to_owned(),
        "v=spf1 ip4:192.0.2.1 -all".to_owned(),
    ));
    let dns = LocalDns::start(&records).await;
    let mut receiver = WebhookReceiver::start(vec![]).await;
    let mut options = GatewayOptions::webhook(receiver.url());
    options.auth_toml = dns.auth_toml();
    let gateway = TestGateway::start(options).await;

    // Signed by the From domain, sent from an address its SPF record names.
    let signed = sender.sign(&message(
        "alice@sender.test",
        "Invoice",
        "Please pay 10 EUR.",
    ));
    let event = event_of(
        &mut receiver,
        &send(&gateway, "alice@sender.test", &signed).await,
    )
    .await;
    let auth = &event["auth"];
    assert_eq!(auth["checked"], true, "{auth}");
    assert_eq!(auth["spf"]["result"], "pass", "{auth}");
    assert_eq!(auth["spf"]["domain"], "sender.test");
    assert_eq!(auth["spf"]["client_ip"], "127.0.0.1");
    assert_eq!(auth["dkim"][0]["result"], "pass", "{auth}");
    assert_eq!(auth["dkim"][0]["domain"], "sender.test");
    assert_eq!(auth["dkim"][0]["selector"], "s1");
    assert_eq!(auth["dmarc"]["result"], "pass");
    assert_eq!(auth["dmarc"]["policy"], "reject");
    assert_eq!(event["sender_verified"], true);
    assert_eq!(event["peer_trust_tier"], "verified");
    assert_eq!(event["traffic_types"], serde_json::json!(["human"]));
    assert_eq!(event["is_duplicate"], false);

    // The stored copy is still exactly what was sent: verification adds nothing to it.
    let message_id = event["message_id"].as_str().expect("message id");
    let (status, stored) = gateway
        .api_bytes(&format!("/v1/messages/{message_id}/raw"))
        .await;
    assert_eq!(status, 200);
    assert_eq!(stored, signed.as_bytes());

    // The same mail with its body changed after signing.
    let tampered = signed.replace("10 EUR", "9000 EUR");
    let event = event_of(
        &mut receiver,
        &send(&gateway, "alice@sender.test", &tampered).await,
    )
    .await;
    assert_eq!(
        event["auth"]["dkim"][0]["result"], "fail",
        "{}",
        event["auth"]
    );
    assert_eq!(event["is_duplicate"], true, "same Message-ID as the first");

    // A From in a p=reject domain, from an address it does not authorise, with forged
    // Authentication-Results claiming everything passed.
    let spoof = format!(
        "Authentication-Results: mx.test.example; spf=pass smtp.mailfrom=bank.test; \
         dkim=pass header.d=bank.test; dmarc=pass header.from=bank.test\r\n{}",
        message("ceo@bank.test", "Urgent wire", "Send it now.")
    );
    let event = event_of(
        &mut receiver,
        &send(&gateway, "ceo@bank.test", &spoof).await,
    )
    .await;
    assert_eq!(event["auth"]["spf"]["result"], "fail", "{}", event["auth"]);
    assert_eq!(event["auth"]["dmarc"]["result"], "fail");
    assert_eq!(event["auth"]["dmarc"]["domain"], "bank.test");
    assert_eq!(event["sender_verified"], false);
    assert_eq!(event["peer_trust_tier"], "suspicious");

    // Two From headers: whatever the signature says, the author is ambiguous.
    let two_from = sender.sign(&format!(
        "From: <ceo@bank.test>\r\n{}",
        message("alice@sender.test", "Hello", "Hi")
    ));
    let event = event_of(
        &mut receiver,
        &send(&gateway, "alice@sender.test", &two_from).await,
    )
    .await;
    assert_eq!(event["peer_trust_tier"], "suspicious", "{}", event["auth"]);
    assert_eq!(event["sender_verified"], false);

    // Two From headers in one domain: DMARC passes for the domain, but which author wrote it
    // is still ambiguous.
    let two_from_one_domain = sender.sign(&format!(
        "From: <bob@sender.test>\r\n{}",
        message("alice@sender.test", "Hello", "Hi")
    ));
    let event = event_of(
        &mut receiver,
        &send(&gateway, "alice@sender.test", &two_from_one_domain).await,
    )
    .await;
    assert_eq!(
        event["auth"]["dmarc"]["result"], "pass",
        "{}",
        event["auth"]
    );
    assert_eq!(event["sender_verified"], false);
    assert_eq!(event["peer_trust_tier"], "suspicious");

    gateway.stop().await;
}

/// DMARC's tree walk asks for the policy of every parent of the From domain up to its top
/// level (`_dmarc.test` here, `_dmarc.com` for real mail), a name that rarely exists. dnsmasq
/// answers NXDOMAIN without an SOA, which carries no TTL to cache it by: the gateway still asks
/// once, not once per message.
#[tokio::test]
async fn a_missing_dmarc_record_is_asked_for_once_not_per_message() {
    let sender = Signer::new("sender.test");
    let dns = LocalDns::start(&sender.records()).await;
    let mut receiver = WebhookReceiver::start(vec![]).await;
    let mut options = GatewayOptions::webhook(receiver.url());
    options.auth_toml = dns.auth_toml();
    let gateway = TestGateway::start(options).await;

    for n in 0..3 {
        let signed = sender.sign(&message(
            "alice@sender.test",
            &format!("Note {n}"),
            "Three of these.",
        ));
        let event = event_of(
            &mut receiver,
            &send(&gateway, "alice@sender.test", &signed).await,
        )
        .await;
        assert_eq!(
            event["auth"]["dmarc"]["result"], "pass",
            "{}",
            event["auth"]
        );
    }
    assert_eq!(dns.txt_queries("_dmarc.sender.test"), 1);
    assert_eq!(
        dns.txt_queries("_dmarc.test"),
        1,
        "the parent's NXDOMAIN is kept, not asked for each message"
    );

    gateway.stop().await;
}

#[tokio::test]
async fn allow_listed_senders_with_a_dmarc_pass_are_trusted() {
    let sender = Signer::new("sender.test");
    let partner = Signer::new("partner.test");
    // A relay that signs with a key other than the one it publishes.
    let relay = Signer::new("relay.test");
    let relay_published = Signer::new("relay.test");
    let mut records = sender.records();
    records.extend(partner.records());
    records.extend(
        relay_published
            .records()
            .into_iter()
            .filter(|(name, _)| name.contains("_domainkey")),
    );
    let dns = LocalDns::start(&records).await;
    let mut receiver = WebhookReceiver::start(vec![]).await;
    let mut options = GatewayOptions::webhook(receiver.url());
    options.auth_toml = format!(
        "{}allow_senders = [\"boss@sender.test\"]\n",
        dns.auth_toml()
    );
    options.extra_toml = format!(
        "[[inbox]]\nid = \"vip\"\naddresses = [\"vip@example.com\"]\nwebhook_url = \"{}\"\n\
         allow_senders = [\"partner.test\"]\n",
        receiver.url()
    );
    let gateway = TestGateway::start(options).await;

    // On auth.allow_senders, signed by its domain and by the relay with the wrong key.
    let boss = relay.sign(&sender.sign(&message("boss@sender.test", "Budget", "Approved.")));
    let event = event_of(
        &mut receiver,
        &send(&gateway, "boss@sender.test", &boss).await,
    )
    .await;
    let dkim: Vec<(&str, &str)> = event["auth"]["dkim"]
        .as_array()
        .expect("dkim verdicts")
        .iter()
        .map(|dkim| {
            (
                dkim["domain"].as_str().unwrap_or_default(),
                dkim["result"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        dkim,
        [("relay.test", "fail"), ("sender.test", "pass")],
        "{}",
        event["auth"]
    );
    assert_eq!(event["sender_verified"], true);
    assert_eq!(event["peer_trust_tier"], "trusted");

    // Same domain, not on the list: verified only.
    let alice = sender.sign(&message("alice@sender.test", "Hi", "Hello"));
    let event = event_of(
        &mut receiver,
        &send(&gateway, "alice@sender.test", &alice).await,
    )
    .await;
    assert_eq!(event["peer_trust_tier"], "verified", "{}", event["auth"]);

    // On the vip inbox's allow list, which the agent inbox does not have.
    let partner_mail = partner.sign(&message("ops@partner.test", "Status", "All green."));
    for (inbox, tier) in [
        ("vip@example.com", "trusted"),
        ("agent@example.com", "verified"),
    ] {
        let mut client = SmtpClient::connect(gateway.smtp).await;
        let reply = client
            .send_message("ops@partner.test", &[inbox], partner_mail.as_bytes())
            .await;
        let event = event_of(&mut receiver, &reply).await;
        assert_eq!(event["peer_trust_tier"], tier, "{inbox}: {}", event["auth"]);
        assert_eq!(event["policy_violations"], serde_json::json!([]), "{inbox}");
    }
    gateway.stop().await;
}

#[tokio::test]
async fn mail_a_list_changed_and_sealed_with_arc_arrives_with_arc_pass() {
    use mail_auth::arc::ArcSealer;
    use mail_auth::{ArcOutput, AuthenticatedMessage, AuthenticationResults};

    let origin = Signer::new("sender.test");
    let list = Signer::new("lists.test");
    let mut records = origin.records();
    records.extend(list.records());
    let dns = LocalDns::start(&records).await;
    let mut receiver = WebhookReceiver::start(vec![]).await;
    let mut options = GatewayOptions::webhook(receiver.url());
    options.auth_toml = dns.auth_toml();
    let gateway = TestGateway::start(options).await;

    // The list checks the signed mail against the same DNS, appends its footer, records what
    // it saw and seals.
    let signed = origin.sign(&message("alice@sender.test", "Minutes", "Minutes"));
    let list_resolver = mxhook::verify::dns::authenticator(
        &[format!("127.0.0.1:{}", dns.port)],
        Duration::from_secs(2),
    )
    .expect("resolver");
    let original = AuthenticatedMessage::parse(signed.as_bytes()).expect("parse");
    let dkim_seen = list_resolver.verify_dkim(&original).await;
    assert_eq!(
        dkim_seen.first().map(|output| output.result()),
        Some(&mail_auth::DkimResult::Pass)
    );
    let results = AuthenticationResults::new("lists.test")
        .with_dkim_results(&dkim_seen, "alice@sender.test")
        .with_arc_result(&ArcOutput::default(), [127, 0, 0, 1].into());
    let forwarded = signed.replace("Minutes\r\n", "Minutes\r\n-- \r\nlist footer\r\n");
    let parsed = AuthenticatedMessage::parse(forwarded.as_bytes()).expect("parse");
    let seal = ArcSealer::from_key(list.key())
        .domain("lists.test")
        .selector("s1")
        .headers(["From", "To", "Subject", "DKIM-Signature"])
        .seal(&parsed, &results, &ArcOutput::default())
        .expect("seal");
    let sealed = format!("{}{forwarded}", seal.to_header());

    let event = event_of(
        &mut receiver,
        &send(&gateway, "bounces@lists.test", &sealed).await,
    )
    .await;
    let auth = &event["auth"];
    assert_eq!(auth["dkim"][0]["domain"], "sender.test", "{auth}");
    assert_eq!(auth["dkim"][0]["result"], "fail", "{auth}");
    assert_eq!(auth["arc"]["result"], "pass", "{auth}");
    assert_eq!(auth["arc"]["instances"], 1, "{auth}");
    gateway.stop().await;
}

#[tokio::test]
async fn an_unreachable_resolver_is_temperror_and_the_mail_is_still_accepted() {
    let mut receiver = WebhookReceiver::start(vec![]).await;
    let mut options = GatewayOptions::webhook(receiver.url());
    // A loopback port with no DNS server behind it.
    let port = {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("pick a port");
        socket.local_addr().expect("addr").port()
    };
    options.auth_toml =
        format!("[auth]\nnameservers = [\"127.0.0.1:{port}\"]\ndns_timeout_s = 0.2\n");
    let gateway = TestGateway::start(options).await;
    let raw = message("alice@sender.test", "Hi", "Hello");
    let event = event_of(
        &mut receiver,
        &send(&gateway, "alice@sender.test", &raw).await,
    )
    .await;
    assert_eq!(
        event["auth"]["spf"]["result"], "temperror",
        "{}",
        event["auth"]
    );
    assert_eq!(event["auth"]["dmarc"]["result"], "temperror");
    assert_eq!(event["sender_verified"], false);
    assert_eq!(event["peer_trust_tier"], "unverified");
    gateway.stop().await;
}

#[tokio::test]
async fn traffic_types_and_peer_mail_between_inboxes() {
    let mut receiver = WebhookReceiver::start(vec![]).await;
    let mut options = GatewayOptions::webhook(receiver.url());
    options.auth_toml = "[auth]\nenabled = false\n\
                         [auth.sender_domain_types]\n\"github.test\" = \"notifications\"\n"
        .to_owned();
    let gateway = TestGateway::start(options).await;

    let list_mail = format!(
        "List-Id: <news.sender.test>\r\nList-Unsubscribe: <mailto:u@sender.test>\r\n{}",
        message("news@sender.test", "Weekly", "News")
    );
    let event = event_of(
        &mut receiver,
        &send(&gateway, "news@sender.test", &list_mail).await,
    )
    .await;
    assert_eq!(event["traffic_types"], serde_json::json!(["bulk"]));
    assert_eq!(event["auth"]["checked"], false);
    assert_eq!(event["peer_trust_tier"], "unverified");

    let ci = message("noreply@github.test", "Build failed", "Red");
    let event = event_of(
        &mut receiver,
        &send(&gateway, "noreply@github.test", &ci).await,
    )
    .await;
    assert_eq!(
        event["traffic_types"],
        serde_json::json!(["automated", "notifications"])
    );

    let peer = message("other@example.com", "From a colleague", "Hi");
    let event = event_of(
        &mut receiver,
        &send(&gateway, "other@example.com", &peer).await,
    )
    .await;
    assert_eq!(event["traffic_types"], serde_json::json!(["human", "peer"]));
    gateway.stop().await;
}

#[tokio::test]
async fn a_duplicate_is_flagged_across_a_restart_and_still_delivered() {
    let mut receiver = WebhookReceiver::start(vec![]).await;
    let options = GatewayOptions::webhook(receiver.url());
    let dir = tempfile::tempdir().expect("tempdir");
    let config = || {
        mxhook::config::Config::from_toml_str(&crate::support::gateway::config_toml(
            dir.path(),
            &options,
        ))
        .expect("config")
    };
    // No Message-ID: the content hash identifies it.
    let raw =
        "From: <alice@sender.test>\r\nTo: agent@example.com\r\nSubject: Same\r\n\r\nSame body\r\n";

    let gateway = TestGateway::start_with(tempfile::tempdir().expect("tempdir"), config()).await;
    let reply = send(&gateway, "alice@sender.test", raw).await;
    assert_eq!(event_of(&mut receiver, &reply).await["is_duplicate"], false);
    gateway.stop().await;

    let gateway = TestGateway::start_with(tempfile::tempdir().expect("tempdir"), config()).await;
    let reply = send(&gateway, "alice@sender.test", raw).await;
    assert_eq!(event_of(&mut receiver, &reply).await["is_duplicate"], true);
    // Another inbox has not seen it.
    let mut client = SmtpClient::connect(gateway.smtp).await;
    let reply = client
        .send_message("alice@sender.test", &["other@example.com"], raw.as_bytes())
        .await;
    assert_eq!(event_of(&mut receiver, &reply).await["is_duplicate"], false);
    gateway.stop().await;
}

#[tokio::test]
async fn a_copy_is_a_duplicate_within_the_window_and_not_after_it() {
    const WINDOW: Duration = Duration::from_secs(2);
    let mut receiver = WebhookReceiver::start(vec![]).await;
    let mut options = GatewayOptions::webhook(receiver.url());
    options.auth_toml = format!(
        "[auth]\nenabled = false\nduplicate_window_s = {}\n",
        WINDOW.as_secs_f64()
    );
    let gateway = TestGateway::start(options).await;
    let raw = message("alice@sender.test", "Same", "Same body");

    let mut client = SmtpClient::connect(gateway.smtp).await;
    let first = client
        .send_message("alice@sender.test", &["agent@example.com"], raw.as_bytes())
        .await;
    // Sent as soon as the first is accepted, on the same connection: well within the window.
    let within = client
        .send_message("alice@sender.test", &["agent@example.com"], raw.as_bytes())
        .await;
    assert_eq!(event_of(&mut receiver, &first).await["is_duplicate"], false);
    assert_eq!(event_of(&mut receiver, &within).await["is_duplicate"], true);

    // Every copy was recorded before its 250, so once a window has passed since the last
    // reply, no earlier copy is inside the window.
    tokio::time::sleep(WINDOW + Duration::from_millis(100)).await;
    let mut client = SmtpClient::connect(gateway.smtp).await;
    let after = client
        .send_message("alice@sender.test", &["agent@example.com"], raw.as_bytes())
        .await;
    assert_eq!(event_of(&mut receiver, &after).await["is_duplicate"], false);
    gateway.stop().await;
}

#[tokio::test]
async fn at_the_sender_domain_hard_limit_rcpt_gets_451_for_every_address_of_the_domain() {
    let mut receiver = WebhookReceiver::start(vec![]).await;
    let mut options = GatewayOptions::webhook(receiver.url());
    options.extra_toml =
        "[rate_limit]\nwindow_s = 86400\ndomain_soft = 1\ndomain_hard = 2\n".to_owned();
    let gateway = TestGateway::start(options).await;

    let first = message("ann@burst.test", "1", "one");
    let event = event_of(
        &mut receiver,
        &send(&gateway, "ann@burst.test", &first).await,
    )
    .await;
    assert_eq!(event["rate_limited"], false);
    // Another address of the domain, its first message: only the domain is over its soft limit.
    let second = message("ben@burst.test", "2", "two");
    let event = event_of(
        &mut receiver,
        &send(&gateway, "ben@burst.test", &second).await,
    )
    .await;
    assert_eq!(event["rate_limited"], true);

    let mut client = SmtpClient::connect(gateway.smtp).await;
    client.expect("EHLO client.test", 250).await;
    for sender in ["ann@burst.test", "cat@burst.test"] {
        client.expect(&format!("MAIL FROM:<{sender}>"), 250).await;
        let text = client.expect("RCPT TO:<agent@example.com>", 451).await;
        assert!(text.starts_with("4.7.1"), "{sender}: {text}");
        client.expect("RSET", 250).await;
    }
    client.expect("MAIL FROM:<calm@elsewhere.test>", 250).await;
    client.expect("RCPT TO:<agent@example.com>", 250).await;
    gateway.stop().await;
}

#[tokio::test]
async fn over_the_soft_limit_is_flagged_and_at_the_hard_limit_rcpt_gets_451() {
    let mut receiver = WebhookReceiver::start(vec![]).await;
    let mut options = GatewayOptions::webhook(receiver.url());
    options.extra_toml =
        "[rate_limit]\nwindow_s = 86400\nsender_soft = 1\nsender_hard = 2\n".to_owned();
    let gateway = TestGateway::start(options).await;

    let first = message("burst@sender.test", "1", "one");
    let event = event_of(
        &mut receiver,
        &send(&gateway, "burst@sender.test", &first).await,
    )
    .await;
    assert_eq!(event["rate_limited"], false);
    let second = message("burst@sender.test", "2", "two");
    let event = event_of(
        &mut receiver,
        &send(&gateway, "burst@sender.test", &second).await,
    )
    .await;
    assert_eq!(event["rate_limited"], true);

    let mut client = SmtpClient::connect(gateway.smtp).await;
    client.expect("EHLO client.test", 250).await;
    client.expect("MAIL FROM:<burst@sender.test>", 250).await;
    let text = client.expect("RCPT TO:<agent@example.com>", 451).await;
    assert!(text.starts_with("4.7.1"), "{text}");
    // Another sender is not held back.
    client.expect("RSET", 250).await;
    client.expect("MAIL FROM:<calm@elsewhere.test>", 250).await;
    client.expect("RCPT TO:<agent@example.com>", 250).await;
    gateway.stop().await;
}

#[tokio::test]
async fn inbox_policies_reject_quarantine_or_tag() {
    let mut receiver = WebhookReceiver::start(vec![]).await;
    let mut options = GatewayOptions::webhook(receiver.url());
    let hook = receiver.url();
    options.extra_toml = format!(
        "[[inbox]]\nid = \"strict\"\naddresses = [\"strict@example.com\"]\nwebhook_url = \"{hook}\"\n\
         block_senders = [\"spam.test\"]\npolicy_action = \"reject\"\n\
         [[inbox]]\nid = \"held\"\naddresses = [\"held@example.com\"]\nwebhook_url = \"{hook}\"\n\
         dmarc_pass_required = true\npolicy_action = \"quarantine\"\n\
         [[inbox]]\nid = \"tagged\"\naddresses = [\"tagged@example.com\"]\nwebhook_url = \"{hook}\"\n\
         dkim_pass_required = true\n"
    );
    let gateway = TestGateway::start(options).await;
    let raw = message("promo@spam.test", "Deal", "Buy");

    let mut client = SmtpClient::connect(gateway.smtp).await;
    let (code, text) = client
        .send_message("promo@spam.test", &["strict@example.com"], raw.as_bytes())
        .await;
    assert_eq!(code, 550, "{text}");
    assert!(text.starts_with("5.7.1"), "{text}");

    let mut client = SmtpClient::connect(gateway.smtp).await;
    let (code, text) = client
        .send_message("promo@spam.test", &["held@example.com"], raw.as_bytes())
        .await;
    assert_eq!(code, 250, "{text}");
    let message_id = text.rsplit(' ').next().expect("queued as id").to_owned();
    let (status, stored_event) = gateway
        .api("GET", &format!("/v1/messages/{message_id}"), None)
        .await;
    assert_eq!(status, 200, "{stored_event}");
    assert_eq!(stored_event["quarantined"], true, "{stored_event}");
    assert_eq!(
        stored_event["policy_violations"],
        serde_json::json!(["DMARC did not pass"])
    );

    let mut client = SmtpClient::connect(gateway.smtp).await;
    let (code, _) = client
        .send_message("promo@spam.test", &["tagged@example.com"], raw.as_bytes())
        .await;
    assert_eq!(code, 250);
    // Only the tagged copy is delivered: nothing was stored for the rejected one and the
    // quarantined one has no delivery job.
    let event = received_event(&mut receiver).await;
    assert_eq!(event["agent_id"], "tagged");
    assert_eq!(event["quarantined"], false);
    assert_eq!(
        event["policy_violations"],
        serde_json::json!(["no DKIM signature passed"])
    );
    receiver.assert_silent(Duration::from_millis(300)).await;
    let pending = gateway.deliveries("pending").await;
    let delivered = gateway.deliveries("delivered").await;
    assert!(
        pending
            .iter()
            .chain(&delivered)
            .all(|delivery| delivery["inbox_id"] == "tagged"),
        "{pending:?} {delivered:?}"
    );
    gateway.stop().await;
}
