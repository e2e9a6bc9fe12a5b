//! One attachment's decoded bytes, found by the id the event lists it under (`att_<n>`, its
//! position among the message's attachments). Pure and total like the rest of `parse`: the
//! message is read under the same MIME limits, so an id names the same part here as in the
//! event, and a part past those limits is not found.
//!
//! Serving an attachment must not hold the message in memory (a 20 MB attachment read by a
//! few clients at once would cost a multiple of that), so intake, which parses the message
//! anyway, records where each attachment's body lies in the raw `.eml` and how it is encoded:
//! a [`PartSpan`], kept beside the message row (`messages.attachment_parts`, migration 0024).
//! A download then reads only that byte range from the store, as a stream, through the
//! incremental decoder of [`super::transfer`]. A span is recorded only when decoding the range
//! that way gives exactly the bytes the parser gave (checked at intake, chunk by chunk, with no
//! copy), so the streamed download is the same as [`attachment`] would have served; parts
//! where it is not (a text part the parser converted from another charset, a malformed
//! encoding the two read differently) and messages stored before the spans existed are served
//! by [`attachment`], from the whole message. So are the attachments of a message smaller than
//! [`STREAMED_FROM_BYTES`]: reading such a message whole costs a download little memory, and
//! the check's second decode of every attachment was a twentieth of all the instructions a
//! 10 KB message costs (BENCHMARKS.md).

use mail_parser::{MessageParser, MessagePart, MimeHeaders, PartType};
use serde::{Deserialize, Serialize};

use super::transfer::{Decoder, TransferEncoding};

/// Where one attachment's body lies in the raw message, and what it decodes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartSpan {
    /// Offset of the body's first byte in the raw message.
    pub start: u64,
    /// Offset just past the body's last byte.
    pub end: u64,
    pub encoding: TransferEncoding,
    /// Length of the decoded content, exactly.
    pub size: u64,
}

/// Bytes decoded per step while checking a span at intake.
const CHECK_CHUNK: usize = 64 << 10;

/// Raw size from which a message's attachments get spans and are streamed.
pub const STREAMED_FROM_BYTES: usize = 1 << 20;

/// The span of `part` in `raw` when decoding it in pieces gives exactly `content`.
pub(crate) fn span_of(raw: &[u8], part: &MessagePart<'_>, content: &[u8]) -> Option<PartSpan> {
    let (start, end) = (
        part.raw_body_offset() as usize,
        part.raw_end_offset() as usize,
    );
    let body = raw.get(start..end)?;
    let encoding = match (&part.body, part.encoding) {
        // An attached message is served as the bytes it was sent as.
        (PartType::Message(_), _) | (_, mail_parser::Encoding::None) => TransferEncoding::Identity,
        (_, mail_parser::Encoding::Base64) => TransferEncoding::Base64,
        (_, mail_parser::Encoding::QuotedPrintable) => TransferEncoding::QuotedPrintable,
    };
    let mut decoder = Decoder::new(encoding);
    let mut out = Vec::with_capacity(CHECK_CHUNK + 4);
    let mut matched = 0usize;
    for piece in body.chunks(CHECK_CHUNK) {
        decoder.feed(piece, &mut out).ok()?;
        if content.get(matched..matched + out.len())? != out.as_slice() {
            return None;
        }
        matched += out.len();
        out.clear();
    }
    decoder.finish(&mut out);
    if matched != content.len() || !out.is_empty() {
        return None;
    }
    Some(PartSpan {
        start: u64::try_from(start).ok()?,
        end: u64::try_from(end).ok()?,
        encoding,
        size: u64::try_from(content.len()).ok()?,
    })
}

/// The spans of a parsed message's attachments as `messages.attachment_parts` keeps them (entry
/// `n` for `att_n`, `null` where there is none), or `None` when none has a span.
pub fn spans_json(attachments: &[super::Attachment]) -> Option<String> {
    if attachments
        .iter()
        .all(|attachment| attachment.span.is_none())
    {
        return None;
    }
    // Placed by the position the id names, which `span_in` reads back.
    let mut spans: Vec<Option<PartSpan>> = Vec::new();
    for attachment in attachments {
        let Some(position) = attachment
            .id
            .strip_prefix("att_")
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|&n| n < super::MAX_LISTED_ATTACHMENTS)
        else {
            continue;
        };
        if spans.len() <= position {
            spans.resize(position + 1, None);
        }
        spans[position] = attachment.span;
    }
    serde_json::to_string(&spans).ok()
}

/// The span recorded for attachment `id` in a stored `attachment_parts`.
pub fn span_in(stored: &str, id: &str) -> Option<PartSpan> {
    let position: usize = id.strip_prefix("att_")?.parse().ok()?;
    if id != format!("att_{position}") {
        return None;
    }
    let spans: Vec<Option<PartSpan>> = serde_json::from_str(stored).ok()?;
    spans.get(position).copied().flatten()
}

/// An attachment's content, decoded from its transfer encoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachmentBody {
    pub content_type: String,
    pub filename: Option<String>,
    pub bytes: Vec<u8>,
}

/// The attachment listed as `id` in the message's event, or `None` when there is none.
pub fn attachment(raw: &[u8], id: &str) -> Option<AttachmentBody> {
    let position: usize = id.strip_prefix("att_")?.parse().ok()?;
    if position >= super::MAX_LISTED_ATTACHMENTS || id != format!("att_{position}") {
        return None;
    }
    let raw = raw.get(..super::mime_part_limit(raw)).unwrap_or(raw);
    let message = MessageParser::default().parse(raw)?;
    let listed = super::attachments(&message);
    let meta = listed.iter().find(|listed| listed.id == id)?;
    let &index = message.attachments.get(position)?;
    let part = message.parts.get(index as usize)?;
    let bytes = match &part.body {
        // An attached message is served as the bytes it was sent as (the event's size too).
        PartType::Message(_) => raw
            .get(part.raw_body_offset() as usize..part.raw_end_offset() as usize)?
            .to_vec(),
        _ => part.contents().to_vec(),
    };
    Some(AttachmentBody {
        content_type: meta.content_type.clone(),
        filename: part.attachment_name().map(str::to_owned),
        bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAIL: &[u8] = b"From: a@example.com\r\nTo: b@example.com\r\nSubject: files\r\n\
MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\n\
Content-Type: text/plain\r\n\r\nsee attached\r\n--b\r\n\
Content-Type: application/pdf; name=\"report.pdf\"\r\n\
Content-Disposition: attachment; filename=\"report.pdf\"\r\n\
Content-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQKJcfs\r\n--b\r\n\
Content-Type: text/csv\r\nContent-Disposition: attachment; filename=\"a.csv\"\r\n\r\n\
x,y\r\n1,2\r\n--b--\r\n";

    #[test]
    fn an_attachment_is_its_decoded_bytes_under_the_id_the_event_lists() {
        let parsed = super::super::parse(MAIL);
        assert_eq!(parsed.attachments.len(), 2);
        let pdf = attachment(MAIL, &parsed.attachments[0].id).expect("att_0");
        assert_eq!(pdf.content_type, "application/pdf");
        assert_eq!(pdf.filename.as_deref(), Some("report.pdf"));
        assert_eq!(pdf.bytes, b"%PDF-1.4\n%\xc7\xec");
        assert_eq!(pdf.bytes.len() as u64, parsed.attachments[0].size as u64);
        let csv = attachment(MAIL, "att_1").expect("att_1");
        assert_eq!(csv.content_type, "text/csv");
        assert_eq!(csv.bytes, b"x,y\r\n1,2");
    }

    /// `raw` grown past [`STREAMED_FROM_BYTES`] by a MIME preamble (text before the first
    /// boundary, which no part contains), so that intake records its attachments' spans.
    fn large(raw: &[u8]) -> Vec<u8> {
        let end_of_header = raw
            .windows(4)
            .position(|window| window == b"\r\n\r\n")
            .expect("a header")
            + 4;
        let mut grown = raw[..end_of_header].to_vec();
        while grown.len() < STREAMED_FROM_BYTES {
            grown.extend_from_slice(b"This is a multi-part message in MIME format.\r\n");
        }
        grown.extend_from_slice(&raw[end_of_header..]);
        grown
    }

    #[test]
    fn only_a_message_past_the_streaming_size_records_spans() {
        let small = super::super::parse(MAIL);
        assert!(small.attachments.iter().all(|listed| listed.span.is_none()));
        assert_eq!(spans_json(&small.attachments), None);
        let raw = large(MAIL);
        let parsed = super::super::parse(&raw);
        assert_eq!(parsed.attachments.len(), 2);
        assert!(
            parsed
                .attachments
                .iter()
                .all(|listed| listed.span.is_some())
        );
    }

    /// Streams the span of `id` from the raw message in pieces of `piece` bytes.
    fn streamed(raw: &[u8], span: PartSpan, piece: usize) -> Vec<u8> {
        let body = &raw[span.start as usize..span.end as usize];
        let mut decoder = Decoder::new(span.encoding);
        let mut out = Vec::new();
        for chunk in body.chunks(piece.max(1)) {
            decoder.feed(chunk, &mut out).expect("decodes");
        }
        decoder.finish(&mut out);
        out
    }

    #[test]
    fn a_recorded_span_streams_the_same_bytes_as_the_whole_message_path() {
        let forwarded = b"From: a@example.com\r\nTo: b@example.com\r\nSubject: fwd\r\n\
MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"o\"\r\n\r\n--o\r\n\
Content-Type: text/plain\r\n\r\nsee below\r\n--o\r\n\
Content-Type: message/rfc822\r\nContent-Disposition: attachment\r\n\r\n\
From: c@example.com\r\nSubject: inner\r\n\r\ninner body\r\n--o\r\n\
Content-Type: application/octet-stream; name=\"q.bin\"\r\n\
Content-Disposition: attachment; filename=\"q.bin\"\r\n\
Content-Transfer-Encoding: quoted-printable\r\n\r\nline one  \r\nsoft =\r\nbreak=00=FF\r\n--o\r\n\
Content-Type: application/zip\r\nContent-Disposition: attachment; filename=\"z.zip\"\r\n\
Content-Transfer-Encoding: base64\r\n\r\nUEsDBAoAAAAAAA\r\n  AAAA==\r\n--o--\r\n";
        for raw in [large(MAIL), large(forwarded)] {
            let raw = &raw[..];
            let parsed = super::super::parse(raw);
            assert!(!parsed.attachments.is_empty());
            for listed in &parsed.attachments {
                let whole = attachment(raw, &listed.id).expect("attachment").bytes;
                let span = listed
                    .span
                    .unwrap_or_else(|| panic!("no span for {listed:?}"));
                assert_eq!(span.size, whole.len() as u64);
                for piece in [1, 2, 3, 7, 64, 4096] {
                    assert_eq!(
                        streamed(raw, span, piece),
                        whole,
                        "{} by {piece}",
                        listed.id
                    );
                }
                let stored = spans_json(&parsed.attachments).expect("spans");
                assert_eq!(span_in(&stored, &listed.id), Some(span));
            }
        }
    }

    #[test]
    fn a_part_the_parser_converted_from_another_charset_has_no_span() {
        let raw = b"From: a@example.com\r\nMIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nhi\r\n--b\r\n\
Content-Type: text/plain; charset=iso-8859-1\r\nContent-Disposition: attachment; filename=\"l.txt\"\r\n\r\n\
Gr\xfc\xdfe\r\n--b--\r\n";
        let raw = &large(raw)[..];
        let parsed = super::super::parse(raw);
        assert_eq!(parsed.attachments.len(), 1);
        assert_eq!(parsed.attachments[0].span, None);
        assert_eq!(spans_json(&parsed.attachments), None);
        assert!(attachment(raw, "att_0").is_some(), "served the old way");
    }

    #[test]
    fn a_span_is_found_only_under_its_exact_id() {
        let parsed = super::super::parse(&large(MAIL));
        let stored = spans_json(&parsed.attachments).expect("spans");
        for id in ["att_2", "att_01", "att_", "x", "att_-0"] {
            assert_eq!(span_in(&stored, id), None, "{id}");
        }
        assert_eq!(span_in("not json", "att_0"), None);
    }

    #[test]
    fn unknown_or_malformed_ids_find_nothing() {
        for id in [
            "att_2",
            "att_",
            "att_01",
            "att_-1",
            "0",
            "att_99999999999999999999",
            "",
        ] {
            assert!(attachment(MAIL, id).is_none(), "{id}");
        }
        assert!(attachment(b"\xff\xfe", "att_0").is_none());
    }
}
