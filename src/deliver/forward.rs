//! The email-forward channel: sends an event to a rule's recipients through the configured
//! smarthost, as a text + HTML message rendered from `templates/forward.md` with the original
//! attached as `message/rfc822`.
//!
//! The From is the gateway's own address (a forward that kept the original From would fail the
//! sender's DMARC at the recipient); the original sender goes into Reply-To, so replying still
//! reaches them. `Auto-Submitted: auto-forwarded` (RFC 3834) tells responders not to answer, and
//! routing never forwards to the gateway's own inboxes (see `route`), so forwards cannot loop.

use lettre::message::header::{ContentType, HeaderName, HeaderValue};
use lettre::message::{Attachment, Mailbox, MultiPart, SinglePart};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use pulldown_cmark::{Event, Parser, html};
use serde_json::Value;

use crate::config::ForwardConfig;

const FORWARD_TEMPLATE: &str = include_str!("../../templates/forward.md");

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no smarthost is configured (forward.smarthost)")]
    NoSmarthost,
    #[error("smarthost URL is invalid: {0}")]
    BadSmarthost(String),
    #[error("address `{0}` cannot be used")]
    BadAddress(String),
    #[error("building the forward failed: {0}")]
    Build(String),
    #[error("smarthost refused the message permanently: {0}")]
    Rejected(String),
    #[error("smarthost unavailable: {0}")]
    Unavailable(String),
}

impl Error {
    /// Whether trying again later could succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}

pub struct Forwarder {
    transport: Option<AsyncSmtpTransport<Tokio1Executor>>,
    from: Mailbox,
}

impl Forwarder {
    /// # Errors
    /// [`Error::BadSmarthost`] or [`Error::BadAddress`] for configuration the validator let
    /// through but lettre cannot use.
    pub fn new(config: &ForwardConfig, hostname: &str) -> Result<Self, Error> {
        let transport = config
            .smarthost
            .as_deref()
            .map(|url| {
                AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
                    .map(|builder| {
                        builder
                            .hello_name(lettre::transport::smtp::extension::ClientId::Domain(
                                hostname.to_owned(),
                            ))
                            .build()
                    })
                    .map_err(|err| Error::BadSmarthost(err.to_string()))
            })
            .transpose()?;
        let from_address = config
            .from_address
            .clone()
            .unwrap_or_else(|| format!("mxhook@{hostname}"));
        let from = from_address
            .parse()
            .map_err(|_| Error::BadAddress(from_address.clone()))?;
        Ok(Self { transport, from })
    }

    /// Sends one forward of `event` (with `raw`, the original message) to `recipients`.
    ///
    /// # Errors
    /// An [`Error`]; [`Error::is_transient`] tells whether to retry.
    pub async fn forward(
        &self,
        event: &Value,
        raw: &[u8],
        recipients: &[String],
    ) -> Result<(), Error> {
        let transport = self.transport.as_ref().ok_or(Error::NoSmarthost)?;
        let message = build_message(&self.from, event, raw, recipients)?;
        match transport.send(message).await {
            Ok(_) => Ok(()),
            Err(err) if err.is_permanent() => Err(Error::Rejected(err.to_string())),
            Err(err) => Err(Error::Unavailable(err.to_string())),
        }
    }
}

/// The forward as a MIME message. Pure apart from lettre's Date and Message-ID headers.
fn build_message(
    from: &Mailbox,
    event: &Value,
    raw: &[u8],
    recipients: &[String],
) -> Result<lettre::Message, Error> {
    let email = &event["email"];
    let subject = event["subject"].as_str().unwrap_or_default();
    let sender_name = email["from_address"]["name"]
        .as_str()
        .or_else(|| event["sender"].as_str())
        .unwrap_or("unknown sender");
    let shown_from = Mailbox::new(
        Some(format!("{sender_name} via mxhook")),
        from.email.clone(),
    );

    let markdown = render_template(event);
    let mut builder = lettre::Message::builder()
        .from(shown_from)
        .subject(format!("Fwd: {subject}"))
        .raw_header(HeaderValue::new(
            HeaderName::new_from_ascii_str("Auto-Submitted"),
            "auto-forwarded".to_owned(),
        ))
        .raw_header(HeaderValue::new(
            HeaderName::new_from_ascii_str("X-Mxhook-Event-Id"),
            event["event_id"].as_str().unwrap_or_default().to_owned(),
        ));
    if let Some(original) = event["sender"]
        .as_str()
        .and_then(|sender| sender.parse::<Mailbox>().ok())
    {
        builder = builder.reply_to(original);
    }
    for recipient in recipients {
        let mailbox: Mailbox = recipient
            .parse()
            .map_err(|_| Error::BadAddress(recipient.clone()))?;
        builder = builder.to(mailbox);
    }
    let rfc822 =
        ContentType::parse("message/rfc822").map_err(|err| Error::Build(err.to_string()))?;
    builder
        .multipart(
            MultiPart::mixed()
                .multipart(
                    MultiPart::alternative()
                        .singlepart(SinglePart::plain(markdown.clone()))
                        .singlepart(SinglePart::html(markdown_to_html(&markdown))),
                )
                .singlepart(Attachment::new("original.eml".to_owned()).body(raw.to_vec(), rfc822)),
        )
        .map_err(|err| Error::Build(err.to_string()))
}

/// Fills `templates/forward.md`: `{{agent_id}}`, `{{event_id}}`, `{{sender}}`, `{{subject}}`,
/// `{{prompt}}`. Values are inserted once, in one pass, so text inside a value that looks like a
/// placeholder stays as it is.
fn render_template(event: &Value) -> String {
    let value = |name: &str| -> String {
        match name {
            "agent_id" | "event_id" | "sender" | "subject" => {
                event[name].as_str().unwrap_or_default().to_owned()
            }
            "prompt" => event["email"]["prompt"]
                .as_str()
                .unwrap_or("(the body was left out: see the attached original)")
                .to_owned(),
            _ => String::new(),
        }
    };
    let mut out = String::with_capacity(FORWARD_TEMPLATE.len() + 1024);
    let mut rest = FORWARD_TEMPLATE;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        match rest[start..].find("}}") {
            Some(end) => {
                out.push_str(&value(rest[start + 2..start + end].trim()));
                rest = &rest[start + end + 2..];
            }
            None => {
                out.push_str(&rest[start..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

/// Markdown → HTML with every raw HTML fragment of the mail shown as text: mail content is
/// untrusted and must not become markup in the recipient's client.
fn markdown_to_html(markdown: &str) -> String {
    let events = Parser::new(markdown).map(|event| match event {
        Event::Html(raw) | Event::InlineHtml(raw) => Event::Text(raw),
        other => other,
    });
    let mut out = String::with_capacity(markdown.len() * 2);
    html::push_html(&mut out, events);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_html_in_mail_content_is_escaped() {
        let html =
            markdown_to_html("Hello **there** <script>alert(1)</script> <img src=x onerror=y>");
        assert!(html.contains("<strong>there</strong>"), "{html}");
        assert!(
            !html.contains("<script>") && !html.contains("<img"),
            "{html}"
        );
        assert!(html.contains("&lt;script&gt;"), "{html}");
    }

    #[test]
    fn template_placeholders_are_filled_once() {
        let event = serde_json::json!({
            "agent_id": "agent", "event_id": "evt_1", "subject": "{{agent_id}}",
            "email": {"prompt": "body mentions {{event_id}}"}
        });
        let text = render_template(&event);
        assert!(text.contains("**agent** (evt_1)"), "{text}");
        assert!(text.contains("body mentions {{event_id}}"), "{text}");
    }
}
