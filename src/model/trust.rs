//! How far a sender is trusted: the event's `peer_trust_tier`, which rule filters name too.

use serde::{Deserialize, Serialize};

/// How far the sender is trusted (`peer_trust_tier`), from what verification proved.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum TrustTier {
    Trusted,
    Verified,
    #[default]
    Unverified,
    Suspicious,
}

impl TrustTier {
    pub const ALL: [Self; 4] = [
        Self::Trusted,
        Self::Verified,
        Self::Unverified,
        Self::Suspicious,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Trusted => "trusted",
            Self::Verified => "verified",
            Self::Unverified => "unverified",
            Self::Suspicious => "suspicious",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|tier| tier.as_str() == value)
    }
}
