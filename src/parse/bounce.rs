//! Delivery status notifications: what a bounce says about the message it returns.
//!
//! A standard report (RFC 3464: `multipart/report; report-type=delivery-status`, which Postfix,
//! Exchange, Gmail and current Exim send) is read from its `message/delivery-status` part, one
//! entry per recipient block, and the original Message-ID from the returned message or its
//! headers (`message/rfc822`, `text/rfc822-headers`). Failure notices without a report part —
//! qmail's, Exim's plain-text ones, Gmail's older ones — are read from their text: the shapes
//! are fixed by the software that writes them, and the samples in `fixtures/bounces/` are real.
//!
//! Pure and total like the rest of `parse`: anything that does not read as a report is `None`.

use mail_parser::{Message, MimeHeaders, PartType};
use serde::{Deserialize, Serialize};

/// A bounce as the event carries it (SPEC "Content safety").
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default)]
pub struct Bounce {
    /// The Message-ID of the returned message, without angle brackets; `null` when the report
    /// returns neither the message nor its headers.
    pub original_message_id: Option<String>,
    pub recipients: Vec<BounceRecipient>,
    /// Whether the notice is a standard report (RFC 3464) rather than text read by shape. A text
    /// notice counts as a bounce only from the null sender.
    #[serde(skip)]
    pub(crate) standard: bool,
}

/// One recipient's line of the report.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default)]
pub struct BounceRecipient {
    /// The address the original message was sent to (`Original-Recipient`, else
    /// `Final-Recipient`), without its address type.
    pub address: String,
    /// `failed`, `delayed`, `delivered`, `relayed` or `expanded` (RFC 3464).
    pub action: String,
    /// The enhanced status code (`5.1.1`), when the report gives one.
    pub status: Option<String>,
    /// The remote server's reply or the reporting MTA's reason, unfolded.
    pub diagnostic: Option<String>,
}

impl Bounce {
    /// Whether the message counts as a bounce: a standard report always; a notice read from its
    /// text only when it came from the null sender, as every real failure notice does (RFC
    /// 5321 §4.5.5), so a person quoting a bounce is not one.
    pub fn counts(&self, null_sender: bool) -> bool {
        self.standard || null_sender
    }
}

/// Most recipients read from one report: enough for any real bounce, and a hostile report
/// cannot make the event large.
const MAX_RECIPIENTS: usize = 100;
/// Longest diagnostic kept, in characters.
const MAX_DIAGNOSTIC: usize = 1000;

/// The report `message` carries, if it is one.
pub(crate) fn read(message: &Message<'_>) -> Option<Bounce> {
    standard(message).or_else(|| text_notice(message))
}

/// RFC 3464: a `message/delivery-status` part (the `report-type` parameter is not required:
/// some servers leave it out, see `fixtures/eml/bounce_dsn.eml`).
fn standard(message: &Message<'_>) -> Option<Bounce> {
    let is_report = message.content_type().is_some_and(|ct| {
        ct.ctype().eq_ignore_ascii_case("multipart")
            && ct
                .subtype()
                .is_some_and(|subtype| subtype.eq_ignore_ascii_case("report"))
            && ct
                .attribute("report-type")
                .is_none_or(|kind| kind.eq_ignore_ascii_case("delivery-status"))
    });
    if !is_report {
        return None;
    }
    let status_part = message.parts.iter().find(|part| {
        part.content_type().is_some_and(|ct| {
            ct.ctype().eq_ignore_ascii_case("message")
                && ct.subtype().is_some_and(|subtype| {
                    subtype.eq_ignore_ascii_case("delivery-status")
                        || subtype.eq_ignore_ascii_case("global-delivery-status")
                })
        })
    })?;
    let text = String::from_utf8_lossy(status_part.contents()).replace("\r\n", "\n");
    let blocks: Vec<Vec<(String, String)>> = text.split("\n\n").map(super::header_fields).collect();
    let recipients = blocks
        .iter()
        .filter_map(|block| recipient_block(block))
        .take(MAX_RECIPIENTS)
        .collect();
    // Gmail names the original in the report itself as well, which helps when the returned
    // message is cut.
    let reported_id = blocks.iter().flatten().find_map(|(name, value)| {
        (name == "x-original-message-id")
            .then(|| message_id_in(&format!("Message-ID: {value}")))
            .flatten()
    });
    Some(Bounce {
        original_message_id: returned_message_id(message).or(reported_id),
        recipients,
        standard: true,
    })
}

/// One per-recipient block; `None` for the per-message block (it names no recipient).
fn recipient_block(fields: &[(String, String)]) -> Option<BounceRecipient> {
    let field = |name: &str| {
        fields
            .iter()
            .find(|(field, _)| field == name)
            .map(|(_, value)| value.as_str())
            .filter(|value| !value.is_empty())
    };
    let address = field("original-recipient")
        .or_else(|| field("final-recipient"))
        .map(without_type)?;
    Some(BounceRecipient {
        address: address
            .trim_matches(|c| c == '<' || c == '>')
            .trim()
            .to_owned(),
        action: field("action")
            .map(|action| action.to_ascii_lowercase())
            .unwrap_or_default(),
        status: field("status").and_then(status_code),
        diagnostic: field("diagnostic-code").map(|text| clip(without_type(text))),
    })
}

/// `rfc822; user@example.com` → `user@example.com`; `smtp; 550 …` → `550 …`.
fn without_type(value: &str) -> &str {
    match value.split_once(';') {
        Some((kind, rest)) if !kind.contains(' ') && !kind.is_empty() => rest.trim(),
        _ => value.trim(),
    }
}

/// The first enhanced status code (`class.subject.detail`, RFC 3463) in `text`.
fn status_code(text: &str) -> Option<String> {
    text.split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .map(|token| token.trim_matches('.'))
        .find(|token| {
            let mut parts = token.split('.');
            let class = parts.next().unwrap_or_default();
            let rest: Vec<&str> = parts.collect();
            matches!(class, "2" | "4" | "5")
                && rest.len() == 2
                && rest
                    .iter()
                    .all(|part| (1..=3).contains(&part.len()) && part.parse::<u16>().is_ok())
        })
        .map(str::to_owned)
}

/// Whitespace collapsed, at most [`MAX_DIAGNOSTIC`] characters.
fn clip(text: &str) -> String {
    let collapsed = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match collapsed.char_indices().nth(MAX_DIAGNOSTIC) {
        Some((end, _)) => collapsed[..end].to_owned(),
        None => collapsed,
    }
}

/// The Message-ID of the returned message: from a `message/rfc822` part, else a
/// `text/rfc822-headers` one (Postfix returns only the headers when told to).
fn returned_message_id(message: &Message<'_>) -> Option<String> {
    message
        .parts
        .iter()
        .skip(1)
        .find_map(|part| match &part.body {
            PartType::Message(returned) => returned.message_id().map(str::to_owned),
            PartType::Text(text)
                if part.content_type().is_some_and(|ct| {
                    ct.subtype()
                        .is_some_and(|subtype| subtype.eq_ignore_ascii_case("rfc822-headers"))
                }) =>
            {
                message_id_in(text)
            }
            _ => None,
        })
}

/// The first `Message-ID:` header line in `text` (a returned header section), bare.
fn message_id_in(text: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        if !name.trim().eq_ignore_ascii_case("message-id") {
            return None;
        }
        let value = value.trim();
        let id = match (value.find('<'), value.find('>')) {
            (Some(open), Some(close)) if open < close => value.get(open + 1..close)?,
            _ => value,
        };
        (!id.is_empty()).then(|| id.to_owned())
    })
}

/// Lines that start the returned copy in the text notices read here.
const COPY_MARKERS: [&str; 4] = [
    "--- Below this line is a copy of the message.",
    "------ This is a copy of the message, including all the headers. ------",
    "----- Original message -----",
    "------ This is a copy of the body of the message, without the headers. ------",
];

/// A failure notice without a report part, read from its first text part.
fn text_notice(message: &Message<'_>) -> Option<Bounce> {
    let text = message.body_text(0)?;
    let (notice, copy) = match COPY_MARKERS
        .iter()
        .filter_map(|marker| text.find(marker).map(|at| (at, marker.len())))
        .min()
    {
        Some((at, len)) => (&text[..at], text.get(at + len..).unwrap_or_default()),
        None => (text.as_ref(), ""),
    };
    let recipients = if notice.contains("This is the qmail-send program") {
        qmail_recipients(notice)
    } else if let Some(list) = notice.find("address(es) failed:").map(|at| &notice[at..]) {
        exim_recipients(list, &action_of(notice))
    } else if let Some(list) = notice
        .find("Delivery to the following recipient")
        .map(|at| &notice[at..])
    {
        gmail_recipients(list)
    } else {
        return None;
    };
    if recipients.is_empty() {
        return None;
    }
    Some(Bounce {
        original_message_id: message_id_in(copy),
        recipients,
        standard: false,
    })
}

/// Whether the notice says the failure is temporary (a delay warning), else it failed.
fn action_of(notice: &str) -> String {
    let lower = notice.to_ascii_lowercase();
    if lower.contains("temporary") && !lower.contains("permanent") {
        "delayed".to_owned()
    } else {
        "failed".to_owned()
    }
}

/// qmail-send: each recipient is a line `<address>:` and its reason follows up to a blank line,
/// the status in the `(#5.1.1)` qmail appends.
fn qmail_recipients(notice: &str) -> Vec<BounceRecipient> {
    let action = action_of(notice);
    let mut out: Vec<BounceRecipient> = Vec::new();
    let mut current: Option<(String, Vec<&str>)> = None;
    let flush = |current: &mut Option<(String, Vec<&str>)>, out: &mut Vec<BounceRecipient>| {
        if let Some((address, lines)) = current.take() {
            let diagnostic = lines.join(" ");
            out.push(BounceRecipient {
                address,
                action: action.clone(),
                status: status_code(&diagnostic),
                diagnostic: Some(clip(&diagnostic)).filter(|text| !text.is_empty()),
            });
        }
    };
    for line in notice.lines() {
        let trimmed = line.trim();
        if let Some(address) = trimmed
            .strip_prefix('<')
            .and_then(|rest| rest.strip_suffix(">:"))
        {
            flush(&mut current, &mut out);
            current = Some((address.to_owned(), Vec::new()));
        } else if trimmed.is_empty() {
            flush(&mut current, &mut out);
        } else if let Some((_, lines)) = current.as_mut() {
            lines.push(trimmed);
        }
        if out.len() >= MAX_RECIPIENTS {
            return out;
        }
    }
    flush(&mut current, &mut out);
    out
}

/// Exim: after "The following address(es) failed:" and a blank line, each address is indented
/// two spaces and its reason four, up to a blank line.
fn exim_recipients(list: &str, action: &str) -> Vec<BounceRecipient> {
    let mut out: Vec<BounceRecipient> = Vec::new();
    let mut started = false;
    for line in list.lines().skip(1) {
        if line.trim().is_empty() {
            if started {
                break;
            }
            continue;
        }
        started = true;
        let indent = line.len() - line.trim_start().len();
        if indent <= 2 {
            if out.len() >= MAX_RECIPIENTS {
                break;
            }
            out.push(BounceRecipient {
                address: line.trim().to_owned(),
                action: action.to_owned(),
                status: None,
                diagnostic: None,
            });
        } else if let Some(last) = out.last_mut() {
            let diagnostic = match last.diagnostic.take() {
                Some(text) => format!("{text} {}", line.trim()),
                None => line.trim().to_owned(),
            };
            last.diagnostic = Some(clip(&diagnostic));
        }
    }
    for recipient in &mut out {
        recipient.status = recipient.diagnostic.as_deref().and_then(status_code);
    }
    out
}

/// Gmail's older notices: the addresses indented after "Delivery to the following recipient(s)
/// failed permanently:", the remote reply after "The error that the other server returned was:".
fn gmail_recipients(list: &str) -> Vec<BounceRecipient> {
    let action = action_of(list);
    let diagnostic = list
        .split_once("returned was:")
        .map(|(_, rest)| rest.trim().split("\n\n").next().unwrap_or_default())
        .map(clip)
        .filter(|text| !text.is_empty());
    list.lines()
        .skip(1)
        .skip_while(|line| line.trim().is_empty())
        .take_while(|line| !line.trim().is_empty())
        .map(str::trim)
        .filter(|line| line.contains('@') && !line.contains(' '))
        .take(MAX_RECIPIENTS)
        .map(|address| BounceRecipient {
            address: address.to_owned(),
            action: action.clone(),
            status: diagnostic.as_deref().and_then(status_code),
            diagnostic: diagnostic.clone(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bounce_of(raw: &[u8]) -> Bounce {
        crate::parse::parse(raw).bounce.expect("a bounce")
    }

    fn one(bounce: &Bounce) -> &BounceRecipient {
        assert_eq!(bounce.recipients.len(), 1, "{bounce:?}");
        &bounce.recipients[0]
    }

    #[test]
    fn postfix_report_with_returned_headers() {
        let bounce = bounce_of(include_bytes!("../../fixtures/bounces/postfix.eml"));
        assert!(bounce.standard);
        assert_eq!(
            bounce.original_message_id.as_deref(),
            Some("1761564505.xxxx@xxxx.com")
        );
        let recipient = one(&bounce);
        assert_eq!(recipient.address, "xxxx@xxxx.com");
        assert_eq!(recipient.action, "failed");
        assert_eq!(recipient.status.as_deref(), Some("5.1.0"));
        let diagnostic = recipient.diagnostic.as_deref().unwrap_or_default();
        assert!(
            diagnostic
                .starts_with("550-5.1.0 MXIN506 MailFrom domain is listed in Spamhaus. To request"),
            "unfolded, without `smtp;`: {diagnostic}"
        );
    }

    #[test]
    fn exim_report_and_exim_text() {
        let bounce = bounce_of(include_bytes!("../../fixtures/bounces/exim_dsn.eml"));
        assert!(bounce.standard);
        assert_eq!(
            bounce.original_message_id.as_deref(),
            Some("20180429233445.A00000000222@neko.example.jp")
        );
        let recipient = one(&bounce);
        assert_eq!(
            recipient.address,
            "/mail/spool/q002.kijitora.gol.com/gol.com/22r/cat/n2.nyaan"
        );
        assert_eq!(
            (recipient.action.as_str(), recipient.status.as_deref()),
            ("failed", Some("5.0.0"))
        );

        let bounce = bounce_of(include_bytes!("../../fixtures/bounces/exim_text.eml"));
        assert!(!bounce.standard && bounce.counts(true) && !bounce.counts(false));
        assert_eq!(
            bounce.original_message_id.as_deref(),
            Some("1602583415.xxxx@xxxx.net")
        );
        let recipient = one(&bounce);
        assert_eq!(recipient.address, "xxxx@xxxx.net");
        assert_eq!(recipient.action, "failed");
        assert_eq!(recipient.status.as_deref(), Some("5.1.1"));
        assert!(
            recipient
                .diagnostic
                .as_deref()
                .is_some_and(|text| text.ends_with("User unknown in local recipient table")),
            "{recipient:?}"
        );
    }

    #[test]
    fn exchange_reports() {
        let bounce = bounce_of(include_bytes!("../../fixtures/bounces/exchange_online.eml"));
        let recipient = one(&bounce);
        assert_eq!(recipient.address, "kijitora-nyaan@neko.kyoto.example.jp");
        assert_eq!(recipient.status.as_deref(), Some("5.1.10"));
        assert_eq!(
            recipient.diagnostic.as_deref(),
            Some(
                "550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup"
            )
        );
        let bounce = bounce_of(include_bytes!("../../fixtures/bounces/exchange_2007.eml"));
        let recipient = one(&bounce);
        assert_eq!(recipient.address, "mikeneko@example.co.jp");
        assert_eq!(
            (recipient.action.as_str(), recipient.status.as_deref()),
            ("failed", Some("5.1.1"))
        );
        assert_eq!(
            bounce.original_message_id, None,
            "the returned message has none"
        );
    }

    #[test]
    fn gmail_report_and_legacy_text() {
        let bounce = bounce_of(include_bytes!("../../fixtures/bounces/gmail.eml"));
        assert_eq!(
            bounce.original_message_id.as_deref(),
            Some("CAByYQsGge+O7Z6G5c06TEcL1SN7zSeON58xdcyueZqK1LWMjxw@mail.gmail.com")
        );
        let recipient = one(&bounce);
        assert_eq!(recipient.address, "maildebug@example.jpn");
        assert_eq!(
            (recipient.action.as_str(), recipient.status.as_deref()),
            ("failed", Some("4.0.0"))
        );

        let bounce = bounce_of(include_bytes!("../../fixtures/bounces/gmail_legacy.eml"));
        assert!(!bounce.standard);
        assert_eq!(
            bounce.original_message_id.as_deref(),
            Some("D992C2C3-F175-4C4D-97E2-53A90E4E5BF5@gmail.com")
        );
        let recipient = one(&bounce);
        assert_eq!(recipient.address, "userunknown@example.jp");
        assert_eq!(recipient.status.as_deref(), Some("5.1.1"));
        assert_eq!(
            recipient.diagnostic.as_deref(),
            Some("550 5.1.1 <userunknown@example.jp>... User Unknown")
        );
    }

    #[test]
    fn qmail_text() {
        let bounce = bounce_of(include_bytes!("../../fixtures/bounces/qmail.eml"));
        assert!(!bounce.standard);
        assert_eq!(
            bounce.original_message_id.as_deref(),
            Some("20240624084801.44371.qmail@nq.example.jp")
        );
        let recipient = one(&bounce);
        assert_eq!(recipient.address, "neko@nyaan.jp");
        assert_eq!(recipient.action, "failed");
        assert_eq!(recipient.status.as_deref(), Some("5.4.4"));
        assert_eq!(
            recipient.diagnostic.as_deref(),
            Some("Sorry, I couldn't find a mail exchanger or IP address. (#5.4.4)")
        );

        let bounce = bounce_of(include_bytes!("../../fixtures/bounces/qmail_multiline.eml"));
        let recipient = one(&bounce);
        assert_eq!(
            recipient.address,
            "pseudo-local-part-of-google-gmail@gmail.com"
        );
        assert_eq!(recipient.status.as_deref(), Some("5.7.26"));
        assert!(
            recipient
                .diagnostic
                .as_deref()
                .is_some_and(|text| text.contains("DMARC policy.")),
            "{recipient:?}"
        );
    }

    #[test]
    fn report_without_report_type_and_in_upper_case() {
        let bounce = bounce_of(include_bytes!("../../fixtures/eml/bounce_dsn.eml"));
        assert_eq!(
            bounce.original_message_id.as_deref(),
            Some("002001c144a6$8752e060$56104586@oxy.edu")
        );
        let recipient = one(&bounce);
        assert_eq!(recipient.address, "jangel1@cougar.noc.ucla.edu");
        assert_eq!(recipient.status.as_deref(), Some("5.0.0"));
    }

    #[test]
    fn ordinary_mail_and_auto_replies_are_no_bounce() {
        for raw in [
            &include_bytes!("../../fixtures/bounces/autoreply_rfc3834.eml")[..],
            include_bytes!("../../fixtures/bounces/autoreply_exchange_oof.eml"),
            include_bytes!("../../fixtures/eml/plain_text.eml"),
            include_bytes!("../../fixtures/eml/forwarded_rfc822.eml"),
            b"From: a@b.example\r\nContent-Type: multipart/report; report-type=disposition-notification; boundary=x\r\n\r\n--x\r\nContent-Type: message/disposition-notification\r\n\r\nFinal-Recipient: rfc822; a@b.example\r\n--x--\r\n",
        ] {
            assert_eq!(crate::parse::parse(raw).bounce, None);
        }
    }

    #[test]
    fn hostile_reports_stay_bounded() {
        let mut raw = String::from(
            "From: x@y.example\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=b\r\n\r\n--b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; y\r\n",
        );
        for n in 0..500 {
            raw.push_str(&format!("\r\nFinal-Recipient: rfc822; r{n}@z.example\r\nAction: failed\r\nStatus: 5.9.99999\r\nDiagnostic-Code: {}\r\n", "é".repeat(3000)));
        }
        raw.push_str("--b--\r\n");
        let bounce = bounce_of(raw.as_bytes());
        assert_eq!(bounce.recipients.len(), MAX_RECIPIENTS);
        assert_eq!(bounce.recipients[0].status, None, "not a status code");
        assert!(
            bounce.recipients[0]
                .diagnostic
                .as_deref()
                .is_some_and(|text| text.chars().count() == MAX_DIAGNOSTIC)
        );
    }
}
