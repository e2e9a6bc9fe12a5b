//! Spam scoring by rspamd, before the `250`, over its HTTP protocol: `POST /checkv2` with the
//! raw message as the body and the envelope as request headers (`From`, `Rcpt`, `IP`, `Helo`,
//! `Queue-Id`).
//!
//! The SPF, DKIM and DMARC results the gateway already has go along as rspamd's `SPF`, `DKIM`
//! and `DMARC` request headers (its `http_headers` plugin, on by default), and rspamd then
//! skips those checks and their DNS queries and scores what it was told. That is why the check
//! runs after verification and not beside it: beside it rspamd would repeat every lookup, and
//! could reach another verdict than the event's `auth` on the same message.
//!
//! A check never fails the message: rspamd down, slow past `spam.timeout_s`, answering an error
//! or something unreadable gives the verdict `temperror`, and the mail is accepted all the same.

use std::time::Duration;

use serde_json::{Value, json};

use crate::config::SpamConfig;
use crate::model::{Envelope, SpamVerdict};
use crate::verify::AuthVerdict;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("spam.rspamd_url is not a usable URL: {0}")]
    Url(String),
    #[error("building the HTTP client failed: {0}")]
    Client(String),
}

/// Asks rspamd about messages.
pub struct SpamChecker {
    client: reqwest::Client,
    check_url: reqwest::Url,
    timeout: Duration,
}

impl SpamChecker {
    /// A checker for `config`, or `None` when scoring is off (`spam.rspamd_url` empty).
    ///
    /// # Errors
    /// An [`Error`] when the URL or the HTTP client cannot be made (validation lets neither
    /// through).
    pub fn new(config: &SpamConfig) -> Result<Option<Self>, Error> {
        if !config.enabled() {
            return Ok(None);
        }
        let base = reqwest::Url::parse(config.rspamd_url.trim())
            .map_err(|err| Error::Url(err.to_string()))?;
        let check_url = base
            .join("/checkv2")
            .map_err(|err| Error::Url(err.to_string()))?;
        // No proxy from the environment: rspamd sits beside the gateway, and a proxy variable
        // meant for webhooks must not send every message somewhere else.
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(config.timeout())
            .connect_timeout(config.timeout())
            .user_agent(concat!("mxhook/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|err| Error::Client(err.to_string()))?;
        Ok(Some(Self {
            client,
            check_url,
            timeout: config.timeout(),
        }))
    }

    /// rspamd's verdict on `raw`, or `temperror`. `queue_id` names the transfer in rspamd's log.
    pub async fn check(
        &self,
        envelope: &Envelope,
        raw: &[u8],
        auth: &AuthVerdict,
        queue_id: &str,
    ) -> SpamVerdict {
        let request = self.request(envelope, raw, auth, queue_id);
        // The client's timeout covers the request; this one covers reading the body too.
        let answer = tokio::time::timeout(self.timeout, async {
            let response = request.send().await?.error_for_status()?;
            response.bytes().await
        })
        .await;
        let body = match answer {
            Ok(Ok(body)) => body,
            Ok(Err(err)) => {
                tracing::warn!(error = %err, queue_id, "rspamd check failed; verdict temperror");
                return SpamVerdict::temperror();
            }
            Err(_) => {
                tracing::warn!(queue_id, "rspamd check timed out; verdict temperror");
                return SpamVerdict::temperror();
            }
        };
        match serde_json::from_slice::<Value>(&body) {
            Ok(answer) => verdict_of(&answer).unwrap_or_else(|| {
                tracing::warn!(
                    queue_id,
                    "rspamd answered without a score; verdict temperror"
                );
                SpamVerdict::temperror()
            }),
            Err(err) => {
                tracing::warn!(error = %err, queue_id, "rspamd answer is not JSON; verdict temperror");
                SpamVerdict::temperror()
            }
        }
    }

    fn request(
        &self,
        envelope: &Envelope,
        raw: &[u8],
        auth: &AuthVerdict,
        queue_id: &str,
    ) -> reqwest::RequestBuilder {
        let mut request = self
            .client
            .post(self.check_url.clone())
            .header("Queue-Id", queue_id)
            .header("Helo", envelope.helo.as_str());
        // The null sender goes without a From: rspamd reads a missing one as `<>`.
        if let Some(from) = &envelope.mail_from {
            request = request.header("From", from.as_str());
        }
        for recipient in &envelope.recipients {
            request = request.header("Rcpt", recipient.address.as_str());
        }
        if let Some(ip) = envelope.remote_ip {
            request = request.header("IP", ip.to_string());
        }
        for (name, value) in auth_headers(auth) {
            request = request.header(name, value);
        }
        request.body(raw.to_vec())
    }
}

/// The verification results as rspamd's `http_headers` plugin reads them (UCL, which JSON is).
/// Without verification nothing is passed and rspamd checks for itself.
fn auth_headers(auth: &AuthVerdict) -> Vec<(&'static str, String)> {
    let mut headers = Vec::new();
    if !auth.checked {
        return headers;
    }
    if let Some(spf) = &auth.spf {
        let result = match spf.result {
            "pass" => Some("pass"),
            "fail" => Some("fail"),
            "softfail" => Some("softfail"),
            "neutral" => Some("neutral"),
            "permerror" => Some("permfail"),
            "none" => Some("na"),
            // A temporary error is left to rspamd to try again.
            _ => None,
        };
        if let Some(result) = result {
            headers.push(("SPF", json!({ "result": result }).to_string()));
        }
    }
    let dkim: Vec<Value> = auth
        .dkim
        .iter()
        .map(|dkim| {
            let result = match dkim.result {
                "pass" => "pass",
                "fail" => "fail",
                "temperror" => "tempfail",
                "permerror" => "permfail",
                _ => "na",
            };
            json!({ "result": result, "domain": dkim.domain })
        })
        .collect();
    headers.push((
        "DKIM",
        if dkim.is_empty() {
            json!({ "result": "na" })
        } else {
            json!({ "results": dkim })
        }
        .to_string(),
    ));
    if let Some(dmarc) = &auth.dmarc {
        let result = match (dmarc.result, dmarc.policy) {
            ("pass", _) => Some("pass"),
            ("fail", "reject") => Some("reject"),
            ("fail", "quarantine") => Some("quarantine"),
            ("fail", _) => Some("softfail"),
            ("none", _) => Some("na"),
            ("permerror", _) => Some("permfail"),
            ("temperror", _) => Some("tempfail"),
            _ => None,
        };
        if let Some(result) = result {
            headers.push(("DMARC", json!({ "result": result }).to_string()));
        }
    }
    headers
}

/// The verdict in a `/checkv2` answer; `None` when it has no score (rspamd's error answers).
fn verdict_of(answer: &Value) -> Option<SpamVerdict> {
    let score = answer.get("score").and_then(Value::as_f64)?;
    let action = answer
        .get("action")
        .and_then(Value::as_str)
        .unwrap_or("no action")
        .to_owned();
    let mut symbols: Vec<String> = answer
        .get("symbols")
        .and_then(Value::as_object)
        .map(|symbols| symbols.keys().cloned().collect())
        .unwrap_or_default();
    symbols.sort();
    Some(SpamVerdict {
        action,
        required_score: answer.get("required_score").and_then(Value::as_f64),
        score: Some(score),
        symbols: Some(symbols),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkv2_answer_reads_as_the_verdict() {
        let answer = json!({
            "is_skipped": false, "score": 1.5, "required_score": 15.0, "action": "no action",
            "symbols": {"MIME_GOOD": {"score": -0.1}, "ARC_NA": {"score": 0.0}},
            "messages": {}
        });
        let verdict = verdict_of(&answer).expect("a verdict");
        assert_eq!(verdict.action, "no action");
        assert_eq!(verdict.score, Some(1.5));
        assert_eq!(verdict.required_score, Some(15.0));
        assert_eq!(
            verdict.symbols,
            Some(vec!["ARC_NA".to_owned(), "MIME_GOOD".to_owned()])
        );
        assert_eq!(verdict_of(&json!({"error": "bad request"})), None);
    }

    #[test]
    fn a_temperror_verdict_is_only_its_action() {
        let verdict = serde_json::to_value(SpamVerdict::temperror()).expect("json");
        assert_eq!(verdict, json!({"action": "temperror"}));
    }
}
