//! `[ingress]`: provider webhooks (`/v1/ingress/...`) — unsigned requests, the timestamp
//! window, the rotated-secret grace, the body cap and how long replay keys are kept — with
//! defaults and validation.

use std::time::Duration;

use serde::Deserialize;

use super::{Error, MAX_SECONDS, invalid, seconds};

/// Webhooks from mail and calendar providers (`/v1/ingress/...`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngressConfig {
    /// Accept provider webhooks for inboxes that have no secret for that provider. Off: such
    /// requests get 401.
    pub allow_unsigned: bool,
    /// How far a signed timestamp may be from now, in seconds (Calendly, SendGrid).
    pub timestamp_tolerance_s: i64,
    /// How long a rotated-out secret stays valid, in seconds.
    pub rotation_grace_s: f64,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// How long a processed provider event id is remembered for replay protection, in seconds.
    /// MailerSend and Cal.com sign no timestamp, so a captured request replayed after this is
    /// processed again: keep it longer than anyone keeps their webhook logs.
    pub replay_retention_s: f64,
}

impl Default for IngressConfig {
    fn default() -> Self {
        Self {
            allow_unsigned: false,
            timestamp_tolerance_s: 300,
            rotation_grace_s: 86_400.0,
            max_body_bytes: 30 << 20,
            replay_retention_s: 90.0 * 86_400.0,
        }
    }
}

impl IngressConfig {
    /// `rotation_grace_s`: how long a rotated-out provider secret stays valid.
    pub fn rotation_grace(&self) -> Duration {
        seconds(self.rotation_grace_s)
    }

    /// `replay_retention_s`: how long a processed provider event id is remembered.
    pub fn replay_retention(&self) -> Duration {
        seconds(self.replay_retention_s)
    }

    pub(super) fn validate(&self) -> Result<(), Error> {
        if self.timestamp_tolerance_s <= 0 {
            return Err(invalid(
                "ingress.timestamp_tolerance_s",
                "must be greater than 0",
            ));
        }
        if !(self.rotation_grace_s.is_finite()
            && (0.0..=MAX_SECONDS).contains(&self.rotation_grace_s))
        {
            return Err(invalid(
                "ingress.rotation_grace_s",
                "must be 0 or more seconds",
            ));
        }
        // Shorter than the timestamp window, a replay of a timestamped request would pass both.
        if !(self.replay_retention_s.is_finite()
            && (self.timestamp_tolerance_s as f64..=MAX_SECONDS).contains(&self.replay_retention_s))
        {
            return Err(invalid(
                "ingress.replay_retention_s",
                "must be at least ingress.timestamp_tolerance_s and at most ten years",
            ));
        }
        Ok(())
    }
}
