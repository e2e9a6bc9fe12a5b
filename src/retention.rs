//! Data lifecycle: erasing a message whole (an erasure request, an inbox purge), the retention
//! pruner that erases messages past their inbox's retention, and the store check that finds
//! objects without a row and rows without an object.
//!
//! **A message is whole or gone.** Its rows (message, event, deliveries, attempts, fingerprint)
//! go in one transaction ([`Db::erase_message`]), and only after that commit is the raw object
//! removed. A crash in between leaves an object no row points at, which nothing ever reads, the
//! next pruner run removes (the erasure's transaction listed it in `erased_objects`) and
//! `mxhook check-store --repair` would too; never a row without its object. Intake writes the
//! other way round (object, then row), so its crashes leave the same kind of orphan.
//!
//! The pruner runs every `retention.interval_s` on one node at a time (a PostgreSQL advisory
//! lock; SQLite has one node), erasing one message per transaction in batches of
//! `retention.batch_size`, so no statement holds locks for long and a crash loses at most the
//! object removal of the message being erased.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::{InboxConfig, RetentionConfig};
use crate::db::{Db, Erasure};
use crate::model::now_ms;
use crate::store::{self, Store};

const DAY_MS: f64 = 86_400_000.0;

/// An object younger than this is never called an orphan: intake writes the object before the
/// row that points at it, so a fresh object may have its row still on the way.
const ORPHAN_GRACE: Duration = Duration::from_secs(3600);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Db(#[from] crate::db::Error),
    #[error(transparent)]
    Store(#[from] store::Error),
}

/// Per-node counts of what the lifecycle removed, for `/metrics`.
#[derive(Debug, Default)]
pub struct Counters {
    /// Messages erased on request (`DELETE /v1/messages/{id}`).
    pub erased: AtomicU64,
    /// Messages the pruner removed.
    pub pruned: AtomicU64,
    /// Pruner runs this node completed.
    pub prune_runs: AtomicU64,
    /// Raw objects whose removal failed after their rows were gone (left for check-store).
    pub object_failures: AtomicU64,
}

impl Counters {
    pub fn snapshot(&self) -> [(&'static str, u64); 4] {
        [
            ("erased", self.erased.load(Ordering::Relaxed)),
            ("pruned", self.pruned.load(Ordering::Relaxed)),
            ("prune_runs", self.prune_runs.load(Ordering::Relaxed)),
            (
                "object_failures",
                self.object_failures.load(Ordering::Relaxed),
            ),
        ]
    }
}

/// What the lifecycle needs at every step: the database, the store, the counters.
#[derive(Debug, Clone)]
pub struct Lifecycle {
    pub db: Db,
    pub store: Store,
    pub counters: Arc<Counters>,
    pub retention: RetentionConfig,
    /// Signed attachment URLs; `None` when `attachments.url_ttl_s = 0`.
    pub attachment_urls: Option<Arc<AttachmentUrls>>,
}

impl Lifecycle {
    pub fn new(db: Db, store: Store, retention: RetentionConfig) -> Self {
        Self {
            db,
            store,
            counters: Arc::new(Counters::default()),
            retention,
            attachment_urls: None,
        }
    }

    /// Signs attachment URLs with `urls`.
    pub fn with_attachment_urls(mut self, urls: Option<Arc<AttachmentUrls>>) -> Self {
        self.attachment_urls = urls;
        self
    }

    /// Erases one message: its rows in one transaction, then its raw object. With
    /// `keep_pending`, a message with a pending delivery is kept ([`Erasure::Pending`]).
    ///
    /// # Errors
    /// [`Error::Db`] when the rows could not be removed (nothing was). A failed object removal
    /// is logged and counted, not returned: the message is gone for every reader, and the
    /// object is an orphan that check-store removes.
    pub async fn erase(&self, id: &str, keep_pending: bool) -> Result<Erasure, Error> {
        let erasure = self.db.erase_message(id, now_ms(), keep_pending).await?;
        if let Erasure::Erased { storage_key } = &erasure {
            match self.store.delete(storage_key).await {
                Ok(()) => self.db.forget_erased_object(storage_key).await?,
                Err(err) => {
                    self.counters
                        .object_failures
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::error!(error = %err, message_id = id, key = %storage_key, "removing the raw object of an erased message failed; the next pruner run tries again");
                }
            }
        }
        Ok(erasure)
    }

    /// Erases a message for an erasure request, waiting up to `wait` for a delivery of it that
    /// is in flight to finish, so it is never sent after this returns `Erased`.
    ///
    /// # Errors
    /// As [`Self::erase`].
    pub async fn erase_when_idle(&self, id: &str, wait: Duration) -> Result<Erasure, Error> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let erasure = self.erase(id, false).await?;
            match erasure {
                Erasure::InFlight { .. } if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Erasure::Erased { .. } => {
                    self.counters.erased.fetch_add(1, Ordering::Relaxed);
                    return Ok(erasure);
                }
                other => return Ok(other),
            }
        }
    }

    /// Writes each configured inbox's `retention_days` (none clears it): the file is the truth
    /// for the inboxes it declares.
    ///
    /// # Errors
    /// [`Error::Db`].
    pub async fn sync_config(&self, inboxes: &[InboxConfig]) -> Result<(), Error> {
        for inbox in inboxes {
            self.db
                .set_inbox_retention(&inbox.id, inbox.retention_days)
                .await?;
        }
        Ok(())
    }

    /// Runs the pruner every `retention.interval_s` until `shutdown` (the first run soon after
    /// start). Does nothing when neither `retention.days` nor any inbox keeps mail for a limited
    /// time, which is looked at each run.
    pub async fn run_pruner(self, shutdown: CancellationToken) {
        let mut next = tokio::time::Instant::now() + Duration::from_secs(1);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep_until(next) => {}
            }
            next = tokio::time::Instant::now() + self.retention.interval();
            match self.prune_once(&shutdown).await {
                Ok(Some(removed)) => {
                    self.counters.prune_runs.fetch_add(1, Ordering::Relaxed);
                    if removed > 0 {
                        tracing::info!(removed, "retention: removed expired messages");
                    }
                }
                Ok(None) => tracing::debug!("retention: another node is pruning"),
                Err(err) => tracing::error!(error = %err, "retention: pruning failed"),
            }
        }
    }

    /// Erases every message of an inbox being purged, then the inbox; resumed by the next
    /// pruner run after a crash. Returns the messages removed.
    ///
    /// # Errors
    /// [`Error::Db`]; what was erased stays erased, and the next run goes on.
    pub async fn purge_inbox(
        &self,
        inbox_id: &str,
        shutdown: &CancellationToken,
    ) -> Result<u64, Error> {
        let batch = i64::from(self.retention.batch_size);
        let mut removed = 0;
        loop {
            if shutdown.is_cancelled() {
                return Ok(removed);
            }
            let ids = self.db.inbox_message_ids(inbox_id, batch).await?;
            if ids.is_empty() {
                break;
            }
            let mut erased_now = 0;
            for id in &ids {
                if let Erasure::Erased { .. } =
                    self.erase_when_idle(id, Duration::from_secs(30)).await?
                {
                    erased_now += 1;
                }
            }
            self.db.count_purged(inbox_id, erased_now).await?;
            removed += u64::try_from(erased_now).unwrap_or(0);
            if erased_now == 0 {
                // Every one of them stayed in flight: the next run tries again.
                return Ok(removed);
            }
        }
        self.db.finish_purge(inbox_id).await?;
        self.db.delete_inbox(inbox_id).await?;
        tracing::info!(inbox_id, removed, "inbox purged");
        Ok(removed)
    }

    /// Removes the objects of erased messages whose removal was cut short (a crash between the
    /// commit and the removal, the store down). Returns how many were removed.
    ///
    /// # Errors
    /// [`Error::Db`]; an object that still cannot be removed waits for the next run.
    pub async fn finish_erasures(&self) -> Result<u64, Error> {
        let mut removed = 0;
        for key in self
            .db
            .erased_objects(i64::from(self.retention.batch_size))
            .await?
        {
            match self.store.delete(&key).await {
                Ok(()) => {
                    self.db.forget_erased_object(&key).await?;
                    removed += 1;
                }
                Err(err) => {
                    tracing::warn!(error = %err, key, "removing the object of an erased message failed again");
                }
            }
        }
        Ok(removed)
    }

    /// Goes on with every unfinished purge (after a crash or a restart).
    async fn resume_purges(&self, shutdown: &CancellationToken) {
        match self.db.purges().await {
            Ok(inboxes) => {
                for inbox_id in inboxes {
                    if let Err(err) = self.purge_inbox(&inbox_id, shutdown).await {
                        tracing::error!(error = %err, inbox_id, "purging the inbox failed; the next run goes on");
                    }
                }
            }
            Err(err) => tracing::error!(error = %err, "reading the inbox purges failed"),
        }
    }

    /// One pruner run: every inbox's messages past its retention, with no pending delivery,
    /// erased. `None` when another node has the turn.
    ///
    /// # Errors
    /// [`Error::Db`] when the database fails; what was erased before stays erased.
    pub async fn prune_once(&self, shutdown: &CancellationToken) -> Result<Option<u64>, Error> {
        let Some(lock) = self.db.try_prune_lock().await? else {
            return Ok(None);
        };
        if let Err(err) = self.finish_erasures().await {
            tracing::error!(error = %err, "finishing erasures failed");
        }
        self.resume_purges(shutdown).await;
        let result = self.prune_locked(shutdown).await;
        lock.release().await;
        result.map(Some)
    }

    async fn prune_locked(&self, shutdown: &CancellationToken) -> Result<u64, Error> {
        let overrides = self.db.inbox_retention().await?;
        let batch = i64::from(self.retention.batch_size);
        let mut removed = 0;
        for inbox_id in self.db.inboxes_with_messages().await? {
            let days = overrides
                .iter()
                .find(|(id, _)| *id == inbox_id)
                .map_or(self.retention.days, |(_, days)| *days);
            if days.is_nan() || days <= 0.0 {
                continue;
            }
            let cutoff = now_ms().saturating_sub(cutoff_ms(days));
            loop {
                if shutdown.is_cancelled() {
                    return Ok(removed);
                }
                let candidates = self.db.prune_candidates(&inbox_id, cutoff, batch).await?;
                let mut erased_now = 0;
                for candidate in &candidates {
                    if let Erasure::Erased { .. } = self.erase(&candidate.id, true).await? {
                        erased_now += 1;
                        self.counters.pruned.fetch_add(1, Ordering::Relaxed);
                    }
                }
                removed += erased_now;
                // A short batch was the last; a batch of which nothing could be erased (all
                // gained a pending delivery meanwhile) would be read again unchanged.
                if candidates.len() < usize::try_from(batch).unwrap_or(usize::MAX)
                    || erased_now == 0
                {
                    break;
                }
            }
        }
        Ok(removed)
    }
}

/// A retention in days as milliseconds (validated to at most a hundred years, so it fits).
fn cutoff_ms(days: f64) -> i64 {
    let ms = (days * DAY_MS).round();
    if ms.is_finite() && ms < i64::MAX as f64 {
        ms as i64
    } else {
        i64::MAX
    }
}

/// What the store check found.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct StoreReport {
    /// Objects no message row points at (older than the grace period).
    pub orphan_objects: Vec<String>,
    /// Messages whose object is missing.
    pub missing_objects: Vec<String>,
    /// Objects removed and rows erased by `--repair`.
    pub repaired: usize,
}

/// Compares the store with the message rows: every object without a row (past a grace period
/// for rows still being committed) and every row without its object; with `repair`, removes the
/// first and erases the second (a message whose bytes are gone cannot be read or forwarded).
///
/// # Errors
/// [`Error::Db`] or [`Error::Store`] when either side cannot be read.
pub async fn check_store(
    lifecycle: &Lifecycle,
    prefix: &str,
    repair: bool,
) -> Result<StoreReport, Error> {
    let mut report = StoreReport::default();
    let mut keys = std::collections::HashSet::new();
    let mut after = String::new();
    loop {
        let page = lifecycle.db.storage_keys(&after, 1000).await?;
        let Some((last, _)) = page.last() else {
            break;
        };
        after.clone_from(last);
        for (id, key) in page {
            match lifecycle.store.exists(&key).await? {
                true => {}
                false => report.missing_objects.push(id),
            }
            keys.insert(key);
        }
    }
    let young = now_ms().saturating_sub(i64::try_from(ORPHAN_GRACE.as_millis()).unwrap_or(0));
    for object in lifecycle.store.list(prefix).await? {
        if keys.contains(&object.key) || object.modified_ms > young {
            continue;
        }
        // Looked up again: a row may have been committed since the page was read.
        if lifecycle.db.storage_key_in_use(&object.key).await? {
            continue;
        }
        report.orphan_objects.push(object.key);
    }
    if repair {
        for key in &report.orphan_objects {
            lifecycle.store.delete(key).await?;
            lifecycle.db.forget_erased_object(key).await?;
            report.repaired += 1;
        }
        for id in &report.missing_objects {
            if matches!(
                lifecycle
                    .erase_when_idle(id, Duration::from_secs(5))
                    .await?,
                Erasure::Erased { .. }
            ) {
                report.repaired += 1;
            }
        }
    }
    Ok(report)
}

/// `mxhook check-store`: [`check_store`] over the configured database and store.
///
/// # Errors
/// As [`check_store`], and [`Error::Db`] when the database cannot be opened.
pub async fn check_configured_store(
    config: &crate::config::Config,
    repair: bool,
) -> Result<StoreReport, Error> {
    let db = Db::connect(&config.database).await?;
    db.migrate().await?;
    let store = Store::from_config(&config.storage).await;
    let lifecycle = Lifecycle::new(db.clone(), store, config.retention.clone());
    let report = check_store(&lifecycle, &config.storage.prefix, repair).await;
    db.close().await;
    report
}

/// The name of the gateway key that signs attachment URLs.
const ATTACHMENT_URL_KEY: &str = "attachment_urls";

/// Why a signed attachment URL is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UrlRefusal {
    /// Its signature does not match (altered, another message's, or a key rotated out twice).
    Altered,
    Expired,
}

/// Signed attachment download URLs: `<public base>/attachments/<message>/<attachment>?expires=
/// <unix s>&sig=<HMAC-SHA256>`, keyed by a gateway key of its own (stored in the database,
/// made on first use, rotatable; never a webhook secret), so they work without an API key
/// until they expire. Pure apart from [`AttachmentUrls::load`] and [`AttachmentUrls::rotate`].
#[derive(Debug)]
pub struct AttachmentUrls {
    base: String,
    ttl: Duration,
    /// The current key first, then the previous one (still verifying after a rotation).
    keys: std::sync::RwLock<Vec<Vec<u8>>>,
}

fn fresh_key() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

impl AttachmentUrls {
    /// The signer with the stored key, made now when there is none.
    ///
    /// # Errors
    /// [`Error::Db`].
    pub async fn load(db: &Db, base: String, ttl: Duration) -> Result<Self, Error> {
        let urls = Self {
            base,
            ttl,
            keys: std::sync::RwLock::new(Vec::new()),
        };
        urls.reload(db).await?;
        Ok(urls)
    }

    /// Reads the keys again (another node may have rotated them).
    ///
    /// # Errors
    /// [`Error::Db`].
    pub async fn reload(&self, db: &Db) -> Result<(), Error> {
        let (current, previous) = db
            .gateway_key(ATTACHMENT_URL_KEY, &fresh_key(), now_ms())
            .await?;
        let keys: Vec<Vec<u8>> = std::iter::once(current)
            .chain(previous)
            .filter_map(|key| hex::decode(key).ok())
            .collect();
        *self
            .keys
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = keys;
        Ok(())
    }

    /// A new signing key; URLs signed with the one before keep working until the next rotation.
    ///
    /// # Errors
    /// [`Error::Db`].
    pub async fn rotate(&self, db: &Db) -> Result<(), Error> {
        db.rotate_gateway_key(ATTACHMENT_URL_KEY, &fresh_key(), now_ms())
            .await?;
        self.reload(db).await
    }

    fn signature(key: &[u8], message_id: &str, attachment_id: &str, expires: i64) -> Vec<u8> {
        use hmac::Mac as _;
        let mut mac = <hmac::Hmac<sha2::Sha256> as hmac::Mac>::new_from_slice(key)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(format!("{message_id}/{attachment_id}/{expires}").as_bytes());
        mac.finalize().into_bytes().to_vec()
    }

    /// The URL of one attachment, valid until `now_s + ttl`, and that time (unix seconds).
    pub fn sign(&self, message_id: &str, attachment_id: &str, now_s: i64) -> Option<(String, i64)> {
        use base64::Engine as _;
        let expires =
            now_s.saturating_add(i64::try_from(self.ttl.as_secs()).unwrap_or(i64::MAX / 2));
        let keys = self
            .keys
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let key = keys.first()?;
        let signature = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Self::signature(
            key,
            message_id,
            attachment_id,
            expires,
        ));
        Some((
            format!(
                "{}/attachments/{message_id}/{attachment_id}?expires={expires}&sig={signature}",
                self.base
            ),
            expires,
        ))
    }

    /// Whether a presented URL's parts are one this gateway signed and it has not expired.
    ///
    /// # Errors
    /// The [`UrlRefusal`].
    pub fn verify(
        &self,
        message_id: &str,
        attachment_id: &str,
        expires: i64,
        signature: &str,
        now_s: i64,
    ) -> Result<(), UrlRefusal> {
        use base64::Engine as _;
        use subtle::ConstantTimeEq as _;
        let presented = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| UrlRefusal::Altered)?;
        let keys = self
            .keys
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let signed = keys.iter().any(|key| {
            bool::from(Self::signature(key, message_id, attachment_id, expires).ct_eq(&presented))
        });
        if !signed {
            return Err(UrlRefusal::Altered);
        }
        if expires < now_s {
            return Err(UrlRefusal::Expired);
        }
        Ok(())
    }
}
