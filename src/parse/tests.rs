use super::*;

#[test]
fn multipart_alternative_with_attachment() {
    let raw = b"From: =?utf-8?q?J=C3=BCrgen?= <j@example.org>\r\n\
To: Agent <agent@example.com>, other@example.com\r\n\
Cc: cc@example.net\r\n\
Subject: =?utf-8?b?SGVsbG8g8J+Riw==?=\r\n\
Date: Thu, 16 Apr 2026 12:00:00 +0000\r\n\
Message-ID: <abc@example.org>\r\n\
In-Reply-To: <prev@example.org>\r\n\
References: <root@example.org> <prev@example.org>\r\n\
MIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=outer\r\n\
\r\n\
--outer\r\n\
Content-Type: multipart/alternative; boundary=inner\r\n\
\r\n\
--inner\r\n\
Content-Type: text/plain; charset=utf-8\r\n\
\r\n\
Hi there\r\n\
--inner\r\n\
Content-Type: text/html; charset=utf-8\r\n\
\r\n\
<p>Hi there</p>\r\n\
--inner--\r\n\
--outer\r\n\
Content-Type: application/pdf; name=report.pdf\r\n\
Content-Disposition: attachment; filename=report.pdf\r\n\
Content-Transfer-Encoding: base64\r\n\
\r\n\
JVBERi0xLjQK\r\n\
--outer--\r\n";
    let parsed = parse(raw);
    assert_eq!(
        parsed.from,
        Some(Mailbox {
            address: "j@example.org".into(),
            name: Some("Jürgen".into())
        })
    );
    assert_eq!(parsed.to.len(), 2);
    assert_eq!(parsed.to[0].name.as_deref(), Some("Agent"));
    assert_eq!(parsed.cc[0].address, "cc@example.net");
    assert_eq!(parsed.subject.as_deref(), Some("Hello 👋"));
    assert_eq!(parsed.date_ms, Some(1_776_340_800_000));
    assert_eq!(parsed.message_id.as_deref(), Some("abc@example.org"));
    assert_eq!(parsed.in_reply_to.as_deref(), Some("prev@example.org"));
    assert_eq!(parsed.references, ["root@example.org", "prev@example.org"]);
    assert_eq!(
        parsed.plain_text.as_deref().map(str::trim),
        Some("Hi there")
    );
    assert_eq!(
        parsed.html.as_deref().map(str::trim),
        Some("<p>Hi there</p>")
    );
    assert!(parsed.alternative_content);
    assert_eq!(parsed.attachments.len(), 1);
    let attachment = &parsed.attachments[0];
    assert_eq!(attachment.filename.as_deref(), Some("report.pdf"));
    assert_eq!(attachment.content_type, "application/pdf");
    assert_eq!(attachment.content_encoding.as_deref(), Some("base64"));
    assert_eq!(attachment.size, 9);
    assert!(parsed.warnings.is_empty(), "{:?}", parsed.warnings);
}

#[test]
fn html_only_has_no_plain_text_but_a_text_rendering() {
    let raw = b"From: a@example.org\r\nDate: Thu, 16 Apr 2026 12:00:00 +0000\r\n\
Content-Type: text/html\r\n\r\n<p>Only <b>html</b></p>\r\n";
    let parsed = parse(raw);
    assert_eq!(parsed.plain_text, None);
    assert!(parsed.html.is_some());
    assert!(!parsed.alternative_content);
    let text = parsed.body_as_text.expect("html converted to text");
    assert!(text.contains("Only") && !text.contains("<b>"), "{text}");
}

#[test]
fn a_blank_text_part_gives_way_to_the_html_in_the_prompt_text() {
    let raw = b"From: a@example.org\r\nDate: Thu, 16 Apr 2026 12:00:00 +0000\r\n\
Content-Type: multipart/alternative; boundary=b\r\n\r\n\
--b\r\nContent-Type: text/plain\r\n\r\n \r\n\t\r\n\
--b\r\nContent-Type: text/html\r\n\r\n<p>The <b>real</b> content</p>\r\n--b--\r\n";
    let parsed = parse(raw);
    // The fields stay what the mail holds; only the text the prompt shows changes.
    assert!(
        parsed
            .plain_text
            .as_deref()
            .is_some_and(|text| text.trim().is_empty())
    );
    assert!(parsed.alternative_content);
    let text = parsed.body_as_text.expect("body text");
    assert!(
        text.contains("The **real** content") && !text.contains("<p>"),
        "{text}"
    );
}

#[test]
fn text_parts_split_around_inline_images_are_joined_in_order() {
    // Apple Mail's shape: the text before an inline picture, the picture, the text after it.
    let raw = b"From: a@example.org\r\nDate: Thu, 16 Apr 2026 12:00:00 +0000\r\n\
Content-Type: multipart/mixed; boundary=m\r\n\r\n\
--m\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\nBefore the picture.\r\n\
--m\r\nContent-Type: image/png; name=chart.png\r\nContent-Disposition: inline; filename=chart.png\r\n\
Content-Transfer-Encoding: base64\r\nContent-Id: <chart@a>\r\n\r\niVBORw0KGgo=\r\n\
--m\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\nAfter the picture.\r\n--m--\r\n";
    let parsed = parse(raw);
    let text = parsed.plain_text.as_deref().expect("plain text");
    assert_eq!(text, "Before the picture.\nAfter the picture.");
    assert_eq!(parsed.body_as_text.as_deref(), Some(text));
    assert_eq!(parsed.attachments.len(), 1, "{:?}", parsed.attachments);
    assert_eq!(parsed.attachments[0].content_id.as_deref(), Some("chart@a"));
}

#[test]
fn a_parser_panic_falls_back_to_the_plain_headers_with_a_warning() {
    let raw = b"From: \"Ann\" <ann@example.org>\r\nTo: agent@example.com, Bo <bo@example.net>\r\n\
Subject: folded\r\n subject\r\nMessage-ID: <m1@example.org>\r\nIn-Reply-To: <m0@example.org>\r\n\
References: <r@example.org>\r\n <m0@example.org>\r\n\r\nFrom: not a header\r\n";
    let parsed = parse_with(raw, |_| panic!("parser exploded"));
    assert_eq!(
        parsed.from.as_ref().map(|from| from.address.as_str()),
        Some("ann@example.org")
    );
    let to: Vec<&str> = parsed.to.iter().map(|to| to.address.as_str()).collect();
    assert_eq!(to, ["agent@example.com", "bo@example.net"]);
    assert_eq!(parsed.subject.as_deref(), Some("folded subject"));
    assert_eq!(parsed.message_id.as_deref(), Some("m1@example.org"));
    assert_eq!(parsed.in_reply_to.as_deref(), Some("m0@example.org"));
    assert_eq!(parsed.references, ["r@example.org", "m0@example.org"]);
    assert_eq!(parsed.plain_text, None);
    assert!(
        parsed
            .warnings
            .iter()
            .any(|warning| warning.contains("parser exploded")),
        "{:?}",
        parsed.warnings
    );
    // Without a panic the guard changes nothing.
    assert_eq!(parse_guarded(raw), parse(raw));
}

#[test]
fn garbage_and_empty_input_never_fail() {
    for raw in [
        &b""[..],
        b"\r\n",
        b"\x00\xff\xfe",
        b"no colon here",
        b"From: <<<@>>>\r\n\r\n",
    ] {
        let parsed = parse(raw);
        assert!(!parsed.warnings.is_empty(), "{raw:?} gave no warning");
    }
}

/// 100 nested multiparts around 10k sibling attachments: parsing stops at the boundary-line cap
/// with a warning, and the attachment list in the event is capped.
#[test]
fn mime_bomb_parses_with_a_bounded_attachment_list() {
    let depth = 100;
    let mut raw = String::from(
        "From: a@example.org\r\nSubject: bomb\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/mixed; boundary=\"b0\"\r\n\r\n",
    );
    for level in 1..depth {
        raw.push_str(&format!(
            "--b{}\r\nContent-Type: multipart/mixed; boundary=\"b{level}\"\r\n\r\n",
            level - 1
        ));
    }
    for n in 0..10_000 {
        raw.push_str(&format!(
            "--b{}\r\nContent-Type: application/octet-stream\r\n\
             Content-Disposition: attachment; filename=\"f{n}.bin\"\r\n\r\nx\r\n",
            depth - 1
        ));
    }
    for level in (0..depth).rev() {
        raw.push_str(&format!("--b{level}--\r\n"));
    }
    let parsed = parse(raw.as_bytes());
    assert_eq!(parsed.subject.as_deref(), Some("bomb"));
    assert_eq!(
        parsed.attachments.len(),
        MAX_LISTED_ATTACHMENTS,
        "{:?}",
        parsed.warnings
    );
    assert!(
        parsed
            .warnings
            .iter()
            .any(|warning| warning.ends_with("attachments not listed (more than 1000)")),
        "{:?}",
        parsed.warnings
    );
    assert!(
        parsed
            .warnings
            .iter()
            .any(|warning| warning.starts_with("MIME structure cut after 2000 boundary lines")),
        "{:?}",
        parsed.warnings
    );
}

#[test]
fn header_bomb_parses() {
    let mut raw = String::from("From: a@example.org\r\nSubject: many headers\r\n");
    for n in 0..100_000 {
        raw.push_str(&format!("X-Bomb-{n}: v\r\n"));
    }
    raw.push_str("\r\nbody\r\n");
    let parsed = parse(raw.as_bytes());
    assert_eq!(parsed.subject.as_deref(), Some("many headers"));
    assert_eq!(parsed.body_as_text.as_deref(), Some("body\r\n"));
}

#[test]
fn an_attachment_reads_back_decoded_by_the_id_the_event_lists() {
    let raw = b"From: a@example.com\r\nTo: b@example.com\r\nSubject: files\r\n\
MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n\
--b\r\nContent-Type: text/plain\r\n\r\nbody\r\n\
--b\r\nContent-Type: text/plain\r\nContent-Disposition: attachment; filename=\"a.txt\"\r\n\r\nfirst\r\n\
--b\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; filename=\"b.pdf\"\r\n\
Content-Transfer-Encoding: base64\r\n\r\nJVBERg==\r\n--b--\r\n";
    let listed = parse(raw).attachments;
    assert_eq!(listed.len(), 2);
    let second = part::attachment(raw, &listed[1].id).expect("att_1");
    assert_eq!(second.content_type, "application/pdf");
    assert_eq!(second.filename.as_deref(), Some("b.pdf"));
    assert_eq!(second.bytes, b"%PDF");
    let first = part::attachment(raw, "att_0").expect("att_0");
    assert_eq!(String::from_utf8_lossy(&first.bytes).trim_end(), "first");
    for missing in [
        "att_2",
        "att_",
        "att_-1",
        "1",
        "",
        "att_99999999999999999999",
    ] {
        assert!(part::attachment(raw, missing).is_none(), "{missing}");
    }
    assert!(part::attachment(b"\xff\xfe not mail", "att_0").is_none());
}
