//! Threads over real SMTP: a reply joins the thread of the mail it answers in the same inbox,
//! found from its headers (or, without headers, from its subject), also after a restart, and
//! its event carries the earlier emails and the whole thread as a prompt.

use mxhook::config::Config;
use serde_json::Value;

use crate::support::gateway::config_toml;
use crate::support::{GatewayOptions, SmtpClient, TestGateway, WebhookReceiver};

fn mail(headers: &str, body: &str) -> Vec<u8> {
    format!(
        "{headers}\r\nTo: Agent <agent@example.com>\r\nDate: Thu, 16 Apr 2026 12:00:00 +0000\r\n\
         MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{body}\r\n"
    )
    .into_bytes()
}

async fn send(
    gateway: &TestGateway,
    receiver: &mut WebhookReceiver,
    to: &str,
    raw: &[u8],
) -> Value {
    let mut client = SmtpClient::connect(gateway.smtp).await;
    let (code, text) = client.send_message("jane@client.example", &[to], raw).await;
    assert_eq!(code, 250, "{text}");
    receiver.recv().await.json()
}

/// The gateway on a data directory that outlives it, so a second start sees the first's data.
async fn start(dir: &std::path::Path, options: &GatewayOptions) -> TestGateway {
    let config = Config::from_toml_str(&config_toml(dir, options)).expect("config");
    TestGateway::start_with(tempfile::tempdir().expect("tempdir"), config).await
}

#[tokio::test]
async fn replies_join_their_thread_across_a_restart_and_carry_the_earlier_emails() {
    let mut receiver = WebhookReceiver::start(vec![]).await;
    let data = tempfile::tempdir().expect("tempdir");
    let options = GatewayOptions::webhook(receiver.url());
    let gateway = start(data.path(), &options).await;

    let first = send(
        &gateway,
        &mut receiver,
        "agent@example.com",
        &mail(
            "From: Jane <jane@client.example>\r\nSubject: Plan\r\nMessage-ID: <root-1@client.example>",
            "Shall we plan the launch?",
        ),
    )
    .await;
    let thread_id = first["thread_id"].as_str().expect("thread id").to_owned();
    assert!(thread_id.starts_with("thr_"), "{thread_id}");
    assert_eq!(first["email"]["thread_id"], thread_id);
    assert!(first["email"]["previous_emails"].is_null());
    assert_eq!(first["extracted_text"], "Shall we plan the launch?");

    // The same reply to another inbox: threads never cross inboxes.
    let elsewhere = send(
        &gateway,
        &mut receiver,
        "other@example.com",
        &mail(
            "From: Jane <jane@client.example>\r\nSubject: Re: Plan\r\nIn-Reply-To: <root-1@client.example>",
            "Elsewhere.",
        ),
    )
    .await;
    assert_ne!(elsewhere["thread_id"], thread_id);
    assert!(elsewhere["email"]["previous_emails"].is_null());
    gateway.stop().await;

    let gateway = start(data.path(), &options).await;
    let reply = send(
        &gateway,
        &mut receiver,
        "agent@example.com",
        &mail(
            "From: Jane <jane@client.example>\r\nSubject: Re: Plan\r\n\
             Message-ID: <reply-2@client.example>\r\nIn-Reply-To: <root-1@client.example>\r\n\
             References: <root-1@client.example>",
            "Yes, Monday.\r\n\r\nOn Thu, 16 Apr 2026 at 12:00, Jane <jane@client.example> wrote:\r\n> Shall we plan the launch?",
        ),
    )
    .await;
    assert_eq!(reply["thread_id"], thread_id);
    assert_eq!(reply["extracted_text"], "Yes, Monday.");
    assert_eq!(reply["email"]["extracted_text"], "Yes, Monday.");
    let previous = reply["email"]["previous_emails"]
        .as_array()
        .expect("previous emails");
    assert_eq!(previous.len(), 1);
    assert_eq!(previous[0]["id"], first["message_id"]);
    assert_eq!(previous[0]["subject"], "Plan");
    assert!(previous[0]["previous_emails"].is_null());
    let prompt = reply["email"]["prompt"].as_str().expect("prompt");
    assert!(
        prompt.contains("Yes, Monday.\n\n> On Thu, 16 Apr 2026"),
        "{prompt}"
    );
    let thread_prompt = reply["email"]["thread_prompt"]
        .as_str()
        .expect("thread prompt");
    let first_at = thread_prompt
        .find("Shall we plan")
        .expect("first email in thread");
    let reply_at = thread_prompt.find("Yes, Monday.").expect("reply in thread");
    assert!(first_at < reply_at, "{thread_prompt}");
    assert!(thread_prompt.contains("## Email 2 of 2"), "{thread_prompt}");

    // No threading headers: the reply subject and a shared participant find the thread.
    let headerless = send(
        &gateway,
        &mut receiver,
        "agent@example.com",
        &mail(
            "From: jane@client.example\r\nSubject: RE: plan",
            "Forgot the agenda.",
        ),
    )
    .await;
    assert_eq!(headerless["thread_id"], thread_id);
    let previous = headerless["email"]["previous_emails"]
        .as_array()
        .expect("previous emails");
    let ids: Vec<&Value> = previous.iter().map(|email| &email["id"]).collect();
    assert_eq!(ids, [&first["message_id"], &reply["message_id"]]);

    // Same subject from a stranger, without a reply prefix: a new conversation.
    let stranger = send(
        &gateway,
        &mut receiver,
        "agent@example.com",
        &mail("From: bob@else.example\r\nSubject: Plan", "Unrelated plan."),
    )
    .await;
    assert_ne!(stranger["thread_id"], thread_id);
    gateway.stop().await;
}

/// A mail its inbox's policy quarantined joins the thread it claims to answer (it is stored
/// for review) but never reaches an agent through a later mail: it is not among the later
/// mail's `previous_emails`, nor in its `thread_prompt`. A mail received twice is listed once.
#[tokio::test]
async fn quarantined_and_repeated_mail_stays_out_of_later_emails_of_the_thread() {
    let mut receiver = WebhookReceiver::start(vec![]).await;
    let mut options = GatewayOptions::webhook(receiver.url());
    options.extra_toml = format!(
        "[[inbox]]\nid = \"guarded\"\naddresses = [\"guarded@example.com\"]\n\
         webhook_url = \"{}\"\nblock_senders = [\"forger.example\"]\npolicy_action = \"quarantine\"\n",
        receiver.url()
    );
    let gateway = TestGateway::start(options).await;
    let to = "guarded@example.com";

    let root = send(
        &gateway,
        &mut receiver,
        to,
        &mail(
            "From: Jane <jane@client.example>\r\nSubject: Invoice\r\nMessage-ID: <inv-1@client.example>",
            "Here is the invoice.",
        ),
    )
    .await;
    let thread_id = root["thread_id"].as_str().expect("thread id").to_owned();

    let forged = mail(
        "From: Jane <billing@forger.example>\r\nSubject: Re: Invoice\r\n\
         Message-ID: <forged-1@forger.example>\r\nIn-Reply-To: <inv-1@client.example>",
        "New bank details: wire everything to account 666.",
    );
    let mut client = SmtpClient::connect(gateway.smtp).await;
    let (code, text) = client
        .send_message("jane@client.example", &[to], &forged)
        .await;
    assert_eq!(code, 250, "{text}");
    let forged_id = text.rsplit(' ').next().expect("queued as id").to_owned();
    let (status, stored) = gateway
        .api("GET", &format!("/v1/messages/{forged_id}"), None)
        .await;
    assert_eq!(status, 200, "{stored}");
    assert_eq!(stored["quarantined"], true, "{stored}");
    assert_eq!(
        stored["thread_id"], thread_id,
        "the forged mail is in the thread"
    );

    let reply = mail(
        "From: Jane <jane@client.example>\r\nSubject: Re: Invoice\r\n\
         Message-ID: <inv-2@client.example>\r\nIn-Reply-To: <inv-1@client.example>",
        "Paid today.",
    );
    let first_copy = send(&gateway, &mut receiver, to, &reply).await;
    let second_copy = send(&gateway, &mut receiver, to, &reply).await;
    assert_eq!(second_copy["is_duplicate"], true);
    assert_eq!(second_copy["thread_id"], thread_id);

    // Answers the forged mail itself: the thread is found through it, its text is not shown.
    let latest = send(
        &gateway,
        &mut receiver,
        to,
        &mail(
            "From: Jane <jane@client.example>\r\nSubject: Re: Invoice\r\n\
             Message-ID: <inv-3@client.example>\r\nIn-Reply-To: <forged-1@forger.example>",
            "Which account?",
        ),
    )
    .await;
    assert_eq!(latest["thread_id"], thread_id);
    let ids: Vec<&Value> = latest["email"]["previous_emails"]
        .as_array()
        .expect("previous emails")
        .iter()
        .map(|email| &email["id"])
        .collect();
    assert_eq!(ids, [&root["message_id"], &first_copy["message_id"]]);
    let thread_prompt = latest["email"]["thread_prompt"]
        .as_str()
        .expect("thread prompt");
    assert!(!thread_prompt.contains("account 666"), "{thread_prompt}");
    assert!(
        thread_prompt.contains("Here is the invoice.")
            && thread_prompt.contains("## Email 3 of 3")
            && thread_prompt.matches("Paid today.").count() == 1,
        "{thread_prompt}"
    );
    gateway.stop().await;
}

/// Only the newest 20 earlier emails travel with a mail; the thread prompt then says that older
/// ones were left out, so the agent does not take the oldest one shown for the start.
#[tokio::test]
async fn a_thread_longer_than_the_earlier_emails_shown_says_so() {
    let mut receiver = WebhookReceiver::start(vec![]).await;
    let gateway = TestGateway::start(GatewayOptions::webhook(receiver.url())).await;
    let mut message_ids = Vec::new();
    for position in 0..22 {
        let reply_to = if position == 0 {
            String::new()
        } else {
            "\r\nIn-Reply-To: <long-0@client.example>".to_owned()
        };
        let event = send(
            &gateway,
            &mut receiver,
            "agent@example.com",
            &mail(
                &format!(
                    "From: jane@client.example\r\nSubject: Re: Long\r\n\
                     Message-ID: <long-{position}@client.example>{reply_to}"
                ),
                &format!("Message number {position}."),
            ),
        )
        .await;
        message_ids.push(event["message_id"].clone());
        let previous = event["email"]["previous_emails"]
            .as_array()
            .map_or(0, Vec::len);
        assert_eq!(previous, position.min(20), "mail {position}");
        let thread_prompt = event["email"]["thread_prompt"]
            .as_str()
            .expect("thread prompt");
        let says_left_out = thread_prompt.contains("Older emails of this thread are left out");
        assert_eq!(
            says_left_out,
            position > 20,
            "mail {position}: {thread_prompt}"
        );
        if position == 21 {
            assert_eq!(event["email"]["previous_emails"][0]["id"], message_ids[1]);
            assert!(
                !thread_prompt.contains("Message number 0."),
                "{thread_prompt}"
            );
        }
    }
    gateway.stop().await;
}
