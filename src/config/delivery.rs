//! `[delivery]`: how webhooks are sent — plain-http and private targets for development, retry
//! schedule, request timeout and lease, worker counts, payload cap, disabling failing endpoints
//! and the secret rotation grace — with defaults and validation.

use std::time::Duration;

use serde::Deserialize;

use super::{Error, MAX_SECONDS, invalid, positive_seconds, seconds};

/// A rotated-out secret that signs for more than a month is a rotation that did not happen.
const MAX_SECRET_ROTATION_GRACE_S: f64 = 30.0 * 86_400.0;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryConfig {
    /// Allow plain-http webhook URLs (development, tests).
    pub allow_http: bool,
    /// Allow webhook targets on loopback, private and link-local addresses (development, tests).
    pub allow_private_targets: bool,
    /// First retry delay in seconds; each later one is four times the previous.
    pub retry_base_s: f64,
    /// Retries after the first attempt before a delivery is dead-lettered.
    pub max_retries: u32,
    /// Seconds one webhook request may take.
    pub timeout_s: f64,
    /// Concurrent delivery attempts on this node.
    pub workers: usize,
    /// Concurrent attempts to one endpoint on this node, so that a slow receiver holds at most
    /// this many workers and never delays other endpoints.
    pub max_in_flight_per_endpoint: usize,
    /// Seconds a node holds a claimed job before another node may take it over.
    pub lease_s: f64,
    /// Largest JSON body sent; past it the bodies are left out with an `omitted_reason`.
    pub max_payload_bytes: usize,
    /// Seconds an endpoint may fail without a single success before it is disabled (with a
    /// `disabled_reason`); 0 never disables for failing.
    pub disable_after_s: f64,
    /// Seconds the signing secret a rotation replaced keeps signing beside the new one, so
    /// receivers can switch over without refusing deliveries; 0 drops it at once.
    pub secret_rotation_grace_s: f64,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        Self {
            allow_http: false,
            allow_private_targets: false,
            retry_base_s: 30.0,
            max_retries: 6,
            timeout_s: 30.0,
            workers: 64,
            max_in_flight_per_endpoint: 32,
            lease_s: 330.0,
            max_payload_bytes: 10 << 20,
            disable_after_s: 5.0 * 86_400.0,
            secret_rotation_grace_s: 86_400.0,
        }
    }
}

impl DeliveryConfig {
    /// `retry_base_s`: the first retry delay.
    pub fn retry_base(&self) -> Duration {
        seconds(self.retry_base_s)
    }

    /// `timeout_s`: how long one webhook request may take.
    pub fn timeout(&self) -> Duration {
        seconds(self.timeout_s)
    }

    /// `lease_s`: how long a claimed job stays this node's.
    pub fn lease(&self) -> Duration {
        seconds(self.lease_s)
    }

    /// `disable_after_s`: how long an endpoint may fail before it is disabled; `None` (0)
    /// never disables it.
    pub fn disable_after(&self) -> Option<Duration> {
        (self.disable_after_s > 0.0).then(|| seconds(self.disable_after_s))
    }

    /// `secret_rotation_grace_s`: how long a replaced signing secret keeps signing.
    pub fn secret_rotation_grace(&self) -> Duration {
        seconds(self.secret_rotation_grace_s)
    }

    pub(super) fn validate(&self) -> Result<(), Error> {
        positive_seconds("delivery.retry_base_s", self.retry_base_s)?;
        positive_seconds("delivery.timeout_s", self.timeout_s)?;
        positive_seconds("delivery.lease_s", self.lease_s)?;
        if self.timeout_s > 300.0 {
            return Err(invalid("delivery.timeout_s", "must be at most 300"));
        }
        if self.lease_s <= self.timeout_s {
            return Err(invalid(
                "delivery.lease_s",
                "must be longer than delivery.timeout_s, or a slow attempt would be taken over",
            ));
        }
        if !(self.disable_after_s.is_finite()
            && (0.0..=MAX_SECONDS).contains(&self.disable_after_s))
        {
            return Err(invalid(
                "delivery.disable_after_s",
                "must be 0 (never) or a number of seconds",
            ));
        }
        if !(self.secret_rotation_grace_s.is_finite()
            && (0.0..=MAX_SECRET_ROTATION_GRACE_S).contains(&self.secret_rotation_grace_s))
        {
            return Err(invalid(
                "delivery.secret_rotation_grace_s",
                "must be 0 to 2592000 seconds (30 days)",
            ));
        }
        if self.max_retries > 10 {
            return Err(invalid("delivery.max_retries", "must be at most 10"));
        }
        if self.workers == 0 {
            return Err(invalid("delivery.workers", "must be greater than 0"));
        }
        if self.max_in_flight_per_endpoint == 0 {
            return Err(invalid(
                "delivery.max_in_flight_per_endpoint",
                "must be greater than 0",
            ));
        }
        if self.max_payload_bytes < 4096 {
            return Err(invalid(
                "delivery.max_payload_bytes",
                "must be at least 4096",
            ));
        }
        Ok(())
    }
}
