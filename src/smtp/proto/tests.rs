use std::time::Duration;

use super::*;

/// Feeds `input` to a receiver split at LF, like the session's reader does, and returns what
/// follows the end-of-data marker (None when there was none) plus the result.
#[track_caller]
fn receive(input: &[u8], max_size: u64) -> (Option<Vec<u8>>, Result<Vec<u8>, DataRejection>) {
    let mut receiver = DataReceiver::new(max_size, 1000, 1 << 20);
    let mut rest = input;
    while !rest.is_empty() {
        let end = rest
            .iter()
            .position(|b| *b == b'\n')
            .map_or(rest.len(), |idx| idx + 1);
        let (line, tail) = rest.split_at(end);
        rest = tail;
        if receiver.push(DataLine::Complete(line)) {
            return (Some(rest.to_vec()), receiver.finish());
        }
    }
    (None, receiver.finish())
}

#[test]
fn plain_message_ends_at_crlf_dot_crlf_and_is_unstuffed() {
    let (after, message) = receive(
        b"Subject: a\r\n\r\n..leading dot\r\nend\r\n.\r\nQUIT\r\n",
        1000,
    );
    assert_eq!(after.as_deref(), Some(&b"QUIT\r\n"[..]));
    assert_eq!(
        message.expect("accepted"),
        b"Subject: a\r\n\r\n.leading dot\r\nend\r\n"
    );
}

/// Every end-of-data look-alike of the SMTP smuggling research, each followed by a smuggled
/// transaction and then the real `<CR><LF>.<CR><LF>`: none ends the data early, and what the
/// receiver keeps never has a bare CR or LF. Lone-CR variants refuse the message; lone-LF ones
/// keep the smuggled text as content, with its line ends made CRLF.
#[test]
fn no_end_of_data_variant_ends_the_data_early() {
    const SMUGGLED: &[u8] = b"MAIL FROM:<evil@x.example>\r\nRCPT TO:<a@b.example>\r\nDATA\r\nevil";
    for (variant, expected) in [
        (&b"\r.\n"[..], Err(DataRejection::BareCarriageReturn)),
        (b"\r\n.\r", Err(DataRejection::BareCarriageReturn)),
        (b"\r.\r", Err(DataRejection::BareCarriageReturn)),
        (b"\r.\r\n", Err(DataRejection::BareCarriageReturn)),
        (b"\n.\n", Ok(())),
        (b"\n.\r\n", Ok(())),
        (b"\r\n.\n", Ok(())),
    ] {
        let shown = String::from_utf8_lossy(variant).escape_debug().to_string();
        let input = [
            &b"Subject: a\r\n\r\nhello"[..],
            variant,
            SMUGGLED,
            variant,
            b"\r\n.\r\nQUIT\r\n",
        ]
        .concat();
        let (after, result) = receive(&input, 10_000);
        assert_eq!(
            after.as_deref(),
            Some(&b"QUIT\r\n"[..]),
            "{shown}: data did not end exactly at the real end"
        );
        match (result, expected) {
            (Err(rejection), Err(expected)) => assert_eq!(rejection, expected, "{shown}"),
            (Ok(message), Ok(())) => {
                assert!(!has_bare_cr_or_lf(&message), "{shown}: kept {message:?}");
                assert!(
                    String::from_utf8_lossy(&message).contains("MAIL FROM:<evil@x.example>"),
                    "{shown}: smuggled text is not content"
                );
            }
            (result, expected) => panic!("{shown}: got {result:?}, expected {expected:?}"),
        }
    }
}

fn has_bare_cr_or_lf(bytes: &[u8]) -> bool {
    bytes.iter().enumerate().any(|(idx, byte)| match byte {
        b'\r' => bytes.get(idx + 1) != Some(&b'\n'),
        b'\n' => idx == 0 || bytes[idx - 1] != b'\r',
        _ => false,
    })
}

#[test]
fn bare_cr_smuggling_is_rejected() {
    let (after, result) = receive(b"a\r.\r\nMAIL FROM:<x@y>\r\n\r\n.\r\n", 1000);
    assert_eq!(after.as_deref(), Some(&b""[..]));
    assert_eq!(result, Err(DataRejection::BareCarriageReturn));
}

#[test]
fn an_overlong_line_rejects_the_message_but_the_data_still_ends_at_its_marker() {
    let mut receiver = DataReceiver::new(100_000, 1000, 1 << 20);
    assert!(!receiver.push(DataLine::Complete(b"Subject: a\r\n")));
    assert!(!receiver.push(DataLine::Complete(b"\r\n")));
    assert!(!receiver.push(DataLine::TooLong { ended_crlf: true }));
    assert!(!receiver.push(DataLine::Complete(b"after\r\n")));
    assert!(receiver.push(DataLine::Complete(b".\r\n")));
    assert_eq!(
        receiver.finish(),
        Err(DataRejection::LineTooLong { limit: 1000 })
    );

    // An overlong line ended by a bare LF is no line start for the end marker either.
    let mut receiver = DataReceiver::new(100_000, 1000, 1 << 20);
    assert!(!receiver.push(DataLine::TooLong { ended_crlf: false }));
    assert!(!receiver.push(DataLine::Complete(b".\r\n")));
    assert!(receiver.push(DataLine::Complete(b".\r\n")));

    // One line longer than the whole message limit is the size problem it is.
    let mut receiver = DataReceiver::new(1000, 1000, 1 << 20);
    assert!(!receiver.push(DataLine::TooLong { ended_crlf: true }));
    assert!(receiver.push(DataLine::Complete(b".\r\n")));
    assert_eq!(
        receiver.finish(),
        Err(DataRejection::TooBig { limit: 1000 })
    );
}

#[test]
fn transfer_deadline_starts_with_the_budget_and_earns_time_per_byte_up_to_it() {
    let start = std::time::Instant::now();
    let budget = Duration::from_secs(10);
    let mut rate = TransferDeadline::new(start, budget, 100);
    assert_eq!(rate.deadline(), start + budget);

    // 4 s later, 100 bytes earned 1 s: 7 s left rather than the idle timeout's fresh 10.
    rate.received(start + Duration::from_secs(4), 100);
    assert_eq!(rate.deadline(), start + Duration::from_secs(11));

    // A burst can never buy more than the budget ahead of now.
    rate.received(start + Duration::from_secs(5), 1_000_000);
    assert_eq!(rate.deadline(), start + Duration::from_secs(15));

    // One line per (budget - 1 s) runs out after a few lines.
    let mut rate = TransferDeadline::new(start, budget, 100);
    let mut now = start;
    let mut lines = 0;
    while now + Duration::from_secs(9) < rate.deadline() {
        now += Duration::from_secs(9);
        rate.received(now, 80);
        lines += 1;
    }
    assert!(lines < 5, "a slowloris kept going for {lines} lines");
}

#[test]
fn bare_lf_lines_are_normalized_to_crlf() {
    let (_, result) = receive(b"Subject: a\n\nbody\n\r\n.\r\n", 1000);
    assert_eq!(result.expect("accepted"), b"Subject: a\r\n\r\nbody\r\n\r\n");
}

#[test]
fn oversize_is_read_to_the_end_then_rejected() {
    let (after, result) = receive(b"0123456789\r\n0123456789\r\n.\r\nNOOP\r\n", 15);
    assert_eq!(after.as_deref(), Some(&b"NOOP\r\n"[..]));
    assert_eq!(result, Err(DataRejection::TooBig { limit: 15 }));
}

#[test]
fn a_header_section_over_its_limit_is_read_to_the_end_then_rejected() {
    let mut receiver = DataReceiver::new(100_000, 1000, 30);
    for line in [&b"Subject: 12345678901234\r\n"[..], b"X: 1\r\n", b"\r\n"] {
        assert!(!receiver.push(DataLine::Complete(line)));
    }
    // 25 + 6 octets: one past the limit, found before the body; the body is still read.
    assert!(!receiver.push(DataLine::Complete(b"body\r\n")));
    assert!(receiver.push(DataLine::Complete(b".\r\n")));
    assert_eq!(
        receiver.finish(),
        Err(DataRejection::HeaderTooBig { limit: 30 })
    );

    // Exactly at the limit, and a body larger than it: only the header section counts.
    let mut receiver = DataReceiver::new(100_000, 1000, 30);
    for line in [&b"Subject: 1234567890123\r\n"[..], b"X: 1\r\n", b"\r\n"] {
        assert!(!receiver.push(DataLine::Complete(line)));
    }
    assert!(!receiver.push(DataLine::Complete(
        b"a body line longer than thirty octets\r\n"
    )));
    assert!(receiver.push(DataLine::Complete(b".\r\n")));
    assert!(receiver.finish().is_ok());
}

#[test]
fn mail_from_accepts_null_sender_and_esmtp_params() {
    let mail =
        parse_mail_from(b"MAIL FROM:<> SIZE=1000 BODY=8BITMIME SMTPUTF8\r\n", 5000).expect("ok");
    assert_eq!(
        mail,
        MailFrom {
            reverse_path: None,
            declared_size: Some(1000),
            body_8bit: true,
            smtputf8: true
        }
    );
    let mail = parse_mail_from(b"mail from: <@relay.example:Bob@Example.org>", 10).expect("ok");
    assert_eq!(mail.reverse_path.as_deref(), Some("Bob@Example.org"));
}

#[test]
fn mail_from_errors_have_precise_codes() {
    let code = |line: &[u8]| parse_mail_from(line, 100).err().map(|reply| reply.code);
    assert_eq!(code(b"MAIL FROM:<a@b> SIZE=101"), Some(552));
    assert_eq!(code(b"MAIL FROM:<a@b> SIZE=big"), Some(501));
    assert_eq!(code(b"MAIL FROM:<a@b> RET=FULL"), Some(555));
    assert_eq!(code(b"MAIL FROM:<a@b"), Some(501));
    assert_eq!(code(b"MAIL FROM:<not an address>"), Some(553));
    assert_eq!(code(b"MAIL TO:<a@b>"), Some(501));
}

#[test]
fn rcpt_to_classifies_relay_tricks() {
    let parse = |line: &[u8]| parse_rcpt_to(line).expect("parsed");
    assert_eq!(
        parse(b"RCPT TO:<Agent@Example.com>"),
        RcptTo::Mailbox {
            address: "agent@example.com".into(),
            as_sent: "Agent@Example.com".into(),
        }
    );
    for trick in [
        &b"RCPT TO:<user%other.org@example.com>"[..],
        b"RCPT TO:<other.org!user@example.com>",
        b"RCPT TO:<\"user@other.org\"@example.com>",
        b"RCPT TO:<@example.com:user@other.org>",
        b"RCPT TO:<postmaster>",
    ] {
        assert!(
            matches!(parse(trick), RcptTo::RelayAttempt(_)),
            "{} not treated as relay attempt",
            String::from_utf8_lossy(trick)
        );
    }
    assert_eq!(
        parse_rcpt_to(b"RCPT TO:<>").err().map(|r| r.code),
        Some(501)
    );
    assert_eq!(
        parse_rcpt_to(b"RCPT TO:<a@b.c> NOTIFY=NEVER")
            .err()
            .map(|r| r.code),
        Some(555)
    );
}

#[test]
fn replies_are_crlf_terminated_and_never_split_by_injected_newlines() {
    let mut out = Vec::new();
    Reply::new(550, "5.1.1", "no such user <a\r\nb>").write_to(&mut out);
    Reply::multiline(250, vec!["host".into(), "SIZE 10".into()]).write_to(&mut out);
    assert_eq!(
        out,
        b"550 5.1.1 no such user <ab>\r\n250-host\r\n250 SIZE 10\r\n"
    );
}

#[test]
fn http_requests_and_header_lines_are_foreign() {
    for line in [
        &b"GET / HTTP/1.1\r\n"[..],
        b"post /x HTTP/1.0\r\n",
        b"CONNECT mx:25 HTTP/1.1\r\n",
        b"Host: mx.example\r\n",
        b"User-Agent: curl/8\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
    ] {
        assert!(
            foreign_command(line).is_some(),
            "{}",
            String::from_utf8_lossy(line)
        );
    }
    for line in [
        &b"EHLO client.example\r\n"[..],
        b"MAIL FROM:<a@b>\r\n",
        b"RCPT TO:<a@b>\r\n",
        b"DATA\r\n",
        b"GETX\r\n",
        b":\r\n",
        b"\r\n",
    ] {
        assert_eq!(
            foreign_command(line),
            None,
            "{}",
            String::from_utf8_lossy(line)
        );
    }
    // The word is echoed: nothing unprintable gets into the reply.
    assert_eq!(foreign_command(b"Ho\x01st:\r\n").as_deref(), Some("HO?ST:"));
}

#[test]
fn control_bytes_anywhere_but_the_line_ending_are_found() {
    assert!(!has_control_bytes(b"EHLO a.example\r\n"));
    assert!(!has_control_bytes(b"EHLO a.example\n"));
    assert!(!has_control_bytes(b"EHLO\ta.example\r\n"));
    assert!(!has_control_bytes("RCPT TO:<j\u{f6}rg@b>\r\n".as_bytes()));
    for line in [
        &b"EHLO a\0b\r\n"[..],
        b"EHLO a\rb\r\n",
        b"EHLO a\x1bb\r\n",
        b"EHLO a\x7f\r\n",
        b"\0\r\n",
    ] {
        assert!(has_control_bytes(line), "{line:?}");
    }
}
