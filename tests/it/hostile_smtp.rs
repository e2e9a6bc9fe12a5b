//! Hostile SMTP clients over real sockets: early talkers, pipelining floods, endless lines,
//! slowloris, connection floods (per address and global), header and MIME bombs.
//!
//! Also every end-of-data variant of SMTP smuggling, the DATA line limit and the minimum DATA
//! rate. Relay tricks are covered in `smtp_session.rs`.

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
async fn read_until_closed<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) -> String {
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
    assert_eq!(
        gateway.messages("agent").await,
        Vec::<serde_json::Value>::new()
    );

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
    assert_eq!(gateway.messages("agent").await.len(), 2);
    assert_eq!(gateway.all_deliveries().await.len(), 2);
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

/// A message of `headers` small header fields after From and Subject.
fn header_bomb(subject: &str, headers: usize) -> String {
    let mut message = format!("From: a@sender.example\r\nSubject: {subject}\r\n");
    for n in 0..headers {
        message.push_str(&format!("X-Bomb-{n}: v\r\n"));
    }
    message.push_str("\r\nbody\r\n");
    message
}

#[tokio::test]
async fn a_header_section_over_max_header_bytes_is_refused_and_one_under_it_is_bounded() {
    let (gateway, mut receiver) = gateway_with("max_header_bytes = 100000", 8 << 20).await;
    let mut client = SmtpClient::connect(gateway.smtp).await;
    // About 1.5 MB of header fields in a message well within the size limit.
    let bomb = header_bomb("header bomb", 100_000);
    let (code, text) = client
        .send_message("a@sender.example", &["agent@example.com"], bomb.as_bytes())
        .await;
    assert_eq!(code, 552, "{text}");
    assert!(
        text.starts_with("5.3.4 ") && text.contains("header section"),
        "{text}"
    );
    receiver.assert_silent(Duration::from_millis(300)).await;
    assert!(gateway.stored_messages().is_empty());
    assert_eq!(
        gateway.messages("agent").await,
        Vec::<serde_json::Value>::new()
    );

    // Just under the cap, on the same session: accepted, and the event stays in proportion.
    let message = header_bomb("many headers", 6_000);
    assert!(message.find("\r\n\r\n").expect("header end") < 100_000);
    client.expect("MAIL FROM:<a@sender.example>", 250).await;
    client.expect("RCPT TO:<agent@example.com>", 250).await;
    let (code, text) = client.data(message.as_bytes()).await;
    assert_eq!(code, 250, "{text}");
    let request = receiver.recv().await;
    assert_eq!(request.json()["subject"], "many headers");
    assert!(
        request.body.len() < 4 * message.len(),
        "event of {} bytes for a {}-byte message",
        request.body.len(),
        message.len()
    );
}

/// A multipart/mixed message with `parts` small attachments side by side.
fn wide_mime(subject: &str, parts: usize) -> String {
    let mut message = format!(
        "From: a@sender.example\r\nSubject: {subject}\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n"
    );
    for n in 0..parts {
        message.push_str(&format!(
            "--b\r\nContent-Type: application/octet-stream\r\n\
             Content-Disposition: attachment; filename=\"f{n}.bin\"\r\n\r\nx\r\n"
        ));
    }
    message.push_str("--b--\r\n");
    message
}

#[tokio::test]
async fn mime_parts_past_the_parse_cap_are_left_unparsed_with_a_warning_and_stored_whole() {
    let (gateway, mut receiver) = gateway_with("greet_pause_s = 0", 8 << 20).await;
    for (parts, cut) in [(1_500, false), (2_500, true)] {
        let message = wide_mime(&format!("{parts} parts"), parts);
        let mut client = SmtpClient::connect(gateway.smtp).await;
        let (code, text) = client
            .send_message(
                "a@sender.example",
                &["agent@example.com"],
                message.as_bytes(),
            )
            .await;
        assert_eq!(code, 250, "{text}");
        let event = receiver.recv().await.json();
        assert_eq!(event["subject"], format!("{parts} parts"));
        let warnings = event["warnings"].to_string();
        assert_eq!(
            warnings.contains("MIME structure cut after 2000 boundary lines"),
            cut,
            "{parts} parts: {warnings}"
        );
        // Listed attachments stop at 1000 either way; the count of the rest tells how many
        // parts were parsed.
        let unlisted = if cut { 2_000 - 1_000 } else { parts - 1_000 };
        assert!(
            warnings.contains(&format!("{unlisted} attachments not listed")),
            "{parts} parts: {warnings}"
        );
        let message_id = text.rsplit(' ').next().expect("queued as id");
        let (status, raw) = gateway
            .api_bytes(&format!("/v1/messages/{message_id}/raw"))
            .await;
        assert_eq!(status, 200);
        assert_eq!(raw, message.as_bytes(), "the stored message is whole");
    }
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
        event["warnings"]
            .to_string()
            .contains("MIME structure cut after 2000 boundary lines"),
        "{}",
        event["warnings"]
    );
    assert!(
        request.body.len() < 4 * message.len(),
        "event of {} bytes for a {}-byte message",
        request.body.len(),
        message.len()
    );
}

#[tokio::test]
async fn data_slower_than_the_minimum_rate_is_cut_with_421_and_nothing_is_stored() {
    // A high minimum rate, so the 1 s of credit DATA starts with runs out within a few lines.
    let (gateway, mut receiver) =
        gateway_with("idle_timeout_s = 1\nmin_data_rate = 100000", 1 << 20).await;
    let stream = TcpStream::connect(gateway.smtp).await.expect("connect");
    let (mut read_half, mut write_half) = stream.into_split();
    let mut greeting = [0u8; 4];
    read_half.read_exact(&mut greeting).await.expect("greeting");
    assert_eq!(&greeting, b"220 ");
    // Each line comes well within the idle timeout, so only the rate can end this.
    let trickle = tokio::spawn(async move {
        let start = b"EHLO slow.example\r\nMAIL FROM:<s@sender.example>\r\n\
RCPT TO:<agent@example.com>\r\nDATA\r\nSubject: trickled\r\n\r\n";
        if write_half.write_all(start).await.is_err() {
            return;
        }
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if write_half
                .write_all(b"a line of body text\r\n")
                .await
                .is_err()
            {
                return;
            }
        }
        let _ = write_half.write_all(b".\r\n").await;
    });
    let received = read_until_closed(&mut read_half).await;
    trickle.abort();
    // The first line is the rest of the greeting; EHLO's continuation lines are left out.
    let replies: Vec<&str> = received
        .lines()
        .skip(1)
        .filter(|line| !line.starts_with("250-"))
        .collect();
    assert_eq!(replies.len(), 5, "{received:?}");
    assert!(replies[3].starts_with("354 "), "{received:?}");
    assert!(
        replies[4].starts_with("421 4.4.2 ") && replies[4].contains("100000 bytes/s"),
        "{received:?}"
    );
    receiver.assert_silent(Duration::from_millis(300)).await;
    assert!(gateway.stored_messages().is_empty());
    assert_eq!(
        gateway.messages("agent").await,
        Vec::<serde_json::Value>::new()
    );

    // A message sent at the speed of the link is not affected.
    let mut client = SmtpClient::connect(gateway.smtp).await;
    let body = "a line of body text\r\n".repeat(500);
    let message = crate::support::simple_message(
        "s@sender.example",
        "agent@example.com",
        "at full speed",
        &body,
    );
    let (code, text) = client
        .send_message("s@sender.example", &["agent@example.com"], &message)
        .await;
    assert_eq!(code, 250, "{text}");
    assert_eq!(receiver.recv().await.json()["subject"], "at full speed");
}

#[tokio::test]
async fn a_data_line_over_max_text_line_gets_554_and_the_session_goes_on() {
    let (gateway, mut receiver) = gateway_with("max_text_line = 1000", 1 << 20).await;
    let mut client = SmtpClient::connect(gateway.smtp).await;
    // 1001 octets with its CRLF: one past the limit.
    let long_line = "x".repeat(999);
    let message = crate::support::simple_message(
        "s@sender.example",
        "agent@example.com",
        "long line",
        &long_line,
    );
    let (code, text) = client
        .send_message("s@sender.example", &["agent@example.com"], &message)
        .await;
    assert_eq!(code, 554, "{text}");
    assert!(text.starts_with("5.6.0 "), "{text}");
    receiver.assert_silent(Duration::from_millis(300)).await;
    assert!(gateway.stored_messages().is_empty());
    assert_eq!(
        gateway.messages("agent").await,
        Vec::<serde_json::Value>::new()
    );

    // Exactly at the limit, on the same session.
    client.expect("MAIL FROM:<s@sender.example>", 250).await;
    client.expect("RCPT TO:<agent@example.com>", 250).await;
    let message = crate::support::simple_message(
        "s@sender.example",
        "agent@example.com",
        "line at the limit",
        &"x".repeat(998),
    );
    let (code, text) = client.data(&message).await;
    assert_eq!(code, 250, "{text}");
    let event = receiver.recv().await.json();
    assert_eq!(event["subject"], "line at the limit");
    receiver.assert_silent(Duration::from_millis(300)).await;
    assert_eq!(gateway.messages("agent").await.len(), 1);
}

/// Every end-of-data look-alike of the SMTP smuggling research, inside a body and followed by a
/// smuggled transaction, then the real end. Lone CRs refuse the message (a downstream MTA could
/// read them as line ends); lone LFs never end the data, so the smuggled text stays content.
#[tokio::test]
async fn no_end_of_data_variant_smuggles_a_second_message() {
    let (gateway, mut receiver) = gateway_with("greet_pause_s = 0", 1 << 20).await;
    for (variant, name, expected) in [
        (&b"\r.\n"[..], "CR.LF", 554),
        (b"\r\n.\r", "CRLF.CR", 554),
        (b"\r.\r", "CR.CR", 554),
        (b"\r.\r\n", "CR.CRLF", 554),
        (b"\n.\n", "LF.LF", 250),
        (b"\n.\r\n", "LF.CRLF", 250),
        (b"\r\n.\n", "CRLF.LF", 250),
    ] {
        let mut client = SmtpClient::connect(gateway.smtp).await;
        client.expect("EHLO smuggler.example", 250).await;
        client.expect("MAIL FROM:<s@sender.example>", 250).await;
        client.expect("RCPT TO:<agent@example.com>", 250).await;
        client.expect("DATA", 354).await;
        let script = [
            format!("From: s@sender.example\r\nSubject: smuggling {name}\r\n\r\nhello").as_bytes(),
            variant,
            b"MAIL FROM:<evil@sender.example>\r\nRCPT TO:<agent@example.com>\r\nDATA\r\n\
From: evil@sender.example\r\nSubject: smuggled\r\n\r\nevil",
            variant,
            b"\r\n.\r\nQUIT\r\n",
        ]
        .concat();
        client.send_raw(&script).await;
        // The raw replies: one for the transaction, then QUIT's; nothing from a second one.
        let (code, text) = client.read_reply().await;
        assert_eq!(code, expected, "{name}: {text}");
        assert_eq!(client.read_reply().await.0, 221, "{name}");
        assert!(client.is_closed().await, "{name}");
        if code != 250 {
            continue;
        }
        let event = receiver.recv().await.json();
        assert_eq!(event["subject"], format!("smuggling {name}"));
        let message_id = text.rsplit(' ').next().expect("queued as id");
        let (status, raw) = gateway
            .api_bytes(&format!("/v1/messages/{message_id}/raw"))
            .await;
        assert_eq!(status, 200, "{name}");
        assert!(
            !has_bare_cr_or_lf(&raw),
            "{name}: stored {:?}",
            String::from_utf8_lossy(&raw)
        );
        assert!(
            String::from_utf8_lossy(&raw).contains("MAIL FROM:<evil@sender.example>"),
            "{name}: the smuggled text is not part of the one message"
        );
    }
    receiver.assert_silent(Duration::from_millis(300)).await;
    assert_eq!(gateway.stored_messages().len(), 3);
    assert_eq!(gateway.messages("agent").await.len(), 3);
}

fn has_bare_cr_or_lf(bytes: &[u8]) -> bool {
    bytes.iter().enumerate().any(|(idx, byte)| match byte {
        b'\r' => bytes.get(idx + 1) != Some(&b'\n'),
        b'\n' => idx == 0 || bytes[idx - 1] != b'\r',
        _ => false,
    })
}

/// A browser or HTTP client pointed at the SMTP port (a cross-protocol attack): the first
/// HTTP-looking line ends the session, so the header lines behind it are never answered.
#[tokio::test]
async fn http_requests_are_answered_once_and_closed() {
    let (gateway, mut receiver) = gateway_with("greet_pause_s = 0", 1 << 20).await;
    for request in [
        &b"GET / HTTP/1.1\r\nHost: mx.test.example\r\nUser-Agent: curl/8\r\n\r\n"[..],
        b"POST /form HTTP/1.1\r\nHost: x\r\nContent-Length: 60\r\n\r\nEHLO x\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<agent@example.com>\r\n",
        b"CONNECT mx.test.example:25 HTTP/1.1\r\n\r\n",
    ] {
        let mut stream = TcpStream::connect(gateway.smtp).await.expect("connect");
        let mut greeting = [0u8; 4];
        stream.read_exact(&mut greeting).await.expect("greeting");
        assert_eq!(&greeting, b"220 ");
        stream.write_all(request).await.expect("write");
        let received = read_until_closed(&mut stream).await;
        // The rest of the greeting line, then exactly one reply.
        let replies: Vec<&str> = received.lines().skip(1).collect();
        assert_eq!(replies.len(), 1, "{received:?}");
        assert!(replies[0].starts_with("554 5.7.0 "), "{received:?}");
    }
    // A header line on its own is foreign too.
    let mut client = SmtpClient::connect(gateway.smtp).await;
    let (code, _) = client.cmd("User-Agent: Mozilla/5.0").await;
    assert_eq!(code, 554);
    assert!(client.is_closed().await);
    receiver.assert_silent(Duration::from_millis(300)).await;
}

/// NUL and other control characters in a command line get `501 5.5.2`; the session goes on.
#[tokio::test]
async fn control_characters_in_commands_get_501() {
    let (gateway, _receiver) = gateway_with("greet_pause_s = 0", 1 << 20).await;
    let mut client = SmtpClient::connect(gateway.smtp).await;
    for line in [
        &b"EHLO evil\0.example\r\n"[..],
        b"HELO a\x1b[31m.example\r\n",
        b"MAIL FROM:<a@b\x7f.example>\r\n",
        b"EHLO a\rb.example\r\n",
    ] {
        client.send_raw(line).await;
        let (code, text) = client.read_reply().await;
        assert_eq!(code, 501, "{line:?}: {text}");
        assert!(text.starts_with("5.5.2 "), "{text}");
    }
    client.expect("EHLO good.example", 250).await;
    client.expect("MAIL FROM:<a@sender.example>", 250).await;
    client.expect("RCPT TO:<agent@example.com>", 250).await;
}
