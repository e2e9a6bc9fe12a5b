//! The event's `auth` object: the sender-verification verdicts as a handler reads them (SPF,
//! every DKIM signature, DMARC, ARC). Fields in wire order (alphabetical).
//!
//! Verification computes them ([`crate::verify::AuthVerdict`]); this is their shape in the event,
//! written once and read back by the dashboard.

use serde::{Deserialize, Serialize};

use crate::verify::{ArcVerdict, AuthVerdict, DkimVerdict, DmarcVerdict, SpfVerdict};

/// The verdicts. `checked: false` (verification off, or no client address) leaves the rest
/// empty.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default)]
pub struct Auth {
    pub arc: Option<ArcChain>,
    pub checked: bool,
    pub dkim: Vec<Dkim>,
    pub dmarc: Option<Dmarc>,
    pub spf: Option<Spf>,
}

/// An RFC 8601 result, as every check reports it.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum AuthResult {
    Pass,
    Fail,
    SoftFail,
    Neutral,
    #[default]
    None,
    TempError,
    PermError,
}

impl AuthResult {
    pub const ALL: [Self; 7] = [
        Self::Pass,
        Self::Fail,
        Self::SoftFail,
        Self::Neutral,
        Self::None,
        Self::TempError,
        Self::PermError,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pass => "pass",
            Self::Fail => "fail",
            Self::SoftFail => "softfail",
            Self::Neutral => "neutral",
            Self::None => "none",
            Self::TempError => "temperror",
            Self::PermError => "permerror",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|result| result.as_str() == value)
    }

    /// Verification names its results with RFC 8601's words, all of them here; a word it might
    /// add later reads as `permerror` (the check's answer could not be used), never as a pass.
    fn from_verdict(value: &str) -> Self {
        Self::parse(value).unwrap_or(Self::PermError)
    }
}

/// The SPF result for the envelope sender (RFC 7208 §2.4: the HELO name for the null sender).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default)]
pub struct Spf {
    pub client_ip: String,
    /// The domain whose policy gave `result`.
    pub domain: String,
    pub helo_result: AuthResult,
    /// Which identity `result` is about.
    pub identity: SpfIdentity,
    pub result: AuthResult,
}

/// The identity an SPF result is about.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum SpfIdentity {
    #[default]
    MailFrom,
    Helo,
}

/// One DKIM signature's result.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default)]
pub struct Dkim {
    /// `rsa-sha256`, `rsa-sha1`, `ed25519-sha256`; empty when the signature could not be read.
    pub algorithm: String,
    /// The signing domain (`d=`); empty when the signature could not be read.
    pub domain: String,
    /// Why the signature did not pass.
    pub reason: Option<String>,
    pub result: AuthResult,
    pub selector: String,
}

/// The DMARC result for the RFC 5322 From domain.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default)]
pub struct Dmarc {
    pub dkim_aligned: bool,
    pub domain: String,
    /// The published policy; `none` without a record.
    pub policy: DmarcPolicy,
    pub reason: Option<String>,
    pub result: AuthResult,
    pub spf_aligned: bool,
}

/// A domain's published DMARC policy.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum DmarcPolicy {
    #[default]
    None,
    Quarantine,
    Reject,
}

impl DmarcPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Quarantine => "quarantine",
            Self::Reject => "reject",
        }
    }
}

/// The ARC chain's result.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default)]
pub struct ArcChain {
    /// ARC sets in the message (`i=` instances).
    pub instances: u64,
    pub reason: Option<String>,
    pub result: AuthResult,
}

impl From<&AuthVerdict> for Auth {
    fn from(verdict: &AuthVerdict) -> Self {
        Self {
            arc: verdict.arc.as_ref().map(ArcChain::from),
            checked: verdict.checked,
            dkim: verdict.dkim.iter().map(Dkim::from).collect(),
            dmarc: verdict.dmarc.as_ref().map(Dmarc::from),
            spf: verdict.spf.as_ref().map(Spf::from),
        }
    }
}

impl From<&SpfVerdict> for Spf {
    fn from(spf: &SpfVerdict) -> Self {
        Self {
            client_ip: spf.client_ip.clone(),
            domain: spf.domain.clone(),
            helo_result: AuthResult::from_verdict(spf.helo_result),
            identity: if spf.identity == "helo" {
                SpfIdentity::Helo
            } else {
                SpfIdentity::MailFrom
            },
            result: AuthResult::from_verdict(spf.result),
        }
    }
}

impl From<&DkimVerdict> for Dkim {
    fn from(dkim: &DkimVerdict) -> Self {
        Self {
            algorithm: dkim.algorithm.to_owned(),
            domain: dkim.domain.clone(),
            reason: dkim.reason.clone(),
            result: AuthResult::from_verdict(dkim.result),
            selector: dkim.selector.clone(),
        }
    }
}

impl From<&DmarcVerdict> for Dmarc {
    fn from(dmarc: &DmarcVerdict) -> Self {
        Self {
            dkim_aligned: dmarc.dkim_aligned,
            domain: dmarc.domain.clone(),
            policy: match dmarc.policy {
                "reject" => DmarcPolicy::Reject,
                "quarantine" => DmarcPolicy::Quarantine,
                _ => DmarcPolicy::None,
            },
            reason: dmarc.reason.clone(),
            result: AuthResult::from_verdict(dmarc.result),
            spf_aligned: dmarc.spf_aligned,
        }
    }
}

impl From<&ArcVerdict> for ArcChain {
    fn from(arc: &ArcVerdict) -> Self {
        Self {
            instances: u64::try_from(arc.instances).unwrap_or(u64::MAX),
            reason: arc.reason.clone(),
            result: AuthResult::from_verdict(arc.result),
        }
    }
}
