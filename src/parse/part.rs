//! One attachment's decoded bytes, found by the id the event lists it under (`att_<n>`, its
//! position among the message's attachments). Pure and total like the rest of `parse`: the
//! message is read under the same MIME limits, so an id names the same part here as in the
//! event, and a part past those limits is not found.

use mail_parser::{MessageParser, MimeHeaders, PartType};

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
