//! Configuration: one typed tree, loaded as embedded defaults ⊕ TOML file ⊕ `MXHOOK_*` env vars.
//!
//! Every value is validated here, at startup, and every error names the key it is about
//! (`smtp.listen`, `inbox[0].webhook_url`, `MXHOOK_DELIVERY__RETRY_BASE_S`), so a broken config
//! never reaches a running stage. Stages receive only their own section.
//!
//! This file owns [`Config`] (the tree), loading (file, then [`ENV_PREFIX`] variables), the
//! [`Error`] and the checks that span sections. Each section is a file owning its struct, its
//! defaults and its `validate()`: [`smtp`], [`http`], [`storage`], [`database`], [`auth`],
//! [`ratelimit`], [`delivery`], [`forward`], [`ingress`], [`templates`], [`spam`], [`replies`]
//! (and `[dkim]`), [`secrets`], [`inbox`] and [`domain`]. Durations stay the `_s` seconds the file spells;
//! the sections type them with `Duration` accessors.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::model::normalize_sender_entry;

pub mod auth;
pub mod database;
pub mod delivery;
pub mod domain;
pub mod forward;
pub mod http;
pub mod inbox;
pub mod ingress;
pub mod mta_sts;
pub mod ratelimit;
pub mod replies;
pub mod retention;
pub mod secrets;
pub mod smtp;
pub mod spam;
pub mod storage;
pub mod templates;

pub use auth::AuthConfig;
pub use database::DatabaseConfig;
pub use delivery::DeliveryConfig;
pub use domain::DomainConfig;
pub use forward::ForwardConfig;
pub use http::HttpConfig;
pub use inbox::InboxConfig;
pub use ingress::IngressConfig;
pub use ratelimit::RateLimitConfig;
pub use replies::{DkimConfig, DkimKeyConfig, RepliesConfig};
pub use retention::{AttachmentsConfig, RetentionConfig};
pub use secrets::SecretsConfig;
pub use smtp::SmtpConfig;
pub use spam::SpamConfig;
pub use storage::{StorageBackend, StorageConfig};
pub use templates::TemplatesConfig;

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
    #[serde(default)]
    pub replies: RepliesConfig,
    #[serde(default)]
    pub dkim: DkimConfig,
    #[serde(default)]
    pub spam: SpamConfig,
    /// `[mta_sts]`: served at `/.well-known/mta-sts.txt` when present.
    #[serde(default)]
    pub mta_sts: Option<mta_sts::MtaStsConfig>,
    #[serde(default)]
    pub retention: RetentionConfig,
    #[serde(default)]
    pub attachments: AttachmentsConfig,
    /// `[secrets]`: the key stored signing secrets are encrypted with.
    #[serde(default)]
    pub secrets: SecretsConfig,
    #[serde(default, rename = "inbox")]
    pub inboxes: Vec<InboxConfig>,
    #[serde(default, rename = "domain")]
    pub domains: Vec<DomainConfig>,
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

    /// Each section checks its own keys, in a fixed order (the first error found is the one
    /// reported); then each `[[inbox]]` in turn, which needs `delivery.allow_http` and what the
    /// inboxes before it claimed.
    fn validate(&self) -> Result<(), Error> {
        self.smtp.validate()?;
        self.http.validate()?;
        self.storage.validate()?;
        self.database.validate()?;
        self.auth.validate()?;
        self.rate_limit.validate()?;
        self.delivery.validate()?;
        self.forward.validate()?;
        self.ingress.validate()?;
        self.dkim.validate()?;
        self.spam.validate()?;
        if let Some(mta_sts) = &self.mta_sts {
            mta_sts.validate()?;
        }
        self.retention.validate()?;
        self.attachments.validate()?;
        self.secrets.validate()?;
        let mut claimed = inbox::Claimed::default();
        for (idx, inbox) in self.inboxes.iter().enumerate() {
            inbox.validate(idx, self.delivery.allow_http, &mut claimed)?;
        }
        let inbox_ids: std::collections::HashSet<&str> =
            self.inboxes.iter().map(|inbox| inbox.id.as_str()).collect();
        let mut claimed_domains = domain::ClaimedDomains::default();
        for (idx, domain) in self.domains.iter().enumerate() {
            domain.validate(
                idx,
                self.delivery.allow_http,
                &inbox_ids,
                &mut claimed_domains,
            )?;
        }
        Ok(())
    }
}

/// The longest duration any `_s` key takes. Far beyond any sensible setting, and far enough
/// below what `Duration` and `Instant` can hold that no deadline computed from it overflows.
const MAX_SECONDS: f64 = 315_360_000.0;

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

/// A validated `_s` value as a `Duration`. Validation keeps every such value finite, not
/// negative and at most [`MAX_SECONDS`]; a hand-built config outside that saturates
/// (negative or NaN to zero, too large to `Duration::MAX`) rather than panicking.
fn seconds(value: f64) -> Duration {
    Duration::try_from_secs_f64(value.max(0.0)).unwrap_or(Duration::MAX)
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
