//! Addresses and ids as mxhook reads them: inbox ids, routable `local@domain` addresses, and
//! webhook URLs.

/// Inbox ids become path segments of stored objects, so they must never carry `/` or `..`.
pub fn is_valid_inbox_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Lowercases a `local@domain` address, or returns `None` if it is not one we would route:
/// quoted local parts, source routes and `%`/`!` relay syntax are refused outright.
pub fn normalize_address(address: &str) -> Option<String> {
    // The lowercase form is what is checked and kept, so that what this returns normalizes to
    // itself again: `İ` lowercases to `i` and a combining dot, which the check refuses, so an
    // address with it is refused now rather than stored and refused when read back.
    let address = address.trim().to_lowercase();
    let (local, domain) = address.rsplit_once('@')?;
    let local_ok = !local.is_empty()
        && local.len() <= 64
        && !local.starts_with('.')
        && !local.ends_with('.')
        && !local.contains("..")
        // RFC 5322 atext without `!` and `%`, which old relays read as routing syntax.
        && local
            .chars()
            .all(|c| c.is_alphanumeric() || "#$&'*+-/=?^_`{|}~.".contains(c));
    let domain_ok = !domain.is_empty()
        && domain.len() <= 255
        && domain.split('.').all(|label| {
            !label.is_empty()
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_alphanumeric() || c == '-')
        });
    (local_ok && domain_ok).then_some(address)
}

/// Checks a webhook URL: https, or plain http where `allow_http` (`delivery.allow_http`) says
/// so; the address check on the resolved IP happens again at connect time.
pub fn validate_webhook_url(url: &str, allow_http: bool) -> Result<url::Url, String> {
    let parsed = url::Url::parse(url).map_err(|err| format!("not a valid URL: {err}"))?;
    match parsed.scheme() {
        "https" => {}
        "http" if allow_http => {}
        "http" => {
            return Err("must be https (set delivery.allow_http for development)".to_owned());
        }
        other => return Err(format!("unsupported scheme `{other}`")),
    }
    if parsed.host().is_none() {
        return Err("has no host".to_owned());
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(
            "must not carry credentials; use custom headers or a signing secret".to_owned(),
        );
    }
    Ok(parsed)
}
