//! The address → inbox lookup consulted at RCPT time, and the task that keeps it current.
//!
//! An in-memory snapshot of the routable inboxes and their addresses, swapped whole when inboxes
//! change, so the SMTP session never waits on the database to answer RCPT. The node that makes a
//! change reloads at once; every node also polls the database's change marker
//! ([`Db::directory_version`]) every `database.directory_refresh_s` and reloads when it moved, so
//! changes made through other nodes arrive too.
//!
//! It also holds the domains (`[[domain]]`, `/v1/domains`): [`Directory::resolve`] answers RCPT
//! in SPEC's order (exact address, `local+tag` as `local`, the domain's `catch_all`, then
//! `auto_create`), and [`Directory::create`] makes the inbox auto-create calls for, then
//! reloads at once.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::InboxConfig;
use crate::config::domain::{auto_inbox_id, template_inbox};
use crate::db::{self, AutoCreate, Db, DomainRow};
use crate::model::Inbox;

/// Bounds on the poll period: tokio's interval refuses zero, and a period past a day is a typo.
const MIN_POLL: Duration = Duration::from_millis(10);
const MAX_POLL: Duration = Duration::from_secs(86_400);

#[derive(Debug, Clone, Default)]
pub struct Directory {
    snapshot: Arc<RwLock<Arc<Snapshot>>>,
    /// The change marker the snapshot was loaded at (`None`: not loaded from the database).
    /// Held across a reload, so reloads run one at a time and a slower one never installs an
    /// older snapshot over a newer one.
    loaded_version: Arc<tokio::sync::Mutex<Option<i64>>>,
    /// The database the snapshot was last loaded from: where [`Directory::create`] writes.
    db: Arc<std::sync::OnceLock<Db>>,
    /// Domains whose last creation attempt on this node found them full or at their rate, and
    /// when: for [`REFUSAL_MEMO`] further attempts get the same answer without a transaction,
    /// so a sender walking through local parts costs the shared database little.
    refused: Arc<std::sync::Mutex<HashMap<String, (std::time::Instant, AutoCreate)>>>,
}

/// How long a domain's "full" or "too fast" answer is reused on one node.
const REFUSAL_MEMO: Duration = Duration::from_secs(5);

#[derive(Debug, Default)]
struct Snapshot {
    by_address: HashMap<String, String>,
    by_id: HashMap<String, Inbox>,
    by_domain: HashMap<String, Domain>,
}

/// A domain as RCPT uses it.
#[derive(Debug)]
struct Domain {
    catch_all: Option<String>,
    /// The template as an inbox, when `auto_create` is on and the template reads (it was
    /// checked when it was set; one that no longer reads turns auto-create off, with a warning).
    template: Option<InboxConfig>,
    max_auto_inboxes: u64,
    auto_create_per_minute: u64,
}

/// Where an RCPT address goes.
#[derive(Debug)]
pub enum Resolved {
    /// An existing inbox: by address, by address without `+tag`, or the domain's catch-all.
    Inbox(String),
    /// Nobody yet: the domain auto-creates this inbox on its first mail.
    Create(Box<NewAutoInbox>),
    /// `550 5.1.1`: no inbox, and the domain (if configured) takes no unknown local parts.
    Unknown,
}

/// The inbox auto-create would make.
#[derive(Debug, Clone)]
pub struct NewAutoInbox {
    pub domain: String,
    /// The template with the new inbox's id and its one address set.
    pub inbox: InboxConfig,
    max_auto_inboxes: u64,
    auto_create_per_minute: u64,
}

impl NewAutoInbox {
    pub fn id(&self) -> &str {
        &self.inbox.id
    }
}

impl Directory {
    pub fn new(inboxes: &[Inbox]) -> Self {
        let directory = Self::default();
        directory.replace(inboxes);
        directory
    }

    /// Replaces the snapshot with these inboxes (and no domains).
    pub fn replace(&self, inboxes: &[Inbox]) {
        self.install(inboxes, &[]);
    }

    fn install(&self, inboxes: &[Inbox], domains: &[DomainRow]) {
        let by_address = inboxes
            .iter()
            .flat_map(|inbox| {
                inbox
                    .addresses
                    .iter()
                    .map(|address| (address.to_lowercase(), inbox.id.clone()))
            })
            .collect();
        let by_id = inboxes
            .iter()
            .map(|inbox| (inbox.id.clone(), inbox.clone()))
            .collect();
        let mut guard = self
            .snapshot
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let by_domain = domains
            .iter()
            .map(|domain| (domain.name.clone(), domain_entry(domain)))
            .collect();
        *guard = Arc::new(Snapshot {
            by_address,
            by_id,
            by_domain,
        });
    }

    /// Reloads the snapshot from the database. Returns how many inboxes it holds.
    ///
    /// # Errors
    /// [`db::Error`]; the previous snapshot stays.
    pub async fn reload(&self, db: &Db) -> Result<usize, db::Error> {
        let mut loaded = self.loaded_version.lock().await;
        self.load(db, &mut loaded).await
    }

    /// Reloads only when the database's change marker moved since the last load. Returns whether
    /// it reloaded.
    ///
    /// # Errors
    /// [`db::Error`]; the previous snapshot stays.
    pub async fn reload_if_changed(&self, db: &Db) -> Result<bool, db::Error> {
        let mut loaded = self.loaded_version.lock().await;
        if *loaded == Some(db.directory_version().await?) {
            return Ok(false);
        }
        self.load(db, &mut loaded).await?;
        Ok(true)
    }

    async fn load(&self, db: &Db, loaded: &mut Option<i64>) -> Result<usize, db::Error> {
        // The marker first: a change committed during the load then reads as a newer marker at
        // the next poll, and is loaded then, instead of being taken as already seen.
        let version = db.directory_version().await?;
        let inboxes = db.load_inboxes().await?;
        let domains = db.list_domains().await?;
        self.install(&inboxes, &domains);
        *loaded = Some(version);
        let _ = self.db.set(db.clone());
        Ok(inboxes.len())
    }

    /// Polls the change marker every `every` until `token` is cancelled, reloading when it
    /// moved. A database error keeps the current snapshot (an outage must not make every
    /// address unknown) and is retried at the next tick.
    pub async fn follow(self, db: Db, every: Duration, token: CancellationToken) {
        let mut ticker = tokio::time::interval(every.clamp(MIN_POLL, MAX_POLL));
        // After a stall (a slow database), one check is enough, not a burst of them.
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let checked = tokio::select! {
                () = token.cancelled() => return,
                checked = async {
                    ticker.tick().await;
                    self.reload_if_changed(&db).await
                } => checked,
            };
            match checked {
                Ok(true) => tracing::debug!("inboxes changed in the database; directory reloaded"),
                Ok(false) => {}
                Err(err) => {
                    tracing::warn!(error = %err, "checking for inbox changes failed; keeping the current directory");
                }
            }
        }
    }

    fn current(&self) -> Arc<Snapshot> {
        Arc::clone(
            &self
                .snapshot
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// The inbox with this id.
    pub fn inbox(&self, id: &str) -> Option<Inbox> {
        self.current().by_id.get(id).cloned()
    }

    /// Whether the inbox with this id has notification rules: only they route on an event's
    /// flags.
    pub fn has_rules(&self, id: &str) -> bool {
        self.current()
            .by_id
            .get(id)
            .is_some_and(|inbox| !inbox.rules.is_empty())
    }

    /// The sender policy of the inbox with this id.
    pub fn sender_policy(&self, id: &str) -> Option<crate::model::SenderPolicy> {
        self.current()
            .by_id
            .get(id)
            .map(|inbox| inbox.sender_policy.clone())
    }

    /// The inbox an already-normalized (lowercase) address belongs to. `agent+tag@domain`
    /// reaches `agent@domain` when no inbox claims the tagged form itself.
    pub fn lookup(&self, address: &str) -> Option<String> {
        let snapshot = self.current();
        if let Some(inbox) = snapshot.by_address.get(address) {
            return Some(inbox.clone());
        }
        let (local, domain) = address.rsplit_once('@')?;
        let (base, _tag) = local.split_once('+')?;
        snapshot
            .by_address
            .get(&format!("{base}@{domain}"))
            .cloned()
    }
}

impl Directory {
    /// Where an already-normalized (lowercase) RCPT address goes, in SPEC's order: an exact
    /// inbox address, then `local+tag@domain` as `local@domain`, then the domain's
    /// `catch_all`, then `auto_create`. A domain that is not configured gets no further than
    /// the addresses: mail for it is never relayed.
    pub fn resolve(&self, address: &str) -> Resolved {
        if let Some(inbox) = self.lookup(address) {
            return Resolved::Inbox(inbox);
        }
        let snapshot = self.current();
        let Some((local, domain_name)) = address.rsplit_once('@') else {
            return Resolved::Unknown;
        };
        let Some(domain) = snapshot.by_domain.get(domain_name) else {
            return Resolved::Unknown;
        };
        // A catch-all naming an inbox that is gone or disabled takes nothing.
        if let Some(catch_all) = domain
            .catch_all
            .as_ref()
            .filter(|id| snapshot.by_id.contains_key(id.as_str()))
        {
            return Resolved::Inbox(catch_all.clone());
        }
        let (Some(template), Some(id)) = (&domain.template, auto_inbox_id(local)) else {
            return Resolved::Unknown;
        };
        let mut inbox = template.clone();
        inbox.addresses = vec![format!("{id}@{domain_name}")];
        inbox.id = id;
        Resolved::Create(Box::new(NewAutoInbox {
            domain: domain_name.to_owned(),
            inbox,
            max_auto_inboxes: domain.max_auto_inboxes,
            auto_create_per_minute: domain.auto_create_per_minute,
        }))
    }

    /// Makes the inbox auto-create resolved to (see [`db::Db::auto_create_inbox`]) and reloads
    /// the snapshot at once when an inbox was made or found, so the next RCPT on this node
    /// finds it by address. Other nodes learn of it through the change marker.
    ///
    /// # Errors
    /// [`db::Error`]; also when the directory was never loaded from a database.
    pub async fn create(&self, new: &NewAutoInbox) -> Result<AutoCreate, db::Error> {
        let Some(db) = self.db.get() else {
            return Err(db::Error::Corrupt(
                "the directory has no database to create inboxes in".to_owned(),
            ));
        };
        if let Some(refusal) = self.recent_refusal(&new.domain) {
            return Ok(refusal);
        }
        let outcome = db
            .auto_create_inbox(
                &new.domain,
                &new.inbox,
                new.max_auto_inboxes,
                new.auto_create_per_minute,
            )
            .await?;
        match &outcome {
            AutoCreate::Created | AutoCreate::Exists(_) => {
                self.reload(db).await?;
            }
            AutoCreate::CapReached | AutoCreate::RateLimited => {
                self.refusals().insert(
                    new.domain.clone(),
                    (std::time::Instant::now(), outcome.clone()),
                );
            }
            AutoCreate::IdTaken => {}
        }
        Ok(outcome)
    }

    fn refusals(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<String, (std::time::Instant, AutoCreate)>> {
        self.refused
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The domain's "full" or "too fast" answer of less than [`REFUSAL_MEMO`] ago.
    fn recent_refusal(&self, domain: &str) -> Option<AutoCreate> {
        let mut refused = self.refusals();
        match refused.get(domain) {
            Some((at, outcome)) if at.elapsed() < REFUSAL_MEMO => Some(outcome.clone()),
            Some(_) => {
                refused.remove(domain);
                None
            }
            None => None,
        }
    }
}

fn domain_entry(domain: &DomainRow) -> Domain {
    let template = if domain.auto_create {
        // Checked when set; `allow_http` was checked then too, against the config of the time.
        match template_inbox(
            &domain.template,
            "template",
            &format!("template@{}", domain.name),
            true,
        ) {
            Ok(template) => Some(template),
            Err((key, message)) => {
                tracing::warn!(domain = %domain.name, key, message, "domain template does not read; auto_create is off for it");
                None
            }
        }
    } else {
        None
    };
    Domain {
        catch_all: domain.catch_all.clone(),
        template,
        max_auto_inboxes: domain.max_auto_inboxes,
        auto_create_per_minute: domain.auto_create_per_minute,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_and_subaddressed_lookups() {
        let directory = Directory::new(&[Inbox {
            id: "agent".into(),
            addresses: vec!["Agent@Example.com".into()],
            webhook: None,
            rules: Vec::new(),
            sender_policy: crate::model::SenderPolicy::default(),
        }]);
        assert_eq!(
            directory.lookup("agent@example.com").as_deref(),
            Some("agent")
        );
        assert_eq!(
            directory.lookup("agent+orders@example.com").as_deref(),
            Some("agent")
        );
        assert_eq!(directory.lookup("other@example.com"), None);
        assert_eq!(directory.lookup("agent@example.org"), None);
    }

    async fn assert_moved(directory: &Directory, db: &Db, change: &str) {
        assert!(
            directory.reload_if_changed(db).await.expect("poll"),
            "{change} left the change marker where it was"
        );
    }

    /// Every path that changes what the directory holds moves the marker other nodes poll; a
    /// refused change does not; a database error keeps the snapshot.
    #[tokio::test]
    async fn every_inbox_change_moves_the_marker() {
        use crate::config::{DatabaseConfig, InboxConfig};
        use crate::db::{InboxUpdate, NewInbox, WebhookSettings};
        use crate::model::{PayloadFormat, SignatureFormat, SignatureScheme};

        let dir = tempfile::tempdir().expect("tempdir");
        let db = Db::connect(&DatabaseConfig {
            url: format!("sqlite://{}", dir.path().join("directory.db").display()),
            ..DatabaseConfig::default()
        })
        .await
        .expect("db");
        db.migrate().await.expect("migrate");
        let directory = Directory::default();
        assert_eq!(directory.reload(&db).await.expect("load"), 0);
        assert!(!directory.reload_if_changed(&db).await.expect("poll"));

        let configured: InboxConfig = serde_json::from_value(serde_json::json!({
            "id": "conf", "addresses": ["conf@example.com"]
        }))
        .expect("inbox config");
        db.upsert_config_inbox(&configured).await.expect("upsert");
        assert_moved(&directory, &db, "a config inbox").await;
        assert_eq!(
            directory.lookup("conf@example.com").as_deref(),
            Some("conf")
        );

        db.create_inbox(&NewInbox {
            id: "api".into(),
            name: None,
            status: "enabled".into(),
            addresses: vec!["api@example.com".into()],
            sender_policy: crate::model::SenderPolicy::default(),
        })
        .await
        .expect("create");
        assert_moved(&directory, &db, "create_inbox").await;
        assert_eq!(directory.lookup("api@example.com").as_deref(), Some("api"));

        let readdress = InboxUpdate {
            addresses: Some(vec!["renamed@example.com".into()]),
            ..InboxUpdate::default()
        };
        assert!(db.update_inbox("api", &readdress).await.expect("update"));
        assert_moved(&directory, &db, "an address change").await;
        assert_eq!(directory.lookup("api@example.com"), None);
        assert_eq!(
            directory.lookup("renamed@example.com").as_deref(),
            Some("api")
        );
        assert!(
            !db.update_inbox("missing", &readdress)
                .await
                .expect("update")
        );
        assert!(
            !directory.reload_if_changed(&db).await.expect("poll"),
            "a change to no inbox is rolled back, marker included"
        );

        let webhook = WebhookSettings {
            url: "https://hooks.example.com/in".into(),
            enabled: true,
            signature: SignatureScheme::Agentmail,
            payload: PayloadFormat::Mxhook,
            signature_header: None,
            signature_format: SignatureFormat::default(),
            secret: Some("secret".into()),
            previous_secret: None,
            previous_secret_expires_at: None,
            verify_tls: true,
            disabled_reason: None,
            ordered: false,
            events: crate::model::Subscription::default(),
            endpoint: crate::model::EndpointSettings::default(),
        };
        assert!(
            db.set_webhook("api", Some(&webhook))
                .await
                .expect("webhook")
        );
        assert_moved(&directory, &db, "set_webhook").await;
        assert!(
            directory
                .inbox("api")
                .is_some_and(|inbox| inbox.webhook.is_some())
        );

        assert!(db.set_notifications("api", "[]").await.expect("rules"));
        assert_moved(&directory, &db, "set_notifications").await;
        db.disable_endpoint("api", "inbox", "gone", None)
            .await
            .expect("disable");
        assert_moved(&directory, &db, "disable_endpoint").await;

        assert!(db.delete_inbox("api").await.expect("delete"));
        assert_moved(&directory, &db, "delete_inbox").await;
        assert_eq!(directory.lookup("renamed@example.com"), None);

        db.close().await;
        assert!(directory.reload_if_changed(&db).await.is_err());
        assert!(directory.reload(&db).await.is_err());
        assert_eq!(
            directory.lookup("conf@example.com").as_deref(),
            Some("conf"),
            "an unreachable database keeps the last snapshot"
        );
    }
}
