//! How a webhook endpoint signs and shapes what it sends: the vocabulary an endpoint's settings
//! are written in, whether the config file, the API or a rule sets them.

use serde::Deserialize;

/// The header the `hmac-sha256` scheme signs in unless an endpoint names another.
pub const DEFAULT_HMAC_HEADER: &str = "X-Webhook-Signature";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SignatureScheme {
    Agentmail,
    Standard,
    Botmailroom,
    HmacSha256,
}

impl SignatureScheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Agentmail => "agentmail",
            Self::Standard => "standard",
            Self::Botmailroom => "botmailroom",
            Self::HmacSha256 => "hmac-sha256",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        [
            Self::Agentmail,
            Self::Standard,
            Self::Botmailroom,
            Self::HmacSha256,
        ]
        .into_iter()
        .find(|scheme| scheme.as_str() == value)
    }
}

/// How the `hmac-sha256` scheme writes its signature value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
pub enum SignatureFormat {
    /// `sha256=<hex>`.
    #[default]
    #[serde(rename = "sha256=hex")]
    Sha256Hex,
    /// Bare lowercase hex.
    #[serde(rename = "hex")]
    Hex,
}

impl SignatureFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sha256Hex => "sha256=hex",
            Self::Hex => "hex",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        [Self::Sha256Hex, Self::Hex]
            .into_iter()
            .find(|format| format.as_str() == value)
    }
}

/// Whether a request header is the gateway's own (framing, identity, signatures of the other
/// schemes), so an endpoint setting may neither add nor replace it.
pub fn is_reserved_header(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    lower.starts_with("webhook-")
        || lower.starts_with("x-agentmail-")
        || matches!(
            lower.as_str(),
            "content-type"
                | "content-length"
                | "content-encoding"
                | "transfer-encoding"
                | "connection"
                | "host"
                | "user-agent"
                | "x-signature"
        )
}

/// Checks the header name an `hmac-sha256` endpoint signs in: an HTTP field name (RFC 9110
/// token) that is not reserved.
///
/// # Errors
/// A message saying what is wrong with `name`.
pub fn validate_signature_header(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 64 {
        return Err("must be 1-64 characters".to_owned());
    }
    if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
        return Err(format!("`{name}` is not a valid HTTP header name"));
    }
    if is_reserved_header(name) {
        return Err(format!("`{name}` is reserved"));
    }
    Ok(())
}

/// The body an endpoint receives (SPEC "Event types and subscriptions": `payload` shapes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
pub enum PayloadFormat {
    /// The event as it is.
    #[serde(rename = "mxhook")]
    Mxhook,
    /// BotMailRoom's email object.
    #[serde(rename = "botmailroom")]
    Botmailroom,
    /// `{event, webhook {id, name}, timestamp, data}` (the agent-platform envelope).
    #[serde(rename = "event-data")]
    EventData,
    /// `{event, data, ts}`.
    #[serde(rename = "event-data-ts")]
    EventDataTs,
}

impl PayloadFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Mxhook => "mxhook",
            Self::Botmailroom => "botmailroom",
            Self::EventData => "event-data",
            Self::EventDataTs => "event-data-ts",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        [
            Self::Mxhook,
            Self::Botmailroom,
            Self::EventData,
            Self::EventDataTs,
        ]
        .into_iter()
        .find(|format| format.as_str() == value)
    }
}

/// The delivery settings every webhook endpoint has besides its URL and signing (SPEC
/// "Delivery": `custom_headers`, `timeout_s`, `max_retries`): what the inbox webhook stores, in
/// the shape a rule's webhook writes them. Unset values fall back to the endpoint kind's
/// defaults (the `[delivery]` section for the inbox webhook).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
pub struct EndpointSettings {
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub custom_headers: std::collections::BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_s: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
}

/// The longest per-endpoint request timeout, in seconds.
pub const MAX_TIMEOUT_S: u32 = 300;
/// The most retries an endpoint may ask for.
pub const MAX_RETRIES: u32 = 10;

impl EndpointSettings {
    /// The request timeout, when set.
    pub fn timeout(&self) -> Option<std::time::Duration> {
        self.timeout_s
            .map(|seconds| std::time::Duration::from_secs(u64::from(seconds)))
    }

    /// Checks the settings of an endpoint signing with `scheme` (in `signature_header`, for
    /// `hmac-sha256`; `None` is the default header).
    ///
    /// # Errors
    /// The offending field's name and what is wrong with it.
    pub fn validate(
        &self,
        scheme: SignatureScheme,
        signature_header: Option<&str>,
    ) -> Result<(), (&'static str, String)> {
        validate_endpoint_settings(
            &self.custom_headers,
            self.timeout_s,
            self.max_retries,
            scheme,
            signature_header,
        )
    }
}

/// The checks of [`EndpointSettings::validate`], on the values wherever they are kept.
///
/// # Errors
/// The offending field's name and what is wrong with it.
pub fn validate_endpoint_settings(
    custom_headers: &std::collections::BTreeMap<String, String>,
    timeout_s: Option<u32>,
    max_retries: Option<u32>,
    scheme: SignatureScheme,
    signature_header: Option<&str>,
) -> Result<(), (&'static str, String)> {
    if timeout_s.is_some_and(|timeout_s| !(1..=MAX_TIMEOUT_S).contains(&timeout_s)) {
        return Err(("timeout_s", format!("must be in (0, {MAX_TIMEOUT_S}]")));
    }
    if max_retries.is_some_and(|retries| retries > MAX_RETRIES) {
        return Err(("max_retries", format!("must be at most {MAX_RETRIES}")));
    }
    let signature_header = signature_header.unwrap_or(DEFAULT_HMAC_HEADER);
    for (name, value) in custom_headers {
        // A custom header is added beside the signature, so one named like the signature
        // header would send two values and no receiver could verify.
        let signs_in_it =
            scheme == SignatureScheme::HmacSha256 && name.eq_ignore_ascii_case(signature_header);
        if is_reserved_header(name)
            || signs_in_it
            || reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err()
        {
            return Err(("custom_headers", format!("`{name}` cannot be set")));
        }
        if reqwest::header::HeaderValue::from_str(value).is_err() {
            return Err((
                "custom_headers",
                format!("the value of `{name}` is not a valid header value"),
            ));
        }
    }
    Ok(())
}
