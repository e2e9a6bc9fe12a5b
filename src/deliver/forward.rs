//! The email-forward channel: sends an event to a rule's recipients through the configured
//! smarthost, as a text + HTML message rendered from `templates/forward.md` with the original
//! attached as `message/rfc822`. A calendar event (provider ingress) is rendered from
//! `templates/calendar_forward.md` instead, with the provider's webhook JSON attached.
//!
//! The From is the gateway's own address (a forward that kept the original From would fail the
//! sender's DMARC at the recipient); the original sender goes into Reply-To, so replying still
//! reaches them. `Auto-Submitted: auto-forwarded` (RFC 3834) tells responders not to answer, and
//! routing never forwards to the gateway's own inboxes (see `route`), so forwards cannot loop.
//!
//! An auto-reply or a bounce (`traffic_types`) is still forwarded, since a person may need to
//! see it, but so that nothing can answer it back into a loop: sent from the null sender
//! (`MAIL FROM:<>`, so a vacation responder or a failing mailbox at the recipient has no address
//! to answer to, RFC 3834 §2 and RFC 5321 §4.5.5) and without a Reply-To (the original sender is
//! itself a responder or a mailer-daemon, and a person's reply would start the exchange again).

use lettre::message::header::{ContentType, HeaderName, HeaderValue};
use lettre::message::{Attachment, Mailbox, MultiPart, SinglePart};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use pulldown_cmark::{Event as Markdown, Parser, html};

use crate::config::ForwardConfig;
use crate::event::{BookingChange, CalendarEvent, Event, EventId, MailEvent, Person};
use crate::model::Provider;

const FORWARD_TEMPLATE: &str = include_str!("../../templates/forward.md");
const CALENDAR_TEMPLATE: &str = include_str!("../../templates/calendar_forward.md");

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
        event: &Event,
        raw: &[u8],
        recipients: &[String],
    ) -> Result<(), Error> {
        let transport = self.transport.as_ref().ok_or(Error::NoSmarthost)?;
        let message = build_message(&self.from, event, raw, recipients)?;
        let sent = if matches!(event, Event::Mail(mail) if machine_answer(mail)) {
            let envelope = lettre::address::Envelope::new(None, message.envelope().to().to_vec())
                .map_err(|err| Error::Build(err.to_string()))?;
            transport.send_raw(&envelope, &message.formatted()).await
        } else {
            transport.send(message).await
        };
        match sent {
            Ok(_) => Ok(()),
            Err(err) if err.is_permanent() => Err(Error::Rejected(err.to_string())),
            Err(err) => Err(Error::Unavailable(err.to_string())),
        }
    }

    /// Sends `raw`, a finished message (an inbox's reply), as it is: envelope from `from` to
    /// `recipients`.
    ///
    /// # Errors
    /// An [`Error`]; [`Error::is_transient`] tells whether to retry.
    pub async fn send_raw(
        &self,
        from: &str,
        recipients: &[String],
        raw: &[u8],
    ) -> Result<(), Error> {
        let transport = self.transport.as_ref().ok_or(Error::NoSmarthost)?;
        let address = |text: &str| {
            text.parse::<lettre::Address>()
                .map_err(|_| Error::BadAddress(text.to_owned()))
        };
        let to = recipients
            .iter()
            .map(|recipient| address(recipient))
            .collect::<Result<Vec<_>, _>>()?;
        let envelope = lettre::address::Envelope::new(Some(address(from)?), to)
            .map_err(|err| Error::Build(err.to_string()))?;
        match transport.send_raw(&envelope, raw).await {
            Ok(_) => Ok(()),
            Err(err) if err.is_permanent() => Err(Error::Rejected(err.to_string())),
            Err(err) => Err(Error::Unavailable(err.to_string())),
        }
    }

    /// Whether a smarthost is configured: without one nothing can be sent.
    pub fn can_send(&self) -> bool {
        self.transport.is_some()
    }
}

/// Whether `event` is a mail a machine wrote in answer to another (an auto-reply or a bounce),
/// which a forward must not let anyone answer back.
fn machine_answer(mail: &MailEvent) -> bool {
    mail.traffic_types
        .iter()
        .any(|kind| kind == "auto_reply" || kind == "bounce")
}

/// The forward as a MIME message. Pure apart from lettre's Date and Message-ID headers.
fn build_message(
    from: &Mailbox,
    event: &Event,
    raw: &[u8],
    recipients: &[String],
) -> Result<lettre::Message, Error> {
    let event = match event {
        Event::Calendar(booking) => return build_calendar_message(from, booking, raw, recipients),
        Event::Mail(mail) => mail,
        // Routing sends these to webhooks only: a quarantined mail is held back and an
        // operational event has no message to forward.
        other => {
            return Err(Error::Build(format!(
                "{} events are not forwarded by email",
                other.event_type()
            )));
        }
    };
    let sender_name = event
        .email
        .from_address
        .name
        .as_deref()
        .or(event.sender.as_deref())
        .unwrap_or("unknown sender");
    let shown_from = Mailbox::new(
        Some(format!("{sender_name} via mxhook")),
        from.email.clone(),
    );

    let markdown = render_template(event);
    let reply_to = event
        .sender
        .as_deref()
        .filter(|_| !machine_answer(event))
        .and_then(|sender| sender.parse::<Mailbox>().ok());
    let builder = forward_builder(
        shown_from,
        format!("Fwd: {}", event.subject),
        &event.event_id,
        reply_to,
        recipients,
    )?;
    let rfc822 =
        ContentType::parse("message/rfc822").map_err(|err| Error::Build(err.to_string()))?;
    with_body(
        builder,
        &markdown,
        Attachment::new("original.eml".to_owned()).body(raw.to_vec(), rfc822),
    )
}

/// A calendar event's forward: subject from the booking's title and start, a readable summary,
/// and the provider's webhook JSON (`raw`, as received) attached.
fn build_calendar_message(
    from: &Mailbox,
    event: &CalendarEvent,
    raw: &[u8],
    recipients: &[String],
) -> Result<lettre::Message, Error> {
    let booking = &event.booking;
    let title = booking
        .title
        .as_deref()
        .filter(|title| !title.trim().is_empty())
        .unwrap_or("Booking");
    let subject = match &booking.start_time {
        Some(start) => format!("{}: {title} ({start})", calendar_change(event)),
        None => format!("{}: {title}", calendar_change(event)),
    };
    let provider = provider_name(event);
    let shown_from = Mailbox::new(Some(format!("{provider} via mxhook")), from.email.clone());
    // Replies go to the person who booked, as they would to the sender of a forwarded mail.
    let reply_to = booking
        .attendees
        .first()
        .and_then(|attendee| attendee.email.as_deref())
        .and_then(|email| email.parse::<Mailbox>().ok());
    let builder = forward_builder(shown_from, subject, &event.event_id, reply_to, recipients)?;
    let json =
        ContentType::parse("application/json").map_err(|err| Error::Build(err.to_string()))?;
    let markdown = fill(CALENDAR_TEMPLATE, |name| calendar_value(event, name));
    with_body(
        builder,
        &markdown,
        Attachment::new(format!("{}-webhook.json", event.provider.as_str()))
            .body(raw.to_vec(), json),
    )
}

fn calendar_change(event: &CalendarEvent) -> &'static str {
    match event.change {
        BookingChange::Cancelled => "Booking cancelled",
        BookingChange::Rescheduled => "Booking rescheduled",
        BookingChange::Created => "New booking",
    }
}

fn provider_name(event: &CalendarEvent) -> &'static str {
    match event.provider {
        Provider::CalCom => "Cal.com",
        Provider::Calendly => "Calendly",
        Provider::MailerSend | Provider::SendGrid => "Calendar",
    }
}

/// The calendar template's placeholders: `{{change}}`, `{{provider}}`, `{{agent_id}}`,
/// `{{event_id}}`, `{{title}}`, `{{start_time}}`, `{{end_time}}`, `{{organizer}}`,
/// `{{attendees}}`, `{{cancellation_reason}}`.
fn calendar_value(event: &CalendarEvent, name: &str) -> String {
    let booking = &event.booking;
    let text = |value: &Option<String>| value.clone().unwrap_or_default();
    let person = |person: &Person| match (person.name.as_deref(), person.email.as_deref()) {
        (Some(name), Some(email)) if !name.is_empty() => format!("{name} <{email}>"),
        (_, Some(email)) => email.to_owned(),
        (Some(name), None) => name.to_owned(),
        (None, None) => String::new(),
    };
    match name {
        "change" => calendar_change(event).to_owned(),
        "provider" => provider_name(event).to_owned(),
        "agent_id" => event.agent_id.to_string(),
        "event_id" => event.event_id.to_string(),
        "title" => text(&booking.title),
        "start_time" => text(&booking.start_time),
        "end_time" => text(&booking.end_time),
        "cancellation_reason" => text(&booking.cancellation_reason),
        "organizer" => person(&booking.organizer),
        "attendees" => booking
            .attendees
            .iter()
            .map(person)
            .filter(|person| !person.is_empty())
            .collect::<Vec<_>>()
            .join(", "),
        _ => String::new(),
    }
}

/// Headers every forward carries: From, Subject, `Auto-Submitted`, the event id, Reply-To and
/// the recipients.
fn forward_builder(
    shown_from: Mailbox,
    subject: String,
    event_id: &EventId,
    reply_to: Option<Mailbox>,
    recipients: &[String],
) -> Result<lettre::message::MessageBuilder, Error> {
    let mut builder = lettre::Message::builder()
        .from(shown_from)
        .subject(subject)
        .raw_header(HeaderValue::new(
            HeaderName::new_from_ascii_str("Auto-Submitted"),
            "auto-forwarded".to_owned(),
        ))
        .raw_header(HeaderValue::new(
            HeaderName::new_from_ascii_str("X-Mxhook-Event-Id"),
            event_id.to_string(),
        ));
    if let Some(reply_to) = reply_to {
        builder = builder.reply_to(reply_to);
    }
    for recipient in recipients {
        let mailbox: Mailbox = recipient
            .parse()
            .map_err(|_| Error::BadAddress(recipient.clone()))?;
        builder = builder.to(mailbox);
    }
    Ok(builder)
}

/// The text + HTML rendering of `markdown`, with `attachment` beside it.
fn with_body(
    builder: lettre::message::MessageBuilder,
    markdown: &str,
    attachment: SinglePart,
) -> Result<lettre::Message, Error> {
    builder
        .multipart(
            MultiPart::mixed()
                .multipart(
                    MultiPart::alternative()
                        .singlepart(SinglePart::plain(markdown.to_owned()))
                        .singlepart(SinglePart::html(markdown_to_html(markdown))),
                )
                .singlepart(attachment),
        )
        .map_err(|err| Error::Build(err.to_string()))
}

/// Fills `templates/forward.md`: `{{agent_id}}`, `{{event_id}}`, `{{sender}}`, `{{subject}}`,
/// `{{prompt}}`. Values are inserted once, in one pass, so text inside a value that looks like a
/// placeholder stays as it is.
fn render_template(event: &MailEvent) -> String {
    fill(FORWARD_TEMPLATE, |name| match name {
        "agent_id" => event.agent_id.to_string(),
        "event_id" => event.event_id.to_string(),
        "sender" => event.sender.clone().unwrap_or_default(),
        "subject" => event.subject.clone(),
        "prompt" => event
            .email
            .prompt
            .as_deref()
            .unwrap_or("(the body was left out: see the attached original)")
            .to_owned(),
        _ => String::new(),
    })
}

/// Fills `{{name}}` placeholders from `value` in one pass. A line whose placeholders all come
/// out empty is left out, so a booking without, say, a cancellation reason shows no empty row.
fn fill(template: &str, value: impl Fn(&str) -> String) -> String {
    let mut out = String::with_capacity(template.len() + 1024);
    for line in template.split_inclusive('\n') {
        let mut rendered = String::with_capacity(line.len());
        let mut placeholders = 0;
        let mut filled = 0;
        let mut rest = line;
        while let Some(start) = rest.find("{{") {
            rendered.push_str(&rest[..start]);
            match rest[start..].find("}}") {
                Some(end) => {
                    let text = value(rest[start + 2..start + end].trim());
                    placeholders += 1;
                    filled += usize::from(!text.is_empty());
                    rendered.push_str(&text);
                    rest = &rest[start + end + 2..];
                }
                None => {
                    rendered.push_str(&rest[start..]);
                    rest = "";
                }
            }
        }
        rendered.push_str(rest);
        if placeholders == 0 || filled > 0 {
            out.push_str(&rendered);
        }
    }
    out
}

/// Markdown → HTML with every raw HTML fragment of the mail shown as text: mail content is
/// untrusted and must not become markup in the recipient's client.
pub(crate) fn markdown_to_html(markdown: &str) -> String {
    let events = Parser::new(markdown).map(|event| match event {
        Markdown::Html(raw) | Markdown::InlineHtml(raw) => Markdown::Text(raw),
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
        let event: MailEvent = serde_json::from_value(serde_json::json!({
            "agent_id": "agent", "event_id": "evt_1", "subject": "{{agent_id}}",
            "email": {"prompt": "body mentions {{event_id}}"}
        }))
        .expect("a mail event");
        let text = render_template(&event);
        assert!(text.contains("**agent** (evt_1)"), "{text}");
        assert!(text.contains("body mentions {{event_id}}"), "{text}");
    }

    #[test]
    fn calendar_summary_leaves_out_empty_rows() {
        let event: CalendarEvent = serde_json::from_value(serde_json::json!({
            "type": "calendar.booking.created", "provider": "calcom", "agent_id": "agent",
            "event_id": "evt_1",
            "booking": {"title": "Intro", "start_time": "2026-12-01T10:00:00Z",
                "end_time": "2026-12-01T10:30:00Z", "cancellation_reason": null,
                "organizer": {"email": "host@example.com", "name": "Host"},
                "attendees": [{"email": "p@x.example", "name": ""}]}
        }))
        .expect("a calendar event");
        let text = fill(CALENDAR_TEMPLATE, |name| calendar_value(&event, name));
        assert!(text.contains("**New booking** through Cal.com"), "{text}");
        assert!(
            text.contains("Organizer: Host <host@example.com>"),
            "{text}"
        );
        assert!(text.contains("Attendees: p@x.example\n"), "{text}");
        assert!(!text.contains("Cancellation"), "{text}");
    }
}
