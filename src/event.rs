//! The events mxhook delivers, as types: the `mail.received` event of SPEC.md "The mail.received
//! event" ([`MailEvent`], its BotMailRoom fields in [`Email`], the verdicts in [`Auth`]) and the
//! `calendar.booking.*` events of provider ingress ([`CalendarEvent`]); [`Event`] is either, and
//! is what routing, delivery and the dashboard handle.
//!
//! Pure: building takes what the earlier stages learned and returns the event. Fields a later
//! stage will fill (authentication verdicts) carry honest defaults, never guesses.
//!
//! **Wire order.** Every object of an event serializes its fields in alphabetical order, which is
//! the order the events stored and delivered so far have (they were `serde_json::Value` maps,
//! which sort their keys): the structs here declare their fields in that order, so a stored event
//! reads back and re-serializes byte for byte. The fixture snapshots hold the shape; a unit test
//! holds the order.
//!
//! Where things are: `mail` (the mail event, its context and building), `auth` (the verdicts),
//! `calendar` (booking events), `payload` (the per-endpoint payload variants), `size` (the
//! payload cap: bounds and lengths without formatting).

use std::fmt;

use serde::{Deserialize, Serialize};

mod auth;
mod calendar;
mod mail;
mod operational;
mod payload;
mod size;

pub use auth::{ArcChain, Auth, AuthResult, Dkim, Dmarc, DmarcPolicy, Spf, SpfIdentity};
pub use calendar::{Booking, BookingChange, CalendarEvent, Person};
pub use mail::{
    Address, Attachment, Email, EventContext, Flags, MailEvent, MailReceived, Thread, TrustTier,
    build, build_guarded, build_with_flags, recipient_tag,
};
pub use operational::{
    DeliveryDead, DeliveryDeadType, EndpointDisabled, EndpointDisabledType, HeaderMetadata,
    MailQuarantined, QuarantinedEvent,
};
pub use payload::{
    BotMailRoomAttachment, BotMailRoomEmail, EndpointName, EventData, EventDataTs, Payload,
    Recipient, payload_for, payload_for_endpoint,
};

/// An event as stored and delivered: a received mail, a calendar booking change, a quarantined
/// mail's reduced event, or an operational event about a delivery or an endpoint.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
#[allow(clippy::large_enum_variant)] // one per message, moved a few times: no box needed
pub enum Event {
    Mail(MailEvent),
    Calendar(CalendarEvent),
    Quarantined(QuarantinedEvent),
    DeliveryDead(DeliveryDead),
    EndpointDisabled(EndpointDisabled),
}

impl Event {
    /// Reads a stored event. Its `type` says which kind it is (read first, without building the
    /// rest): `calendar.*` is a booking, `mail.quarantined`, `delivery.dead` and
    /// `endpoint.disabled` are theirs, anything else a mail. Fields an older event lacks read as
    /// their defaults.
    ///
    /// # Errors
    /// The text is not JSON, or not an event of the kind its `type` names.
    pub fn from_json(text: &str) -> Result<Self, serde_json::Error> {
        #[derive(Deserialize)]
        struct Kind<'a> {
            #[serde(rename = "type", borrow, default)]
            kind: Option<std::borrow::Cow<'a, str>>,
        }
        let Kind { kind } = serde_json::from_str(text)?;
        match kind.as_deref() {
            Some(kind) if kind.starts_with("calendar.") => {
                serde_json::from_str(text).map(Self::Calendar)
            }
            Some(crate::model::MAIL_QUARANTINED) => {
                serde_json::from_str(text).map(Self::Quarantined)
            }
            Some(crate::model::DELIVERY_DEAD) => serde_json::from_str(text).map(Self::DeliveryDead),
            Some(crate::model::ENDPOINT_DISABLED) => {
                serde_json::from_str(text).map(Self::EndpointDisabled)
            }
            _ => serde_json::from_str(text).map(Self::Mail),
        }
    }

    /// The event type (SPEC "Event types and subscriptions"): what subscriptions match and
    /// what the envelope payloads name in `event`.
    pub fn event_type(&self) -> &'static str {
        match self {
            Self::Mail(_) => crate::model::MAIL_RECEIVED,
            Self::Calendar(calendar) => calendar.change.event_type(),
            Self::Quarantined(_) => crate::model::MAIL_QUARANTINED,
            Self::DeliveryDead(_) => crate::model::DELIVERY_DEAD,
            Self::EndpointDisabled(_) => crate::model::ENDPOINT_DISABLED,
        }
    }

    /// The mail event, when this is one.
    pub fn as_mail(&self) -> Option<&MailEvent> {
        match self {
            Self::Mail(event) => Some(event),
            _ => None,
        }
    }
}

impl From<MailEvent> for Event {
    fn from(event: MailEvent) -> Self {
        Self::Mail(event)
    }
}

impl From<CalendarEvent> for Event {
    fn from(event: CalendarEvent) -> Self {
        Self::Calendar(event)
    }
}

/// The event (or payload) as JSON text, written straight into a byte buffer: `Value`'s `Display`
/// goes through a formatter adapter, one call per token, about twice the work for a large event.
pub fn to_json(event: &impl Serialize) -> String {
    // The events' maps have string keys only, which is all that can make serializing fail.
    serde_json::to_string(event).expect("an event serializes: every map key is a string")
}

/// What a stored event says of `is_duplicate`, read without parsing it; `None` for an event
/// without the flag (no mail event). Events are compact JSON, where a quote inside a string is
/// escaped: only the event's own key can read `"is_duplicate":`.
pub fn stored_duplicate_flag(stored: &str) -> Option<bool> {
    if stored.contains("\"is_duplicate\":false") {
        Some(false)
    } else if stored.contains("\"is_duplicate\":true") {
        Some(true)
    } else {
        None
    }
}

/// The stored event with `is_duplicate` set to `duplicate`, or `None` when it already says so
/// (or is no mail event). The commit decides the flag, on the fingerprint index, after intake
/// stored its guess; it is rarely wrong, so the event is read and written again only then.
pub fn with_duplicate_flag(stored: &str, duplicate: bool) -> Option<String> {
    // Reading the event (up to megabytes) is skipped unless it says the opposite.
    if stored_duplicate_flag(stored) != Some(!duplicate) {
        return None;
    }
    let Ok(Event::Mail(mut event)) = Event::from_json(stored) else {
        return None;
    };
    event.is_duplicate = duplicate;
    Some(to_json(&event))
}

/// One kind of id an event carries, so an event id cannot be passed where a message id belongs.
/// On the wire it is the plain string.
macro_rules! id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(
            Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
            utoipa::ToSchema,
        )]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl From<String> for $name {
            fn from(id: String) -> Self {
                Self(id)
            }
        }

        impl From<&str> for $name {
            fn from(id: &str) -> Self {
                Self(id.to_owned())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }
    };
}

id!(
    /// `evt_…`: stable across retries and resends, the receivers' idempotency key.
    EventId
);
id!(
    /// `msg_…`: the gateway's id of one inbox's copy of a message.
    MessageId
);
id!(
    /// The inbox id (the event's `agent_id`, the email's `inbox_id`).
    InboxId
);
id!(
    /// `thr_…`: the thread a message joined or started in its inbox.
    ThreadId
);

#[cfg(test)]
mod tests;
