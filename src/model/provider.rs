//! The providers whose webhooks enter the pipeline beside SMTP (their names in routes, secrets
//! and metrics).

/// The providers mxhook accepts webhooks from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Provider {
    MailerSend,
    CalCom,
    Calendly,
    SendGrid,
}

impl Provider {
    pub const ALL: [Provider; 4] = [
        Self::MailerSend,
        Self::CalCom,
        Self::Calendly,
        Self::SendGrid,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::MailerSend => "mailersend",
            Self::CalCom => "calcom",
            Self::Calendly => "calendly",
            Self::SendGrid => "sendgrid",
        }
    }

    /// Whether the provider sends bookings (mapped to inboxes by event type) rather than mail.
    pub fn is_calendar(self) -> bool {
        matches!(self, Self::CalCom | Self::Calendly)
    }

    pub fn parse(value: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|provider| provider.as_str() == value)
    }
}
