//! Composition root: builds every stage from its config section, binds listeners, runs the
//! SMTP server, the delivery dispatcher, the directory refresher and the HTTP API on one task
//! tracker under one cancellation token, and shuts them down in order.
//!
//! Shutdown order: stop accepting SMTP and tell idle sessions `421`; let sessions in DATA finish;
//! stop the API; let in-flight delivery attempts finish; all within a hard deadline.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, TemplatesConfig};
use crate::db::Db;
use crate::deliver::Dispatcher;
use crate::directory::Directory;
use crate::http::{self, HttpState};
use crate::ingress::{self, Ingress};
use crate::intake::{Checks, Intake};
use crate::prompt::Templates;
use crate::ratelimit::RateLimiter;
use crate::smtp::{self, SessionContext};
use crate::store::Store;
use crate::verify::Verifier;

/// How long shutdown waits for sessions and attempts before it stops waiting.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(30);

/// What `mxhook serve` adds on a start that made its own admin key or runs on the embedded
/// defaults (see [`crate::first_run`]); tests and configured starts use the default, which adds
/// nothing.
#[derive(Debug, Default)]
pub struct Welcome {
    /// The file the admin key came from, and whether this start made it.
    pub key_file: Option<(PathBuf, bool)>,
    /// Seed the webhook-less demo inbox when the database has no inbox at all.
    pub demo_inbox: bool,
}

/// Binds the configured listeners and runs until `shutdown` completes.
///
/// # Errors
/// Startup failures (listeners, storage, database), with context naming the object.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    run_welcoming(config, Welcome::default(), shutdown).await
}

/// [`run`], with what a first run adds.
///
/// # Errors
/// Startup failures (listeners, storage, database), with context naming the object.
pub async fn run_welcoming(
    config: Config,
    welcome: Welcome,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let smtp_listener = TcpListener::bind(config.smtp.listen)
        .await
        .with_context(|| format!("binding SMTP listener on {}", config.smtp.listen))?;
    let http_listener = TcpListener::bind(config.http.listen)
        .await
        .with_context(|| format!("binding HTTP listener on {}", config.http.listen))?;
    serve(config, welcome, smtp_listener, http_listener, shutdown).await
}

/// Runs the gateway on listeners the caller bound (tests bind port 0).
///
/// # Errors
/// Startup failures (storage, database), with context naming the object.
pub async fn run_with_listeners(
    config: Config,
    smtp_listener: TcpListener,
    http_listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    serve(
        config,
        Welcome::default(),
        smtp_listener,
        http_listener,
        shutdown,
    )
    .await
}

async fn serve(
    config: Config,
    welcome: Welcome,
    smtp_listener: TcpListener,
    http_listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let store = Store::from_config(&config.storage).await;
    let db = Db::connect(&config.database)
        .await
        .with_context(|| format!("opening database {}", redact_url(&config.database.url)))?
        .with_secrets(config.secrets.keyring()?);
    db.migrate().await.context("migrating database")?;
    db.check_secret_keys()
        .await
        .context("checking the stored secrets against secrets.key")?;
    for inbox in &config.inboxes {
        db.upsert_config_inbox(inbox)
            .await
            .with_context(|| format!("saving inbox `{}` from config", inbox.id))?;
    }
    db.sync_config_domains(&config.domains)
        .await
        .context("saving [[domain]] tables from config")?;
    db.seed_config_event_types(&ingress::config_event_types(&config))
        .await
        .context("saving calendar_event_types from config")?;
    if welcome.demo_inbox {
        seed_demo_inbox(&db).await?;
    }
    let directory = Directory::default();
    let inbox_count = directory.reload(&db).await.context("loading inboxes")?;

    let node_id = node_id(&config.smtp.hostname);
    tracing::info!(node = %node_id, "delivery leases are taken under this node id");
    // Before the dispatcher claims: on SQLite this releases what the process before left.
    let liveness = crate::deliver::liveness::Liveness::start(db.clone(), node_id.clone())
        .await
        .context("starting the node heartbeat")?;

    let wakeup = Arc::new(Notify::new());
    let handoff = crate::deliver::handoff::Handoff::new(
        node_id,
        i64::try_from(config.delivery.lease().as_millis()).unwrap_or(i64::MAX / 2),
        config.delivery.workers,
    );
    let templates = load_templates(&config.templates)?;
    let attachment_urls = match config.attachments.url_ttl() {
        Some(ttl) => Some(Arc::new(
            crate::retention::AttachmentUrls::load(
                &db,
                config.http.public_base(http_listener.local_addr().ok()),
                ttl,
            )
            .await
            .context("loading the attachment URL key")?,
        )),
        None => None,
    };
    let intake = Arc::new(
        Intake::new(
            &config.storage,
            config.delivery.max_payload_bytes,
            store.clone(),
            db.clone(),
            directory.clone(),
            Arc::clone(&wakeup),
        )
        .with_handoff(Arc::clone(&handoff))
        .with_attachment_urls(attachment_urls.clone())
        .with_templates(templates)
        .with_checks(Checks::new(
            Verifier::new(&config.auth, &config.smtp.hostname)
                .context("building the DNS resolver")?,
            RateLimiter::new(&config.rate_limit, db.clone()),
            &config.auth,
        ))
        .with_spam(
            crate::spam::SpamChecker::new(&config.spam)
                .context("configuring spam scoring (spam.rspamd_url)")?,
        ),
    );
    let forwarder = crate::deliver::forward::Forwarder::new(&config.forward, &config.smtp.hostname)
        .context("configuring the email-forward smarthost")?;
    let dispatcher = Arc::new(
        Dispatcher::new(
            &config.delivery,
            db.clone(),
            store.clone(),
            forwarder,
            directory.clone(),
            handoff,
            Arc::clone(&wakeup),
        )
        .context("building the webhook client")?,
    );
    let counters = Arc::new(crate::counters::Counters::default());
    let ingress = Arc::new(Ingress {
        counters: Arc::clone(&counters),
        db: db.clone(),
        intake: Arc::clone(&intake),
        directory: directory.clone(),
        config: config.ingress.clone(),
        last_replay_prune: std::sync::atomic::AtomicI64::new(0),
    });
    let login_token = Arc::new(crate::first_run::LoginToken::default());
    let lifecycle =
        crate::retention::Lifecycle::new(db.clone(), store.clone(), config.retention.clone())
            .with_attachment_urls(attachment_urls.clone());
    lifecycle
        .sync_config(&config.inboxes)
        .await
        .context("saving the inboxes' retention_days from config")?;
    let token = CancellationToken::new();
    let http_state = Arc::new(HttpState {
        counters: Arc::clone(&counters),
        db: db.clone(),
        store,
        admin_keys: config.http.admin_keys.clone(),
        dispatcher_wakeup: Arc::clone(&wakeup),
        directory: directory.clone(),
        delivery: config.delivery.clone(),
        intake: Arc::clone(&intake),
        ingress,
        login_token: Arc::clone(&login_token),
        lifecycle: lifecycle.clone(),
        smtp_addr: smtp_listener.local_addr().ok(),
        replier: Arc::new(
            crate::reply::Replier::new(
                &config.replies,
                &config.dkim,
                &config.forward,
                &config.smtp.hostname,
            )
            .context("loading the DKIM keys for replies")?,
        ),
        mta_sts_policy: config.mta_sts.as_ref().map(|sts| sts.policy()),
        event_streams: Arc::new(http::EventStreams::new(
            config.http.event_streams_per_key,
            config.http.event_stream_heartbeat(),
            token.child_token(),
        )),
    });
    let tls = match (&config.smtp.tls_cert, &config.smtp.tls_key) {
        (Some(cert), Some(key)) => Some(
            crate::smtp::tls::acceptor(cert, key).context("loading the STARTTLS certificate")?,
        ),
        _ => None,
    };
    let session_ctx = Arc::new(SessionContext {
        config: config.smtp.clone(),
        directory: directory.clone(),
        intake,
        tls,
        counters,
    });

    let tracker = TaskTracker::new();
    let smtp_addr = smtp_listener.local_addr().ok();
    let http_addr = http_listener.local_addr().ok();
    tracing::info!(smtp = ?smtp_addr, http = ?http_addr, inboxes = inbox_count, "mxhook started");
    if let (Some((key_file, created)), Some(smtp), Some(http)) =
        (&welcome.key_file, smtp_addr, http_addr)
    {
        let token = created.then(|| login_token.issue());
        let test_address = db
            .list_inbox_rows(None)
            .await
            .context("listing inboxes")?
            .into_iter()
            .find_map(|inbox| inbox.addresses.into_iter().next());
        let banner = crate::first_run::Banner {
            http,
            smtp,
            key_file,
            login_token: token.as_deref(),
            test_address: test_address.as_deref(),
        };
        // The terminal, not the log: the link must not land in log storage.
        eprint!("{}", banner.render());
    }

    tracker.spawn(smtp::serve(
        smtp_listener,
        session_ctx,
        tracker.clone(),
        token.child_token(),
    ));
    tracker.spawn(Arc::clone(&dispatcher).run(tracker.clone(), token.child_token()));
    tracker.spawn(liveness.run(token.child_token()));
    tracker.spawn(directory.follow(
        db.clone(),
        config.database.directory_refresh(),
        token.child_token(),
    ));
    tracker.spawn(lifecycle.run_pruner(token.child_token()));
    tracker.spawn(
        db.clone()
            .follow_arrivals(config.http.event_stream_poll(), token.child_token()),
    );
    let api_token = token.child_token();
    // One HTTP listener: the API, the dashboard and provider ingress (see `http::router`).
    let router = http::router(http_state);
    tracker.spawn(async move {
        // Peer addresses reach the handlers, so the dashboard's login throttle counts per client.
        let served = axum::serve(
            http_listener,
            router.into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .with_graceful_shutdown(async move { api_token.cancelled().await })
        .await;
        if let Err(err) = served {
            tracing::error!(error = %err, "HTTP server failed");
        }
    });

    shutdown.await;
    tracing::info!("shutting down");
    token.cancel();
    tracker.close();
    if tokio::time::timeout(SHUTDOWN_DEADLINE, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("shutdown deadline passed with tasks still running; leases will expire");
    }
    db.close().await;
    Ok(())
}

/// Creates the webhook-less demo inbox ([`crate::first_run::DEMO_ADDRESS`]) in a database
/// without inboxes, as an API inbox: the dashboard and API edit it like any other, and a
/// webhook added later stays.
async fn seed_demo_inbox(db: &Db) -> anyhow::Result<()> {
    if !db
        .list_inbox_rows(None)
        .await
        .context("listing inboxes")?
        .is_empty()
    {
        return Ok(());
    }
    let created = db
        .create_inbox(&crate::db::NewInbox {
            id: crate::first_run::DEMO_INBOX_ID.to_owned(),
            name: Some("Demo inbox".to_owned()),
            status: "enabled".to_owned(),
            addresses: vec![crate::first_run::DEMO_ADDRESS.to_owned()],
            sender_policy: crate::model::SenderPolicy::default(),
        })
        .await;
    match created {
        // Another node seeded it first.
        Ok(()) | Err(crate::db::Error::Conflict(_)) => Ok(()),
        Err(err) => Err(err).context("creating the demo inbox"),
    }
}

/// The prompt templates: embedded, or from `templates.dir` where it has a file. A broken
/// template stops startup, so it never shows up as a half-rendered prompt.
fn load_templates(config: &TemplatesConfig) -> anyhow::Result<Templates> {
    let Some(dir) = &config.dir else {
        return Ok(Templates::default());
    };
    let read = |name: &str| -> anyhow::Result<Option<String>> {
        let path = std::path::Path::new(dir).join(name);
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(Some(text)),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(anyhow::anyhow!(
                "config key `templates.dir`: reading {}: {err}",
                path.display()
            )),
        }
    };
    Templates::from_sources(
        read("prompt.md")?,
        read("thread_prompt.md")?,
        read("thread_entry.md")?,
    )
    .map_err(|err| anyhow::anyhow!("config key `templates.dir`: {err}"))
}

/// This process's name on the delivery leases it takes: the machine (or pod) name, the pid and a
/// random boot id. Every replica of one deployment shares its config, so nothing in the config
/// can tell them apart; and a restarted process must not pass for the one before it, whose
/// leases simply run out.
fn node_id(fallback_host: &str) -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| fallback_host.to_owned());
    format!(
        "{host}/{}/{:08x}",
        std::process::id(),
        rand::random::<u32>()
    )
}

/// A database URL without its password, for messages.
fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("redacted"));
            parsed.to_string()
        }
        _ => url.to_owned(),
    }
}
