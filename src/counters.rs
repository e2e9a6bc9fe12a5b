//! Per-node counters of what is refused before anything is stored: SMTP rejections and
//! unauthenticated provider webhooks. A refusal leaves no row in the database, so unlike the
//! other metrics (read from the database at scrape time, cluster-wide) these are counted in
//! memory, per node, as Prometheus counters usually are.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::ingress::provider::Provider;

/// Why the SMTP side refused (or deferred) a recipient or a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    UnknownRecipient,
    RelayDenied,
    RateLimited,
    TooBig,
    Malformed,
    Policy,
    TempFailure,
}

impl Rejection {
    pub const ALL: [Rejection; 7] = [
        Self::UnknownRecipient,
        Self::RelayDenied,
        Self::RateLimited,
        Self::TooBig,
        Self::Malformed,
        Self::Policy,
        Self::TempFailure,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::UnknownRecipient => "unknown_recipient",
            Self::RelayDenied => "relay_denied",
            Self::RateLimited => "rate_limited",
            Self::TooBig => "too_big",
            Self::Malformed => "malformed",
            Self::Policy => "policy",
            Self::TempFailure => "temp_failure",
        }
    }
}

#[derive(Debug, Default)]
pub struct Counters {
    rejected: [AtomicU64; Rejection::ALL.len()],
    ingress_unauthorized: [AtomicU64; Provider::ALL.len()],
}

impl Counters {
    pub fn reject(&self, reason: Rejection) {
        if let Some(counter) = Rejection::ALL
            .iter()
            .position(|r| *r == reason)
            .and_then(|idx| self.rejected.get(idx))
        {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn unauthorized(&self, provider: Provider) {
        if let Some(counter) = Provider::ALL
            .iter()
            .position(|p| *p == provider)
            .and_then(|idx| self.ingress_unauthorized.get(idx))
        {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// `(reason, count)` for every rejection reason.
    pub fn rejected(&self) -> Vec<(&'static str, u64)> {
        Rejection::ALL
            .iter()
            .zip(&self.rejected)
            .map(|(reason, count)| (reason.as_str(), count.load(Ordering::Relaxed)))
            .collect()
    }

    /// `(provider, count)` of ingress requests refused as unauthenticated.
    pub fn ingress_unauthorized(&self) -> Vec<(&'static str, u64)> {
        Provider::ALL
            .iter()
            .zip(&self.ingress_unauthorized)
            .map(|(provider, count)| (provider.as_str(), count.load(Ordering::Relaxed)))
            .collect()
    }
}
