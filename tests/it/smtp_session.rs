//! The SMTP conversation over a real socket: extensions, envelope rules, limits, pipelining and
//! shutdown.

use std::time::Duration;

use crate::support::{
    GatewayOptions, Reply, SmtpClient, TestGateway, WebhookReceiver, simple_message,
};

async fn gateway() -> (TestGateway, WebhookReceiver) {
    let receiver = WebhookReceiver::start(vec![]).await;
    let gateway = TestGateway::start(GatewayOptions::webhook(receiver.url())).await;
    (gateway, receiver)
}

#[tokio::test]
async fn greeting_and_ehlo_advertise_the_extensions() {
    let (gateway, _receiver) = gateway().await;
    let mut client = SmtpClient::connect(gateway.smtp).await;
    assert_eq!(client.greeting.0, 220);
    assert!(
        client.greeting.1.starts_with("mx.test.example"),
        "{}",
        client.greeting.1
    );
    let ehlo = client.expect("EHLO client.test", 250).await;
    for keyword in [
        "SIZE 1048576",
        "PIPELINING",
        "8BITMIME",
        "SMTPUTF8",
        "ENHANCEDSTATUSCODES",
    ] {
        assert!(
            ehlo.lines().any(|line| line == keyword),
            "EHLO lacks {keyword}: {ehlo}"
        );
    }
    assert!(
        !ehlo.contains("STARTTLS") && !ehlo.contains("AUTH"),
        "{ehlo}"
    );
    let text = client.expect("NOOP", 250).await;
    assert!(text.starts_with("2.0.0"), "{text}");
    client.expect("QUIT", 221).await;
    assert!(client.is_closed().await);
}

#[tokio::test]
async fn unknown_recipients_and_relay_attempts_are_refused_at_rcpt() {
    let (gateway, mut receiver) = gateway().await;
    let mut client = SmtpClient::connect(gateway.smtp).await;
    client.expect("EHLO client.test", 250).await;
    client
        .expect("MAIL FROM:<someone@sender.example>", 250)
        .await;
    let text = client.expect("RCPT TO:<nobody@example.com>", 550).await;
    assert!(text.starts_with("5.1.1"), "{text}");
    for relay in [
        "RCPT TO:<victim@elsewhere.example>",
        "RCPT TO:<victim%elsewhere.example@example.com>",
        "RCPT TO:<elsewhere.example!victim@example.com>",
        "RCPT TO:<\"victim@elsewhere.example\"@example.com>",
        "RCPT TO:<@example.com:victim@elsewhere.example>",
    ] {
        let (code, text) = client.cmd(relay).await;
        assert_eq!(code, 550, "{relay} answered {code} {text}");
    }
    // Without an accepted recipient there is no transaction to send data for.
    client.expect("DATA", 503).await;
    client.expect("RCPT TO:<Agent@Example.com>", 250).await;
    let (code, _) = client
        .data(&simple_message(
            "someone@sender.example",
            "agent@example.com",
            "after refusals",
            "hi",
        ))
        .await;
    assert_eq!(code, 250);
    let request = receiver.recv().await;
    assert_eq!(request.json()["subject"], "after refusals");

    let (status, metrics) = gateway.api_bytes("/metrics").await;
    assert_eq!(status, 200);
    let metrics = String::from_utf8_lossy(&metrics);
    for line in [
        "mxhook_messages_rejected_total{reason=\"unknown_recipient\"} 2",
        "mxhook_messages_rejected_total{reason=\"relay_denied\"} 4",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "no `{line}` in\n{metrics}"
        );
    }
}

#[tokio::test]
async fn commands_out_of_order_get_503_and_garbage_gets_500() {
    let (gateway, _receiver) = gateway().await;
    let mut client = SmtpClient::connect(gateway.smtp).await;
    client.expect("MAIL FROM:<a@b.example>", 503).await;
    client.expect("EHLO client.test", 250).await;
    client.expect("RCPT TO:<agent@example.com>", 503).await;
    client.expect("XYZZY", 500).await;
    client.expect("MAIL FROM:<a@b.example> RET=HDRS", 555).await;
    client
        .expect("MAIL FROM:<a@b.example> SIZE=99999999", 552)
        .await;
    client.expect("STARTTLS", 502).await;
    client.expect("EHLO", 501).await;
    client.expect("EHLO again.test", 250).await;
    client.expect("MAIL FROM:<a@b.example>", 250).await;
    client.expect("RSET", 250).await;
    client.expect("RCPT TO:<agent@example.com>", 503).await;
}

#[tokio::test]
async fn null_sender_and_size_parameter_are_accepted() {
    let (gateway, mut receiver) = gateway().await;
    let mut client = SmtpClient::connect(gateway.smtp).await;
    client.expect("EHLO mailer-daemon.test", 250).await;
    client
        .expect("MAIL FROM:<> SIZE=500 BODY=8BITMIME", 250)
        .await;
    client.expect("RCPT TO:<agent@example.com>", 250).await;
    let (code, text) = client
        .data(&simple_message(
            "mailer-daemon@sender.example",
            "agent@example.com",
            "bounce",
            "failed",
        ))
        .await;
    assert_eq!(code, 250, "{text}");
    let event = receiver.recv().await.json();
    assert_eq!(event["envelope_from"], "");
    assert_eq!(event["subject"], "bounce");
}

#[tokio::test]
async fn oversize_message_is_read_to_the_end_then_refused_and_the_session_goes_on() {
    let (gateway, mut receiver) = gateway().await;
    let mut client = SmtpClient::connect(gateway.smtp).await;
    let body = format!("{}\r\n", "0123456789abcdef".repeat(4)).repeat(20_000);
    let big = simple_message("a@sender.example", "agent@example.com", "too big", &body);
    let (code, text) = client
        .send_message("a@sender.example", &["agent@example.com"], &big)
        .await;
    assert_eq!(code, 552, "{text}");
    assert!(text.starts_with("5.3.4"), "{text}");
    // The session is still in step: the next transaction works.
    client.expect("MAIL FROM:<a@sender.example>", 250).await;
    client.expect("RCPT TO:<agent@example.com>", 250).await;
    let small = simple_message("a@sender.example", "agent@example.com", "small", "ok");
    assert_eq!(client.data(&small).await.0, 250);
    assert_eq!(receiver.recv().await.json()["subject"], "small");
    receiver.assert_silent(Duration::from_millis(300)).await;
    assert_eq!(
        gateway.messages("agent").await.len(),
        1,
        "the big one left nothing"
    );

    // One line longer than the whole size limit is still "too big", not "line too long".
    let one_line = simple_message(
        "a@sender.example",
        "agent@example.com",
        "one line",
        &"x".repeat(1_200_000),
    );
    let (code, text) = client
        .send_message("a@sender.example", &["agent@example.com"], &one_line)
        .await;
    assert_eq!(code, 552, "{text}");
    client.expect("NOOP", 250).await;
}

#[tokio::test]
async fn overlong_command_line_is_refused_without_losing_sync() {
    let (gateway, _receiver) = gateway().await;
    let mut client = SmtpClient::connect(gateway.smtp).await;
    client.expect("EHLO client.test", 250).await;
    let long = format!("MAIL FROM:<{}@example.com>", "a".repeat(600));
    let text = client.expect(&long, 500).await;
    assert!(text.contains("too long"), "{text}");
    client.expect("NOOP", 250).await;
}

#[tokio::test]
async fn pipelined_commands_are_answered_in_order() {
    let (gateway, mut receiver) = gateway().await;
    let mut client = SmtpClient::connect(gateway.smtp).await;
    client.expect("EHLO client.test", 250).await;
    client
        .send_raw(b"MAIL FROM:<p@sender.example>\r\nRCPT TO:<nobody@example.com>\r\nRCPT TO:<agent@example.com>\r\nDATA\r\n")
        .await;
    assert_eq!(client.read_reply().await.0, 250);
    assert_eq!(client.read_reply().await.0, 550);
    assert_eq!(client.read_reply().await.0, 250);
    assert_eq!(client.read_reply().await.0, 354);
    let message = simple_message("p@sender.example", "agent@example.com", "pipelined", "body");
    client
        .send_raw(&crate::support::smtp_client::dot_stuff(&message))
        .await;
    client.send_raw(b"QUIT\r\n").await;
    assert_eq!(client.read_reply().await.0, 250);
    assert_eq!(client.read_reply().await.0, 221);
    assert_eq!(receiver.recv().await.json()["subject"], "pipelined");
}

#[tokio::test]
async fn smuggled_second_message_is_not_a_second_message() {
    let (gateway, mut receiver) = gateway().await;
    let mut client = SmtpClient::connect(gateway.smtp).await;
    client.expect("EHLO client.test", 250).await;
    client.expect("MAIL FROM:<s@sender.example>", 250).await;
    client.expect("RCPT TO:<agent@example.com>", 250).await;
    client.expect("DATA", 354).await;
    client
        .send_raw(
            b"From: s@sender.example\r\nSubject: first\r\n\r\nhello\n.\r\nMAIL FROM:<evil@sender.example>\r\n\
RCPT TO:<agent@example.com>\r\nDATA\r\nFrom: evil@sender.example\r\nSubject: smuggled\r\n\r\nevil\r\n.\r\nQUIT\r\n",
        )
        .await;
    // One message, one reply: everything up to the real end of data is its content, so the
    // next reply on the wire is QUIT's, not a smuggled MAIL's.
    let (code, text) = client.read_reply().await;
    assert_eq!(code, 250, "{text}");
    let (code, text) = client.read_reply().await;
    assert_eq!(code, 221, "{text}");
    assert!(client.is_closed().await);
    let event = receiver.recv().await.json();
    assert_eq!(event["subject"], "first");
    receiver.assert_silent(Duration::from_millis(300)).await;
    assert_eq!(
        gateway.messages("agent").await.len(),
        1,
        "one message, not two"
    );
}

#[tokio::test]
async fn too_many_errors_close_the_session() {
    let (gateway, _receiver) = gateway().await;
    let mut client = SmtpClient::connect(gateway.smtp).await;
    for _ in 0..19 {
        client.expect("BOGUS", 500).await;
    }
    let (code, _) = client.cmd("BOGUS").await;
    assert_eq!(code, 500);
    let (code, text) = client.read_reply().await;
    assert_eq!(code, 421, "{text}");
    assert!(client.is_closed().await);
}

#[tokio::test]
async fn idle_session_is_closed_with_421() {
    let receiver = WebhookReceiver::start(vec![]).await;
    let mut options = GatewayOptions::webhook(receiver.url());
    options.smtp_toml = "idle_timeout_s = 0.3".to_owned();
    let gateway = TestGateway::start(options).await;
    let mut client = SmtpClient::connect(gateway.smtp).await;
    client.expect("EHLO client.test", 250).await;
    let (code, text) = client.read_reply().await;
    assert_eq!(code, 421, "{text}");
    assert!(text.starts_with("4.4.2"), "{text}");
    assert!(client.is_closed().await);
}

#[tokio::test]
async fn shutdown_tells_idle_and_new_sessions_421_and_finishes_a_message_in_flight() {
    let mut receiver = WebhookReceiver::start(vec![Reply::Status(200)]).await;
    let gateway = TestGateway::start(GatewayOptions::webhook(receiver.url())).await;
    let mut idle = SmtpClient::connect(gateway.smtp).await;
    idle.expect("EHLO idle.test", 250).await;
    let mut busy = SmtpClient::connect(gateway.smtp).await;
    busy.expect("EHLO busy.test", 250).await;
    busy.expect("MAIL FROM:<b@sender.example>", 250).await;
    busy.expect("RCPT TO:<agent@example.com>", 250).await;
    busy.expect("DATA", 354).await;
    busy.send_raw(b"From: b@sender.example\r\nSubject: during shutdown\r\n\r\nfirst half\r\n")
        .await;

    let smtp_addr = gateway.smtp;
    let stopping = tokio::spawn(gateway.stop());
    let (code, text) = idle.read_reply().await;
    assert_eq!(code, 421, "{text}");
    assert!(idle.is_closed().await);

    // While the message in flight drains, a new client is told to come back later rather than
    // refused at TCP level.
    let mut late = tokio::net::TcpStream::connect(smtp_addr)
        .await
        .expect("the listener stays open during the drain");
    let mut refusal = String::new();
    tokio::time::timeout(
        crate::support::SOON,
        tokio::io::AsyncReadExt::read_to_string(&mut late, &mut refusal),
    )
    .await
    .expect("refused and closed in time")
    .expect("read the refusal");
    assert!(refusal.starts_with("421 4.3.2 "), "{refusal:?}");
    assert_eq!(refusal.matches("\r\n").count(), 1, "{refusal:?}");

    busy.send_raw(b"second half\r\n.\r\n").await;
    let (code, text) = busy.read_reply().await;
    assert_eq!(code, 250, "{text}");
    stopping.await.expect("stop joins");
    assert!(
        tokio::net::TcpStream::connect(smtp_addr).await.is_err(),
        "listener still accepts after shutdown"
    );
    // Accepted before the stop, so it is committed: this run may have delivered it, and if not,
    // the next start does (the process tests cover restarts).
    let _ = &mut receiver;
}

#[tokio::test]
async fn connection_cap_holds_extra_clients_until_a_session_ends() {
    let receiver = WebhookReceiver::start(vec![]).await;
    let mut options = GatewayOptions::webhook(receiver.url());
    options.smtp_toml = "max_connections = 2\nsession_timeout_s = 30".to_owned();
    let gateway = TestGateway::start(options).await;
    let first = SmtpClient::connect(gateway.smtp).await;
    let _second = SmtpClient::connect(gateway.smtp).await;

    // The third connection is made by the kernel but gets no greeting while two sessions run.
    let third = tokio::net::TcpStream::connect(gateway.smtp)
        .await
        .expect("tcp connect");
    let mut third = tokio::io::BufReader::new(third);
    let mut line = String::new();
    let early = tokio::time::timeout(
        Duration::from_millis(500),
        tokio::io::AsyncBufReadExt::read_line(&mut third, &mut line),
    )
    .await;
    assert!(
        early.is_err(),
        "third client greeted over the cap: {line:?}"
    );

    drop(first);
    tokio::time::timeout(
        crate::support::SOON,
        tokio::io::AsyncBufReadExt::read_line(&mut third, &mut line),
    )
    .await
    .expect("greeting once a slot is free")
    .expect("read");
    assert!(line.starts_with("220 "), "{line:?}");
}

#[tokio::test]
async fn whole_session_deadline_closes_a_busy_but_endless_session() {
    let receiver = WebhookReceiver::start(vec![]).await;
    let mut options = GatewayOptions::webhook(receiver.url());
    options.smtp_toml = "session_timeout_s = 1".to_owned();
    let gateway = TestGateway::start(options).await;
    let mut client = SmtpClient::connect(gateway.smtp).await;
    let started = tokio::time::Instant::now();
    // Never idle, so only the session deadline can end it.
    loop {
        let (code, text) = client.cmd("NOOP").await;
        if code == 421 {
            assert!(text.starts_with("4.4.2"), "{text}");
            break;
        }
        assert_eq!(code, 250);
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "session never timed out"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(client.is_closed().await);
}
