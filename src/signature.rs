//! Pure webhook signing for the four schemes of SPEC.md ("Signatures"). No IO, no clock:
//! the caller passes the timestamp, so tests can check exact bytes.
//!
//! Signing is always over the exact body bytes that are sent.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::model::{DEFAULT_HMAC_HEADER, SignatureFormat, SignatureScheme};

type HmacSha256 = Hmac<Sha256>;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("standard webhook secrets look like `whsec_<base64>`")]
    MalformedStandardSecret,
}

/// One signing key of an endpoint. During rotation an endpoint has two, and the `standard`
/// scheme sends one signature per key.
pub struct SigningInput<'a> {
    pub scheme: SignatureScheme,
    pub secrets: &'a [String],
    pub webhook_id: &'a str,
    pub timestamp: i64,
    pub body: &'a [u8],
    /// The `hmac-sha256` scheme's header; `None` is [`DEFAULT_HMAC_HEADER`].
    pub hmac_header: Option<&'a str>,
    /// The `hmac-sha256` scheme's value format.
    pub hmac_format: SignatureFormat,
}

/// Returns the signature headers for one request, in order.
///
/// # Errors
/// [`Error::MalformedStandardSecret`] when a `standard` secret is not `whsec_<base64>`.
pub fn sign(input: &SigningInput<'_>) -> Result<Vec<(String, String)>, Error> {
    let ts = input.timestamp.to_string();
    let mut headers = Vec::new();
    if input.secrets.is_empty() {
        if input.scheme == SignatureScheme::Agentmail {
            headers.push(("X-AgentMail-Unsigned".to_owned(), "1".to_owned()));
        }
        if input.scheme == SignatureScheme::Standard {
            headers.push(("webhook-timestamp".to_owned(), ts));
        }
        return Ok(headers);
    }
    match input.scheme {
        SignatureScheme::Agentmail => {
            let signatures: Vec<String> = input
                .secrets
                .iter()
                .map(|secret| {
                    let mut mac = hmac(secret.as_bytes());
                    mac.update(ts.as_bytes());
                    mac.update(b".");
                    mac.update(input.body);
                    format!("v1={}", hex::encode(mac.finalize().into_bytes()))
                })
                .collect();
            headers.push(("X-AgentMail-Timestamp".to_owned(), ts));
            headers.push(("X-AgentMail-Signature".to_owned(), signatures.join(" ")));
        }
        SignatureScheme::Standard => {
            let mut signatures = Vec::with_capacity(input.secrets.len());
            for secret in input.secrets {
                let key = decode_standard_secret(secret)?;
                let mut mac = hmac(&key);
                mac.update(input.webhook_id.as_bytes());
                mac.update(b".");
                mac.update(ts.as_bytes());
                mac.update(b".");
                mac.update(input.body);
                signatures.push(format!("v1,{}", BASE64.encode(mac.finalize().into_bytes())));
            }
            headers.push(("webhook-timestamp".to_owned(), ts));
            headers.push(("webhook-signature".to_owned(), signatures.join(" ")));
        }
        SignatureScheme::Botmailroom => {
            let mut mac = hmac(input.secrets[0].as_bytes());
            mac.update(input.body);
            headers.push((
                "X-Signature".to_owned(),
                hex::encode(mac.finalize().into_bytes()),
            ));
        }
        SignatureScheme::HmacSha256 => {
            let mut mac = hmac(input.secrets[0].as_bytes());
            mac.update(input.body);
            let digest = hex::encode(mac.finalize().into_bytes());
            headers.push((
                input.hmac_header.unwrap_or(DEFAULT_HMAC_HEADER).to_owned(),
                match input.hmac_format {
                    SignatureFormat::Sha256Hex => format!("sha256={digest}"),
                    SignatureFormat::Hex => digest,
                },
            ));
        }
    }
    Ok(headers)
}

fn hmac(key: &[u8]) -> HmacSha256 {
    // HMAC accepts keys of any length (RFC 2104 §3), so this constructor cannot fail.
    <HmacSha256 as Mac>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes any key length"))
}

/// Decodes a Standard Webhooks secret (`whsec_` + base64 of the key bytes).
///
/// # Errors
/// [`Error::MalformedStandardSecret`] when the prefix or the base64 is wrong.
pub fn decode_standard_secret(secret: &str) -> Result<Vec<u8>, Error> {
    let encoded = secret
        .strip_prefix("whsec_")
        .ok_or(Error::MalformedStandardSecret)?;
    BASE64
        .decode(encoded)
        .ok()
        .filter(|key| !key.is_empty())
        .ok_or(Error::MalformedStandardSecret)
}

/// Checks an `agentmail` signature header value in constant time (used by `mxhook verify`
/// and by tests; receivers use their own code).
pub fn verify_agentmail(secret: &str, timestamp: &str, body: &[u8], header: &str) -> bool {
    header.split(' ').any(|candidate| {
        let Some(hex_sig) = candidate.strip_prefix("v1=") else {
            return false;
        };
        let Ok(expected) = hex::decode(hex_sig) else {
            return false;
        };
        let mut mac = hmac(secret.as_bytes());
        mac.update(timestamp.as_bytes());
        mac.update(b".");
        mac.update(body);
        mac.verify_slice(&expected).is_ok()
    })
}

#[cfg(test)]
mod tests;
