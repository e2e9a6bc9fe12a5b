//! Configuration: one typed tree, loaded as embedded defaults ⊕ TOML file ⊕ `MXHOOK_*` env vars.
//!
//! Every value is validated here, at startup, and every error names the key it is about
//! (`smtp.listen`, `inbox[0].webhook_url`, `MXHOOK_DELIVERY__RETRY_BASE_S`), so a broken config
//! never reaches a running stage. Stages receive only their own section.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::model::{
    PayloadFormat, PolicyAction, SenderPolicy, SignatureFormat, SignatureScheme, is_valid_inbox_id,
    normalize_address, normalize_sender_entry, validate_signature_header, validate_webhook_url,
};

/// Prefix of environment variables that override config keys (`MXHOOK_SMTP__LISTEN`).
pub const ENV_PREFIX: &str = "MXHOOK_";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
    #[error("config key `{key}`: {message}")]
    Invalid { key: String, message: String },
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> Error {
    Error::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub smtp: SmtpConfig,
    #[serde(default)]
    pub http: HttpConfig,
    #[serde(default)]
    pub storage: StorageConfig,
    #[serde(default)]
    pub database: DatabaseConfig,
    #[serde(default)]
    pub auth: AuthConfig,
    #[serde(default)]
    pub delivery: DeliveryConfig,
    #[serde(default)]
    pub forward: ForwardConfig,
    #[serde(default)]
    pub ingress: IngressConfig,
    #[serde(default)]
    pub templates: TemplatesConfig,
    #[serde(default)]
    pub rate_limit: RateLimitConfig,
    #[serde(default, rename = "inbox")]
    pub inboxes: Vec<InboxConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SmtpConfig {
    pub listen: SocketAddr,
    /// Name in the greeting, the EHLO reply and the Received header.
    pub hostname: String,
    /// Largest message accepted, in bytes; advertised in the EHLO `SIZE` keyword.
    pub max_message_size: u64,
    /// Simultaneous SMTP connections; the next one waits in the kernel backlog.
    pub max_connections: usize,
    /// RCPT commands accepted per transaction (RFC 5321 §4.5.3.1.8 asks for at least 100).
    pub max_recipients: usize,
    /// Longest command line, CRLF included (RFC 5321 §4.5.3.1.4: 512).
    pub max_command_line: usize,
    /// Longest line inside DATA, CRLF included. RFC 5321 §4.5.3.1.6 sets 1000, but §4.5.3.1
    /// asks receivers to accept longer ones where they can, and real HTML mail often has them;
    /// the message size bounds memory anyway.
    pub max_text_line: usize,
    /// Largest header section (everything before the first empty line), in bytes; a message
    /// with a larger one is read to its end and refused with 552 5.3.4 (Exim's `header_maxsize`).
    pub max_header_bytes: usize,
    /// Seconds a client may take over one command line (RFC 5321 §4.5.3.2.7); in DATA, the
    /// credit `min_data_rate` starts from and never exceeds.
    pub idle_timeout_s: f64,
    /// Seconds one connection may last in all.
    pub session_timeout_s: f64,
    /// Slowest DATA transfer kept going, in bytes/s (Postfix's `smtpd_min_data_rate`): DATA
    /// starts with `idle_timeout_s` of credit, each byte earns `1/min_data_rate` s, and a
    /// transfer that runs out is told `421 4.4.2` and closed, nothing stored.
    pub min_data_rate: u64,
    /// Error replies tolerated in one session before it is closed with 421.
    pub max_errors: usize,
    /// Simultaneous connections from one IP address; more are told 421 and closed.
    pub max_connections_per_ip: usize,
    /// Seconds the greeting waits; a client that talks before it is refused with 554 and closed
    /// (RFC 5321 §4.3.1: the client waits for the greeting; spam engines often do not). 0 = off.
    pub greet_pause_s: f64,
    /// PEM certificate chain for STARTTLS; STARTTLS is offered only when this and `tls_key` are set.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    pub tls_key: Option<PathBuf>,
}

impl Default for SmtpConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 2525)),
            hostname: "localhost".to_owned(),
            max_message_size: 26_214_400,
            max_connections: 1000,
            max_recipients: 100,
            max_command_line: 512,
            max_text_line: 1 << 20,
            max_header_bytes: 1 << 20,
            idle_timeout_s: 300.0,
            session_timeout_s: 1800.0,
            min_data_rate: 500,
            max_errors: 20,
            max_connections_per_ip: 20,
            greet_pause_s: 0.5,
            tls_cert: None,
            tls_key: None,
        }
    }
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    pub listen: SocketAddr,
    /// Bearer keys with full access to the API.
    pub admin_keys: Vec<String>,
}

impl fmt::Debug for HttpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpConfig")
            .field("listen", &self.listen)
            .field(
                "admin_keys",
                &format_args!("[{} redacted]", self.admin_keys.len()),
            )
            .finish()
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            admin_keys: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageBackend {
    Fs,
    S3,
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    pub backend: StorageBackend,
    /// fs backend: each object is the file `<path>/<key>`.
    pub path: PathBuf,
    pub bucket: String,
    pub prefix: String,
    pub endpoint: Option<String>,
    pub region: String,
    pub path_style: bool,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    /// Seconds one storage call (a PUT at end of DATA) may take before the message gets `451`.
    pub timeout_s: f64,
}

impl fmt::Debug for StorageConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StorageConfig")
            .field("backend", &self.backend)
            .field("path", &self.path)
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("path_style", &self.path_style)
            .field("access_key_id", &self.access_key_id)
            .field(
                "secret_access_key",
                &self.secret_access_key.as_ref().map(|_| "redacted"),
            )
            .field("timeout_s", &self.timeout_s)
            .finish()
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            backend: StorageBackend::Fs,
            path: PathBuf::from("./data/mail"),
            bucket: "mxhook".to_owned(),
            prefix: "inbound/".to_owned(),
            endpoint: None,
            region: "us-east-1".to_owned(),
            path_style: false,
            access_key_id: None,
            secret_access_key: None,
            timeout_s: 30.0,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    pub url: String,
    pub max_connections: u32,
    /// Seconds between checks for inbox changes made through another node (or before this one
    /// started); a change reaches this node's RCPT directory within about this long.
    pub directory_refresh_s: f64,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: "sqlite://./data/mxhook.db".to_owned(),
            max_connections: 8,
            directory_refresh_s: 2.0,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Run SPF, DKIM, DMARC and ARC; off, events say `auth.checked: false` and no DNS is asked.
    pub enabled: bool,
    /// DNS servers for SPF/DKIM/DMARC lookups; empty means the system resolver.
    pub nameservers: Vec<String>,
    /// Seconds one DNS query may take (two attempts per server).
    pub dns_timeout_s: f64,
    /// Seconds all checks of one message may take; past it the verdict is `temperror`.
    pub verify_timeout_s: f64,
    /// Senders trusted for every inbox once DMARC passes: addresses or domains.
    pub allow_senders: Vec<String>,
    /// From domain (and its subdomains) → an extra entry in `traffic_types`.
    pub sender_domain_types: std::collections::BTreeMap<String, String>,
    /// Seconds within which a message with the same Message-ID (or content) for the same inbox
    /// is flagged `is_duplicate`.
    pub duplicate_window_s: f64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            nameservers: Vec::new(),
            dns_timeout_s: 5.0,
            verify_timeout_s: 20.0,
            allow_senders: Vec::new(),
            sender_domain_types: std::collections::BTreeMap::new(),
            duplicate_window_s: 7.0 * 24.0 * 3600.0,
        }
    }
}

/// Leaky buckets per envelope sender, sender domain and inbox: each accepted message adds one,
/// and a bucket drains its soft limit once per window. Above the soft level events carry
/// `rate_limited: true`; at the hard level RCPT is answered `451 4.7.1`. 0 turns a limit off.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    pub window_s: f64,
    pub sender_soft: u64,
    pub sender_hard: u64,
    pub domain_soft: u64,
    pub domain_hard: u64,
    pub inbox_soft: u64,
    pub inbox_hard: u64,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            window_s: 3600.0,
            sender_soft: 100,
            sender_hard: 500,
            domain_soft: 1000,
            domain_hard: 5000,
            inbox_soft: 5000,
            inbox_hard: 20000,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TemplatesConfig {
    /// A directory with `prompt.md`, `thread_prompt.md` and `thread_entry.md` replacing the
    /// embedded templates (a file left out keeps its default); read and checked at startup.
    pub dir: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryConfig {
    /// Allow plain-http webhook URLs (development, tests).
    pub allow_http: bool,
    /// Allow webhook targets on loopback, private and link-local addresses (development, tests).
    pub allow_private_targets: bool,
    /// First retry delay in seconds; each later one is four times the previous.
    pub retry_base_s: f64,
    /// Retries after the first attempt before a delivery is dead-lettered.
    pub max_retries: u32,
    /// Seconds one webhook request may take.
    pub timeout_s: f64,
    /// Concurrent delivery attempts on this node.
    pub workers: usize,
    /// Concurrent attempts to one endpoint on this node, so that a slow receiver holds at most
    /// this many workers and never delays other endpoints.
    pub max_in_flight_per_endpoint: usize,
    /// Seconds a node holds a claimed job before another node may take it over.
    pub lease_s: f64,
    /// Largest JSON body sent; past it the bodies are left out with an `omitted_reason`.
    pub max_payload_bytes: usize,
    /// Seconds an endpoint may fail without a single success before it is disabled (with a
    /// `disabled_reason`); 0 never disables for failing.
    pub disable_after_s: f64,
    /// Seconds the signing secret a rotation replaced keeps signing beside the new one, so
    /// receivers can switch over without refusing deliveries; 0 drops it at once.
    pub secret_rotation_grace_s: f64,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        Self {
            allow_http: false,
            allow_private_targets: false,
            retry_base_s: 30.0,
            max_retries: 6,
            timeout_s: 30.0,
            workers: 64,
            max_in_flight_per_endpoint: 32,
            lease_s: 330.0,
            max_payload_bytes: 10 << 20,
            disable_after_s: 5.0 * 86_400.0,
            secret_rotation_grace_s: 86_400.0,
        }
    }
}

/// Webhooks from mail and calendar providers (`/v1/ingress/...`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngressConfig {
    /// Accept provider webhooks for inboxes that have no secret for that provider. Off: such
    /// requests get 401.
    pub allow_unsigned: bool,
    /// How far a signed timestamp may be from now, in seconds (Calendly, SendGrid).
    pub timestamp_tolerance_s: i64,
    /// How long a rotated-out secret stays valid, in seconds.
    pub rotation_grace_s: f64,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// How long a processed provider event id is remembered for replay protection, in seconds.
    /// MailerSend and Cal.com sign no timestamp, so a captured request replayed after this is
    /// processed again: keep it longer than anyone keeps their webhook logs.
    pub replay_retention_s: f64,
}

impl Default for IngressConfig {
    fn default() -> Self {
        Self {
            allow_unsigned: false,
            timestamp_tolerance_s: 300,
            rotation_grace_s: 86_400.0,
            max_body_bytes: 30 << 20,
            replay_retention_s: 90.0 * 86_400.0,
        }
    }
}

/// The email-forward channel's outgoing relay.
#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ForwardConfig {
    /// `smtp://host:port` (STARTTLS when offered; `?tls=required` to insist) or
    /// `smtps://host:port`; credentials as `smtp://user:pass@host`. Unset: email channels fail
    /// their deliveries with a clear error and stay resendable.
    pub smarthost: Option<String>,
    /// Envelope and header From of forwards; defaults to `mxhook@<smtp.hostname>`.
    pub from_address: Option<String>,
}

impl fmt::Debug for ForwardConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = self
            .smarthost
            .as_deref()
            .and_then(|url| url::Url::parse(url).ok())
            .map(|url| format!("{}://{}", url.scheme(), url.host_str().unwrap_or_default()));
        f.debug_struct("ForwardConfig")
            .field("smarthost", &host)
            .field("from_address", &self.from_address)
            .finish()
    }
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InboxConfig {
    pub id: String,
    pub addresses: Vec<String>,
    #[serde(default)]
    pub webhook_url: Option<String>,
    #[serde(default)]
    pub webhook_secret: Option<String>,
    #[serde(default = "default_signature")]
    pub signature: SignatureScheme,
    #[serde(default = "default_payload")]
    pub payload: PayloadFormat,
    /// The `hmac-sha256` scheme's header (default `X-Webhook-Signature`).
    #[serde(default)]
    pub signature_header: Option<String>,
    /// The `hmac-sha256` scheme's value: `sha256=hex` (default) or `hex`.
    #[serde(default)]
    pub signature_format: SignatureFormat,
    /// Whether the webhook receiver's TLS certificate must verify; false accepts any
    /// certificate (self-signed receivers on a private network).
    #[serde(default = "default_true")]
    pub verify_tls: bool,
    /// Deliver one thread's events to the webhook in the order the messages were accepted: a
    /// delivery waits while an earlier one of its thread is pending (retries included).
    #[serde(default)]
    pub ordered: bool,
    /// Calendar event types whose bookings this inbox receives, as `calcom:<eventTypeId>` or
    /// `calendly:<event type URI>`.
    #[serde(default)]
    pub calendar_event_types: Vec<String>,
    #[serde(default)]
    pub spf_pass_required: bool,
    #[serde(default)]
    pub dkim_pass_required: bool,
    #[serde(default)]
    pub dmarc_pass_required: bool,
    /// Addresses or domains; when set, only these senders (with a DMARC pass) meet the policy,
    /// and they are `trusted`.
    #[serde(default)]
    pub allow_senders: Vec<String>,
    /// Addresses or domains that never meet the policy.
    #[serde(default)]
    pub block_senders: Vec<String>,
    #[serde(default)]
    pub policy_action: PolicyAction,
}

impl fmt::Debug for InboxConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InboxConfig")
            .field("id", &self.id)
            .field("addresses", &self.addresses)
            .field("webhook_url", &self.webhook_url)
            .field(
                "webhook_secret",
                &self.webhook_secret.as_ref().map(|_| "redacted"),
            )
            .field("signature", &self.signature)
            .field("payload", &self.payload)
            .field("signature_header", &self.signature_header)
            .field("signature_format", &self.signature_format)
            .field("verify_tls", &self.verify_tls)
            .field("ordered", &self.ordered)
            .field("calendar_event_types", &self.calendar_event_types)
            .field("spf_pass_required", &self.spf_pass_required)
            .field("dkim_pass_required", &self.dkim_pass_required)
            .field("dmarc_pass_required", &self.dmarc_pass_required)
            .field("allow_senders", &self.allow_senders)
            .field("block_senders", &self.block_senders)
            .field("policy_action", &self.policy_action)
            .finish()
    }
}

impl InboxConfig {
    /// The policy keys of this `[[inbox]]`, as the inbox row stores them.
    pub fn sender_policy(&self) -> SenderPolicy {
        SenderPolicy {
            spf_pass_required: self.spf_pass_required,
            dkim_pass_required: self.dkim_pass_required,
            dmarc_pass_required: self.dmarc_pass_required,
            allow_senders: self.allow_senders.clone(),
            block_senders: self.block_senders.clone(),
            policy_action: self.policy_action,
        }
    }
}

fn default_signature() -> SignatureScheme {
    SignatureScheme::Agentmail
}

fn default_payload() -> PayloadFormat {
    PayloadFormat::Mxhook
}

fn default_true() -> bool {
    true
}

impl Config {
    /// Loads the config: embedded defaults, then `path` if given, then `MXHOOK_*` variables
    /// from `env`, then validation.
    ///
    /// # Errors
    /// An [`Error`] naming the file, variable or key that is wrong.
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, Error> {
        let mut tree = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
                    path: path.to_owned(),
                    source,
                })?;
                text.parse::<toml::Table>().map_err(|err| Error::Syntax {
                    path: path.to_owned(),
                    message: err.to_string(),
                })?
            }
            None => toml::Table::new(),
        };
        apply_env_overrides(&mut tree, env)?;
        Self::from_table(tree)
    }

    /// Parses and validates a TOML document (used by `load` and by tests of example configs).
    ///
    /// # Errors
    /// An [`Error`] naming the key that is wrong.
    pub fn from_toml_str(text: &str) -> Result<Self, Error> {
        let tree = text.parse::<toml::Table>().map_err(|err| Error::Syntax {
            path: PathBuf::from("<string>"),
            message: err.to_string(),
        })?;
        Self::from_table(tree)
    }

    fn from_table(tree: toml::Table) -> Result<Self, Error> {
        let config: Config =
            serde_path_to_error::deserialize(toml::Value::Table(tree)).map_err(|err| {
                let key = err.path().to_string();
                invalid(key, err.into_inner().to_string())
            })?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), Error> {
        let smtp = &self.smtp;
        if smtp.hostname.trim().is_empty() || smtp.hostname.contains(char::is_whitespace) {
            return Err(invalid(
                "smtp.hostname",
                "must be a host name without spaces",
            ));
        }
        if smtp.max_message_size == 0 {
            return Err(invalid("smtp.max_message_size", "must be greater than 0"));
        }
        for (key, value) in [
            ("smtp.max_connections", smtp.max_connections),
            ("smtp.max_recipients", smtp.max_recipients),
            ("smtp.max_errors", smtp.max_errors),
            ("smtp.max_connections_per_ip", smtp.max_connections_per_ip),
        ] {
            if value == 0 {
                return Err(invalid(key, "must be greater than 0"));
            }
        }
        if smtp.max_command_line < 512 {
            return Err(invalid(
                "smtp.max_command_line",
                "must be at least 512 (RFC 5321 §4.5.3.1.4)",
            ));
        }
        if smtp.max_text_line < 1000 {
            return Err(invalid(
                "smtp.max_text_line",
                "must be at least 1000 (RFC 5321 §4.5.3.1.6)",
            ));
        }
        if !(1024..=MAX_HEADER_BYTES).contains(&smtp.max_header_bytes) {
            return Err(invalid(
                "smtp.max_header_bytes",
                "must be between 1024 and 67108864",
            ));
        }
        positive_seconds("smtp.idle_timeout_s", smtp.idle_timeout_s)?;
        positive_seconds("smtp.session_timeout_s", smtp.session_timeout_s)?;
        if !(1..=MAX_MIN_DATA_RATE).contains(&smtp.min_data_rate) {
            return Err(invalid(
                "smtp.min_data_rate",
                "must be between 1 and 1073741824 bytes/s",
            ));
        }
        if !(0.0..=30.0).contains(&smtp.greet_pause_s) {
            return Err(invalid("smtp.greet_pause_s", "must be between 0 and 30"));
        }
        if smtp.tls_cert.is_some() != smtp.tls_key.is_some() {
            return Err(invalid(
                "smtp.tls_cert",
                "set both tls_cert and tls_key, or neither",
            ));
        }

        if self.http.admin_keys.iter().any(|key| key.trim().is_empty()) {
            return Err(invalid("http.admin_keys", "keys must not be empty"));
        }

        let storage = &self.storage;
        if storage.bucket.trim().is_empty() {
            return Err(invalid("storage.bucket", "must not be empty"));
        }
        if storage.prefix.starts_with('/') || storage.prefix.split('/').any(|seg| seg == "..") {
            return Err(invalid(
                "storage.prefix",
                "must be relative and must not contain `..`",
            ));
        }
        if storage.access_key_id.is_some() != storage.secret_access_key.is_some() {
            return Err(invalid(
                "storage.access_key_id",
                "set both access_key_id and secret_access_key, or neither",
            ));
        }
        positive_seconds("storage.timeout_s", storage.timeout_s)?;

        let url = &self.database.url;
        if !(url.starts_with("sqlite:")
            || url.starts_with("postgres:")
            || url.starts_with("postgresql:"))
        {
            return Err(invalid(
                "database.url",
                "must start with sqlite:// or postgres://",
            ));
        }
        if self.database.max_connections == 0 {
            return Err(invalid(
                "database.max_connections",
                "must be greater than 0",
            ));
        }
        positive_seconds(
            "database.directory_refresh_s",
            self.database.directory_refresh_s,
        )?;

        positive_seconds("auth.dns_timeout_s", self.auth.dns_timeout_s)?;
        positive_seconds("auth.verify_timeout_s", self.auth.verify_timeout_s)?;
        positive_seconds("auth.duplicate_window_s", self.auth.duplicate_window_s)?;
        for server in &self.auth.nameservers {
            if server.parse::<SocketAddr>().is_err() && server.parse::<std::net::IpAddr>().is_err()
            {
                return Err(invalid(
                    "auth.nameservers",
                    format!("`{server}` is not an address (\"127.0.0.1:5353\" or \"9.9.9.9\")"),
                ));
            }
        }
        let rate = &self.rate_limit;
        positive_seconds("rate_limit.window_s", rate.window_s)?;
        for (key, soft, hard) in [
            ("rate_limit.sender_hard", rate.sender_soft, rate.sender_hard),
            ("rate_limit.domain_hard", rate.domain_soft, rate.domain_hard),
            ("rate_limit.inbox_hard", rate.inbox_soft, rate.inbox_hard),
        ] {
            if hard != 0 && hard < soft {
                return Err(invalid(key, "must be 0 (off) or at least the soft limit"));
            }
        }

        let delivery = &self.delivery;
        positive_seconds("delivery.retry_base_s", delivery.retry_base_s)?;
        positive_seconds("delivery.timeout_s", delivery.timeout_s)?;
        positive_seconds("delivery.lease_s", delivery.lease_s)?;
        if delivery.timeout_s > 300.0 {
            return Err(invalid("delivery.timeout_s", "must be at most 300"));
        }
        if delivery.lease_s <= delivery.timeout_s {
            return Err(invalid(
                "delivery.lease_s",
                "must be longer than delivery.timeout_s, or a slow attempt would be taken over",
            ));
        }
        if !(delivery.disable_after_s.is_finite()
            && (0.0..=MAX_SECONDS).contains(&delivery.disable_after_s))
        {
            return Err(invalid(
                "delivery.disable_after_s",
                "must be 0 (never) or a number of seconds",
            ));
        }
        if !(delivery.secret_rotation_grace_s.is_finite()
            && (0.0..=MAX_SECRET_ROTATION_GRACE_S).contains(&delivery.secret_rotation_grace_s))
        {
            return Err(invalid(
                "delivery.secret_rotation_grace_s",
                "must be 0 to 2592000 seconds (30 days)",
            ));
        }
        if delivery.max_retries > 10 {
            return Err(invalid("delivery.max_retries", "must be at most 10"));
        }
        if delivery.workers == 0 {
            return Err(invalid("delivery.workers", "must be greater than 0"));
        }
        if delivery.max_in_flight_per_endpoint == 0 {
            return Err(invalid(
                "delivery.max_in_flight_per_endpoint",
                "must be greater than 0",
            ));
        }
        if delivery.max_payload_bytes < 4096 {
            return Err(invalid(
                "delivery.max_payload_bytes",
                "must be at least 4096",
            ));
        }

        if let Some(smarthost) = &self.forward.smarthost {
            let parsed = url::Url::parse(smarthost)
                .map_err(|err| invalid("forward.smarthost", format!("not a valid URL: {err}")))?;
            if !matches!(parsed.scheme(), "smtp" | "smtps") || parsed.host_str().is_none() {
                return Err(invalid(
                    "forward.smarthost",
                    "must be smtp://host[:port] or smtps://host[:port]",
                ));
            }
        }
        if let Some(from) = &self.forward.from_address
            && normalize_address(from).is_none()
        {
            return Err(invalid(
                "forward.from_address",
                "must be a local@domain address",
            ));
        }

        if self.ingress.timestamp_tolerance_s <= 0 {
            return Err(invalid(
                "ingress.timestamp_tolerance_s",
                "must be greater than 0",
            ));
        }
        if !(self.ingress.rotation_grace_s.is_finite()
            && (0.0..=MAX_SECONDS).contains(&self.ingress.rotation_grace_s))
        {
            return Err(invalid(
                "ingress.rotation_grace_s",
                "must be 0 or more seconds",
            ));
        }
        // Shorter than the timestamp window, a replay of a timestamped request would pass both.
        if !(self.ingress.replay_retention_s.is_finite()
            && (self.ingress.timestamp_tolerance_s as f64..=MAX_SECONDS)
                .contains(&self.ingress.replay_retention_s))
        {
            return Err(invalid(
                "ingress.replay_retention_s",
                "must be at least ingress.timestamp_tolerance_s and at most ten years",
            ));
        }

        validate_sender_entries("auth.allow_senders", &self.auth.allow_senders)?;

        let mut ids = HashSet::new();
        let mut addresses = HashSet::new();
        let mut calendar_types = HashSet::new();
        for (idx, inbox) in self.inboxes.iter().enumerate() {
            let key = |field: &str| format!("inbox[{idx}].{field}");
            if !is_valid_inbox_id(&inbox.id) {
                return Err(invalid(
                    key("id"),
                    "must be 1-64 characters of a-z, A-Z, 0-9, `.`, `_`, `-`, not starting with `.`",
                ));
            }
            if !ids.insert(inbox.id.as_str()) {
                return Err(invalid(
                    key("id"),
                    format!("`{}` is declared twice", inbox.id),
                ));
            }
            if inbox.addresses.is_empty() {
                return Err(invalid(key("addresses"), "must list at least one address"));
            }
            for address in &inbox.addresses {
                let normalized = normalize_address(address).ok_or_else(|| {
                    invalid(
                        key("addresses"),
                        format!("`{address}` is not a plain local@domain address"),
                    )
                })?;
                if !addresses.insert(normalized) {
                    return Err(invalid(
                        key("addresses"),
                        format!("`{address}` belongs to more than one inbox"),
                    ));
                }
            }
            if let Some(url) = &inbox.webhook_url {
                validate_webhook_url(url, delivery.allow_http)
                    .map_err(|message| invalid(key("webhook_url"), message))?;
            }
            if let Some(header) = &inbox.signature_header {
                validate_signature_header(header)
                    .map_err(|message| invalid(key("signature_header"), message))?;
            }
            for (field, entries) in [
                ("allow_senders", &inbox.allow_senders),
                ("block_senders", &inbox.block_senders),
            ] {
                validate_sender_entries(&key(field), entries)?;
            }
            for event_type in &inbox.calendar_event_types {
                let known = ["calcom:", "calendly:"].iter().any(|prefix| {
                    event_type
                        .strip_prefix(prefix)
                        .is_some_and(|id| !id.is_empty())
                });
                if !known {
                    return Err(invalid(
                        key("calendar_event_types"),
                        format!(
                            "`{event_type}` is not `calcom:<id>` or `calendly:<event type URI>`"
                        ),
                    ));
                }
                if !calendar_types.insert(event_type.as_str()) {
                    return Err(invalid(
                        key("calendar_event_types"),
                        format!("`{event_type}` belongs to more than one inbox"),
                    ));
                }
            }
            if let Some(secret) = &inbox.webhook_secret {
                if secret.is_empty() {
                    return Err(invalid(key("webhook_secret"), "must not be empty when set"));
                }
                if inbox.signature == SignatureScheme::Standard {
                    crate::signature::decode_standard_secret(secret).map_err(|_| {
                        invalid(
                            key("webhook_secret"),
                            "the standard scheme needs a `whsec_<base64>` secret",
                        )
                    })?;
                }
            }
        }
        Ok(())
    }
}

/// The longest duration any `_s` key takes. Far beyond any sensible setting, and far enough
/// below what `Duration` and `Instant` can hold that no deadline computed from it overflows.
const MAX_SECONDS: f64 = 315_360_000.0;

/// 64 MiB: no real header section comes near it.
const MAX_HEADER_BYTES: usize = 64 << 20;

/// 1 GiB/s: any higher minimum would cut off every real link.
const MAX_MIN_DATA_RATE: u64 = 1 << 30;

/// A rotated-out secret that signs for more than a month is a rotation that did not happen.
const MAX_SECRET_ROTATION_GRACE_S: f64 = 30.0 * 86_400.0;

/// Allow and block lists hold addresses or domains; anything else would silently never match.
fn validate_sender_entries(key: &str, entries: &[String]) -> Result<(), Error> {
    match entries
        .iter()
        .find(|entry| normalize_sender_entry(entry).is_none())
    {
        Some(entry) => Err(invalid(
            key,
            format!("`{entry}` is neither an address nor a domain"),
        )),
        None => Ok(()),
    }
}

fn positive_seconds(key: &str, value: f64) -> Result<(), Error> {
    if value.is_finite() && value > 0.0 && value <= MAX_SECONDS {
        Ok(())
    } else {
        Err(invalid(
            key,
            "must be a positive number of seconds, at most 315360000 (ten years)",
        ))
    }
}

/// Applies `MXHOOK_SECTION__KEY=value` variables to the TOML tree. A value is read as TOML
/// when it parses as one (`true`, `8`, `["a","b"]`), else as a plain string.
fn apply_env_overrides(
    tree: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(), Error> {
    let mut vars: Vec<(String, String)> = env
        .into_iter()
        .filter(|(name, _)| name.starts_with(ENV_PREFIX))
        .collect();
    vars.sort();
    for (var, raw) in vars {
        let path: Vec<String> = var[ENV_PREFIX.len()..]
            .split("__")
            .map(|segment| segment.to_ascii_lowercase())
            .collect();
        if path.len() != 2 || path.iter().any(String::is_empty) {
            return Err(Error::Env {
                var,
                message: "expected MXHOOK_<SECTION>__<KEY>, e.g. MXHOOK_SMTP__LISTEN".to_owned(),
            });
        }
        let value = format!("v = {raw}")
            .parse::<toml::Table>()
            .ok()
            .and_then(|mut table| table.remove("v"))
            .unwrap_or(toml::Value::String(raw));
        let section = tree
            .entry(path[0].clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        match section {
            toml::Value::Table(section) => {
                section.insert(path[1].clone(), value);
            }
            _ => {
                return Err(Error::Env {
                    var,
                    message: format!("`{}` is not a config section", path[0]),
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
