//! Sender verification: SPF (connecting IP with the HELO name and the envelope sender), DKIM
//! (every signature), DMARC (alignment and the From domain's policy) and ARC, via mail-auth.
//!
//! Verification yields an [`AuthVerdict`], never an error: a resolver that times out or fails
//! becomes `temperror` in the verdict. What a failure means for the message (tag, reject,
//! quarantine) is policy, decided in [`trust`]. Headers of the incoming message that claim
//! results (`Authentication-Results`, `Received-SPF`) are never read: every result here is
//! computed from the raw bytes and DNS.

pub mod dns;
pub mod trust;

#[cfg(test)]
mod tests;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use mail_auth::dmarc::Policy;
use mail_auth::{
    AuthenticatedMessage, DkimResult, DmarcResult, MessageAuthenticator, SpfResult,
    dmarc::verify::DmarcParameters, spf::verify::SpfParameters,
};
use serde::Serialize;

use crate::config::AuthConfig;
use crate::model::Envelope;
use dns::DnsCache;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("DNS resolver: {0}")]
    Resolver(String),
    #[error("DNS record {0}")]
    Record(String),
}

/// Structured results, as the event's `auth` object carries them.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct AuthVerdict {
    /// False only when verification did not run (`auth.enabled = false`, or no client address).
    pub checked: bool,
    pub spf: Option<SpfVerdict>,
    pub dkim: Vec<DkimVerdict>,
    pub dmarc: Option<DmarcVerdict>,
    pub arc: Option<ArcVerdict>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SpfVerdict {
    /// The result for the envelope sender (RFC 7208 §2.4: the HELO name for the null sender).
    pub result: &'static str,
    /// The domain whose policy gave `result`.
    pub domain: String,
    /// `mailfrom` or `helo`: which identity `result` is about.
    pub identity: &'static str,
    pub helo_result: &'static str,
    pub client_ip: String,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct DkimVerdict {
    pub result: &'static str,
    /// The signing domain (`d=`); empty when the signature could not be read.
    pub domain: String,
    pub selector: String,
    pub algorithm: &'static str,
    /// Why the signature did not pass.
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct DmarcVerdict {
    pub result: &'static str,
    /// The RFC 5322 From domain the policy is about.
    pub domain: String,
    /// The published policy: `none`, `quarantine`, `reject`; `none` without a record.
    pub policy: &'static str,
    pub spf_aligned: bool,
    pub dkim_aligned: bool,
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ArcVerdict {
    pub result: &'static str,
    /// ARC sets in the message (`i=` instances).
    pub instances: usize,
    pub reason: Option<String>,
}

impl AuthVerdict {
    /// DMARC passed for the From domain: SPF or DKIM passed and aligned with it.
    pub fn dmarc_pass(&self) -> bool {
        self.dmarc
            .as_ref()
            .is_some_and(|dmarc| dmarc.result == "pass")
    }

    fn temperror() -> Self {
        Self {
            checked: true,
            spf: None,
            dkim: Vec::new(),
            dmarc: Some(DmarcVerdict {
                result: "temperror",
                domain: String::new(),
                policy: "none",
                spf_aligned: false,
                dkim_aligned: false,
                reason: Some("verification did not finish in time".to_owned()),
            }),
            arc: None,
        }
    }
}

/// Runs the checks with one resolver and one record cache, shared by all sessions.
#[derive(Clone)]
pub struct Verifier {
    authenticator: MessageAuthenticator,
    cache: Arc<DnsCache>,
    hostname: String,
    deadline: Duration,
    enabled: bool,
}

impl Verifier {
    /// A verifier over the configured nameservers (the system resolver when none are set).
    ///
    /// # Errors
    /// [`Error::Resolver`] when the resolver cannot be built.
    pub fn new(config: &AuthConfig, hostname: &str) -> Result<Self, Error> {
        let authenticator = if config.enabled {
            dns::authenticator(&config.nameservers, config.dns_timeout())?
        } else {
            // Never asked; built without reading the system configuration, which may be absent.
            dns::unused_authenticator()?
        };
        let mut verifier = Self::with_resolver(
            authenticator,
            DnsCache::default(),
            hostname,
            config.verify_timeout(),
        );
        verifier.enabled = config.enabled;
        Ok(verifier)
    }

    /// A verifier over a given resolver and cache (tests pre-load the cache).
    pub fn with_resolver(
        authenticator: MessageAuthenticator,
        cache: DnsCache,
        hostname: &str,
        deadline: Duration,
    ) -> Self {
        Self {
            authenticator,
            cache: Arc::new(cache),
            hostname: hostname.to_owned(),
            deadline,
            enabled: true,
        }
    }

    /// Verifies one message as received. Never fails: resolver trouble or running past the
    /// deadline is `temperror` in the verdict.
    pub async fn verify(&self, envelope: &Envelope, raw: &[u8]) -> AuthVerdict {
        let Some(remote_ip) = envelope.remote_ip.filter(|_| self.enabled) else {
            return AuthVerdict::default();
        };
        match tokio::time::timeout(self.deadline, self.verify_from(remote_ip, envelope, raw)).await
        {
            Ok(verdict) => verdict,
            Err(_) => {
                tracing::warn!(%remote_ip, "sender verification ran past its deadline");
                AuthVerdict::temperror()
            }
        }
    }

    async fn verify_from(&self, remote_ip: IpAddr, envelope: &Envelope, raw: &[u8]) -> AuthVerdict {
        let cache = &*self.cache;

        // A HELO that is an address literal or a bare word names no domain to check.
        let helo = envelope.helo.trim();
        let helo_is_domain = helo.contains('.')
            && !helo.starts_with('[')
            && helo.parse::<IpAddr>().is_err()
            && helo.is_ascii();
        let helo_output = if helo_is_domain {
            Some(
                self.authenticator
                    .verify_spf(cache.params(SpfParameters::verify_ehlo(
                        remote_ip,
                        helo,
                        &self.hostname,
                    )))
                    .await,
            )
        } else {
            None
        };
        let mail_from = envelope
            .mail_from
            .as_deref()
            .filter(|sender| sender.contains('@'));
        let (spf_output, identity) = match mail_from {
            Some(sender) => (
                Some(
                    self.authenticator
                        .verify_spf(cache.params(SpfParameters::verify_mail_from(
                            remote_ip,
                            helo,
                            &self.hostname,
                            sender,
                        )))
                        .await,
                ),
                "mailfrom",
            ),
            None => (helo_output.clone(), "helo"),
        };
        let mail_from_domain = match mail_from {
            Some(sender) => sender.rsplit_once('@').map_or("", |(_, domain)| domain),
            None => helo,
        };
        let spf = spf_output.as_ref().map(|output| SpfVerdict {
            result: spf_name(output.result()),
            domain: output.domain().to_owned(),
            identity,
            helo_result: helo_output
                .as_ref()
                .map_or("none", |helo| spf_name(helo.result())),
            client_ip: remote_ip.to_string(),
        });

        let Some(message) = AuthenticatedMessage::parse(raw) else {
            return AuthVerdict {
                checked: true,
                spf,
                dkim: Vec::new(),
                dmarc: Some(DmarcVerdict {
                    result: "permerror",
                    domain: String::new(),
                    policy: "none",
                    spf_aligned: false,
                    dkim_aligned: false,
                    reason: Some("message headers could not be read".to_owned()),
                }),
                arc: None,
            };
        };

        let dkim_outputs = self.authenticator.verify_dkim(cache.params(&message)).await;
        let dkim = dkim_outputs
            .iter()
            .map(|output| {
                let signature = output.signature();
                let (result, reason) = dkim_result(output.result());
                DkimVerdict {
                    result,
                    domain: signature.map(|sig| sig.d.clone()).unwrap_or_default(),
                    selector: signature.map(|sig| sig.s.clone()).unwrap_or_default(),
                    algorithm: signature.map_or("", |sig| match sig.a {
                        mail_auth::common::crypto::Algorithm::RsaSha1 => "rsa-sha1",
                        mail_auth::common::crypto::Algorithm::RsaSha256 => "rsa-sha256",
                        mail_auth::common::crypto::Algorithm::Ed25519Sha256 => "ed25519-sha256",
                    }),
                    reason,
                }
            })
            .collect();

        let arc_output = self.authenticator.verify_arc(cache.params(&message)).await;
        let arc = (!message.as_headers.is_empty() || !message.ams_headers.is_empty()).then(|| {
            let (result, reason) = dkim_result(arc_output.result());
            ArcVerdict {
                result,
                instances: message.as_headers.len(),
                reason,
            }
        });

        // Without any SPF identity (null sender and no usable HELO), DMARC can still pass on an
        // aligned DKIM signature; SPF then counts as `none`.
        let no_spf = mail_auth::SpfOutput::new(String::new());
        let output = self
            .authenticator
            .verify_dmarc(cache.params(DmarcParameters::new(
                &message,
                &dkim_outputs,
                mail_from_domain,
                spf_output.as_ref().unwrap_or(&no_spf),
            )))
            .await;
        let (result, reason) = dmarc_result(&output.result());
        let dmarc = Some(DmarcVerdict {
            result,
            domain: output.domain().to_owned(),
            policy: if output.dmarc_record().is_some() {
                policy_name(output.policy())
            } else {
                "none"
            },
            spf_aligned: *output.spf_result() == DmarcResult::Pass,
            dkim_aligned: *output.dkim_result() == DmarcResult::Pass,
            reason,
        });

        AuthVerdict {
            checked: true,
            spf,
            dkim,
            dmarc,
            arc,
        }
    }
}

fn spf_name(result: SpfResult) -> &'static str {
    match result {
        SpfResult::Pass => "pass",
        SpfResult::Fail => "fail",
        SpfResult::SoftFail => "softfail",
        SpfResult::Neutral => "neutral",
        SpfResult::TempError => "temperror",
        SpfResult::PermError => "permerror",
        SpfResult::None => "none",
    }
}

fn dkim_result(result: &DkimResult) -> (&'static str, Option<String>) {
    match result {
        DkimResult::Pass => ("pass", None),
        // RFC 6376 §3.7: a body hash mismatch is a failed signature (PERMFAIL), though
        // mail-auth files it under neutral.
        DkimResult::Neutral(
            err @ (mail_auth::Error::Dkim(mail_auth::dkim::DkimError::FailedBodyHashMatch)
            | mail_auth::Error::Arc(mail_auth::arc::ArcError::FailedBodyHashMatch)),
        ) => ("fail", Some(err.to_string())),
        DkimResult::Neutral(err) => ("neutral", Some(err.to_string())),
        DkimResult::Fail(err) => ("fail", Some(err.to_string())),
        DkimResult::PermError(err) => ("permerror", Some(err.to_string())),
        DkimResult::TempError(err) => ("temperror", Some(err.to_string())),
        DkimResult::None => ("none", None),
    }
}

fn dmarc_result(result: &DmarcResult) -> (&'static str, Option<String>) {
    match result {
        DmarcResult::Pass => ("pass", None),
        DmarcResult::Fail(err) => ("fail", Some(err.to_string())),
        DmarcResult::TempError(err) => ("temperror", Some(err.to_string())),
        DmarcResult::PermError(err) => ("permerror", Some(err.to_string())),
        DmarcResult::None => ("none", None),
    }
}

fn policy_name(policy: Policy) -> &'static str {
    match policy {
        Policy::Reject => "reject",
        Policy::Quarantine => "quarantine",
        Policy::None | Policy::Unspecified => "none",
    }
}
