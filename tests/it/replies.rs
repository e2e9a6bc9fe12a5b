//! Replies end to end: an agent answers a received mail through the API; a real SMTP server
//! (aiosmtpd) as the smarthost receives it with RFC 5322 threading headers and a DKIM
//! signature that an independent verifier (dkimpy) accepts against the key dnsmasq serves;
//! the reply joins the thread, so the sender's next mail shows the agent's words in
//! `previous_emails` and `thread_prompt`; an Idempotency-Key sends once; automatic mail is not
//! answered unless forced; the inbox's send rate holds.

use std::time::Duration;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::signature::KeyPair;
use base64::Engine;
use serde_json::{Value, json};

use crate::support::dns::LocalDns;
use crate::support::gateway::API_KEY;
use crate::support::smarthost::Aiosmtpd;
use crate::support::{
    GatewayOptions, SmtpClient, TestGateway, WebhookReceiver, eventually, http_client,
};

/// A plain-text mail with exactly these headers.
fn mail(headers: &str, body: &str) -> Vec<u8> {
    format!(
        "{headers}\r\nDate: Thu, 16 Apr 2026 12:00:00 +0000\r\nMIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\r\n{body}\r\n"
    )
    .into_bytes()
}

/// A 2048-bit RSA key for `s1._domainkey.example.com`: the PEM file the gateway signs with and
/// the TXT record dnsmasq serves.
fn dkim_key(dir: &std::path::Path) -> (std::path::PathBuf, String) {
    let key = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).expect("rsa");
    let pkcs8 = AsDer::<aws_lc_rs::encoding::Pkcs8V1Der<'static>>::as_der(&key).expect("pkcs8");
    let pem = format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
        base64::engine::general_purpose::STANDARD.encode(pkcs8.as_ref())
    );
    let path = dir.join("dkim.pem");
    std::fs::write(&path, pem).expect("write key");
    let spki = AsDer::<aws_lc_rs::encoding::PublicKeyX509Der<'static>>::as_der(key.public_key())
        .expect("spki");
    let record = format!(
        "v=DKIM1; k=rsa; p={}",
        base64::engine::general_purpose::STANDARD.encode(spki.as_ref())
    );
    // A TXT string holds at most 255 bytes: on its command line dnsmasq takes a record's
    // strings separated by commas (a DKIM record has none of its own).
    let parts: Vec<String> = record
        .as_bytes()
        .chunks(200)
        .map(|chunk| String::from_utf8_lossy(chunk).into_owned())
        .collect();
    (path, parts.join(","))
}

/// dkimpy's verdict on `message`, looking the key up in the dnsmasq on `port` only.
fn dkimpy_verifies(port: u16, message: &[u8]) -> bool {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("reply.eml");
    std::fs::write(&path, message).expect("write");
    let script = r#"
import logging, sys, dkim, dns.resolver
logging.basicConfig(level=logging.DEBUG)
port, path = int(sys.argv[1]), sys.argv[2]
resolver = dns.resolver.Resolver(configure=False)
resolver.nameservers = ["127.0.0.1"]
resolver.port = port
def txt(name, timeout=5):
    name = name.decode() if isinstance(name, bytes) else name
    return b"".join(b"".join(record.strings) for record in resolver.resolve(name, "TXT"))
message = open(path, "rb").read()
sys.exit(0 if dkim.verify(message, logger=logging.getLogger(), dnsfunc=txt) else 1)
"#;
    std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(port.to_string())
        .arg(&path)
        .status()
        .expect("python3 with dkimpy and dnspython (scripts/test installs them)")
        .success()
}

async fn reply_with_key(
    gateway: &TestGateway,
    message_id: &str,
    key: Option<&str>,
    body: Value,
) -> (u16, Value) {
    let mut request = http_client()
        .post(format!(
            "http://{}/v1/messages/{message_id}/reply",
            gateway.http
        ))
        .bearer_auth(API_KEY)
        .json(&body);
    if let Some(key) = key {
        request = request.header("Idempotency-Key", key);
    }
    let response = request.send().await.expect("reply request");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn header<'a>(message: &'a mail_parser::Message<'a>, name: &str) -> Option<String> {
    message
        .header_raw(name)
        .map(|value| value.trim().to_owned())
}

#[tokio::test]
async fn a_reply_goes_out_threaded_and_signed_and_the_next_mail_shows_both_sides() {
    let smarthost = Aiosmtpd::start().await;
    let keys = tempfile::tempdir().expect("tempdir");
    let (key_file, record) = dkim_key(keys.path());
    let dns = LocalDns::start(&[("s1._domainkey.example.com".to_owned(), record)]).await;
    let mut hook = WebhookReceiver::start(vec![]).await;
    let mut options = GatewayOptions::webhook(hook.url());
    options.extra_toml = format!(
        "[forward]\nsmarthost = \"smtp://{}\"\n[dkim]\nkeys = [{{ domain = \"example.com\", selector = \"s1\", key_file = \"{}\" }}]\n",
        smarthost.addr,
        key_file.display()
    );
    let gateway = TestGateway::start(options).await;

    let question = mail(
        "From: Alice <alice@sender.example>\r\nTo: agent@example.com\r\nCc: bob@sender.example, other@example.com\r\nSubject: Budget\r\nMessage-ID: <q1@sender.example>",
        "Can we spend 500 on the offsite?",
    );
    let mut client = SmtpClient::connect(gateway.smtp).await;
    let (code, text) = client
        .send_message("alice@sender.example", &["agent@example.com"], &question)
        .await;
    assert_eq!(code, 250, "{text}");
    let received = hook.recv().await.json();
    let message_id = received["message_id"]
        .as_str()
        .expect("message id")
        .to_owned();
    let thread_id = received["thread_id"].clone();

    let body = json!({"text": "Approved, go **ahead**.", "reply_all": true});
    let (status, first) = reply_with_key(&gateway, &message_id, Some("k-1"), body.clone()).await;
    assert_eq!(status, 200, "{first}");
    let reply_id = first["message_id"].as_str().expect("reply id").to_owned();
    let (status, again) = reply_with_key(&gateway, &message_id, Some("k-1"), body).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(
        again["message_id"], first["message_id"],
        "one reply per key"
    );

    let sent = eventually("the reply at the smarthost", || async {
        let all = smarthost.delivered_with_envelopes();
        (!all.is_empty()).then_some(all)
    })
    .await;
    let delivery =
        eventually("the reply delivery recorded as sent", || async {
            gateway.all_deliveries().await.into_iter().find(|delivery| {
                delivery["channel"] == "reply" && delivery["status"] == "delivered"
            })
        })
        .await;
    assert_eq!(delivery["message_id"], reply_id.as_str(), "{delivery}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        smarthost.delivered().len(),
        1,
        "the retried request sent nothing more"
    );
    let (raw, envelope) = &sent[0];
    assert_eq!(envelope["mail_from"], "agent@example.com", "{envelope}");
    let mut rcpts: Vec<&str> = envelope["rcpt_tos"]
        .as_array()
        .expect("rcpts")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    rcpts.sort_unstable();
    assert_eq!(
        rcpts,
        ["alice@sender.example", "bob@sender.example"],
        "reply-all reaches the others but never the gateway's own inbox"
    );
    let parsed = mail_parser::MessageParser::default()
        .parse(raw.as_slice())
        .expect("reply parses");
    assert_eq!(parsed.subject(), Some("Re: Budget"));
    assert_eq!(
        header(&parsed, "In-Reply-To").as_deref(),
        Some("<q1@sender.example>")
    );
    assert_eq!(
        header(&parsed, "References").as_deref(),
        Some("<q1@sender.example>")
    );
    assert!(
        parsed
            .body_html(0)
            .is_some_and(|html| html.contains("<strong>ahead</strong>")),
        "the text is rendered as markdown for the HTML part"
    );
    assert!(
        dkimpy_verifies(dns.port, raw),
        "dkimpy refused the signature"
    );
    let mut altered = raw.clone();
    let at = altered
        .windows(8)
        .position(|window| window == b"Approved")
        .expect("body text");
    altered[at] = b'X';
    assert!(
        !dkimpy_verifies(dns.port, &altered),
        "an altered body must fail"
    );

    let (status, stored) = gateway
        .api("GET", &format!("/v1/messages/{reply_id}"), None)
        .await;
    assert_eq!(status, 200, "{stored}");
    assert_eq!(stored["direction"], "outbound", "{stored}");
    assert_eq!(stored["thread_id"], thread_id);
    // The inbox's listing says which way each message went.
    let listed = gateway.messages("agent").await;
    let direction_of = |id: &str| {
        listed
            .iter()
            .find(|message| message["id"] == id)
            .map(|message| message["direction"].clone())
    };
    assert_eq!(direction_of(reply_id.as_str()), Some("outbound".into()));
    assert!(
        listed
            .iter()
            .any(|message| message["direction"] == "inbound"),
        "{listed:?}"
    );

    let answer_id = header(&parsed, "Message-ID").expect("Message-ID");
    let follow_up = mail(
        &format!(
            "From: Alice <alice@sender.example>\r\nTo: agent@example.com\r\nSubject: Re: Budget\r\nMessage-ID: <q2@sender.example>\r\nIn-Reply-To: {answer_id}\r\nReferences: <q1@sender.example> {answer_id}"
        ),
        "Great, booking it.",
    );
    let (code, text) = client
        .send_message("alice@sender.example", &["agent@example.com"], &follow_up)
        .await;
    assert_eq!(code, 250, "{text}");
    let next = hook.recv().await.json();
    assert_eq!(next["thread_id"], thread_id, "{next}");
    let previous = next["email"]["previous_emails"]
        .as_array()
        .expect("history");
    assert_eq!(previous.len(), 2, "{previous:?}");
    assert_eq!(previous[1]["direction"], "outbound");
    assert!(
        previous[0].get("direction").is_none(),
        "received mail keeps its shape"
    );
    let prompt = next["email"]["thread_prompt"]
        .as_str()
        .expect("thread prompt");
    assert!(prompt.contains("Approved, go"), "{prompt}");
    assert!(
        prompt.contains("## Email 2 of 3\n*Sent by this inbox: the agent's own reply.*"),
        "{prompt}"
    );
    hook.assert_silent(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn automatic_mail_is_not_answered_unless_forced_and_the_send_rate_holds() {
    let smarthost = Aiosmtpd::start().await;
    let mut hook = WebhookReceiver::start(vec![]).await;
    let mut options = GatewayOptions::webhook(hook.url());
    options.extra_toml = format!(
        "[forward]\nsmarthost = \"smtp://{}\"\n[replies]\nmax_per_hour = 2\n",
        smarthost.addr
    );
    let gateway = TestGateway::start(options).await;

    let bounce = mail(
        "From: MAILER-DAEMON@sender.example\r\nTo: agent@example.com\r\nSubject: Undelivered Mail Returned to Sender\r\nMessage-ID: <b1@sender.example>",
        "This is the mail system. Your message could not be delivered.",
    );
    let mut client = SmtpClient::connect(gateway.smtp).await;
    let (code, text) = client
        .send_message("", &["agent@example.com"], &bounce)
        .await;
    assert_eq!(code, 250, "{text}");
    let bounce_id = hook.recv().await.json()["message_id"]
        .as_str()
        .expect("id")
        .to_owned();
    let (status, body) =
        reply_with_key(&gateway, &bounce_id, None, json!({"text": "thanks"})).await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("force")),
        "{body}"
    );

    let (status, body) = reply_with_key(&gateway, &bounce_id, None, json!({"text": ""})).await;
    assert_eq!(status, 409, "the guard comes first: {body}");
    let (status, body) = reply_with_key(
        &gateway,
        &bounce_id,
        None,
        json!({"text": " ", "force": true}),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    let bad_attachment = json!({"text": "x", "force": true, "attachments": [
        {"filename": "a.txt", "content_type": "text/plain", "content_base64": "***"}]});
    let (status, body) = reply_with_key(&gateway, &bounce_id, None, bad_attachment).await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body.to_string().contains("attachments[0].content_base64"),
        "{body}"
    );

    let forced = json!({"text": "Noted.", "force": true, "attachments": [
        {"filename": "notes.txt", "content_type": "text/plain", "content_base64": "aGVsbG8="}]});
    let (status, body) = reply_with_key(&gateway, &bounce_id, None, forced.clone()).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = reply_with_key(&gateway, &bounce_id, None, forced.clone()).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = reply_with_key(&gateway, &bounce_id, None, forced).await;
    assert_eq!(status, 429, "replies.max_per_hour = 2: {body}");

    let sent = eventually("both replies at the smarthost", || async {
        let all = smarthost.delivered();
        (all.len() == 2).then_some(all)
    })
    .await;
    let parsed = mail_parser::MessageParser::default()
        .parse(sent[0].as_slice())
        .expect("parses");
    let attachment = parsed.attachments().next().expect("attachment");
    assert_eq!(attachment.contents(), b"hello");

    let (status, body) =
        reply_with_key(&gateway, "msg_nonexistent", None, json!({"text": "x"})).await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = gateway.api("POST", "/v1/inboxes/other/keys", None).await;
    assert_eq!(status, 201, "{body}");
    let other_key = body["key"].as_str().expect("key").to_owned();
    let (status, _) = gateway
        .api_as(
            &other_key,
            "POST",
            &format!("/v1/messages/{bounce_id}/reply"),
            Some(json!({"text": "x", "force": true})),
        )
        .await;
    assert_eq!(status, 404, "another inbox's key does not see the message");
    hook.assert_silent(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn the_message_page_replies_and_its_thread_shows_both_directions() {
    let smarthost = Aiosmtpd::start().await;
    let mut hook = WebhookReceiver::start(vec![]).await;
    let mut options = GatewayOptions::webhook(hook.url());
    options.extra_toml = format!("[forward]\nsmarthost = \"smtp://{}\"\n", smarthost.addr);
    let gateway = TestGateway::start(options).await;
    let question = mail(
        "From: alice@sender.example\r\nTo: agent@example.com\r\nSubject: Lunch?\r\nMessage-ID: <l1@sender.example>",
        "Free on Friday?",
    );
    let mut client = SmtpClient::connect(gateway.smtp).await;
    let (code, text) = client
        .send_message("alice@sender.example", &["agent@example.com"], &question)
        .await;
    assert_eq!(code, 250, "{text}");
    let id = hook.recv().await.json()["message_id"]
        .as_str()
        .expect("id")
        .to_owned();

    let mut ui = crate::ui::Ui::new(&gateway);
    ui.login(API_KEY).await;
    let page = ui.get(&format!("/ui/messages/{id}")).await;
    assert!(page.body.contains("id=\"reply\""), "{}", page.body);
    let csrf = page.csrf();
    let refused = ui
        .post(
            &format!("/ui/messages/{id}/reply"),
            &[("csrf", &csrf), ("text", "  ")],
        )
        .await;
    assert_eq!(refused.status, 400, "{}", refused.body);
    assert!(
        refused.body.contains("id=\"reply-error\""),
        "{}",
        refused.body
    );

    let sent = ui
        .post(
            &format!("/ui/messages/{id}/reply"),
            &[("csrf", &csrf), ("text", "Friday works.")],
        )
        .await;
    assert_eq!(sent.status, 200, "{}", sent.body);
    assert!(sent.body.contains("id=\"reply-result\""), "{}", sent.body);
    let delivered = eventually("the reply at the smarthost", || async {
        let all = smarthost.delivered();
        (!all.is_empty()).then_some(all)
    })
    .await;
    let parsed = mail_parser::MessageParser::default()
        .parse(delivered[0].as_slice())
        .expect("parses");
    assert_eq!(parsed.subject(), Some("Re: Lunch?"));
    assert!(
        parsed
            .body_text(0)
            .is_some_and(|body| body.contains("Friday works."))
    );

    let page = ui.get(&format!("/ui/messages/{id}")).await;
    assert!(
        page.body
            .contains("class=\"outbound\"><span class=\"badge\">sent by this inbox</span>"),
        "{}",
        page.body
    );
    hook.assert_silent(Duration::from_millis(200)).await;
}
