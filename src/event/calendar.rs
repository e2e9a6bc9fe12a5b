//! The `calendar.booking.*` events of provider ingress: a booking made, cancelled or moved on
//! Cal.com or Calendly, normalised across providers, with the provider's own body beside it.
//! Fields in wire order (alphabetical).

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{EventId, InboxId, MessageId};
use crate::model::Provider;

/// A booking change from a calendar provider. Only `provider` and `type` must be there to read
/// one back; the rest read as empty when missing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(as = CalendarBookingEvent)]
pub struct CalendarEvent {
    /// The inbox id.
    #[serde(default)]
    #[schema(value_type = String)]
    pub agent_id: InboxId,
    /// The booking, normalised across providers (free-form, see SPEC.md).
    #[serde(default)]
    #[schema(value_type = Object)]
    pub booking: Booking,
    #[serde(default)]
    #[schema(value_type = String)]
    pub event_id: EventId,
    #[serde(default)]
    #[schema(value_type = String)]
    pub message_id: MessageId,
    /// The provider's webhook body as received (`null` if it was not JSON).
    #[serde(default)]
    #[schema(value_type = Object)]
    pub payload: serde_json::Value,
    /// `cal.com` or `calendly`.
    #[serde(serialize_with = "provider_name", deserialize_with = "provider_named")]
    #[schema(value_type = String)]
    pub provider: Provider,
    #[serde(default)]
    pub s3_bucket: String,
    #[serde(default)]
    pub s3_key: String,
    #[serde(default)]
    pub timestamp: String,
    /// `calendar.booking.created`, `calendar.booking.cancelled` or
    /// `calendar.booking.rescheduled`.
    #[serde(rename = "type")]
    #[schema(value_type = String, example = "calendar.booking.created")]
    pub change: BookingChange,
}

/// What happened to the booking: the event's `type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum BookingChange {
    #[serde(rename = "calendar.booking.created")]
    Created,
    #[serde(rename = "calendar.booking.cancelled")]
    Cancelled,
    #[serde(rename = "calendar.booking.rescheduled")]
    Rescheduled,
}

impl BookingChange {
    pub fn event_type(self) -> &'static str {
        match self {
            Self::Created => "calendar.booking.created",
            Self::Cancelled => "calendar.booking.cancelled",
            Self::Rescheduled => "calendar.booking.rescheduled",
        }
    }
}

/// The booking, normalised across providers. What the provider left out is `null`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Booking {
    pub attendees: Vec<Person>,
    pub cancellation_reason: Option<String>,
    pub end_time: Option<String>,
    /// Cal.com's `eventTypeId` or Calendly's event type URI.
    pub event_type_id: String,
    pub organizer: Person,
    /// `calcom` or `calendly`.
    pub provider: String,
    pub start_time: Option<String>,
    pub title: Option<String>,
    /// The provider's id of the booking (Calendly: the invitee URI).
    pub uid: String,
}

/// An organizer or attendee.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Person {
    pub email: Option<String>,
    pub name: Option<String>,
}

fn provider_name<S: Serializer>(provider: &Provider, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(provider.as_str())
}

fn provider_named<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Provider, D::Error> {
    let name = std::borrow::Cow::<'de, str>::deserialize(deserializer)?;
    Provider::parse(&name)
        .ok_or_else(|| serde::de::Error::custom(format!("unknown provider `{name}`")))
}
