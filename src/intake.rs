//! The pre-`250` sequence, in one place: parse → verify (SPF, DKIM, DMARC, ARC) → per-inbox
//! flags and policy → resolve the thread → store → build event → commit message and delivery
//! jobs → wake the dispatcher.
//!
//! **250 means durable**: [`Intake::accept`] returns [`Outcome::Accepted`] only after the raw
//! bytes are durable in the store and the database commit that holds the event and its jobs has
//! returned. Any failure undoes what was stored and returns [`Outcome::TempFail`], which the SMTP
//! session turns into `451 4.3.0` so the sender retries; a commit error is first checked against
//! the database, since a commit whose reply was lost may have happened.

use std::sync::Arc;

use tokio::sync::Notify;

use crate::config::{AuthConfig, StorageConfig};
use crate::db::{ClaimedJob, Db, JobTarget, Lease, NewDelivery, NewFingerprint, NewMessage};
use crate::deliver::handoff::{Handoff, Reservation};
use crate::directory::Directory;
use crate::event::{self, Auth, CalendarEvent, Event, EventContext, Flags, TrustTier};
use crate::model::{Envelope, WebhookEndpoint, new_id, now_ms};
use crate::model::{PolicyAction, SenderPolicy};
use crate::prompt::Templates;
use crate::ratelimit::RateLimiter;
use crate::route;
use crate::store::{self, Store};
use crate::thread::{self, Thread};
use crate::verify::trust::{self, Facts, InboxPolicy};
use crate::verify::{AuthVerdict, Verifier};

/// What happened to one DATA transfer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Stored and committed: one message id per inbox the recipients resolved to.
    Accepted { message_ids: Vec<String> },
    /// Nothing was kept; the sender should retry later.
    TempFail { reason: String },
    /// Nothing was kept; an inbox's policy refuses the message for good.
    Reject { reason: String },
}

/// Sender verification and what follows from it: the flags, the per-inbox policy, duplicate
/// detection and rate limits. Without it events keep their unverified defaults.
pub struct Checks {
    pub verifier: Verifier,
    pub rate_limiter: RateLimiter,
    pub auth: AuthConfig,
}

impl Checks {
    pub fn new(verifier: Verifier, rate_limiter: RateLimiter, auth: &AuthConfig) -> Self {
        Self {
            verifier,
            rate_limiter,
            auth: auth.clone(),
        }
    }
}

/// One received message with what parsing and verification learned about it.
#[derive(Clone, Copy)]
struct Received<'a> {
    envelope: &'a Envelope,
    raw: &'a [u8],
    parsed: &'a crate::parse::ParsedMessage,
    verdict: &'a AuthVerdict,
    headers: &'a trust::HeaderFacts,
    from: Option<&'a str>,
    /// The envelope sender, its domain or this inbox is above its soft rate limit.
    rate_limited: bool,
}

/// What a handed-over job is made of, besides its delivery.
struct HandoffJob<'a> {
    inbox_id: &'a str,
    message_id: &'a str,
    event_id: &'a str,
    event_json: &'a str,
    storage_key: &'a str,
    received_at: i64,
    /// The message's place in the commit.
    index: usize,
}

/// One delivery job of a message, with the webhook it posts to (none for an email forward).
struct Routed {
    delivery: NewDelivery,
    webhook: Option<WebhookEndpoint>,
}

/// What the checks concluded for one inbox's copy.
struct InboxFlags {
    flags: Flags,
    quarantined: bool,
    fingerprint: NewFingerprint,
}

pub struct Intake {
    store: Store,
    db: Db,
    directory: Directory,
    bucket: String,
    prefix: String,
    max_payload_bytes: usize,
    dispatcher_wakeup: Arc<Notify>,
    templates: Templates,
    checks: Option<Checks>,
    handoff: Option<Arc<Handoff>>,
}

/// A job written leased to this node, to be handed to its dispatcher once committed.
struct HandedOver {
    reservation: Reservation,
    job: ClaimedJob,
    /// Which of the committed messages it delivers.
    message: usize,
}

impl Intake {
    pub fn new(
        storage: &StorageConfig,
        max_payload_bytes: usize,
        store: Store,
        db: Db,
        directory: Directory,
        dispatcher_wakeup: Arc<Notify>,
    ) -> Self {
        Self {
            store,
            db,
            directory,
            bucket: storage.bucket.clone(),
            prefix: storage.prefix.clone(),
            max_payload_bytes,
            dispatcher_wakeup,
            templates: Templates::default(),
            checks: None,
            handoff: None,
        }
    }

    /// Hands this node's dispatcher the jobs it commits, leased, instead of leaving them to be
    /// claimed.
    pub fn with_handoff(mut self, handoff: Arc<Handoff>) -> Self {
        self.handoff = Some(handoff);
        self
    }

    /// Turns on verification, flags, policy, duplicate detection and rate limits.
    pub fn with_checks(mut self, checks: Checks) -> Self {
        self.checks = Some(checks);
        self
    }

    /// True when this recipient's sender, sender domain or inbox is at its hard rate limit;
    /// the session then answers RCPT with `451 4.7.1`.
    pub async fn over_hard_limit(&self, envelope: &Envelope, inbox_id: &str) -> bool {
        match &self.checks {
            Some(checks) => {
                checks
                    .rate_limiter
                    .over_hard_limit(envelope.mail_from.as_deref(), envelope.remote_ip, inbox_id)
                    .await
            }
            None => false,
        }
    }

    /// Prompts are rendered from these instead of the embedded `templates/`.
    pub fn with_templates(mut self, templates: Templates) -> Self {
        self.templates = templates;
        self
    }

    /// Makes one received message durable for every inbox among its recipients.
    pub async fn accept(&self, envelope: &Envelope, raw: &[u8]) -> Outcome {
        let received_at = now_ms();
        let parsed = crate::parse::parse_guarded(raw);
        let thread_keys = thread::keys(&parsed);
        let verdict = match &self.checks {
            Some(checks) => checks.verifier.verify(envelope, raw).await,
            None => AuthVerdict::default(),
        };

        let mut inbox_ids: Vec<&str> = Vec::new();
        for recipient in &envelope.recipients {
            if !inbox_ids.contains(&recipient.inbox_id.as_str()) {
                inbox_ids.push(&recipient.inbox_id);
            }
        }

        let mut inbox_flags = Vec::with_capacity(inbox_ids.len());
        if let Some(checks) = &self.checks {
            let rate_limited = checks
                .rate_limiter
                .count_message(
                    envelope.mail_from.as_deref(),
                    envelope.remote_ip,
                    &inbox_ids,
                )
                .await;
            let headers = trust::header_facts(raw, parsed.from_mailboxes);
            let from = parsed.from.as_ref().map(|from| from.address.as_str());
            for (inbox_id, rate_limited) in inbox_ids.iter().zip(rate_limited) {
                let message = Received {
                    envelope,
                    raw,
                    parsed: &parsed,
                    verdict: &verdict,
                    headers: &headers,
                    from,
                    rate_limited,
                };
                let flags = self.inbox_flags(checks, &message, inbox_id).await;
                match flags {
                    Ok(flags) => inbox_flags.push(Some(flags)),
                    Err(reason) => return Outcome::Reject { reason },
                }
            }
        } else {
            inbox_flags.resize_with(inbox_ids.len(), || None);
        }

        let mut messages = Vec::with_capacity(inbox_ids.len());
        let mut stored_keys = Vec::with_capacity(inbox_ids.len());
        let mut handed_over = Vec::new();
        for (inbox_id, flags) in inbox_ids.into_iter().zip(inbox_flags) {
            let message_id = new_id("msg");
            let event_id = new_id("evt");
            let key = store::object_key(&self.prefix, inbox_id, &message_id);
            let inbox_recipients: Vec<String> = envelope
                .recipients
                .iter()
                .filter(|recipient| recipient.inbox_id == inbox_id)
                .map(|recipient| recipient.address.clone())
                .collect();
            let thread = match self
                .thread_of(inbox_id, &thread_keys, &inbox_recipients, received_at)
                .await
            {
                Ok(thread) => thread,
                Err(err) => {
                    tracing::error!(error = %err, "resolving the thread failed");
                    self.undo(&stored_keys).await;
                    return Outcome::TempFail {
                        reason: "database unavailable".to_owned(),
                    };
                }
            };
            let quarantined = flags.as_ref().is_some_and(|flags| flags.quarantined);
            let (flags, fingerprint) = match flags {
                Some(flags) => (Some(flags.flags), Some(flags.fingerprint)),
                None => (None, None),
            };
            let event = Event::Mail(event::build_guarded(
                &EventContext {
                    event_id: &event_id,
                    message_id: &message_id,
                    agent_id: inbox_id,
                    received_at_ms: received_at,
                    envelope,
                    inbox_recipients: &inbox_recipients,
                    s3_bucket: &self.bucket,
                    s3_key: &key,
                    size: raw.len(),
                    max_payload_bytes: self.max_payload_bytes,
                    thread: &thread,
                    templates: &self.templates,
                },
                &parsed,
                flags,
            ));
            let routed = if quarantined {
                Vec::new()
            } else {
                self.deliveries_for(inbox_id, &event)
            };
            let event_json = event::to_json(&event);
            let deliveries = self.lease_for_handoff(
                routed,
                &mut handed_over,
                &HandoffJob {
                    inbox_id,
                    message_id: &message_id,
                    event_id: &event_id,
                    event_json: &event_json,
                    storage_key: &key,
                    received_at,
                    index: messages.len(),
                },
            );

            // Undone even when its put failed: an S3 PUT that timed out or lost its connection
            // may have been stored anyway, and nothing else will ever point at this fresh key.
            stored_keys.push(key.clone());
            if let Err(err) = self.store.put(&key, raw).await {
                tracing::error!(error = %err, key, "storing raw message failed");
                self.undo(&stored_keys).await;
                return Outcome::TempFail {
                    reason: "storage unavailable".to_owned(),
                };
            }
            messages.push(NewMessage {
                id: message_id,
                inbox_id: inbox_id.to_owned(),
                event_id,
                storage_bucket: self.bucket.clone(),
                storage_key: key,
                size: i64::try_from(raw.len()).unwrap_or(i64::MAX),
                envelope_from: envelope.mail_from.clone(),
                envelope_to: inbox_recipients,
                remote_ip: envelope.remote_ip.map(|ip| ip.to_string()),
                helo: envelope.helo.clone(),
                header_message_id: parsed.message_id.clone(),
                sender: parsed.from.as_ref().map(|from| from.address.clone()),
                subject: parsed.subject.clone(),
                received_at,
                event_json,
                deliveries,
                thread_id: thread.thread_id,
                // Every subject is keyed, so a later "Re:" finds the mail it answers.
                subject_key: parsed
                    .subject
                    .as_deref()
                    .map(|subject| thread::normalize_subject(subject).0)
                    .filter(|key| !key.is_empty()),
                participants: thread_keys.participants.clone(),
                quarantined,
                fingerprint,
            });
        }

        let message_ids: Vec<String> = messages.iter().map(|message| message.id.clone()).collect();
        let jobs: usize = messages
            .iter()
            .map(|message| message.deliveries.len())
            .sum();
        let committed_events = match self.db.commit_accepted(messages).await {
            Ok(events) => events,
            Err(err) => {
                tracing::error!(error = %err, "committing accepted message failed");
                let outcome = self.after_failed_commit(message_ids, &stored_keys).await;
                if matches!(outcome, Outcome::Accepted { .. }) {
                    // What the commit made of the duplicate flag is unknown; the jobs are
                    // left to a claim, which reads the events as stored.
                    self.give_back(handed_over).await;
                }
                return outcome;
            }
        };
        for handed in &mut handed_over {
            if let Some(Some(event_json)) = committed_events.get(handed.message) {
                handed.job.event_json.clone_from(event_json);
            }
        }
        let all_handed_over = handed_over.len() == jobs;
        self.hand_over(handed_over).await;
        if !all_handed_over {
            self.dispatcher_wakeup.notify_one();
        }
        Outcome::Accepted { message_ids }
    }

    /// Writes the webhook jobs of one message leased to this node while its dispatcher has
    /// room for them. Jobs of ordered endpoints wait for their thread's earlier jobs, which
    /// only a claim checks, and email forwards read the original back, so both are claimed.
    fn lease_for_handoff(
        &self,
        routed: Vec<Routed>,
        handed_over: &mut Vec<HandedOver>,
        message: &HandoffJob<'_>,
    ) -> Vec<NewDelivery> {
        let mut deliveries = Vec::with_capacity(routed.len());
        let mut room = self.handoff.is_some();
        for Routed {
            mut delivery,
            webhook,
        } in routed
        {
            let handoff = self.handoff.as_ref().filter(|_| room);
            let (Some(handoff), Some(mut endpoint)) = (handoff, webhook) else {
                deliveries.push(delivery);
                continue;
            };
            if delivery.ordered {
                deliveries.push(delivery);
                continue;
            }
            let Some(reservation) = handoff.reserve() else {
                room = false;
                deliveries.push(delivery);
                continue;
            };
            // The directory's copy was read when the secret's grace period still ran.
            endpoint.expire_previous_secret(message.received_at);
            delivery.lease = Some(Lease {
                node: handoff.node_id().to_owned(),
                until: handoff.lease_until(message.received_at),
            });
            handed_over.push(HandedOver {
                reservation,
                job: ClaimedJob {
                    delivery_id: delivery.id.clone(),
                    message_id: message.message_id.to_owned(),
                    inbox_id: message.inbox_id.to_owned(),
                    event_id: message.event_id.to_owned(),
                    attempts: 0,
                    failures: 0,
                    event_json: message.event_json.to_owned(),
                    storage_key: message.storage_key.to_owned(),
                    endpoint_ref: delivery.endpoint_ref.clone(),
                    channel: delivery.channel.clone(),
                    target: JobTarget::Webhook(endpoint),
                },
                message: message.index,
            });
            deliveries.push(delivery);
        }
        deliveries
    }

    /// Passes committed leased jobs to the dispatcher; when it has stopped, their leases are
    /// given back so another claim finds them at once.
    async fn hand_over(&self, handed_over: Vec<HandedOver>) {
        let Some(handoff) = &self.handoff else {
            return;
        };
        let mut refused = Vec::new();
        for HandedOver {
            reservation, job, ..
        } in handed_over
        {
            if let Err(delivery_id) = handoff.push(reservation, job) {
                refused.push(delivery_id);
            }
        }
        self.release(&refused).await;
    }

    /// Gives back the leases of jobs that will not be handed over.
    async fn give_back(&self, handed_over: Vec<HandedOver>) {
        let ids: Vec<String> = handed_over
            .into_iter()
            .map(|handed| handed.job.delivery_id)
            .collect();
        self.release(&ids).await;
    }

    async fn release(&self, ids: &[String]) {
        let Some(handoff) = &self.handoff else {
            return;
        };
        if ids.is_empty() {
            return;
        }
        if let Err(err) = self.db.release_claims(handoff.node_id(), ids).await {
            tracing::warn!(error = %err, jobs = ids.len(), "giving back leased jobs failed; they are due when their leases run out");
        }
        self.dispatcher_wakeup.notify_one();
    }

    /// What a commit that reported an error amounts to. It may be durable anyway, as when the
    /// connection was lost during `COMMIT` (the rows of one transaction are all there or none
    /// is): then the message is accepted. Deleting the objects of a committed message would
    /// leave its event pointing at nothing, so they are undone only when the database says
    /// plainly that the rows are absent, and kept when it cannot say: an orphan object is
    /// harmless, a missing one is loss.
    async fn after_failed_commit(&self, message_ids: Vec<String>, keys: &[String]) -> Outcome {
        let lookup = match message_ids.first() {
            Some(first) => self.db.get_message(first).await,
            None => Ok(None),
        };
        match lookup {
            Ok(Some(_)) => {
                tracing::warn!(?message_ids, "the failed commit was durable after all");
                self.dispatcher_wakeup.notify_one();
                return Outcome::Accepted { message_ids };
            }
            Ok(None) => self.undo(keys).await,
            Err(err) => {
                tracing::warn!(error = %err, ?keys, "cannot tell whether the commit happened; objects kept");
            }
        }
        Outcome::TempFail {
            reason: "database unavailable".to_owned(),
        }
    }

    /// The thread the message continues in this inbox (with its newest earlier emails), or a
    /// new one.
    async fn thread_of(
        &self,
        inbox_id: &str,
        keys: &thread::ThreadKeys,
        inbox_recipients: &[String],
        received_at: i64,
    ) -> Result<Thread, crate::db::Error> {
        let candidates = self
            .db
            .thread_candidates(
                inbox_id,
                &keys.references,
                keys.subject_key.as_deref(),
                received_at - thread::SUBJECT_WINDOW_MS,
            )
            .await?;
        let mut own_addresses = self
            .directory
            .inbox(inbox_id)
            .map(|inbox| inbox.addresses)
            .unwrap_or_default();
        own_addresses.extend_from_slice(inbox_recipients);
        let Some(thread_id) = thread::resolve(keys, &candidates, &own_addresses) else {
            return Ok(Thread {
                thread_id: new_id("thr"),
                ..Thread::default()
            });
        };
        let history = self
            .db
            .thread_history(inbox_id, &thread_id, thread::MAX_PREVIOUS_EMAILS + 1)
            .await?;
        Ok(thread::from_history(thread_id, &history))
    }

    /// The flags of one inbox's copy, or the reason its policy rejects the message.
    async fn inbox_flags(
        &self,
        checks: &Checks,
        message: &Received<'_>,
        inbox_id: &str,
    ) -> Result<InboxFlags, String> {
        let Received {
            envelope,
            raw,
            parsed,
            verdict,
            headers,
            from,
            rate_limited,
        } = *message;
        // Read from the directory, so a policy changed through the API (on any node) applies
        // to the next message without a restart.
        let SenderPolicy {
            spf_pass_required,
            dkim_pass_required,
            dmarc_pass_required,
            allow_senders,
            block_senders,
            policy_action: action,
        } = self.directory.sender_policy(inbox_id).unwrap_or_default();
        let policy = InboxPolicy {
            spf_pass_required,
            dkim_pass_required,
            dmarc_pass_required,
            allow_senders,
            block_senders,
        };
        let allow_listed = from.is_some_and(|from| {
            trust::sender_listed(&checks.auth.allow_senders, from)
                || trust::sender_listed(&policy.allow_senders, from)
        });
        let facts = Facts {
            verdict,
            headers,
            from,
            envelope_from: envelope.mail_from.as_deref(),
            from_is_gateway_inbox: from
                .is_some_and(|from| self.directory.lookup(&from.to_ascii_lowercase()).is_some()),
            allow_listed,
        };
        let violations = trust::policy_violations(&policy, &facts);
        if !violations.is_empty() && action == PolicyAction::Reject {
            tracing::info!(inbox_id, ?violations, "message rejected by inbox policy");
            return Err(violations.join("; "));
        }
        let quarantined = !violations.is_empty() && action == PolicyAction::Quarantine;

        // Lookups ignore what is older than the window, and pruning removes just that.
        let fingerprint = NewFingerprint {
            fingerprint: trust::fingerprint(parsed.message_id.as_deref(), raw),
            forget_before: now_ms() - (checks.auth.duplicate_window_s * 1000.0) as i64,
        };
        // The commit decides the flag, on the fingerprint index, and corrects the event if
        // this guess was wrong. Only rules route on the flag before that, so only an inbox
        // with rules pays for an early lookup.
        let is_duplicate = if self.directory.has_rules(inbox_id) {
            match self
                .db
                .fingerprint_seen(
                    inbox_id,
                    &fingerprint.fingerprint,
                    fingerprint.forget_before,
                )
                .await
            {
                Ok(seen) => seen,
                Err(err) => {
                    tracing::warn!(error = %err, "duplicate lookup failed; message not flagged");
                    false
                }
            }
        } else {
            false
        };
        let flags = Flags {
            sender_verified: trust::sender_verified(&facts),
            // The four tiers are the words trust names them with; none other is made.
            peer_trust_tier: TrustTier::parse(trust::trust_tier(&facts))
                .unwrap_or(TrustTier::Unverified),
            traffic_types: trust::traffic_types(&facts, &checks.auth.sender_domain_types),
            rate_limited,
            is_duplicate,
            quarantined,
            policy_violations: violations,
            auth: Auth::from(verdict),
        };
        Ok(InboxFlags {
            flags,
            quarantined,
            fingerprint,
        })
    }

    /// The delivery jobs of one event: the inbox webhook (every event) and each route its
    /// notification rules add (webhooks and email forwards).
    fn deliveries_for(&self, inbox_id: &str, event: &Event) -> Vec<Routed> {
        let Some(inbox) = self.directory.inbox(inbox_id) else {
            return Vec::new();
        };
        let mut deliveries: Vec<Routed> = inbox
            .webhook
            .clone()
            .filter(|webhook| webhook.enabled)
            .map(|webhook| Routed {
                delivery: NewDelivery {
                    id: new_id("dlv"),
                    channel: "webhook".to_owned(),
                    endpoint_ref: "inbox".to_owned(),
                    target: webhook.url.clone(),
                    ordered: webhook.ordered,
                    lease: None,
                },
                webhook: Some(webhook),
            })
            .into_iter()
            .collect();
        let flags = route::EventFlags::from_event(event);
        let own_address = |address: &str| self.directory.lookup(address).is_some();
        for route in route::routes(&inbox.rules, &flags, own_address) {
            let (channel, rule_id, target, ordered, webhook) = match route {
                route::Route::Webhook { rule_id } => {
                    let webhook = inbox
                        .rules
                        .iter()
                        .find(|rule| rule.id == rule_id)
                        .and_then(|rule| rule.channels.webhook.as_ref())
                        .map(|webhook| WebhookEndpoint::for_rule(webhook, inbox.webhook.as_ref()));
                    let url = webhook
                        .as_ref()
                        .map(|webhook| webhook.url.clone())
                        .unwrap_or_default();
                    let ordered = webhook.as_ref().is_some_and(|webhook| webhook.ordered);
                    ("webhook", rule_id, url, ordered, webhook)
                }
                route::Route::Email {
                    rule_id,
                    recipients,
                } => ("email", rule_id, recipients.join(", "), false, None),
            };
            deliveries.push(Routed {
                delivery: NewDelivery {
                    id: new_id("dlv"),
                    channel: channel.to_owned(),
                    endpoint_ref: format!("rule:{rule_id}"),
                    target,
                    ordered,
                    lease: None,
                },
                webhook,
            });
        }
        deliveries
    }

    /// Removes objects of a transaction that will not be committed. A failure here leaves an
    /// orphan object no row points to: harmless, and logged.
    async fn undo(&self, keys: &[String]) {
        for key in keys {
            if let Err(err) = self.store.delete(key).await {
                tracing::warn!(error = %err, key, "removing uncommitted object failed");
            }
        }
    }

    /// Makes a non-mail event durable for one inbox (calendar bookings from provider webhooks):
    /// the provider's request body is stored as the raw object, `build` makes the event from
    /// the ids, and the event and its delivery job are committed in one transaction, as for mail.
    pub async fn accept_event(
        &self,
        inbox_id: &str,
        raw: &[u8],
        build: impl FnOnce(&EventIds<'_>) -> CalendarEvent,
    ) -> Outcome {
        let received_at = now_ms();
        let message_id = new_id("msg");
        let event_id = new_id("evt");
        let key = format!("{}{inbox_id}/{message_id}.json", self.prefix);
        let event = build(&EventIds {
            event_id: &event_id,
            message_id: &message_id,
            received_at_ms: received_at,
            s3_bucket: &self.bucket,
            s3_key: &key,
        });
        let subject = event.booking.title.clone();
        let event = Event::Calendar(event);
        let deliveries = self
            .deliveries_for(inbox_id, &event)
            .into_iter()
            .map(|routed| routed.delivery)
            .collect();
        if let Err(err) = self.store.put(&key, raw).await {
            tracing::error!(error = %err, key, "storing provider payload failed");
            // As for mail: the failed put may have been stored anyway.
            self.undo(std::slice::from_ref(&key)).await;
            return Outcome::TempFail {
                reason: "storage unavailable".to_owned(),
            };
        }
        let message = NewMessage {
            id: message_id,
            inbox_id: inbox_id.to_owned(),
            event_id,
            storage_bucket: self.bucket.clone(),
            storage_key: key.clone(),
            size: i64::try_from(raw.len()).unwrap_or(i64::MAX),
            envelope_from: None,
            envelope_to: Vec::new(),
            remote_ip: None,
            helo: String::new(),
            header_message_id: None,
            sender: None,
            subject,
            received_at,
            event_json: event::to_json(&event),
            // A booking is its own thread: calendar events never join mail threads.
            thread_id: new_id("thr"),
            subject_key: None,
            participants: Vec::new(),
            deliveries,
            quarantined: false,
            fingerprint: None,
        };
        let message_id = message.id.clone();
        if let Err(err) = self.db.commit_accepted(vec![message]).await {
            tracing::error!(error = %err, "committing provider event failed");
            return self
                .after_failed_commit(vec![message_id], std::slice::from_ref(&key))
                .await;
        }
        self.dispatcher_wakeup.notify_one();
        Outcome::Accepted {
            message_ids: vec![message_id],
        }
    }
}

/// The ids and storage location a non-mail event is built with.
pub struct EventIds<'a> {
    pub event_id: &'a str,
    pub message_id: &'a str,
    pub received_at_ms: i64,
    pub s3_bucket: &'a str,
    pub s3_key: &'a str,
}
