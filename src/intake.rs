//! The pre-`250` sequence, in one place. [`Intake::accept`] reads as the README's invariants:
//! store each inbox's copy of the raw bytes and count the rate buckets, while parse → verify
//! (SPF, DKIM, DMARC, ARC) → spam score run → per-inbox policy and flags (reject, quarantine,
//! duplicate, rate levels) → for each inbox's copy: thread → event → route → commit every copy
//! with its delivery jobs in one transaction → hand the jobs leased to this node over to its
//! dispatcher. Which jobs are leased, and giving leases back, is the dispatcher's side
//! ([`crate::deliver::handoff::Handover`]); intake only asks.
//! [`Intake::accept_event`] (provider events) shares the store, commit and hand-over steps.
//!
//! **250 means durable**: [`Intake::accept`] returns [`Outcome::Accepted`] only after the raw
//! bytes are durable in the store and the database commit that holds the event and its jobs has
//! returned. Any failure undoes what was stored and returns [`Outcome::TempFail`], which the SMTP
//! session turns into `451 4.3.0` so the sender retries; a commit error is first checked against
//! the database, since a commit whose reply was lost may have happened.

use std::sync::Arc;

use tokio::sync::Notify;

use crate::config::{AuthConfig, StorageConfig};
use crate::db::{Db, NewDelivery, NewFingerprint, NewMessage};
use crate::deliver::handoff::{Handoff, Handover, JobParts, Routed};
use crate::directory::Directory;
use crate::event::{self, Auth, CalendarEvent, Event, EventContext, Flags, TrustTier};
use crate::model::{Channel, Direction, Envelope, WebhookEndpoint, duration_ms, new_id, now_ms};
use crate::model::{MAIL_QUARANTINED, PolicyAction, SenderPolicy, SpamAction, SpamVerdict};
use crate::prompt::Templates;
use crate::ratelimit::RateLimiter;
use crate::route;
use crate::spam::SpamChecker;
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

/// One received message with what parsing learned about it, shared by its inboxes' copies.
struct Mail<'a> {
    envelope: &'a Envelope,
    raw: &'a [u8],
    parsed: &'a crate::parse::ParsedMessage,
    thread_keys: thread::ThreadKeys,
    received_at: i64,
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
    /// rspamd's verdict, when scoring is on.
    spam: Option<&'a SpamVerdict>,
}

/// What the checks concluded for one inbox's copy.
struct InboxFlags {
    flags: Flags,
    quarantined: bool,
    /// The inbox's `spam_action` is `reject` and the verdict is spam: the message is refused
    /// when every inbox says so, and this copy quarantined when not.
    spam_reject: bool,
    fingerprint: NewFingerprint,
}

/// What the checks made of a message before any inbox's policy is applied.
struct Examined {
    parsed: crate::parse::ParsedMessage,
    verdict: AuthVerdict,
    spam: Option<SpamVerdict>,
}

/// The ids of one inbox's copy of a message and the object key its raw bytes go under, made
/// before anything else so that the bytes can be stored while the message is examined.
struct CopyIds {
    message_id: String,
    event_id: String,
    key: String,
}

impl CopyIds {
    fn new(prefix: &str, inbox_id: &str) -> Self {
        let message_id = new_id("msg");
        let key = store::object_key(prefix, inbox_id, &message_id);
        Self {
            message_id,
            event_id: new_id("evt"),
            key,
        }
    }
}

/// What one accepted transfer commits together: a row per inbox's copy, the objects stored
/// for them (undone if the commit does not happen) and the jobs leased to this node.
struct Batch<'h> {
    messages: Vec<NewMessage>,
    stored_keys: Vec<String>,
    handover: Handover<'h>,
}

impl<'h> Batch<'h> {
    fn new(copies: usize, handoff: Option<&'h Arc<Handoff>>) -> Self {
        Self {
            messages: Vec::with_capacity(copies),
            stored_keys: Vec::with_capacity(copies),
            handover: Handover::new(handoff),
        }
    }
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
    spam: Option<SpamChecker>,
    handoff: Option<Arc<Handoff>>,
    attachment_urls: Option<Arc<crate::retention::AttachmentUrls>>,
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
            spam: None,
            handoff: None,
            attachment_urls: None,
        }
    }

    /// Hands this node's dispatcher the jobs it commits, leased, instead of leaving them to be
    /// claimed.
    pub fn with_handoff(mut self, handoff: Arc<Handoff>) -> Self {
        self.handoff = Some(handoff);
        self
    }

    /// Gives each attachment of a mail event a signed download URL.
    pub fn with_attachment_urls(
        mut self,
        urls: Option<Arc<crate::retention::AttachmentUrls>>,
    ) -> Self {
        self.attachment_urls = urls;
        self
    }

    /// Turns on verification, flags, policy, duplicate detection and rate limits.
    pub fn with_checks(mut self, checks: Checks) -> Self {
        self.checks = Some(checks);
        self
    }

    /// Turns on spam scoring (with checks only: the inbox policy acts on the verdict).
    pub fn with_spam(mut self, spam: Option<SpamChecker>) -> Self {
        self.spam = spam;
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

    /// Makes one received message durable for every inbox among its recipients: store each
    /// inbox's copy of the raw bytes and count the rate buckets while parse → verify → score
    /// run, then policy and flags → per inbox (thread → event → route) → commit → hand over.
    /// Nothing is kept if a step fails or the policy refuses the message.
    ///
    /// The store's durable write and the rate count each wait for a group sync or commit that
    /// other sessions share; run one after the other with the rest, they were most of the time
    /// to `250`. Started first, they wait while this message is parsed and checked. A refused
    /// message has its objects removed again, as a failed commit does.
    pub async fn accept(&self, envelope: &Envelope, raw: &[u8]) -> Outcome {
        let received_at = now_ms();
        let inbox_ids = inboxes_of(envelope);
        let copies: Vec<CopyIds> = inbox_ids
            .iter()
            .map(|inbox_id| CopyIds::new(&self.prefix, inbox_id))
            .collect();
        let keys: Vec<String> = copies.iter().map(|copy| copy.key.clone()).collect();
        let examine = async {
            let parsed = crate::parse::parse_guarded(raw);
            let verdict = self.verify(envelope, raw).await;
            let spam = self.score(envelope, raw, &verdict).await;
            Examined {
                parsed,
                verdict,
                spam,
            }
        };
        let (stored, rate_limited, examined) = tokio::join!(
            self.store_copies(&keys, raw),
            self.count_rate(envelope, &inbox_ids),
            examine
        );
        let inbox_flags = match self
            .policy_and_flags(envelope, raw, &examined, &inbox_ids, rate_limited)
            .await
        {
            Ok(inbox_flags) => inbox_flags,
            Err(reason) => {
                self.undo(&keys).await;
                return Outcome::Reject { reason };
            }
        };
        if let Err(reason) = stored {
            self.undo(&keys).await;
            return Outcome::TempFail { reason };
        }
        let parsed = &examined.parsed;
        let mail = Mail {
            envelope,
            raw,
            parsed,
            thread_keys: thread::keys(parsed),
            received_at,
        };
        let mut batch = Batch::new(inbox_ids.len(), self.handoff.as_ref());
        batch.stored_keys = keys;
        for ((inbox_id, ids), flags) in inbox_ids.into_iter().zip(copies).zip(inbox_flags) {
            if let Err(reason) = self.add_copy(&mail, inbox_id, ids, flags, &mut batch).await {
                self.undo(&batch.stored_keys).await;
                return Outcome::TempFail { reason };
            }
        }
        self.commit_and_hand_over(batch).await
    }

    /// Stores the raw bytes under every copy's fresh key, the puts running side by side; the
    /// error is the reason to answer `451`. Every key is for the caller to undo, stored or not.
    async fn store_copies(&self, keys: &[String], raw: &[u8]) -> Result<(), String> {
        let puts = keys.iter().map(|key| self.put_raw(key, raw));
        futures_util::future::join_all(puts)
            .await
            .into_iter()
            .collect()
    }

    /// Counts the message against the rate limits: for each inbox, whether it or its sender is
    /// over a soft limit. Without checks nothing is counted (`None`).
    async fn count_rate(&self, envelope: &Envelope, inbox_ids: &[&str]) -> Option<Vec<bool>> {
        let checks = self.checks.as_ref()?;
        Some(
            checks
                .rate_limiter
                .count_message(envelope.mail_from.as_deref(), envelope.remote_ip, inbox_ids)
                .await,
        )
    }

    /// The sender's authentication results (SPF, DKIM, DMARC, ARC); unverified defaults
    /// without checks.
    async fn verify(&self, envelope: &Envelope, raw: &[u8]) -> AuthVerdict {
        match &self.checks {
            Some(checks) => checks.verifier.verify(envelope, raw).await,
            None => AuthVerdict::default(),
        }
    }

    /// rspamd's verdict, after verification so that its results go along (see [`crate::spam`]);
    /// `None` when scoring is off or there are no checks to act on it.
    async fn score(
        &self,
        envelope: &Envelope,
        raw: &[u8],
        verdict: &AuthVerdict,
    ) -> Option<SpamVerdict> {
        let spam = self.spam.as_ref().filter(|_| self.checks.is_some())?;
        Some(spam.check(envelope, raw, verdict, &new_id("q")).await)
    }

    /// Concludes each inbox's flags from the checks and the rate count ([`Self::count_rate`]),
    /// or the reason an inbox's policy rejects the message. Without checks, no inbox has flags.
    async fn policy_and_flags(
        &self,
        envelope: &Envelope,
        raw: &[u8],
        examined: &Examined,
        inbox_ids: &[&str],
        rate_limited: Option<Vec<bool>>,
    ) -> Result<Vec<Option<InboxFlags>>, String> {
        let Examined {
            parsed,
            verdict,
            spam,
        } = examined;
        let spam = spam.as_ref();
        let mut inbox_flags = Vec::with_capacity(inbox_ids.len());
        let (Some(checks), Some(rate_limited)) = (&self.checks, rate_limited) else {
            inbox_flags.resize_with(inbox_ids.len(), || None);
            return Ok(inbox_flags);
        };
        let headers = trust::header_facts(raw, parsed);
        let from = parsed.from.as_ref().map(|from| from.address.as_str());
        let mut checked = Vec::with_capacity(inbox_ids.len());
        for (inbox_id, rate_limited) in inbox_ids.iter().zip(rate_limited) {
            let message = Received {
                envelope,
                raw,
                parsed,
                verdict,
                headers: &headers,
                from,
                rate_limited,
                spam,
            };
            checked.push(self.inbox_flags(checks, &message, inbox_id).await?);
        }
        // One reply answers every recipient: spam is refused only when every inbox refuses it.
        // An inbox that refuses among others that accept holds its copy instead, since a copy
        // accepted with the others' cannot be dropped silently.
        if !checked.is_empty() && checked.iter().all(|flags| flags.spam_reject) {
            let score = spam.and_then(|spam| spam.score).unwrap_or_default();
            tracing::info!(score, "message rejected as spam");
            return Err(format!("message scored as spam ({score:.2})"));
        }
        inbox_flags.extend(checked.into_iter().map(|mut flags| {
            if flags.spam_reject {
                flags.quarantined = true;
                flags.flags.quarantined = true;
            }
            Some(flags)
        }));
        Ok(inbox_flags)
    }

    /// Adds one inbox's copy, its raw bytes already stored under `ids.key`, to the batch:
    /// thread → event → route (leasing what this node's dispatcher takes). The error is the
    /// reason to answer `451`; the caller undoes what the batch stored.
    async fn add_copy(
        &self,
        mail: &Mail<'_>,
        inbox_id: &str,
        ids: CopyIds,
        flags: Option<InboxFlags>,
        batch: &mut Batch<'_>,
    ) -> Result<(), String> {
        let Mail {
            envelope,
            raw,
            parsed,
            ref thread_keys,
            received_at,
        } = *mail;
        let CopyIds {
            message_id,
            event_id,
            key,
        } = ids;
        let inbox_recipients: Vec<String> = envelope
            .recipients
            .iter()
            .filter(|recipient| recipient.inbox_id == inbox_id)
            .map(|recipient| recipient.address.clone())
            .collect();
        let thread = self
            .thread_of(inbox_id, thread_keys, &inbox_recipients, received_at)
            .await
            .map_err(|err| {
                tracing::error!(error = %err, "resolving the thread failed");
                "database unavailable".to_owned()
            })?;
        let quarantined = flags.as_ref().is_some_and(|flags| flags.quarantined);
        let (flags, fingerprint) = match flags {
            Some(flags) => (Some(flags.flags), Some(flags.fingerprint)),
            None => (None, None),
        };
        let mut event = Event::Mail(event::build_guarded(
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
                direction: Direction::Inbound,
            },
            parsed,
            flags,
        ));
        if let (Some(urls), Event::Mail(mail)) = (&self.attachment_urls, &mut event) {
            for attachment in &mut mail.email.attachments {
                if let Some((url, expires)) =
                    urls.sign(&message_id, &attachment.id, received_at / 1000)
                {
                    attachment.download_url = Some(url);
                    attachment.expires_at =
                        Some(crate::model::rfc3339(expires.saturating_mul(1000)));
                }
            }
        }
        let event_json = event::to_json(&event);
        let mut flags = route::EventFlags::from_event(&event);
        let deliveries = if quarantined {
            // A quarantined copy is kept, and only its reduced `mail.quarantined` event goes
            // out, to the endpoints subscribed to that. The claim reduces the stored event
            // (see `Db::claim_due`); the jobs are not handed over, which would send it whole.
            flags.event_type = MAIL_QUARANTINED;
            self.deliveries_for(inbox_id, &flags)
                .into_iter()
                .map(|routed| routed.delivery)
                .collect()
        } else {
            batch.handover.lease(
                self.deliveries_for(inbox_id, &flags),
                &JobParts {
                    inbox_id,
                    message_id: &message_id,
                    event_id: &event_id,
                    event_json: &event_json,
                    storage_key: &key,
                    received_at,
                    index: batch.messages.len(),
                },
            )
        };
        batch.messages.push(NewMessage {
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
            subject_key: thread::subject_key(parsed.subject.as_deref()),
            participants: thread_keys.participants.clone(),
            quarantined,
            fingerprint,
            direction: Direction::Inbound,
            attachment_parts: crate::parse::part::spans_json(&parsed.attachments),
        });
        Ok(())
    }

    /// Writes the raw bytes under their fresh key, durably. The key is listed for undoing even
    /// when its put failed: an S3 PUT that timed out or lost its connection may have been
    /// stored anyway, and nothing else will ever point at this fresh key.
    async fn store_raw(
        &self,
        key: &str,
        raw: &[u8],
        stored_keys: &mut Vec<String>,
    ) -> Result<(), String> {
        stored_keys.push(key.to_owned());
        self.put_raw(key, raw).await
    }

    /// One durable put of the raw bytes; the error, logged here, is the reason to answer `451`.
    async fn put_raw(&self, key: &str, raw: &[u8]) -> Result<(), String> {
        self.store.put(key, raw).await.map_err(|err| {
            tracing::error!(error = %err, key, "storing raw message failed");
            "storage unavailable".to_owned()
        })
    }

    /// Commits the batch in one transaction and hands its leased jobs to this node's
    /// dispatcher: the `250` point. A failed commit is checked against the database
    /// ([`Self::after_failed_commit`]); if it happened after all, the leases are given back,
    /// since what the commit made of the duplicate flag is unknown and a claim reads the
    /// events as stored.
    async fn commit_and_hand_over(&self, batch: Batch<'_>) -> Outcome {
        let Batch {
            messages,
            stored_keys,
            handover,
        } = batch;
        let message_ids: Vec<String> = messages.iter().map(|message| message.id.clone()).collect();
        let jobs: usize = messages
            .iter()
            .map(|message| message.deliveries.len())
            .sum();
        match self.db.commit_accepted(messages).await {
            Ok(committed_events) => {
                handover
                    .hand_over(&self.db, &self.dispatcher_wakeup, &committed_events, jobs)
                    .await;
                Outcome::Accepted { message_ids }
            }
            Err(err) => {
                tracing::error!(error = %err, "committing accepted message failed");
                let outcome = self.after_failed_commit(message_ids, &stored_keys).await;
                if matches!(outcome, Outcome::Accepted { .. }) {
                    handover.give_back(&self.db, &self.dispatcher_wakeup).await;
                }
                outcome
            }
        }
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
        // Emails of the thread that were erased or pruned are missing from its history.
        let lost = self.db.thread_lost_messages(inbox_id, &thread_id).await?;
        let mut thread = thread::from_history(thread_id, &history);
        thread.earlier_left_out |= lost;
        Ok(thread)
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
            spam,
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
            spam_action,
            spam_score_threshold,
            // Applied at RCPT, before any message.
            require_tls: _,
        } = self.directory.sender_policy(inbox_id).unwrap_or_default();
        let is_spam = spam.is_some_and(|verdict| verdict.is_spam(spam_score_threshold));
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
        let mut violations = violations;
        let mut quarantined = !violations.is_empty() && action == PolicyAction::Quarantine;
        if is_spam && spam_action != SpamAction::Tag {
            // Named like a policy violation, so a held copy's `mail.quarantined` says why.
            let score = spam.and_then(|spam| spam.score).unwrap_or_default();
            violations.push(format!("scored as spam ({score:.2})"));
            quarantined |= spam_action == SpamAction::Quarantine;
        }

        // Lookups ignore what is older than the window, and pruning removes just that.
        let fingerprint = NewFingerprint {
            fingerprint: trust::fingerprint(parsed.message_id.as_deref(), raw),
            forget_before: now_ms() - duration_ms(checks.auth.duplicate_window()),
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
            spam: spam.cloned(),
        };
        Ok(InboxFlags {
            flags,
            quarantined,
            spam_reject: is_spam && spam_action == SpamAction::Reject,
            fingerprint,
        })
    }

    /// The delivery jobs of one event (its type and flags): the inbox webhook when it
    /// subscribes to the type, and each route its notification rules add (webhooks and email
    /// forwards).
    /// The delivery jobs a stored event gets when it is delivered now (a quarantined message
    /// released): the inbox webhook and rules as they route it today, unleased.
    pub fn deliveries_of(&self, inbox_id: &str, event: &Event) -> Vec<NewDelivery> {
        let flags = route::EventFlags::from_event(event);
        self.deliveries_for(inbox_id, &flags)
            .into_iter()
            .map(|routed| routed.delivery)
            .collect()
    }

    fn deliveries_for(&self, inbox_id: &str, flags: &route::EventFlags) -> Vec<Routed> {
        let Some(inbox) = self.directory.inbox(inbox_id) else {
            return Vec::new();
        };
        let mut deliveries: Vec<Routed> = inbox
            .webhook
            .clone()
            .filter(|webhook| route::inbox_webhook_wants(webhook, flags.event_type))
            .map(|webhook| Routed {
                delivery: NewDelivery {
                    id: new_id("dlv"),
                    channel: Channel::Webhook,
                    endpoint_ref: "inbox".to_owned(),
                    target: webhook.url.clone(),
                    ordered: webhook.ordered,
                    lease: None,
                },
                webhook: Some(webhook),
            })
            .into_iter()
            .collect();
        let own_address = |address: &str| self.directory.lookup(address).is_some();
        for route in route::routes(&inbox.rules, flags, own_address) {
            let (channel, rule_id, target, ordered, webhook) = match route {
                route::Route::Webhook { rule_id } => {
                    let webhook =
                        inbox
                            .rules
                            .iter()
                            .find(|rule| rule.id == rule_id)
                            .and_then(|rule| {
                                let webhook = rule.channels.webhook.as_ref()?;
                                Some(WebhookEndpoint::for_rule(
                                    &rule.name,
                                    webhook,
                                    inbox.webhook.as_ref(),
                                ))
                            });
                    let url = webhook
                        .as_ref()
                        .map(|webhook| webhook.url.clone())
                        .unwrap_or_default();
                    let ordered = webhook.as_ref().is_some_and(|webhook| webhook.ordered);
                    (Channel::Webhook, rule_id, url, ordered, webhook)
                }
                route::Route::Email {
                    rule_id,
                    recipients,
                } => (Channel::Email, rule_id, recipients.join(", "), false, None),
            };
            deliveries.push(Routed {
                delivery: NewDelivery {
                    id: new_id("dlv"),
                    channel,
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
            .deliveries_for(inbox_id, &route::EventFlags::from_event(&event))
            .into_iter()
            .map(|routed| routed.delivery)
            .collect();
        // Provider events are not handed over: their jobs are written unleased and claimed.
        let mut batch = Batch::new(1, None);
        if let Err(reason) = self.store_raw(&key, raw, &mut batch.stored_keys).await {
            self.undo(&batch.stored_keys).await;
            return Outcome::TempFail { reason };
        }
        batch.messages.push(NewMessage {
            id: message_id,
            inbox_id: inbox_id.to_owned(),
            event_id,
            storage_bucket: self.bucket.clone(),
            storage_key: key,
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
            direction: Direction::Inbound,
            attachment_parts: None,
        });
        self.commit_and_hand_over(batch).await
    }

    /// Stores a reply the inbox sends and queues it: the raw message in the store, a message
    /// row marked outbound in `thread_id` (the thread of the mail it answers, so later mail of
    /// the thread shows it in `previous_emails` and `thread_prompt`), and one `reply` job that
    /// sends it through the smarthost with retries like any delivery. No event goes out for
    /// it. `message_id` is the id the reply's Message-ID was built with. Durable on
    /// [`Outcome::Accepted`], as for received mail.
    pub async fn accept_reply(
        &self,
        inbox_id: &str,
        message_id: &str,
        thread_id: &str,
        reply: &crate::reply::Built,
    ) -> Outcome {
        let received_at = now_ms();
        let parsed = crate::parse::parse_guarded(&reply.raw);
        let thread_keys = thread::keys(&parsed);
        let history = match self
            .db
            .thread_history(inbox_id, thread_id, thread::MAX_PREVIOUS_EMAILS + 1)
            .await
        {
            Ok(history) => history,
            Err(err) => {
                tracing::error!(error = %err, "reading the thread of a reply failed");
                return Outcome::TempFail {
                    reason: "database unavailable".to_owned(),
                };
            }
        };
        let thread = thread::from_history(thread_id.to_owned(), &history);
        let event_id = new_id("evt");
        let key = store::object_key(&self.prefix, inbox_id, message_id);
        let envelope = Envelope {
            remote_ip: None,
            helo: String::new(),
            mail_from: Some(reply.from.clone()),
            recipients: Vec::new(),
            smtputf8: false,
            // Sent, not received: no session it came over.
            tls: None,
        };
        let event = Event::Mail(event::build_guarded(
            &EventContext {
                event_id: &event_id,
                message_id,
                agent_id: inbox_id,
                received_at_ms: received_at,
                envelope: &envelope,
                inbox_recipients: &reply.recipients,
                s3_bucket: &self.bucket,
                s3_key: &key,
                size: reply.raw.len(),
                max_payload_bytes: self.max_payload_bytes,
                thread: &thread,
                templates: &self.templates,
                direction: Direction::Outbound,
            },
            &parsed,
            None,
        ));
        let mut batch = Batch::new(1, None);
        if let Err(reason) = self
            .store_raw(&key, &reply.raw, &mut batch.stored_keys)
            .await
        {
            self.undo(&batch.stored_keys).await;
            return Outcome::TempFail { reason };
        }
        batch.messages.push(NewMessage {
            id: message_id.to_owned(),
            inbox_id: inbox_id.to_owned(),
            event_id,
            storage_bucket: self.bucket.clone(),
            storage_key: key,
            size: i64::try_from(reply.raw.len()).unwrap_or(i64::MAX),
            envelope_from: Some(reply.from.clone()),
            envelope_to: reply.recipients.clone(),
            remote_ip: None,
            helo: String::new(),
            header_message_id: parsed.message_id.clone(),
            sender: Some(reply.from.clone()),
            subject: parsed.subject.clone(),
            received_at,
            event_json: event::to_json(&event),
            deliveries: vec![NewDelivery {
                id: new_id("dlv"),
                channel: Channel::Reply,
                endpoint_ref: "reply".to_owned(),
                target: reply.recipients.join(", "),
                ordered: false,
                lease: None,
            }],
            thread_id: thread_id.to_owned(),
            subject_key: thread::subject_key(parsed.subject.as_deref()),
            participants: thread_keys.participants,
            quarantined: false,
            fingerprint: None,
            direction: Direction::Outbound,
            attachment_parts: crate::parse::part::spans_json(&parsed.attachments),
        });
        self.commit_and_hand_over(batch).await
    }
}

/// The inboxes the recipients resolve to, each once, in the order first named.
fn inboxes_of(envelope: &Envelope) -> Vec<&str> {
    let mut inbox_ids: Vec<&str> = Vec::new();
    for recipient in &envelope.recipients {
        if !inbox_ids.contains(&recipient.inbox_id.as_str()) {
            inbox_ids.push(&recipient.inbox_id);
        }
    }
    inbox_ids
}

/// The ids and storage location a non-mail event is built with.
pub struct EventIds<'a> {
    pub event_id: &'a str,
    pub message_id: &'a str,
    pub received_at_ms: i64,
    pub s3_bucket: &'a str,
    pub s3_key: &'a str,
}
