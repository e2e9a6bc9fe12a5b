//! Hostile SMTP clients over real sockets: early talkers, pipelining floods, endless lines,
//! slowloris, connection floods (per address and global), header and MIME bombs.
//!
//! Smuggling variants and relay tricks are covered in `smtp_session.rs` and the proto unit tests.

use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::support::{GatewayOptions, SOON, SmtpClient, TestGateway, WebhookReceiver};

/// A gateway whose `[smtp]` section gets `smtp_lines` added.
async fn gateway_with(smtp_lines: &str, max_message_size: u64) -> (TestGateway, WebhookReceiver) {
    let receiver = WebhookReceiver::start(vec![]).await;
    let mut options = GatewayOptions::webhook(receiver.url());
    options.max_message_size = max_message_size;
    options.smtp_toml = smtp_lines.to_owned();
    (TestGateway::start(options).await, receiver)
}

/// Everything the server sends until it closes the connection. A reset after the server closed
/// with input still unread counts as closed.
async fn read_until_closed(stream: &mut TcpStream) -> String {
    let mut received = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let deadline = tokio::time::Instant::now() + SOON;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => panic!(
                "server did not close the connection; got {:?}",
                String::from_utf8_lossy(&received)
            ),
            Ok(Ok(0) | Err(_)) => return String::from_utf8_lossy(&received).into_owned(),
            Ok(Ok(n)) => received.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test]
async fn early_talker_is_refused_with_554_and_closed() {
    let (gateway, mut receiver) = gateway_with("greet_pause_s = 1.0", 1 << 20).await;
    let mut stream = TcpStream::connect(gateway.smtp).await.expect("connect");
    // A spam engine that does not wait for the greeting, pipelining a whole transaction.
    stream
        .write_all(
            b"EHLO spam.example\r\nMAIL FROM:<s@spam.example>\r\nRCPT TO:<agent@example.com>\r\nDATA\r\n",
        )
        .await
        .expect("write");
    let received = read_until_closed(&mut stream).await;
    assert!(received.starts_with("554 5.5.1 "), "{received:?}");
    assert!(!received.contains("220"), "greeted anyway: {received:?}");
    receiver.assert_silent(Duration::from_millis(300)).await;

    // A client that waits for the greeting is served as usual.
    let mut client = SmtpClient::connect(gateway.smtp).await;
    assert_eq!(client.greeting.0, 220);
    client.expect("EHLO patient.example", 250).await;
}

#[tokio::test]
async fn a_flood_of_pipelined_bad_commands_is_cut_off_not_answered_in_full() {
    let (gateway, _receiver) = gateway_with("max_errors = 10", 1 << 20).await;
    let mut client = SmtpClient::connect(gateway.smtp).await;
    let flood = "XYZZY nothing\r\n".repeat(20_000);
    client.send_raw(flood.as_bytes()).await;
    let mut errors = 0;
    loop {
        let (code, text) = client.read_reply().await;
        if code == 421 {
            assert!(text.starts_with("4.7.0"), "{text}");
            break;
        }
        assert_eq!(code, 500, "{text}");
        errors += 1;
    }
    assert_eq!(errors, 10, "answered past smtp.max_errors");
    assert!(client.is_closed().await);
}

#[tokio::test]
async fn two_pipelined_transactions_are_exactly_two_messages() {
    let (gateway, mut receiver) = gateway_with("", 1 << 20).await;
    let mut client = SmtpClient::connect(gateway.smtp).await;
    let mut script = b"EHLO pipeliner.example\r\n".to_vec();
    for subject in ["first", "second"] {
        script.extend_from_slice(
            format!("MAIL FROM:<p@sender.example>\r\nRCPT TO:<agent@example.com>\r\nDATA\r\nSubject: {subject}\r\n\r\nbody\r\n.\r\n")
                .as_bytes(),
        );
    }
    script.extend_from_slice(b"QUIT\r\n");
    // Everything in one write, DATA bodies included, without waiting for 354 (RFC 2920 forbids
    // it; the server must still not lose sync).
    client.send_raw(&script).await;
    let codes: Vec<u16> = {
        let mut codes = Vec::new();
        for _ in 0..10 {
            codes.push(client.read_reply().await.0);
        }
        codes
    };
    assert_eq!(codes, [250, 250, 250, 354, 250, 250, 250, 354, 250, 221]);
    let mut subjects = vec![
        receiver.recv().await.json()["subject"].clone(),
        receiver.recv().await.json()["subject"].clone(),
    ];
    subjects.sort_by_key(ToString::to_string);
    assert_eq!(
        subjects,
        [serde_json::json!("first"), serde_json::json!("second")]
    );
    receiver.assert_silent(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn an_endless_command_line_is_discarded_and_the_session_stays_in_sync() {
    let (gateway, _receiver) = gateway_with("", 1 << 20).await;
    let mut client = SmtpClient::connect(gateway.smtp).await;
    // 8 MiB without a line end: the server must discard it as it comes, not buffer it.
    let chunk = vec![b'A'; 1 << 20];
    for _ in 0..8 {
        client.send_raw(&chunk).await;
    }
    client.send_raw(b"\r\n").await;
    let (code, text) = client.read_reply().await;
    assert_eq!(code, 500, "{text}");
    assert!(text.starts_with("5.5.2"), "{text}");
    client.expect("NOOP", 250).await;
}

#[tokio::test]
async fn slowloris_dribbling_a_line_is_cut_at_the_idle_deadline() {
    let (gateway, _receiver) = gateway_with("idle_timeout_s = 0.6", 1 << 20).await;
    // Bytes keep coming, but the line never completes within the idle deadline: the deadline
    // covers the whole line, so trickling does not extend it.
    let dribble = tokio::spawn({
        let mut stream = TcpStream::connect(gateway.smtp).await.expect("connect");
        async move {
            let mut greeting = [0u8; 512];
            let _ = stream.read(&mut greeting).await;
            for byte in b"EHLO slowloris.example.with.a.long.name\r\n" {
                if stream.write_all(&[*byte]).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            read_until_closed(&mut stream).await
        }
    });
    let received = tokio::time::timeout(SOON, dribble)
        .await
        .expect("slowloris session ended")
        .expect("dribble task");
    assert!(received.starts_with("421 4.4.2 "), "{received:?}");
    let mut client = SmtpClient::connect(gateway.smtp).await;
    client.expect("EHLO fine.example", 250).await;
}

#[tokio::test]
async fn a_client_that_keeps_talking_is_cut_at_the_session_deadline() {
    let (gateway, _receiver) =
        gateway_with("idle_timeout_s = 1\nsession_timeout_s = 1.5", 1 << 20).await;
    let mut client = SmtpClient::connect(gateway.smtp).await;
    client.expect("EHLO busy.example", 250).await;
    let deadline = tokio::time::Instant::now() + SOON;
    loop {
        assert!(tokio::time::Instant::now() < deadline, "never cut off");
        let (code, text) = client.cmd("NOOP").await;
        if code == 421 {
            assert!(text.starts_with("4.4.2"), "{text}");
            break;
        }
        assert_eq!(code, 250, "{text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(client.is_closed().await);
}

#[tokio::test]
async fn connections_past_the_per_address_cap_get_421_and_a_freed_slot_is_reusable() {
    let (gateway, _receiver) = gateway_with("max_connections_per_ip = 3", 1 << 20).await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        let client = SmtpClient::connect(gateway.smtp).await;
        assert_eq!(client.greeting.0, 220);
        clients.push(client);
    }
    let mut stream = TcpStream::connect(gateway.smtp).await.expect("connect");
    let received = read_until_closed(&mut stream).await;
    assert!(received.starts_with("421 4.7.0 "), "{received:?}");

    let mut first = clients.remove(0);
    first.expect("QUIT", 221).await;
    assert!(first.is_closed().await);
    // The slot is given back when the session task ends, just after the 221.
    crate::support::eventually("a freed per-address slot", || async {
        let mut stream = TcpStream::connect(gateway.smtp).await.ok()?;
        let mut reply = [0u8; 3];
        stream.read_exact(&mut reply).await.ok()?;
        (&reply == b"220").then_some(())
    })
    .await;
}

#[tokio::test]
async fn connections_past_the_global_cap_wait_for_a_free_slot() {
    let (gateway, _receiver) = gateway_with("max_connections = 2", 1 << 20).await;
    let mut first = SmtpClient::connect(gateway.smtp).await;
    let _second = SmtpClient::connect(gateway.smtp).await;
    let mut third = TcpStream::connect(gateway.smtp).await.expect("connect");
    let mut greeting = [0u8; 3];
    // Not served while two sessions hold the slots: it waits in the backlog.
    assert!(
        tokio::time::timeout(Duration::from_millis(1500), third.read_exact(&mut greeting))
            .await
            .is_err(),
        "a third session was served past smtp.max_connections = 2"
    );
    first.expect("QUIT", 221).await;
    tokio::time::timeout(SOON, third.read_exact(&mut greeting))
        .await
        .expect("greeting once a slot is free")
        .expect("read greeting");
    assert_eq!(&greeting, b"220");
}

#[tokio::test]
async fn a_header_bomb_is_accepted_and_bounded() {
    let (gateway, mut receiver) = gateway_with("", 8 << 20).await;
    let mut message = String::from("From: a@sender.example\r\nSubject: header bomb\r\n");
    for n in 0..100_000 {
        message.push_str(&format!("X-Bomb-{n}: v\r\n"));
    }
    message.push_str("\r\nbody\r\n");
    let mut client = SmtpClient::connect(gateway.smtp).await;
    let (code, text) = client
        .send_message(
            "a@sender.example",
            &["agent@example.com"],
            message.as_bytes(),
        )
        .await;
    assert_eq!(code, 250, "{text}");
    let request = receiver.recv().await;
    assert_eq!(request.json()["subject"], "header bomb");
    assert!(
        request.body.len() < 4 * message.len(),
        "event of {} bytes for a {}-byte message",
        request.body.len(),
        message.len()
    );
}

#[tokio::test]
async fn a_mime_bomb_of_deep_and_wide_parts_is_accepted_and_bounded() {
    let (gateway, mut receiver) = gateway_with("", 8 << 20).await;
    let depth = 10_000;
    let mut message = String::from(
        "From: a@sender.example\r\nSubject: mime bomb\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/mixed; boundary=\"b0\"\r\n\r\n",
    );
    for level in 1..depth {
        message.push_str(&format!(
            "--b{}\r\nContent-Type: multipart/mixed; boundary=\"b{level}\"\r\n\r\n",
            level - 1
        ));
    }
    // The innermost part holds 10k small attachments side by side.
    for n in 0..10_000 {
        message.push_str(&format!(
            "--b{}\r\nContent-Type: application/octet-stream\r\n\
             Content-Disposition: attachment; filename=\"f{n}.bin\"\r\n\r\nx\r\n",
            depth - 1
        ));
    }
    for level in (0..depth).rev() {
        message.push_str(&format!("--b{level}--\r\n"));
    }
    let mut client = SmtpClient::connect(gateway.smtp).await;
    let (code, text) = client
        .send_message(
            "a@sender.example",
            &["agent@example.com"],
            message.as_bytes(),
        )
        .await;
    assert_eq!(code, 250, "{text}");
    let request = receiver.recv().await;
    let event = request.json();
    assert_eq!(event["subject"], "mime bomb");
    assert!(
        request.body.len() < 4 * message.len(),
        "event of {} bytes for a {}-byte message",
        request.body.len(),
        message.len()
    );
}
