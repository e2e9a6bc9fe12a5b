//! Pure per-provider rules: how each provider signs its webhooks, and what its payload says.
//! Signatures are checked in constant time over the exact request bytes. No IO, no clock: the
//! caller passes the current time.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

pub use crate::event::BookingChange;
use crate::event::Person;
pub use crate::model::Provider;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("the {0} header is missing")]
    MissingSignature(&'static str),
    #[error("the signature header is malformed")]
    MalformedSignature,
    #[error("the signature does not match")]
    BadSignature,
    #[error("the signed timestamp is outside the accepted window")]
    StaleTimestamp,
    #[error("the payload is not what the provider sends: {0}")]
    BadPayload(String),
}

/// Request headers, as lowercase name → value.
pub type Headers<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Checks one request against every secret that is currently valid for it (two during a
/// rotation). `now_s` and `tolerance_s` bound timestamps where the provider signs one.
///
/// # Errors
/// Why the request is not authentic.
pub fn verify(
    provider: Provider,
    headers: Headers<'_>,
    body: &[u8],
    secrets: &[String],
    now_s: i64,
    tolerance_s: i64,
) -> Result<(), Error> {
    match provider {
        Provider::MailerSend => {
            let signature = headers("signature").ok_or(Error::MissingSignature("Signature"))?;
            any_secret(secrets, |secret| {
                hex_hmac_matches(secret, &[body], &signature)
            })
        }
        Provider::CalCom => {
            let signature = headers("x-cal-signature-256")
                .ok_or(Error::MissingSignature("X-Cal-Signature-256"))?;
            any_secret(secrets, |secret| {
                hex_hmac_matches(secret, &[body], &signature)
            })
        }
        Provider::Calendly => {
            let header = headers("calendly-webhook-signature")
                .ok_or(Error::MissingSignature("Calendly-Webhook-Signature"))?;
            let mut timestamp = None;
            let mut signature = None;
            for part in header.split(',') {
                match part.trim().split_once('=') {
                    Some(("t", value)) => timestamp = Some(value.to_owned()),
                    Some(("v1", value)) => signature = Some(value.to_owned()),
                    _ => {}
                }
            }
            let (Some(timestamp), Some(signature)) = (timestamp, signature) else {
                return Err(Error::MalformedSignature);
            };
            check_window(&timestamp, now_s, tolerance_s)?;
            any_secret(secrets, |secret| {
                hex_hmac_matches(secret, &[timestamp.as_bytes(), b".", body], &signature)
            })
        }
        Provider::SendGrid => {
            let signature = headers("x-twilio-email-event-webhook-signature").ok_or(
                Error::MissingSignature("X-Twilio-Email-Event-Webhook-Signature"),
            )?;
            let timestamp = headers("x-twilio-email-event-webhook-timestamp").ok_or(
                Error::MissingSignature("X-Twilio-Email-Event-Webhook-Timestamp"),
            )?;
            check_window(&timestamp, now_s, tolerance_s)?;
            let signature = BASE64
                .decode(signature.trim())
                .map_err(|_| Error::MalformedSignature)?;
            let mut signed = Vec::with_capacity(timestamp.len() + body.len());
            signed.extend_from_slice(timestamp.as_bytes());
            signed.extend_from_slice(body);
            // The "secret" of SendGrid is its verification public key (base64 DER
            // SubjectPublicKeyInfo, as SendGrid shows it), checked with ECDSA P-256 / SHA-256.
            any_secret(secrets, |public_key| {
                let Ok(key) = BASE64.decode(public_key.trim()) else {
                    return false;
                };
                aws_lc_rs::signature::UnparsedPublicKey::new(
                    &aws_lc_rs::signature::ECDSA_P256_SHA256_ASN1,
                    key,
                )
                .verify(&signed, &signature)
                .is_ok()
            })
        }
    }
}

fn any_secret(secrets: &[String], matches: impl Fn(&str) -> bool) -> Result<(), Error> {
    // Every secret is tried, so timing does not reveal which one matched.
    let matched = secrets
        .iter()
        .fold(false, |found, secret| found | matches(secret));
    if matched {
        Ok(())
    } else {
        Err(Error::BadSignature)
    }
}

fn hex_hmac_matches(secret: &str, parts: &[&[u8]], signature_hex: &str) -> bool {
    let Ok(expected) = hex::decode(signature_hex.trim().trim_start_matches("sha256=")) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
        return false;
    };
    for part in parts {
        mac.update(part);
    }
    mac.verify_slice(&expected).is_ok()
}

fn check_window(timestamp: &str, now_s: i64, tolerance_s: i64) -> Result<(), Error> {
    let signed_at: i64 = timestamp
        .trim()
        .parse()
        .map_err(|_| Error::MalformedSignature)?;
    // The timestamp is unauthenticated input until the signature is checked, so the distance
    // must not overflow for values near i64::MIN or i64::MAX.
    if now_s.abs_diff(signed_at) > tolerance_s.unsigned_abs() {
        return Err(Error::StaleTimestamp);
    }
    Ok(())
}

/// An inbound mail handed over by a provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboundMail {
    /// The provider's id for this delivery, for replay protection.
    pub event_key: String,
    /// When the provider created the event (Unix seconds, from the signed body), if it says.
    pub created_at_s: Option<i64>,
    pub mail_from: Option<String>,
    pub recipients: Vec<String>,
    /// The message as MIME: the provider's raw copy when it sends one, else one built from the
    /// parsed fields.
    pub raw: Vec<u8>,
}

/// Reads SendGrid Inbound Parse's multipart form ("POST the raw, full MIME message" mode: the
/// `email` field holds the message, `envelope` the SMTP envelope as JSON); `content_type` is
/// the request's, which carries the form's boundary.
///
/// # Errors
/// [`Error::BadPayload`] naming what is malformed or missing.
pub async fn sendgrid_mail(content_type: &str, body: bytes::Bytes) -> Result<InboundMail, Error> {
    let boundary = multer::parse_boundary(content_type)
        .map_err(|_| Error::BadPayload("expected multipart/form-data".to_owned()))?;
    let stream = futures_util::stream::once(async move { Ok::<_, std::io::Error>(body) });
    let mut form = multer::Multipart::new(stream, boundary);
    let mut raw = None;
    let mut envelope = Value::Null;
    while let Some(field) = form
        .next_field()
        .await
        .map_err(|err| Error::BadPayload(format!("malformed form: {err}")))?
    {
        let name = field.name().unwrap_or_default().to_owned();
        let bytes = field
            .bytes()
            .await
            .map_err(|err| Error::BadPayload(format!("malformed form: {err}")))?;
        match name.as_str() {
            "email" => raw = Some(bytes.to_vec()),
            "envelope" => envelope = serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            _ => {}
        }
    }
    let raw = raw.ok_or_else(|| {
        Error::BadPayload(
            "no `email` field (enable \"POST the raw, full MIME message\")".to_owned(),
        )
    })?;
    let recipients: Vec<String> = envelope["to"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_ascii_lowercase)
        .collect();
    if recipients.is_empty() {
        return Err(Error::BadPayload("no envelope recipients".to_owned()));
    }
    Ok(InboundMail {
        event_key: String::new(),
        // SendGrid's signed timestamp header bounds its age instead.
        created_at_s: None,
        mail_from: envelope["from"].as_str().map(str::to_owned),
        recipients,
        raw,
    })
}

/// Reads a MailerSend `inbound.message` webhook; `received_at` dates a message built from
/// parsed fields when the payload gives no date.
///
/// # Errors
/// [`Error::BadPayload`] naming what is missing.
pub fn mailersend_mail(
    payload: &Value,
    received_at: chrono::DateTime<chrono::FixedOffset>,
) -> Result<InboundMail, Error> {
    let data = payload
        .get("data")
        .ok_or_else(|| Error::BadPayload("no `data` object".to_owned()))?;
    let event_key = data["id"].as_str().map(str::to_owned).unwrap_or_default();
    // The envelope names the inbox; header To may list anyone (and Bcc'd inboxes not at all).
    // It is read only when a payload carries no envelope.
    let addresses = |list: &Value| -> Vec<String> {
        let mut addresses: Vec<String> = list
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|recipient| recipient["email"].as_str())
            .map(str::to_lowercase)
            .collect();
        addresses.sort();
        addresses.dedup();
        addresses
    };
    let mut recipients = addresses(&data["recipients"]["rcptTo"]);
    if recipients.is_empty() {
        recipients = addresses(&data["recipients"]["to"]["data"]);
    }
    if recipients.is_empty() {
        return Err(Error::BadPayload("no recipients".to_owned()));
    }
    let mail_from = data["from"]["email"].as_str().map(str::to_owned);
    let raw = match data["raw"].as_str() {
        Some(raw) if !raw.is_empty() => raw.as_bytes().to_vec(),
        _ => build_mime(
            data,
            mail_from.as_deref().unwrap_or_default(),
            &recipients,
            received_at,
        ),
    };
    Ok(InboundMail {
        event_key,
        created_at_s: unix_seconds(&payload["created_at"])
            .or_else(|| unix_seconds(&data["created_at"])),
        mail_from,
        recipients,
        raw,
    })
}

/// A MIME message from parsed fields, for payloads without the raw message: From with its
/// display name, To, Subject (RFC 2047 encoded when not ASCII), Date and Message-ID, and the
/// text and HTML bodies.
fn build_mime(
    data: &Value,
    from: &str,
    recipients: &[String],
    received_at: chrono::DateTime<chrono::FixedOffset>,
) -> Vec<u8> {
    let message_id = mime_message_id(data);
    let date = mime_date(data, received_at);
    lettre_mime(data, from, recipients, &message_id, date)
        .unwrap_or_else(|| plain_mime(data, from, recipients, &message_id, date))
}

/// The payload's own Message-ID, else one derived from the provider's message id, so a
/// redelivery of the same message carries the same id (duplicate detection, threading).
fn mime_message_id(data: &Value) -> String {
    let from_headers = data["headers"].as_object().and_then(|headers| {
        headers
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case("message-id"))
            .and_then(|(_, value)| value.as_str())
    });
    let clean = |id: &str| {
        id.chars()
            .filter(|c| c.is_ascii_graphic() && !matches!(c, '<' | '>' | '"' | '\\'))
            .collect::<String>()
    };
    match from_headers.map(clean).filter(|id| id.contains('@')) {
        Some(id) => format!("<{id}>"),
        None => {
            let id = clean(data["id"].as_str().unwrap_or_default());
            if id.is_empty() {
                use sha2::Digest as _;
                let digest = Sha256::digest(data.to_string().as_bytes());
                format!("<{}@mailersend.mxhook.invalid>", hex::encode(&digest[..16]))
            } else {
                format!("<{id}@mailersend.mxhook.invalid>")
            }
        }
    }
}

/// When the message was sent: the payload's `date` (RFC 2822) or `created_at` (RFC 3339), else
/// when it was received.
fn mime_date(
    data: &Value,
    received_at: chrono::DateTime<chrono::FixedOffset>,
) -> chrono::DateTime<chrono::FixedOffset> {
    data["date"]
        .as_str()
        .and_then(|date| chrono::DateTime::parse_from_rfc2822(date.trim()).ok())
        .or_else(|| {
            data["created_at"]
                .as_str()
                .and_then(|date| chrono::DateTime::parse_from_rfc3339(date.trim()).ok())
        })
        .unwrap_or(received_at)
}

fn lettre_mime(
    data: &Value,
    from: &str,
    recipients: &[String],
    message_id: &str,
    date: chrono::DateTime<chrono::FixedOffset>,
) -> Option<Vec<u8>> {
    use lettre::message::{Mailbox, MultiPart, SinglePart};
    let mailbox = |email: &str, name: Option<&str>| -> Option<Mailbox> {
        let name = name
            .map(|name| name.replace(['\r', '\n'], " ").trim().to_owned())
            .filter(|name| !name.is_empty());
        Some(Mailbox::new(name, email.trim().parse().ok()?))
    };
    let from = mailbox(from, data["from"]["name"].as_str())?;
    let header_to: Vec<Mailbox> = data["recipients"]["to"]["data"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|to| mailbox(to["email"].as_str()?, to["name"].as_str()))
        .collect();
    let envelope_to: Vec<lettre::Address> = recipients
        .iter()
        .filter_map(|address| address.parse().ok())
        .collect();
    let envelope = lettre::address::Envelope::new(Some(from.email.clone()), envelope_to).ok()?;
    let mut builder = lettre::Message::builder()
        .envelope(envelope)
        .from(from)
        .subject(
            data["subject"]
                .as_str()
                .unwrap_or_default()
                .replace(['\r', '\n'], " "),
        )
        .date(std::time::SystemTime::from(date))
        .message_id(Some(message_id.to_owned()));
    if header_to.is_empty() {
        for address in recipients {
            builder = builder.to(mailbox(address, None)?);
        }
    } else {
        for mailbox in header_to {
            builder = builder.to(mailbox);
        }
    }
    let text = data["text"].as_str().unwrap_or_default().to_owned();
    let message = match data["html"].as_str().filter(|html| !html.is_empty()) {
        Some(html) => builder.multipart(MultiPart::alternative_plain_html(text, html.to_owned())),
        None => builder.singlepart(SinglePart::plain(text)),
    };
    message.ok().map(|message| message.formatted())
}

/// The fallback when an address is not one lettre accepts: the same headers written by hand
/// (non-ASCII left as UTF-8), so the message is still stored and delivered.
fn plain_mime(
    data: &Value,
    from: &str,
    recipients: &[String],
    message_id: &str,
    date: chrono::DateTime<chrono::FixedOffset>,
) -> Vec<u8> {
    let clean = |text: &str| text.replace(['\r', '\n'], " ");
    let subject = clean(data["subject"].as_str().unwrap_or_default());
    let text = data["text"]
        .as_str()
        .unwrap_or_default()
        .replace("\r\n", "\n")
        .replace('\n', "\r\n");
    let html = data["html"]
        .as_str()
        .unwrap_or_default()
        .replace("\r\n", "\n")
        .replace('\n', "\r\n");
    let boundary = "mxhook-ingress-boundary";
    format!(
        "From: {}\r\nTo: {}\r\nSubject: {subject}\r\nDate: {}\r\nMessage-ID: {message_id}\r\n\
MIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=\"{boundary}\"\r\n\r\n\
--{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n{text}\r\n\
--{boundary}\r\nContent-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n{html}\r\n\
--{boundary}--\r\n",
        clean(from),
        clean(&recipients.join(", ")),
        date.to_rfc2822(),
    )
    .into_bytes()
}

/// An RFC 3339 time in a payload as Unix seconds.
fn unix_seconds(value: &Value) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(value.as_str()?.trim())
        .ok()
        .map(|time| time.timestamp())
}

/// What a calendar webhook asks of mxhook.
#[derive(Debug, Clone, PartialEq)]
pub enum CalendarRequest {
    Booking(Booking),
    /// A trigger mxhook does not deliver. It is still verified before it is acknowledged, with
    /// the secret of the inbox its event type maps to (`None`: the payload names none).
    Ignored {
        event_type_key: Option<String>,
    },
}

impl CalendarRequest {
    /// `<provider>:<event type id>`, the key that finds the inbox whose secret verifies it.
    pub fn event_type_key(&self) -> Option<&str> {
        match self {
            Self::Booking(booking) => Some(&booking.event_type_key),
            Self::Ignored { event_type_key } => event_type_key.as_deref(),
        }
    }
}

/// A text field of a provider's payload; what is not a string there is left out (`null`).
fn text(value: &Value) -> Option<String> {
    value.as_str().map(str::to_owned)
}

fn person(email: &Value, name: &Value) -> Person {
    Person {
        email: text(email),
        name: text(name),
    }
}

/// A calendar booking change, normalised across providers.
#[derive(Debug, Clone, PartialEq)]
pub struct Booking {
    pub change: BookingChange,
    /// `<provider>:<event type id>`, looked up among the inboxes' calendar event types.
    pub event_type_key: String,
    /// Provider id of this delivery, for replay protection.
    pub event_key: String,
    /// When the provider created the event (Unix seconds, from the signed body), if it says.
    pub created_at_s: Option<i64>,
    /// The normalised booking fields sent in the event's `booking` object.
    pub booking: Box<crate::event::Booking>,
}

/// Reads a Cal.com webhook (`BOOKING_CREATED`, `BOOKING_CANCELLED`, `BOOKING_RESCHEDULED`).
/// Other triggers are [`CalendarRequest::Ignored`]: not an event mxhook delivers.
///
/// # Errors
/// [`Error::BadPayload`] naming what is missing.
pub fn calcom_booking(payload: &Value) -> Result<CalendarRequest, Error> {
    let booking = &payload["payload"];
    let event_type_id = match &booking["eventTypeId"] {
        Value::Number(number) => Some(number.to_string()),
        Value::String(text) if !text.is_empty() => Some(text.clone()),
        _ => None,
    };
    let change = match payload["triggerEvent"].as_str() {
        Some("BOOKING_CREATED") => BookingChange::Created,
        Some("BOOKING_CANCELLED") => BookingChange::Cancelled,
        Some("BOOKING_RESCHEDULED") => BookingChange::Rescheduled,
        Some(_) => {
            return Ok(CalendarRequest::Ignored {
                event_type_key: event_type_id.map(|id| format!("calcom:{id}")),
            });
        }
        None => return Err(Error::BadPayload("no `triggerEvent`".to_owned())),
    };
    let event_type_id =
        event_type_id.ok_or_else(|| Error::BadPayload("no `payload.eventTypeId`".to_owned()))?;
    let uid = booking["uid"].as_str().unwrap_or_default();
    Ok(CalendarRequest::Booking(Booking {
        change,
        event_type_key: format!("calcom:{event_type_id}"),
        created_at_s: unix_seconds(&payload["createdAt"]),
        event_key: format!(
            "{}:{uid}:{}",
            change.event_type(),
            payload["createdAt"].as_str().unwrap_or_default()
        ),
        booking: Box::new(crate::event::Booking {
            attendees: booking["attendees"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|attendee| person(&attendee["email"], &attendee["name"]))
                .collect(),
            cancellation_reason: text(&booking["cancellationReason"]),
            end_time: text(&booking["endTime"]),
            event_type_id,
            organizer: person(
                &booking["organizer"]["email"],
                &booking["organizer"]["name"],
            ),
            provider: Provider::CalCom.as_str().to_owned(),
            start_time: text(&booking["startTime"]),
            title: text(&booking["title"]),
            uid: uid.to_owned(),
        }),
    }))
}

/// Reads a Calendly webhook (`invitee.created`, `invitee.canceled`). A cancellation that is half
/// of a reschedule is [`CalendarRequest::Ignored`]: the paired `invitee.created` (with
/// `old_invitee`) carries the reschedule, so the agent hears about it once.
///
/// # Errors
/// [`Error::BadPayload`] naming what is missing.
pub fn calendly_booking(payload: &Value) -> Result<CalendarRequest, Error> {
    let inner = &payload["payload"];
    let scheduled = &inner["scheduled_event"];
    let event_type = scheduled["event_type"]
        .as_str()
        .filter(|uri| !uri.is_empty());
    let ignored = || CalendarRequest::Ignored {
        event_type_key: event_type.map(|uri| format!("calendly:{uri}")),
    };
    let change = match payload["event"].as_str() {
        Some("invitee.created") if !inner["old_invitee"].is_null() => BookingChange::Rescheduled,
        Some("invitee.created") => BookingChange::Created,
        Some("invitee.canceled") if inner["rescheduled"].as_bool() == Some(true) => {
            return Ok(ignored());
        }
        Some("invitee.canceled") => BookingChange::Cancelled,
        Some(_) => return Ok(ignored()),
        None => return Err(Error::BadPayload("no `event`".to_owned())),
    };
    let event_type = event_type
        .ok_or_else(|| Error::BadPayload("no `payload.scheduled_event.event_type`".to_owned()))?;
    let invitee = inner["uri"].as_str().unwrap_or_default();
    Ok(CalendarRequest::Booking(Booking {
        change,
        event_type_key: format!("calendly:{event_type}"),
        event_key: format!("{}:{invitee}", change.event_type()),
        created_at_s: unix_seconds(&payload["created_at"]),
        booking: Box::new(crate::event::Booking {
            attendees: vec![person(&inner["email"], &inner["name"])],
            cancellation_reason: text(&inner["cancellation"]["reason"]),
            end_time: text(&scheduled["end_time"]),
            event_type_id: event_type.to_owned(),
            organizer: person(
                &scheduled["event_memberships"][0]["user_email"],
                &scheduled["event_memberships"][0]["user_name"],
            ),
            provider: Provider::Calendly.as_str().to_owned(),
            start_time: text(&scheduled["start_time"]),
            title: text(&scheduled["name"]),
            uid: invitee.to_owned(),
        }),
    }))
}

#[cfg(test)]
mod tests;
