//! Per-node counters of what is refused before anything is stored: SMTP rejections and
//! unauthenticated provider webhooks. A refusal leaves no row in the database, so unlike the
//! other metrics (read from the database at scrape time, cluster-wide) these are counted in
//! memory, per node, as Prometheus counters usually are. So is the time intake takes from the
//! end of DATA to the reply, which no row records either.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::model::Provider;

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

/// Upper bounds of the intake time histogram (end of DATA → reply), in ms.
pub const INTAKE_BUCKETS_MS: [u64; 11] =
    [5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000];

#[derive(Debug, Default)]
pub struct Counters {
    rejected: [AtomicU64; Rejection::ALL.len()],
    ingress_unauthorized: [AtomicU64; Provider::ALL.len()],
    /// Cumulative: an observation counts in every bucket whose bound it is at or under.
    intake_buckets: [AtomicU64; INTAKE_BUCKETS_MS.len()],
    intake_count: AtomicU64,
    intake_sum_us: AtomicU64,
}

/// The intake time histogram as one scrape reads it.
#[derive(Debug, Clone, Default)]
pub struct IntakeHistogram {
    /// `(bound in ms, cumulative count)`, ascending.
    pub buckets: Vec<(u64, u64)>,
    pub sum: Duration,
    pub count: u64,
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

    /// Records how long intake took for one message, from the end of DATA to the reply.
    pub fn observe_intake(&self, elapsed: Duration) {
        // The count moves before the buckets, and a scrape reads the buckets first, so a
        // scrape never sees a bucket above the count.
        self.intake_count.fetch_add(1, Ordering::Relaxed);
        self.intake_sum_us.fetch_add(
            u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        let ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
        for (bound, bucket) in INTAKE_BUCKETS_MS.iter().zip(&self.intake_buckets) {
            if ms <= *bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    pub fn intake_histogram(&self) -> IntakeHistogram {
        let buckets = INTAKE_BUCKETS_MS
            .iter()
            .zip(&self.intake_buckets)
            .map(|(bound, bucket)| (*bound, bucket.load(Ordering::Relaxed)))
            .collect();
        IntakeHistogram {
            buckets,
            sum: Duration::from_micros(self.intake_sum_us.load(Ordering::Relaxed)),
            count: self.intake_count.load(Ordering::Relaxed),
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
