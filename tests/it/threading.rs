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
