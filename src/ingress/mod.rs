//! Ingress from providers: verified webhooks from mail providers (MailerSend inbound routes,
//! SendGrid Inbound Parse) and calendar tools (Cal.com, Calendly) enter the same pipeline as SMTP
//! mail: durable store, event, delivery jobs.
//!
//! Order per request: read the body (bounded) → find the inbox (the exact envelope recipient
//! address, or the calendar event type's mapping in the database) → verify the signature with
//! that inbox's secret for the provider → skip a replay of an event id that inbox already
//! processed → intake. Nothing unverified is processed or acknowledged: a bad or missing
//! signature, and a target no inbox owns, are the same 401, counted in `/metrics`.
//! This module never writes SQL (see `db::ingress`), never reaches into `smtp`, and knows no
//! HTTP: `http::ingress` reads the requests and answers with what this stage returns.

pub mod provider;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use serde_json::Value;

use crate::config::{Config, IngressConfig};
use crate::db::Db;
use crate::directory::Directory;
use crate::event::CalendarEvent;
use crate::intake::{Intake, Outcome};
use crate::model::{Envelope, Recipient, now_ms, rfc3339};
use provider::{CalendarRequest, Provider};

/// A request's headers, read by name; shared across the stage's awaits, hence `Sync`.
pub type Headers<'a> = &'a (dyn Fn(&str) -> Option<String> + Sync);

/// The ingress stage: what it needs to verify, route and hand a provider request to intake.
pub struct Ingress {
    pub counters: Arc<crate::counters::Counters>,
    pub db: Db,
    pub intake: Arc<Intake>,
    pub directory: Directory,
    pub config: IngressConfig,
    /// When this node last pruned old replay keys (ms); pruning rides on accepted requests, at
    /// most once per [`REPLAY_PRUNE_EVERY_MS`].
    pub last_replay_prune: AtomicI64,
}

/// How often accepted requests prune replay keys past `ingress.replay_retention_s`.
const REPLAY_PRUNE_EVERY_MS: i64 = 60_000;

/// What was done with an authentic request; each is acknowledged, so the provider stops
/// retrying.
#[derive(Debug, PartialEq, Eq)]
pub enum Ack {
    /// Stored and queued: the stored messages, one per recipient inbox.
    Accepted { message_ids: Vec<String> },
    /// That event was processed already.
    Duplicate,
    /// Authentic, but not an event mxhook delivers; nothing stored.
    Ignored,
    /// Older than the replay keys kept; not processed.
    Expired,
}

/// The config file's calendar event types as `(event type, inbox id)`, seeded into the database
/// at start (see [`Db::seed_config_event_types`]).
pub fn config_event_types(config: &Config) -> Vec<(String, String)> {
    config
        .inboxes
        .iter()
        .flat_map(|inbox| {
            inbox
                .calendar_event_types
                .iter()
                .map(|event_type| (event_type.clone(), inbox.id.clone()))
        })
        .collect()
}

/// Why a provider request was refused; each maps to one status.
#[derive(Debug)]
pub enum Refusal {
    Unauthorized(String),
    BadPayload(String),
    /// The inbox's sender policy refuses the message; retrying will not help.
    Rejected(String),
    Unavailable,
    Internal(String),
}

impl From<crate::db::Error> for Refusal {
    fn from(err: crate::db::Error) -> Self {
        Self::Internal(err.to_string())
    }
}

/// Whether a request is authentic for one inbox.
enum Check {
    Authentic,
    /// Why not, for the log; the client only hears "unauthorized".
    Refused(String),
}

/// What a 401 tells the client: the same for an unknown target, a missing secret and a bad
/// signature, so refusals do not reveal which addresses or event types exist.
const UNAUTHORIZED: &str = "the request is not signed with a secret mxhook holds for its target";

impl Ingress {
    /// Checks a request against an inbox's current secrets for `provider`. Counts nothing: a
    /// multi-recipient request that verifies for one inbox is not an attack on the others.
    async fn check(
        &self,
        provider: Provider,
        inbox_id: &str,
        headers: Headers<'_>,
        body: &[u8],
    ) -> Result<Check, Refusal> {
        let now = now_ms();
        let secrets = self
            .db
            .ingress_secrets(inbox_id, provider.as_str(), now)
            .await?;
        if secrets.is_empty() {
            return Ok(if self.config.allow_unsigned {
                Check::Authentic
            } else {
                Check::Refused(format!("no {} secret is configured", provider.as_str()))
            });
        }
        Ok(
            match provider::verify(
                provider,
                headers,
                body,
                &secrets,
                now / 1000,
                self.config.timestamp_tolerance_s,
            ) {
                Ok(()) => Check::Authentic,
                Err(err) => Check::Refused(err.to_string()),
            },
        )
    }

    /// The refusal of a request that verified for no inbox: logged and counted once.
    fn unauthorized(&self, provider: Provider, inbox_id: Option<&str>, reason: &str) -> Refusal {
        tracing::warn!(
            provider = provider.as_str(),
            inbox_id,
            reason,
            "ingress refused: unauthenticated"
        );
        self.counters.unauthorized(provider);
        Refusal::Unauthorized(UNAUTHORIZED.to_owned())
    }

    /// The inbox that owns exactly this (lowercase) address. No `+tag` fallback: a provider
    /// route names the inbox address itself, and a near miss must not reach another inbox.
    fn inbox_with_address(&self, address: &str) -> Option<String> {
        let inbox_id = self.directory.lookup(address)?;
        let inbox = self.directory.inbox(&inbox_id)?;
        inbox
            .addresses
            .iter()
            .any(|known| known.to_lowercase() == address)
            .then_some(inbox_id)
    }

    /// A provider's inbound mail: find the recipients' inboxes, verify for each, skip replays,
    /// intake for the inboxes it is fresh for.
    ///
    /// # Errors
    /// The [`Refusal`] that answers the request.
    pub async fn mail(
        &self,
        provider: Provider,
        headers: Headers<'_>,
        body: &[u8],
        mail: provider::InboundMail,
        helo: &str,
    ) -> Result<Ack, Refusal> {
        let recipients: Vec<Recipient> = mail
            .recipients
            .iter()
            .filter_map(|address| {
                Some(Recipient {
                    address: address.clone(),
                    as_sent: address.clone(),
                    inbox_id: self.inbox_with_address(address)?,
                })
            })
            .collect();
        let mut inbox_ids: Vec<&str> = recipients.iter().map(|r| r.inbox_id.as_str()).collect();
        inbox_ids.sort_unstable();
        inbox_ids.dedup();
        if inbox_ids.is_empty() {
            return Err(self.unauthorized(provider, None, "no inbox has any of the recipients"));
        }
        // Each inbox checks the signature with its own secret; the request goes to those it
        // verifies for, and is refused (and counted) only when it verifies for none.
        let mut verified = Vec::with_capacity(inbox_ids.len());
        let mut first_refusal = None;
        for inbox_id in inbox_ids {
            match self.check(provider, inbox_id, headers, body).await? {
                Check::Authentic => verified.push(inbox_id),
                Check::Refused(reason) => {
                    first_refusal.get_or_insert((inbox_id, reason));
                }
            }
        }
        if verified.is_empty() {
            let (inbox_id, reason) = first_refusal.unwrap_or_default();
            return Err(self.unauthorized(provider, Some(inbox_id), &reason));
        }
        if self.older_than_replay_keys(mail.created_at_s) {
            return Ok(expired(provider));
        }
        let event_key = replay_key(&mail.event_key, body);
        let mut fresh = Vec::with_capacity(verified.len());
        for inbox_id in verified {
            if !self
                .db
                .ingress_seen(provider.as_str(), inbox_id, &event_key)
                .await?
            {
                fresh.push(inbox_id.to_owned());
            }
        }
        if fresh.is_empty() {
            return Ok(duplicate());
        }
        let envelope = Envelope {
            remote_ip: None,
            helo: helo.to_owned(),
            mail_from: mail.mail_from.clone(),
            recipients: recipients
                .iter()
                .filter(|recipient| fresh.contains(&recipient.inbox_id))
                .cloned()
                .collect(),
            smtputf8: true,
            tls: None,
        };
        let outcome = self.intake.accept(&envelope, &mail.raw).await;
        self.finish(provider, &fresh, &event_key, outcome).await
    }

    /// A calendar provider's booking: find the event type's inbox, verify, skip replays, intake.
    ///
    /// # Errors
    /// The [`Refusal`] that answers the request.
    pub async fn calendar(
        &self,
        provider: Provider,
        headers: Headers<'_>,
        body: &[u8],
        request: CalendarRequest,
    ) -> Result<Ack, Refusal> {
        let inbox_id = match request.event_type_key() {
            Some(key) => self
                .db
                .ingress_event_type_inbox(key)
                .await?
                .filter(|inbox_id| self.directory.inbox(inbox_id).is_some()),
            None => None,
        };
        let Some(inbox_id) = inbox_id else {
            let reason = format!(
                "no inbox receives {}",
                request.event_type_key().unwrap_or("(no event type)")
            );
            return Err(self.unauthorized(provider, None, &reason));
        };
        if let Check::Refused(reason) = self.check(provider, &inbox_id, headers, body).await? {
            return Err(self.unauthorized(provider, Some(&inbox_id), &reason));
        }
        let booking = match request {
            // Authentic, but not an event mxhook delivers: acknowledged, nothing stored.
            CalendarRequest::Ignored { .. } => {
                return Ok(Ack::Ignored);
            }
            CalendarRequest::Booking(booking) => booking,
        };
        if self.older_than_replay_keys(booking.created_at_s) {
            return Ok(expired(provider));
        }
        let event_key = replay_key(&booking.event_key, body);
        if self
            .db
            .ingress_seen(provider.as_str(), &inbox_id, &event_key)
            .await?
        {
            return Ok(duplicate());
        }
        let payload: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let outcome = self
            .intake
            .accept_event(&inbox_id, body, |ids| CalendarEvent {
                agent_id: inbox_id.as_str().into(),
                booking: *booking.booking,
                event_id: ids.event_id.into(),
                message_id: ids.message_id.into(),
                payload,
                provider,
                s3_bucket: ids.s3_bucket.to_owned(),
                s3_key: ids.s3_key.to_owned(),
                timestamp: rfc3339(ids.received_at_ms),
                change: booking.change,
            })
            .await;
        self.finish(
            provider,
            std::slice::from_ref(&inbox_id),
            &event_key,
            outcome,
        )
        .await
    }

    async fn finish(
        &self,
        provider: Provider,
        inbox_ids: &[String],
        event_key: &str,
        outcome: Outcome,
    ) -> Result<Ack, Refusal> {
        match outcome {
            Outcome::Accepted { message_ids } => {
                // Marked only after the commit, so a failed attempt can be retried by the
                // provider; a rare concurrent duplicate is delivered twice, never lost.
                for inbox_id in inbox_ids {
                    self.db
                        .mark_ingress_seen(provider.as_str(), inbox_id, event_key)
                        .await?;
                }
                self.prune_replay_keys().await;
                Ok(Ack::Accepted { message_ids })
            }
            Outcome::TempFail { .. } => Err(Refusal::Unavailable),
            Outcome::Reject { reason } => Err(Refusal::Rejected(reason)),
        }
    }

    /// Whether an event was created before the oldest replay key kept: its key may have been
    /// pruned, so it cannot be told from a replay. MailerSend and Cal.com sign no timestamp
    /// header, and this keeps pruning from reopening replays of their old requests.
    fn older_than_replay_keys(&self, created_at_s: Option<i64>) -> bool {
        let retention_s =
            i64::try_from(self.config.replay_retention().as_secs()).unwrap_or(i64::MAX);
        created_at_s.is_some_and(|created| (now_ms() / 1000).saturating_sub(created) > retention_s)
    }

    /// Forgets replay keys past the retention period, at most once a minute per node. The
    /// request that triggers it is already accepted, so a failure is logged, not answered.
    async fn prune_replay_keys(&self) {
        let now = now_ms();
        let last = self.last_replay_prune.load(Ordering::Relaxed);
        if now.saturating_sub(last) < REPLAY_PRUNE_EVERY_MS
            || self
                .last_replay_prune
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let retention_ms = (self.config.replay_retention_s * 1000.0) as i64;
        match self
            .db
            .prune_ingress_seen(now.saturating_sub(retention_ms))
            .await
        {
            Ok(0) => {}
            Ok(pruned) => tracing::debug!(pruned, "old ingress replay keys pruned"),
            Err(err) => tracing::warn!(error = %err, "pruning ingress replay keys failed"),
        }
    }
}

fn replay_key(provider_id: &str, body: &[u8]) -> String {
    if provider_id.is_empty() {
        use sha2::Digest as _;
        format!("sha256:{}", hex::encode(sha2::Sha256::digest(body)))
    } else {
        provider_id.to_owned()
    }
}

/// An authentic event older than the replay keys: acknowledged (a retry would not make it
/// younger) and not processed.
fn expired(provider: Provider) -> Ack {
    tracing::warn!(
        provider = provider.as_str(),
        "ingress event older than ingress.replay_retention_s not processed"
    );
    Ack::Expired
}

fn duplicate() -> Ack {
    Ack::Duplicate
}
