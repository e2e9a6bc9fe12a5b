//! Event types and subscriptions (SPEC "Event types and subscriptions"): the catalogue of event
//! types, and the patterns an endpoint subscribes with (a type, `prefix.*`, or `*`).

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Every event type mxhook raises, in the order the docs list them.
pub const EVENT_TYPES: [&str; 7] = [
    MAIL_RECEIVED,
    MAIL_QUARANTINED,
    "calendar.booking.created",
    "calendar.booking.cancelled",
    "calendar.booking.rescheduled",
    DELIVERY_DEAD,
    ENDPOINT_DISABLED,
];

pub const MAIL_RECEIVED: &str = "mail.received";
pub const MAIL_QUARANTINED: &str = "mail.quarantined";
pub const DELIVERY_DEAD: &str = "delivery.dead";
pub const ENDPOINT_DISABLED: &str = "endpoint.disabled";

/// Whether `event_type` is an operational event: one the gateway raises about its own
/// deliveries and endpoints, never about the delivery of another operational event.
pub fn is_operational(event_type: &str) -> bool {
    event_type == DELIVERY_DEAD || event_type == ENDPOINT_DISABLED
}

/// One entry of a subscription, checked against the catalogue when it is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventPattern {
    /// `*`: every type, operational ones included.
    All,
    /// `prefix.*`: every type under `prefix.` (stored without the `.*`).
    Prefix(String),
    /// One type of the catalogue.
    Exact(String),
}

impl EventPattern {
    /// Reads a pattern; only types of the catalogue, and prefixes at least one of them has, are
    /// patterns, so a typo is an error instead of a subscription that never matches.
    ///
    /// # Errors
    /// A message saying what is wrong with `text`.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text == "*" {
            return Ok(Self::All);
        }
        if let Some(prefix) = text.strip_suffix(".*") {
            let dotted = format!("{prefix}.");
            if !prefix.is_empty()
                && !prefix.contains('*')
                && EVENT_TYPES.iter().any(|known| known.starts_with(&dotted))
            {
                return Ok(Self::Prefix(prefix.to_owned()));
            }
            return Err(format!("`{text}` matches no event type"));
        }
        match EVENT_TYPES.iter().find(|known| **known == text) {
            Some(known) => Ok(Self::Exact((*known).to_owned())),
            None => Err(format!("`{text}` is not an event type")),
        }
    }

    pub fn matches(&self, event_type: &str) -> bool {
        match self {
            Self::All => true,
            Self::Prefix(prefix) => event_type
                .strip_prefix(prefix.as_str())
                .is_some_and(|rest| rest.starts_with('.')),
            Self::Exact(known) => known == event_type,
        }
    }
}

impl fmt::Display for EventPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::All => f.write_str("*"),
            Self::Prefix(prefix) => write!(f, "{prefix}.*"),
            Self::Exact(known) => f.write_str(known),
        }
    }
}

impl Serialize for EventPattern {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for EventPattern {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// What an endpoint subscribes to: an event goes to it when any pattern matches its type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(transparent)]
#[schema(value_type = Vec<String>, example = json!(["mail.received", "calendar.*"]))]
pub struct Subscription(pub Vec<EventPattern>);

impl Default for Subscription {
    /// `["mail.received", "calendar.*"]`: what every endpoint received before subscriptions.
    fn default() -> Self {
        Self(vec![
            EventPattern::Exact(MAIL_RECEIVED.to_owned()),
            EventPattern::Prefix("calendar".to_owned()),
        ])
    }
}

impl Subscription {
    /// Reads a list of patterns.
    ///
    /// # Errors
    /// The message of the first pattern that is not one.
    pub fn parse<S: AsRef<str>>(patterns: &[S]) -> Result<Self, String> {
        patterns
            .iter()
            .map(|pattern| EventPattern::parse(pattern.as_ref()))
            .collect::<Result<Vec<_>, _>>()
            .map(Self)
    }

    pub fn matches(&self, event_type: &str) -> bool {
        self.0.iter().any(|pattern| pattern.matches(event_type))
    }

    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }

    /// The patterns as text, in order.
    pub fn names(&self) -> Vec<String> {
        self.0.iter().map(ToString::to_string).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_parse_and_match() {
        let all = EventPattern::parse("*").expect("*");
        assert!(EVENT_TYPES.iter().all(|known| all.matches(known)));
        let calendar = EventPattern::parse("calendar.*").expect("calendar.*");
        assert!(calendar.matches("calendar.booking.created"));
        assert!(!calendar.matches("mail.received"));
        let booking = EventPattern::parse("calendar.booking.*").expect("calendar.booking.*");
        assert!(booking.matches("calendar.booking.cancelled"));
        let mail = EventPattern::parse("mail.*").expect("mail.*");
        assert!(mail.matches("mail.quarantined") && mail.matches("mail.received"));
        assert!(!mail.matches("mailx.received"));
        let dead = EventPattern::parse("delivery.dead").expect("delivery.dead");
        assert!(dead.matches("delivery.dead") && !dead.matches("endpoint.disabled"));
        assert_eq!(calendar.to_string(), "calendar.*");
    }

    #[test]
    fn unknown_types_and_patterns_are_refused() {
        for bad in [
            "mail.recieved",
            "mail",
            "calendar",
            "cal.*",
            "calendar.booking.created.*",
            ".*",
            "**",
            "*.*",
            "mail.*.*",
            "",
            "Mail.Received",
        ] {
            assert!(EventPattern::parse(bad).is_err(), "{bad} should be refused");
        }
        let err = Subscription::parse(&["mail.received", "nope"]).expect_err("an unknown type");
        assert!(err.contains("nope"), "{err}");
    }

    #[test]
    fn subscriptions_default_to_mail_and_calendar() {
        let default = Subscription::default();
        assert_eq!(default.names(), ["mail.received", "calendar.*"]);
        assert!(default.matches("calendar.booking.rescheduled"));
        assert!(!default.matches("mail.quarantined"));
        assert!(!default.matches("delivery.dead"));
        let read: Subscription = serde_json::from_str(r#"["*"]"#).expect("a pattern list");
        assert!(read.matches("endpoint.disabled"));
        assert_eq!(
            serde_json::to_string(&read).expect("serializes"),
            r#"["*"]"#
        );
        assert!(serde_json::from_str::<Subscription>(r#"["x.*"]"#).is_err());
    }
}
