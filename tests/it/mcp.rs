//! The MCP server with the official Python SDK (`mcp` on PyPI) as an independent client, over
//! stdio (`mxhook mcp`) and over streamable HTTP (`POST /mcp`): it lists the tools and calls
//! each, `wait_for_message` returns a mail sent over SMTP while it waits, and an inbox key
//! reaches no other inbox through any tool.

use std::time::Duration;

use base64::Engine as _;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::support::smarthost::Aiosmtpd;
use crate::support::{GatewayOptions, SmtpClient, TestGateway};

const TOOLS: [&str; 7] = [
    "get_attachment",
    "get_message",
    "get_thread",
    "list_inboxes",
    "list_messages",
    "reply",
    "wait_for_message",
];

const BINARY: &[u8] = &[0, 159, 146, 150, 255, 1, 2, 3];

/// A mail to `agent` with a text attachment (att_0) and a binary one (att_1).
fn mail_with_attachments() -> Vec<u8> {
    let binary = base64::engine::general_purpose::STANDARD.encode(BINARY);
    format!(
        "From: Jane <jane@sender.example>\r\nTo: agent@example.com\r\nSubject: with files\r\n\
         Date: Thu, 16 Apr 2026 12:00:00 +0000\r\nMessage-ID: <files-{}@test.example>\r\n\
         MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n\
         --b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nSee the files.\r\n\
         --b1\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Disposition: attachment; filename=\"notes.txt\"\r\n\r\nhello attachment\r\n\
         --b1\r\nContent-Type: application/octet-stream\r\n\
         Content-Disposition: attachment; filename=\"data.bin\"\r\n\
         Content-Transfer-Encoding: base64\r\n\r\n{binary}\r\n--b1--\r\n",
        crate::support::rand_token()
    )
    .into_bytes()
}

fn text_of(step: &Value) -> String {
    step["content"]
        .as_array()
        .expect("content")
        .iter()
        .filter_map(|item| item["text"].as_str())
        .collect()
}

type Lines = tokio::io::Lines<BufReader<tokio::process::ChildStdout>>;

/// The next step the Python client printed.
async fn next(lines: &mut Lines) -> Value {
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("the MCP client prints within 30 s")
        .expect("read")
        .expect("the MCP client printed a step before it exited");
    serde_json::from_str::<Value>(&line).unwrap_or_else(|err| panic!("{err}: {line}"))
}

/// Runs the Python scenario (tests/python/mcp_client.py) with `args` and checks every step.
async fn run_scenario(gateway: &TestGateway, smarthost: &Aiosmtpd, args: &[String], key: &str) {
    let other_message = gateway.messages("other").await[0]["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let mut child = tokio::process::Command::new("python3")
        .arg(crate::support::repo_path("tests/python/mcp_client.py"))
        .args(args)
        .args([key, "agent", "other", &other_message])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 runs");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();

    let tools = next(&mut lines).await;
    assert_eq!(tools["tools"], serde_json::json!(TOOLS), "{tools}");
    let schema = &tools["schemas"]["list_messages"];
    for field in [
        "inbox_id",
        "limit",
        "cursor",
        "sender",
        "subject",
        "received_after",
    ] {
        assert!(
            schema["properties"][field]["description"].is_string(),
            "list_messages.{field} is described for the model: {schema}"
        );
    }
    assert_eq!(
        schema["required"],
        serde_json::json!(["inbox_id"]),
        "{schema}"
    );

    let inboxes = next(&mut lines).await;
    assert!(!inboxes["is_error"].as_bool().expect("flag"), "{inboxes}");
    let listed: Value = serde_json::from_str(&text_of(&inboxes)).expect("JSON");
    let ids: Vec<&str> = listed["inboxes"]
        .as_array()
        .expect("inboxes")
        .iter()
        .filter_map(|inbox| inbox["id"].as_str())
        .collect();
    assert_eq!(ids, ["agent"], "an inbox key lists its own inbox only");

    let messages = next(&mut lines).await;
    let page: Value = serde_json::from_str(&text_of(&messages)).expect("JSON");
    assert_eq!(page["messages"][0]["subject"], "with files", "{page}");

    let message = next(&mut lines).await;
    let event: Value = serde_json::from_str(&text_of(&message)).expect("JSON");
    assert_eq!(event["type"], "mail.received");
    assert!(
        event["email"]["prompt"]
            .as_str()
            .is_some_and(|prompt| prompt.contains("See the files.")),
        "{event}"
    );

    let thread = next(&mut lines).await;
    let thread: Value = serde_json::from_str(&text_of(&thread)).expect("JSON");
    assert!(thread["thread_prompt"].is_string(), "{thread}");
    assert_eq!(
        thread["emails"].as_array().map(Vec::len),
        Some(1),
        "{thread}"
    );
    assert_eq!(thread["emails"][0]["subject"], "with files");

    let text_file = next(&mut lines).await;
    assert!(
        !text_file["is_error"].as_bool().expect("flag"),
        "{text_file}"
    );
    assert_eq!(text_of(&text_file).trim_end(), "hello attachment");
    let binary_file = next(&mut lines).await;
    let resource = &binary_file["content"][0]["resource"];
    assert_eq!(
        resource["mimeType"], "application/octet-stream",
        "{binary_file}"
    );
    let blob = base64::engine::general_purpose::STANDARD
        .decode(resource["blob"].as_str().expect("blob"))
        .expect("base64");
    assert_eq!(blob, BINARY);

    let replied = next(&mut lines).await;
    assert!(!replied["is_error"].as_bool().expect("flag"), "{replied}");
    let answer: Value = serde_json::from_str(&text_of(&replied)).expect("JSON");
    let reply_id = answer["message_id"]
        .as_str()
        .expect("message_id")
        .to_owned();
    let sent = crate::support::eventually("the reply at the smarthost", || async {
        smarthost.delivered().into_iter().next()
    })
    .await;
    let sent = mail_parser::MessageParser::default()
        .parse(sent.as_slice())
        .expect("reply parses");
    assert_eq!(sent.subject(), Some("Re: with files"));
    assert_eq!(
        sent.to()
            .and_then(|to| to.first())
            .and_then(|to| to.address()),
        Some("jane@sender.example")
    );
    let (status, stored) = gateway
        .api("GET", &format!("/v1/messages/{reply_id}"), None)
        .await;
    assert_eq!(status, 200, "{stored}");
    assert_eq!(stored["direction"], "outbound");

    // The reply is stored in the inbox, but it is no event: the wait sees nothing.
    let nothing = next(&mut lines).await;
    assert_eq!(
        text_of(&nothing),
        "null",
        "no new mail within 1 s: {nothing}"
    );

    assert_eq!(next(&mut lines).await["waiting"], true);
    // The tool call is on its way; the mail comes once its stream is surely open.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    gateway
        .send_simple(
            "agent@example.com",
            "arrived while waiting",
            "a@sender.example",
        )
        .await;
    let arrived = next(&mut lines).await;
    let event: Value = serde_json::from_str(&text_of(&arrived)).expect("JSON");
    assert_eq!(event["subject"], "arrived while waiting", "{arrived}");

    for tool in [
        "list_messages",
        "get_message",
        "get_thread",
        "get_attachment",
        "reply",
        "wait_for_message",
    ] {
        let step = next(&mut lines).await;
        assert_eq!(step["call"], tool);
        assert!(
            step["is_error"].as_bool().expect("flag"),
            "{tool} must not reach another inbox: {step}"
        );
        assert!(text_of(&step).contains("404"), "{step}");
    }
    assert_eq!(next(&mut lines).await["done"], true);
    let status = child.wait().await.expect("wait");
    assert!(status.success(), "the MCP client failed: {status}");
}

/// A gateway with mail in both inboxes, an inbox key of `agent`, and a smarthost for replies.
async fn gateway_with_mail() -> (TestGateway, String, Aiosmtpd) {
    let smarthost = Aiosmtpd::start().await;
    let mut options = GatewayOptions::no_webhook();
    options.extra_toml = format!("[forward]\nsmarthost = \"smtp://{}\"\n", smarthost.addr);
    let gateway = TestGateway::start(options).await;
    gateway
        .send_simple("other@example.com", "theirs", "a@sender.example")
        .await;
    let mut client = SmtpClient::connect(gateway.smtp).await;
    let (code, text) = client
        .send_message(
            "jane@sender.example",
            &["agent@example.com"],
            &mail_with_attachments(),
        )
        .await;
    assert_eq!(code, 250, "{text}");
    let (status, created) = gateway.api("POST", "/v1/inboxes/agent/keys", None).await;
    assert_eq!(status, 201, "{created}");
    let key = created["key"].as_str().expect("key").to_owned();
    (gateway, key, smarthost)
}

#[tokio::test]
async fn the_python_sdk_uses_every_tool_over_stdio() {
    let (gateway, key, smarthost) = gateway_with_mail().await;
    let args = [
        "stdio".to_owned(),
        env!("CARGO_BIN_EXE_mxhook").to_owned(),
        format!("http://{}", gateway.http),
    ];
    run_scenario(&gateway, &smarthost, &args, &key).await;
    gateway.stop().await;
}

#[tokio::test]
async fn the_python_sdk_uses_every_tool_over_streamable_http() {
    let (gateway, key, smarthost) = gateway_with_mail().await;
    // Without a valid key there is no MCP session at all.
    for presented in ["", "Bearer wrong"] {
        let mut request = crate::support::http_client()
            .post(format!("http://{}/mcp", gateway.http))
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#);
        if !presented.is_empty() {
            request = request.header("authorization", presented);
        }
        let response = request.send().await.expect("POST /mcp");
        assert_eq!(response.status(), 401, "{presented}");
    }
    let args = ["http".to_owned(), format!("http://{}/mcp", gateway.http)];
    run_scenario(&gateway, &smarthost, &args, &key).await;
    gateway.stop().await;
}

/// The inbox page gives an agent's owner what to paste: the stream's path and an MCP host
/// config naming this inbox, to an inbox key as to the admin.
#[tokio::test]
async fn the_inbox_page_shows_the_stream_url_and_the_mcp_snippet() {
    let (gateway, key, _smarthost) = gateway_with_mail().await;
    let mut ui = crate::ui::Ui::new(&gateway);
    let login = ui.login(&key).await;
    assert_eq!(login.status, 303, "{}", login.body);
    let page = ui.get("/ui/inboxes/agent").await;
    assert_eq!(page.status, 200, "{}", page.body);
    let escaped = crate::support::escaped;
    assert!(
        page.body.contains(&escaped("/v1/inboxes/agent/events")),
        "{}",
        page.body
    );
    for part in [
        "\"mcpServers\"",
        "\"mxhook-agent\"",
        "\"mcp\"",
        "\"--api-key\"",
    ] {
        assert!(page.body.contains(&escaped(part)), "{part}: {}", page.body);
    }
    gateway.stop().await;
}
