//! `[[domain]]`: a whole mail domain (SPEC "Domains, catch-all and inboxes created on first
//! mail") — its name, the `catch_all` inbox that takes unknown local parts, and `auto_create`,
//! which makes inbox `<local>` from `[domain.template]` on the first mail to `<local>@<name>`,
//! bounded by `max_auto_inboxes` and `auto_create_per_minute`.
//!
//! The template has the keys of `[[inbox]]` minus `id` and `addresses` (and
//! `calendar_event_types`, which one inbox owns), and is checked by `[[inbox]]`'s own validation
//! through [`template_inbox`], which the management API uses too, so the file and the API accept
//! the same templates. It is kept as the keys were written: that is what the database stores and
//! what the API shows back (its `webhook_secret` excepted).

use std::collections::HashSet;
use std::fmt;

use serde::Deserialize;
use serde_json::{Map, Value};

use super::inbox::{Claimed, InboxConfig};
use super::{Error, invalid};
use crate::model::{is_valid_inbox_id, normalize_address};

/// `max_auto_inboxes` when unset.
pub const DEFAULT_MAX_AUTO_INBOXES: u64 = 10_000;
/// `auto_create_per_minute` when unset: enough for a platform handing out addresses, few enough
/// that a sender walking through local parts fills the cap in hours, not seconds.
pub const DEFAULT_AUTO_CREATE_PER_MINUTE: u64 = 60;

/// Template keys that are not the template's to set: each auto-created inbox gets its own id and
/// address, and a calendar event type belongs to one inbox only.
const NOT_TEMPLATE_KEYS: [&str; 3] = ["id", "addresses", "calendar_event_types"];

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DomainConfig {
    pub name: String,
    /// The inbox that receives mail for local parts no inbox claims.
    #[serde(default)]
    pub catch_all: Option<String>,
    /// Whether the first mail to an unknown `<local>@<name>` makes inbox `<local>`.
    #[serde(default)]
    pub auto_create: bool,
    #[serde(default = "default_max_auto_inboxes")]
    pub max_auto_inboxes: u64,
    /// Inboxes auto-created for this domain in any 60 seconds, across all nodes; above it RCPT
    /// answers `451 4.7.1` and the sender retries later.
    #[serde(default = "default_auto_create_per_minute")]
    pub auto_create_per_minute: u64,
    /// `[domain.template]`, as written.
    #[serde(default)]
    pub template: Map<String, Value>,
}

impl fmt::Debug for DomainConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DomainConfig")
            .field("name", &self.name)
            .field("catch_all", &self.catch_all)
            .field("auto_create", &self.auto_create)
            .field("max_auto_inboxes", &self.max_auto_inboxes)
            .field("auto_create_per_minute", &self.auto_create_per_minute)
            // Values may be secrets (the webhook secret, custom header credentials).
            .field("template", &self.template.keys().collect::<Vec<_>>())
            .finish()
    }
}

fn default_max_auto_inboxes() -> u64 {
    DEFAULT_MAX_AUTO_INBOXES
}

fn default_auto_create_per_minute() -> u64 {
    DEFAULT_AUTO_CREATE_PER_MINUTE
}

/// A domain name as stored and matched: lowercase, without a trailing dot; `None` when it is not
/// a domain an address could have.
pub fn normalize_domain(name: &str) -> Option<String> {
    let name = name.trim().trim_end_matches('.');
    if name.is_empty() || name.contains('@') {
        return None;
    }
    normalize_address(&format!("postmaster@{name}")).and_then(|address| {
        address
            .rsplit_once('@')
            .map(|(_, domain)| domain.to_owned())
    })
}

/// The inbox `template` makes with this id and address, checked as an `[[inbox]]` is. The error
/// is (template key, message), e.g. `("webhook_url", "…")`.
///
/// # Errors
/// A key that is not a template key, a value of the wrong type, or what `[[inbox]]` validation
/// refuses.
pub fn template_inbox(
    template: &Map<String, Value>,
    id: &str,
    address: &str,
    allow_http: bool,
) -> Result<InboxConfig, (String, String)> {
    if let Some(key) = NOT_TEMPLATE_KEYS
        .iter()
        .find(|key| template.contains_key(**key))
    {
        return Err((
            (*key).to_owned(),
            "is not a template key (each inbox the template makes has its own)".to_owned(),
        ));
    }
    let mut keys = template.clone();
    keys.insert("id".to_owned(), Value::from(id));
    keys.insert("addresses".to_owned(), Value::from(vec![address]));
    let inbox: InboxConfig =
        serde_path_to_error::deserialize(Value::Object(keys)).map_err(|err| {
            let path = err.path().to_string();
            let key = if path == "." { String::new() } else { path };
            (key, err.into_inner().to_string())
        })?;
    inbox
        .validate(0, allow_http, &mut Claimed::default())
        .map_err(|err| match err {
            Error::Invalid { key, message } => (
                key.strip_prefix("inbox[0].").unwrap_or(&key).to_owned(),
                message,
            ),
            other => (String::new(), other.to_string()),
        })?;
    Ok(inbox)
}

/// The id of the inbox auto-create makes for this local part: lowercased, without its `+tag`,
/// when that is `[a-z0-9][a-z0-9._-]{0,63}`.
pub fn auto_inbox_id(local: &str) -> Option<String> {
    let base = local.split_once('+').map_or(local, |(base, _)| base);
    let id = base.to_ascii_lowercase();
    let mut chars = id.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let rest_ok = chars
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '_' || c == '-');
    (first_ok && rest_ok && id.len() <= 64 && is_valid_inbox_id(&id)).then_some(id)
}

/// What the domains checked so far have taken.
#[derive(Default)]
pub(super) struct ClaimedDomains {
    names: HashSet<String>,
}

impl DomainConfig {
    /// Checks the `idx`-th `[[domain]]` (keys are named `domain[idx].…`). `inbox_ids` are the
    /// `[[inbox]]` ids a `catch_all` may name; `allow_http` is `delivery.allow_http`.
    pub(super) fn validate(
        &self,
        idx: usize,
        allow_http: bool,
        inbox_ids: &HashSet<&str>,
        claimed: &mut ClaimedDomains,
    ) -> Result<(), Error> {
        let key = |field: &str| format!("domain[{idx}].{field}");
        let name = normalize_domain(&self.name)
            .ok_or_else(|| invalid(key("name"), format!("`{}` is not a domain", self.name)))?;
        if !claimed.names.insert(name) {
            return Err(invalid(
                key("name"),
                format!("`{}` is declared twice", self.name),
            ));
        }
        if let Some(catch_all) = &self.catch_all
            && !inbox_ids.contains(catch_all.as_str())
        {
            return Err(invalid(
                key("catch_all"),
                format!("`{catch_all}` is not the id of an [[inbox]]"),
            ));
        }
        if self.max_auto_inboxes == 0 {
            return Err(invalid(
                key("max_auto_inboxes"),
                "must be at least 1 (set auto_create = false to make none)",
            ));
        }
        if self.auto_create_per_minute == 0 {
            return Err(invalid(
                key("auto_create_per_minute"),
                "must be at least 1 (set auto_create = false to make none)",
            ));
        }
        template_inbox(
            &self.template,
            "template",
            &format!("template@{}", self.name),
            allow_http,
        )
        .map_err(|(field, message)| {
            let field = if field.is_empty() {
                "template".to_owned()
            } else {
                format!("template.{field}")
            };
            invalid(key(&field), message)
        })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_inbox_ids() {
        assert_eq!(auto_inbox_id("Bob").as_deref(), Some("bob"));
        assert_eq!(auto_inbox_id("bob+task-1").as_deref(), Some("bob"));
        assert_eq!(auto_inbox_id("a.b_c-d9").as_deref(), Some("a.b_c-d9"));
        assert_eq!(auto_inbox_id(".bob"), None);
        assert_eq!(auto_inbox_id("-bob"), None);
        assert_eq!(auto_inbox_id("bo!b"), None);
        assert_eq!(auto_inbox_id("björn"), None);
        assert_eq!(auto_inbox_id("+tag"), None);
        assert_eq!(
            auto_inbox_id(&"a".repeat(64)).as_deref(),
            Some(&*"a".repeat(64))
        );
        assert_eq!(auto_inbox_id(&"a".repeat(65)), None);
    }

    #[test]
    fn domains_normalize() {
        assert_eq!(
            normalize_domain("Agents.Example.COM.").as_deref(),
            Some("agents.example.com")
        );
        assert_eq!(normalize_domain("a@b.example"), None);
        assert_eq!(normalize_domain(""), None);
    }

    #[test]
    fn template_errors_name_the_template_key() {
        let template: Map<String, Value> = serde_json::from_value(serde_json::json!({
            "webhook_url": "ftp://hooks.example.com/in"
        }))
        .expect("map");
        let (key, _) = template_inbox(&template, "x", "x@example.com", false).expect_err("ftp");
        assert_eq!(key, "webhook_url");
        let template: Map<String, Value> =
            serde_json::from_value(serde_json::json!({"ordered": "yes"})).expect("map");
        let (key, _) = template_inbox(&template, "x", "x@example.com", false).expect_err("type");
        assert_eq!(key, "ordered");
        let template: Map<String, Value> =
            serde_json::from_value(serde_json::json!({"addresses": []})).expect("map");
        let (key, _) = template_inbox(&template, "x", "x@example.com", false).expect_err("key");
        assert_eq!(key, "addresses");
        let template: Map<String, Value> =
            serde_json::from_value(serde_json::json!({"webhok_url": "x"})).expect("map");
        assert!(template_inbox(&template, "x", "x@example.com", false).is_err());
    }

    fn config_error_key(domain: &str) -> String {
        let text =
            format!("[[inbox]]\nid = \"desk\"\naddresses = [\"desk@example.com\"]\n{domain}");
        match crate::config::Config::from_toml_str(&text) {
            Err(Error::Invalid { key, .. }) => key,
            other => panic!("expected a key error, got {other:?}"),
        }
    }

    #[test]
    fn config_errors_name_the_domain_key() {
        assert_eq!(
            config_error_key(
                "[[domain]]\nname = \"a.example\"\n[domain.template]\nwebhook_url = \"ftp://x.example/\"\n"
            ),
            "domain[0].template.webhook_url"
        );
        assert_eq!(
            config_error_key("[[domain]]\nname = \"a.example\"\ncatch_all = \"nobody\"\n"),
            "domain[0].catch_all"
        );
        assert_eq!(
            config_error_key(
                "[[domain]]\nname = \"a.example\"\n[[domain]]\nname = \"A.example.\"\n"
            ),
            "domain[1].name"
        );
        assert_eq!(
            config_error_key("[[domain]]\nname = \"a.example\"\nmax_auto_inboxes = 0\n"),
            "domain[0].max_auto_inboxes"
        );
        assert_eq!(
            config_error_key("[[domain]]\nname = \"a.example\"\n[domain.template]\nid = \"x\"\n"),
            "domain[0].template.id"
        );
        let config = crate::config::Config::from_toml_str(
            "[[inbox]]\nid = \"desk\"\naddresses = [\"desk@example.com\"]\n\
             [[domain]]\nname = \"a.example\"\ncatch_all = \"desk\"\nauto_create = true\n\
             [domain.template]\nwebhook_url = \"https://hooks.example.com/in\"\n\
             webhook_secret = \"s3cret\"\n",
        )
        .expect("valid");
        let domain = &config.domains[0];
        assert_eq!(domain.max_auto_inboxes, DEFAULT_MAX_AUTO_INBOXES);
        assert_eq!(
            domain.auto_create_per_minute,
            DEFAULT_AUTO_CREATE_PER_MINUTE
        );
        assert!(!format!("{domain:?}").contains("s3cret"));
    }
}
