//! Raw bytes → [`ParsedMessage`]: addresses, subject, dates, threading headers, bodies and
//! attachment metadata, via mail-parser.
//!
//! Pure and total: any input yields a `ParsedMessage` (possibly empty) plus warnings, never an
//! error and never a panic, because a message that fails to parse is still stored and delivered.

pub mod bounce;
pub mod html;
pub mod part;
pub mod transfer;

use mail_parser::{Address, HeaderValue, Message, MessageParser, MimeHeaders, PartType};
use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Mailbox {
    pub address: String,
    pub name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Attachment {
    pub id: String,
    pub filename: Option<String>,
    pub content_type: String,
    pub content_encoding: Option<String>,
    pub content_id: Option<String>,
    pub size: usize,
    /// Where its body lies in the raw message, for streaming it (see [`part`]).
    #[serde(skip)]
    pub span: Option<part::PartSpan>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParsedMessage {
    pub from: Option<Mailbox>,
    /// Mailboxes named across all From headers (`From: a@x, b@x` is one header, two authors),
    /// counted the way mail-auth collects them for DMARC, groups included. Left at 0 when only
    /// the plain header fields could be read, so the one-author check fails closed.
    pub from_mailboxes: usize,
    pub to: Vec<Mailbox>,
    pub cc: Vec<Mailbox>,
    pub bcc: Vec<Mailbox>,
    pub reply_to: Vec<Mailbox>,
    pub subject: Option<String>,
    /// The Date header in ms since the epoch, when present and valid.
    pub date_ms: Option<i64>,
    /// The Date header's offset from UTC in seconds, so the date can be shown as the sender
    /// wrote it (their local time says more to an agent than the same instant in UTC).
    pub date_offset_s: Option<i32>,
    /// The Message-ID header, without angle brackets.
    pub message_id: Option<String>,
    pub in_reply_to: Option<String>,
    pub references: Vec<String>,
    /// The text/plain body parts, decoded to UTF-8 and joined in order.
    pub plain_text: Option<String>,
    /// The first text/html body part, decoded to UTF-8.
    pub html: Option<String>,
    /// Text rendering of the body for prompts: plain text, or the HTML converted to markdown
    /// when there is no plain text or it is blank.
    pub body_as_text: Option<String>,
    /// True when `plain_text` and `html` are the two sides of one multipart/alternative.
    pub alternative_content: bool,
    pub attachments: Vec<Attachment>,
    /// What a delivery status notification says, when the message reads as one.
    pub bounce: Option<bounce::Bounce>,
    pub warnings: Vec<String>,
}

/// Most attachments listed in one event. A MIME bomb of many tiny parts would otherwise turn a
/// message within the size limit into an event many times larger; the rest is counted in a
/// warning, and the stored `.eml` still has every part.
pub const MAX_LISTED_ATTACHMENTS: usize = 1000;

/// Most lines starting with `--` (possible MIME boundaries) that the parser reads. mail-parser
/// keeps every part, and a frame per multipart nesting level, in memory, so a message of many
/// tiny or deeply nested parts costs many times its size. Past this line the rest of the message
/// is not parsed: the event says so in a warning, and the stored `.eml` still has every part.
/// Depth cannot exceed the part count, so this bounds depth too (mail-parser itself only limits
/// nested message/rfc822 parts, to 3).
pub const MAX_MIME_BOUNDARY_LINES: usize = 2000;

/// Parses a raw RFC 5322 message. Never fails: see the module docs.
pub fn parse(raw: &[u8]) -> ParsedMessage {
    let full_len = raw.len();
    let raw = raw.get(..mime_part_limit(raw)).unwrap_or(raw);
    let Some(message) = MessageParser::default().parse(raw) else {
        return ParsedMessage {
            warnings: vec!["message has no parsable header section".to_owned()],
            ..ParsedMessage::default()
        };
    };
    let mut warnings = Vec::new();
    if raw.len() < full_len {
        warnings.push(format!(
            "MIME structure cut after {MAX_MIME_BOUNDARY_LINES} boundary lines: the last {} of {full_len} bytes were not parsed",
            full_len - raw.len()
        ));
    }
    let from = message
        .from()
        .and_then(|list| mailboxes(list).into_iter().next());
    if from.is_none() {
        warnings.push("no From address".to_owned());
    }
    let date_ms = message.date().and_then(|date| {
        date.is_valid()
            .then(|| date.to_timestamp().checked_mul(1000))
            .flatten()
    });
    if date_ms.is_none() {
        warnings.push("no valid Date header".to_owned());
    }
    let date_offset_s = message.date().filter(|_| date_ms.is_some()).map(|date| {
        let magnitude = i32::from(date.tz_hour) * 3600 + i32::from(date.tz_minute) * 60;
        if date.tz_before_gmt {
            -magnitude
        } else {
            magnitude
        }
    });

    // Every text/plain body part, in order: Apple Mail splits the text around inline images
    // into several parts, and the first alone would lose the rest of what was written.
    let plain_parts: Vec<(u32, &str)> = message
        .text_body
        .iter()
        .filter_map(
            |&idx| match message.parts.get(idx as usize).map(|p| &p.body) {
                Some(PartType::Text(text)) => Some((idx, text.as_ref())),
                _ => None,
            },
        )
        .collect();
    let plain_index = plain_parts.first().map(|&(idx, _)| idx);
    let html_index = message.html_body.iter().copied().find(|&idx| {
        matches!(
            message.parts.get(idx as usize).map(|p| &p.body),
            Some(PartType::Html(_))
        )
    });
    let part_text = |idx: Option<u32>| {
        idx.and_then(|idx| message.parts.get(idx as usize))
            .and_then(|part| part.text_contents())
            .map(str::to_owned)
    };
    let plain_text = (!plain_parts.is_empty()).then(|| join_parts(&plain_parts));
    let html = part_text(html_index);
    // HTML-only mail becomes markdown, so links, lists, tables and quotes survive for the
    // prompt; so does mail whose text part is blank (some clients send an empty one beside
    // the HTML that holds the content).
    let body_as_text = plain_text
        .clone()
        .filter(|text| !text.trim().is_empty())
        .or_else(|| html.as_deref().map(html::to_markdown))
        .or_else(|| plain_text.clone())
        .or_else(|| message.body_text(0).map(|text| text.into_owned()));
    if message.parts.iter().any(|part| part.is_encoding_problem) {
        warnings.push("a body part could not be decoded as declared".to_owned());
    }
    if message.attachments.len() > MAX_LISTED_ATTACHMENTS {
        warnings.push(format!(
            "{} attachments not listed (more than {MAX_LISTED_ATTACHMENTS})",
            message.attachments.len() - MAX_LISTED_ATTACHMENTS
        ));
    }

    ParsedMessage {
        from,
        from_mailboxes: from_mailboxes(&message),
        to: message.to().map(mailboxes).unwrap_or_default(),
        cc: message.cc().map(mailboxes).unwrap_or_default(),
        bcc: message.bcc().map(mailboxes).unwrap_or_default(),
        reply_to: message.reply_to().map(mailboxes).unwrap_or_default(),
        subject: message.subject().map(str::to_owned),
        date_ms,
        date_offset_s,
        message_id: message.message_id().map(str::to_owned),
        in_reply_to: text_values(message.in_reply_to()).into_iter().next(),
        references: text_values(message.references()),
        alternative_content: match (plain_index, html_index) {
            (Some(plain), Some(html)) => share_alternative(&message, plain, html),
            _ => false,
        },
        plain_text,
        html,
        body_as_text,
        attachments: attachments(&message),
        bounce: bounce::read(&message),
        warnings,
    }
}

/// Text parts joined in order, each starting on a line of its own.
fn join_parts(parts: &[(u32, &str)]) -> String {
    let mut joined = String::with_capacity(parts.iter().map(|(_, text)| text.len() + 1).sum());
    for (_, text) in parts {
        if !joined.is_empty() && !joined.ends_with('\n') {
            joined.push('\n');
        }
        joined.push_str(text);
    }
    joined
}

fn from_mailboxes(message: &Message<'_>) -> usize {
    message
        .headers()
        .iter()
        .filter(|header| header.name == mail_parser::HeaderName::From)
        .map(|header| match &header.value {
            HeaderValue::Address(address @ (Address::List(_) | Address::Group(_))) => address
                .iter()
                .filter(|mailbox| mailbox.address.is_some())
                .count(),
            _ => 0,
        })
        .sum()
}

/// [`parse`], guarded: should the parser panic on some input, the plain header fields are read
/// by hand instead and a warning names the failure, so the message is still stored and
/// delivered (parsing runs before the `250`; a panic there would end the session unanswered).
pub fn parse_guarded(raw: &[u8]) -> ParsedMessage {
    parse_with(raw, parse)
}

fn parse_with(raw: &[u8], parser: impl FnOnce(&[u8]) -> ParsedMessage) -> ParsedMessage {
    catch_panic(|| parser(raw)).unwrap_or_else(|failure| {
        let mut parsed = headers_only(raw);
        parsed.warnings.push(format!(
            "parsing failed ({failure}): only the plain header fields were read; the raw \
             message is stored"
        ));
        parsed
    })
}

/// Runs `work`, turning a panic into its message.
pub(crate) fn catch_panic<T>(work: impl FnOnce() -> T) -> Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)).map_err(|payload| {
        payload
            .downcast_ref::<&str>()
            .map(|text| (*text).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "panic".to_owned())
    })
}

/// A header block's fields, unfolded, names lowercased, values trimmed; for reading headers
/// without the MIME parser (a message the parser gave up on, a delivery-status block).
fn header_fields(block: &str) -> Vec<(String, String)> {
    let mut fields: Vec<(String, String)> = Vec::new();
    for line in block.lines() {
        if line.starts_with([' ', '\t']) {
            if let Some((_, value)) = fields.last_mut() {
                value.push(' ');
                value.push_str(line.trim());
            }
        } else if let Some((name, value)) = line.split_once(':') {
            fields.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
        }
    }
    fields
}

/// The From, To, Cc, Subject and threading headers, read without the MIME parser: unfolded,
/// undecoded (encoded words stay as sent), addresses taken from `<…>` where present.
fn headers_only(raw: &[u8]) -> ParsedMessage {
    let header_end = raw
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .unwrap_or(raw.len());
    let text = String::from_utf8_lossy(raw.get(..header_end).unwrap_or(raw));
    let fields = header_fields(&text);
    let field = |name: &str| {
        fields
            .iter()
            .find(|(field, _)| field == name)
            .map(|(_, value)| value.as_str())
    };
    let bare_id = |id: &str| id.trim().trim_matches(|c| c == '<' || c == '>').to_owned();
    let addresses = |name: &str| -> Vec<Mailbox> {
        field(name)
            .unwrap_or_default()
            .split(',')
            .filter_map(|entry| {
                let address = match (entry.rfind('<'), entry.rfind('>')) {
                    (Some(open), Some(close)) if open < close => entry.get(open + 1..close),
                    _ => Some(entry),
                }?
                .trim();
                address.contains('@').then(|| Mailbox {
                    address: address.to_owned(),
                    name: None,
                })
            })
            .collect()
    };
    let from = addresses("from").into_iter().next();
    ParsedMessage {
        warnings: if from.is_none() {
            vec!["no From address".to_owned()]
        } else {
            Vec::new()
        },
        from,
        to: addresses("to"),
        cc: addresses("cc"),
        reply_to: addresses("reply-to"),
        subject: field("subject").map(str::to_owned),
        message_id: field("message-id").map(bare_id),
        in_reply_to: field("in-reply-to").map(bare_id),
        references: field("references")
            .unwrap_or_default()
            .split_whitespace()
            .map(bare_id)
            .collect(),
        ..ParsedMessage::default()
    }
}

fn mailboxes(list: &Address<'_>) -> Vec<Mailbox> {
    list.iter()
        .filter_map(|addr| {
            let address = addr.address()?.trim();
            (!address.is_empty()).then(|| Mailbox {
                address: address.to_owned(),
                name: addr
                    .name()
                    .map(str::trim)
                    .filter(|name| !name.is_empty())
                    .map(str::to_owned),
            })
        })
        .collect()
}

fn text_values(value: &HeaderValue<'_>) -> Vec<String> {
    match value {
        HeaderValue::Text(text) => vec![text.to_string()],
        HeaderValue::TextList(list) => list.iter().map(|text| text.to_string()).collect(),
        _ => Vec::new(),
    }
}

/// True when some multipart/alternative part holds both body parts among its direct children
/// (or their descendants), i.e. they are two renderings of one content.
fn share_alternative(message: &Message<'_>, plain: u32, html: u32) -> bool {
    message.parts.iter().any(|part| {
        let is_alternative = part.content_type().is_some_and(|ct| {
            ct.ctype().eq_ignore_ascii_case("multipart")
                && ct
                    .subtype()
                    .is_some_and(|s| s.eq_ignore_ascii_case("alternative"))
        });
        match (&part.body, is_alternative) {
            (PartType::Multipart(children), true) => {
                contains_part(message, children, plain, 0)
                    && contains_part(message, children, html, 0)
            }
            _ => false,
        }
    })
}

fn contains_part(message: &Message<'_>, children: &[u32], target: u32, depth: usize) -> bool {
    // Depth bound: mail-parser limits only nested message/rfc822 parts, and multipart depth is
    // bounded just by MAX_MIME_BOUNDARY_LINES, so a hostile tree could still recurse deeply here.
    if depth > 32 {
        return false;
    }
    children.iter().any(|&child| {
        child == target
            || matches!(
                message.parts.get(child as usize).map(|part| &part.body),
                Some(PartType::Multipart(grandchildren)) if contains_part(message, grandchildren, target, depth + 1)
            )
    })
}

fn attachments(message: &Message<'_>) -> Vec<Attachment> {
    message
        .attachments
        .iter()
        .take(MAX_LISTED_ATTACHMENTS)
        .enumerate()
        .filter_map(|(position, &idx)| {
            let part = message.parts.get(idx as usize)?;
            let content_type = part
                .content_type()
                .map(|ct| match ct.subtype() {
                    Some(subtype) => format!("{}/{}", ct.ctype(), subtype),
                    None => ct.ctype().to_owned(),
                })
                .unwrap_or_else(|| "application/octet-stream".to_owned())
                .to_ascii_lowercase();
            let content = match &part.body {
                PartType::Message(_) => message
                    .raw_message
                    .get(part.raw_body_offset() as usize..part.raw_end_offset() as usize)
                    .unwrap_or_default(),
                _ => part.contents(),
            };
            let size = match &part.body {
                PartType::Message(_) => {
                    part.raw_end_offset().saturating_sub(part.raw_body_offset()) as usize
                }
                _ => content.len(),
            };
            Some(Attachment {
                id: format!("att_{position}"),
                filename: part.attachment_name().map(str::to_owned),
                content_type,
                content_encoding: part
                    .content_transfer_encoding()
                    .map(str::to_ascii_lowercase),
                content_id: part
                    .content_id()
                    .map(|id| id.trim_matches(|c| c == '<' || c == '>').to_owned()),
                size,
                span: (message.raw_message.len() >= part::STREAMED_FROM_BYTES)
                    .then(|| part::span_of(&message.raw_message, part, content))
                    .flatten(),
            })
        })
        .collect()
}

/// Where the parser must stop reading: the start of the line past the last boundary line it
/// may read, or the whole message.
fn mime_part_limit(raw: &[u8]) -> usize {
    let mut boundary_lines = 0;
    let mut line_start = 0;
    while let Some(line) = raw.get(line_start..).filter(|line| !line.is_empty()) {
        if line.starts_with(b"--") {
            boundary_lines += 1;
            if boundary_lines > MAX_MIME_BOUNDARY_LINES {
                return line_start;
            }
        }
        match line.iter().position(|b| *b == b'\n') {
            Some(idx) => line_start += idx + 1,
            None => break,
        }
    }
    raw.len()
}

#[cfg(test)]
mod tests;
