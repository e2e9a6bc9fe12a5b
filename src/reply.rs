//! Replies: an agent's answer to a message its inbox received, built as the MIME message the
//! inbox sends — From the address the mail reached, To its sender (and, for reply-all, the
//! other recipients), `In-Reply-To` and `References` per RFC 5322 §3.6.4, one `Re:` — and
//! DKIM-signed when `[dkim]` holds a key for the From domain.
//!
//! Pure apart from the clock and randomness of the signature and lettre's Date header: the API
//! decides whether a reply may be sent, and intake stores it in the thread and queues it.
//! Who it goes to never includes one of the gateway's own inboxes (the caller's `is_own`), so
//! a reply cannot loop back in.

use lettre::message::header::ContentType;
use lettre::message::{Attachment, Mailbox, MultiPart, SinglePart};
use mail_auth::common::crypto::{Ed25519Key, RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::{DkimSigner, Done};
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;

use crate::config::{DkimConfig, ForwardConfig, RepliesConfig};
use crate::event::{Address, MailEvent};

/// The headers a reply's DKIM signature covers: what a recipient reads and threads by.
const SIGNED_HEADERS: [&str; 10] = [
    "From",
    "To",
    "Cc",
    "Subject",
    "Date",
    "Message-ID",
    "In-Reply-To",
    "References",
    "MIME-Version",
    "Content-Type",
];

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("dkim.keys[{idx}].key_file {path}: {message}")]
    Key {
        idx: usize,
        path: String,
        message: String,
    },
    #[error(
        "the reply has no recipient: the message's sender is missing or is one of the gateway's own inboxes"
    )]
    NoRecipients,
    #[error("`{0}` cannot be used as an address")]
    BadAddress(String),
    #[error("building the reply failed: {0}")]
    Build(String),
    #[error("DKIM signing failed: {0}")]
    Sign(String),
}

/// What the agent wants to say.
#[derive(Debug, Clone, Default)]
pub struct ReplyRequest {
    pub text: String,
    /// The HTML part; without one, `text` rendered as markdown.
    pub html: Option<String>,
    pub reply_all: bool,
    pub attachments: Vec<ReplyAttachment>,
}

#[derive(Debug, Clone)]
pub struct ReplyAttachment {
    pub filename: String,
    pub content_type: String,
    pub content: Vec<u8>,
}

/// A reply ready to store and send.
#[derive(Debug, Clone)]
pub struct Built {
    /// The message as it is stored and sent, signature included.
    pub raw: Vec<u8>,
    /// The envelope sender: the From address.
    pub from: String,
    /// Every envelope recipient (To and Cc), each once.
    pub recipients: Vec<String>,
    pub dkim_signed: bool,
}

enum Signer {
    Rsa(DkimSigner<RsaKey<Sha256>, Done>),
    Ed25519(DkimSigner<Ed25519Key, Done>),
}

impl Signer {
    fn sign(&self, message: &[u8]) -> Result<String, Error> {
        let signature = match self {
            Self::Rsa(signer) => signer.sign(message),
            Self::Ed25519(signer) => signer.sign(message),
        };
        signature
            .map(|signature| signature.to_header())
            .map_err(|err| Error::Sign(err.to_string()))
    }
}

/// The reply stage: the DKIM keys, loaded once, and the hostname replies' Message-IDs name.
pub struct Replier {
    signers: Vec<(String, Signer)>,
    hostname: String,
    max_per_hour: u32,
    can_send: bool,
}

impl std::fmt::Debug for Replier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replier")
            .field(
                "dkim_domains",
                &self
                    .signers
                    .iter()
                    .map(|(domain, _)| domain)
                    .collect::<Vec<_>>(),
            )
            .field("hostname", &self.hostname)
            .field("max_per_hour", &self.max_per_hour)
            .field("can_send", &self.can_send)
            .finish()
    }
}

impl Replier {
    /// Reads every DKIM key file. Replies go through `forward.smarthost`, as forwards do.
    ///
    /// # Errors
    /// [`Error::Key`] naming the key whose file cannot be read or holds no usable private key.
    pub fn new(
        replies: &RepliesConfig,
        dkim: &DkimConfig,
        forward: &ForwardConfig,
        hostname: &str,
    ) -> Result<Self, Error> {
        let mut signers = Vec::with_capacity(dkim.keys.len());
        for (idx, key) in dkim.keys.iter().enumerate() {
            let failed = |message: String| Error::Key {
                idx,
                path: key.key_file.display().to_string(),
                message,
            };
            let pem = std::fs::read(&key.key_file).map_err(|err| failed(err.to_string()))?;
            let domain = key.domain.trim().trim_end_matches('.').to_ascii_lowercase();
            let signer = load_signer(&pem, &domain, &key.selector).map_err(failed)?;
            signers.push((domain, signer));
        }
        Ok(Self {
            signers,
            hostname: hostname.to_owned(),
            max_per_hour: replies.max_per_hour,
            can_send: forward.smarthost.is_some(),
        })
    }

    /// Whether a smarthost is configured to send replies through.
    pub fn can_send(&self) -> bool {
        self.can_send
    }

    /// Replies one inbox may send in any hour.
    pub fn max_per_hour(&self) -> u32 {
        self.max_per_hour
    }

    /// Builds the reply to `original` from `from`, with Message-ID `<message_id@hostname>`.
    /// `is_own` tells the gateway's own addresses, which never receive a reply.
    ///
    /// # Errors
    /// [`Error::NoRecipients`] when nobody is left to send to, [`Error::BadAddress`] for an
    /// address lettre cannot take, [`Error::Build`] or [`Error::Sign`].
    pub fn build(
        &self,
        original: &MailEvent,
        from: &str,
        message_id: &str,
        request: &ReplyRequest,
        is_own: impl Fn(&str) -> bool,
    ) -> Result<Built, Error> {
        let (to, cc) = recipients(original, from, request.reply_all, is_own);
        if to.is_empty() {
            return Err(Error::NoRecipients);
        }
        let from_mailbox: Mailbox = from
            .parse()
            .map_err(|_| Error::BadAddress(from.to_owned()))?;
        let mut builder = lettre::Message::builder()
            .from(from_mailbox)
            .subject(reply_subject(&original.email.subject))
            .message_id(Some(format!("<{message_id}@{}>", self.hostname)));
        for address in &to {
            builder = builder.to(mailbox(address)?);
        }
        for address in &cc {
            builder = builder.cc(mailbox(address)?);
        }
        if let Some(parent) = original.email.message_id.as_deref() {
            builder = builder.in_reply_to(format!("<{parent}>"));
        }
        let chain = references(original);
        if !chain.is_empty() {
            let joined = chain
                .iter()
                .map(|id| format!("<{id}>"))
                .collect::<Vec<_>>()
                .join(" ");
            builder = builder.references(joined);
        }
        let html = request
            .html
            .clone()
            .unwrap_or_else(|| crate::deliver::forward::markdown_to_html(&request.text));
        let alternative = MultiPart::alternative()
            .singlepart(SinglePart::plain(request.text.clone()))
            .singlepart(SinglePart::html(html));
        let message = if request.attachments.is_empty() {
            builder.multipart(alternative)
        } else {
            let mut mixed = MultiPart::mixed().multipart(alternative);
            for attachment in &request.attachments {
                let content_type = ContentType::parse(&attachment.content_type)
                    .map_err(|err| Error::Build(format!("content_type: {err}")))?;
                mixed = mixed.singlepart(
                    Attachment::new(attachment.filename.clone())
                        .body(attachment.content.clone(), content_type),
                );
            }
            builder.multipart(mixed)
        }
        .map_err(|err| Error::Build(err.to_string()))?;
        let unsigned = message.formatted();
        let from_domain = from
            .rsplit_once('@')
            .map(|(_, domain)| domain.to_ascii_lowercase())
            .unwrap_or_default();
        let signer = self
            .signers
            .iter()
            .find(|(domain, _)| *domain == from_domain)
            .map(|(_, signer)| signer);
        let raw = match signer {
            Some(signer) => {
                let header = signer.sign(&unsigned)?;
                let mut raw = Vec::with_capacity(header.len() + unsigned.len());
                raw.extend_from_slice(header.as_bytes());
                raw.extend_from_slice(&unsigned);
                raw
            }
            None => unsigned,
        };
        let mut envelope_recipients: Vec<String> = Vec::new();
        for address in to.iter().chain(&cc) {
            if !envelope_recipients
                .iter()
                .any(|known| known.eq_ignore_ascii_case(&address.address))
            {
                envelope_recipients.push(address.address.clone());
            }
        }
        Ok(Built {
            raw,
            from: from.to_owned(),
            recipients: envelope_recipients,
            dkim_signed: signer.is_some(),
        })
    }
}

fn load_signer(pem: &[u8], domain: &str, selector: &str) -> Result<Signer, String> {
    let key = PrivateKeyDer::from_pem_slice(pem)
        .map_err(|err| format!("no PEM private key in it ({err})"))?;
    let pkcs8 = match &key {
        PrivateKeyDer::Pkcs8(der) => Some(der.secret_pkcs8_der().to_vec()),
        _ => None,
    };
    match RsaKey::<Sha256>::from_key_der(key) {
        Ok(rsa) => Ok(Signer::Rsa(
            DkimSigner::from_key(rsa)
                .domain(domain)
                .selector(selector)
                .headers(SIGNED_HEADERS),
        )),
        Err(rsa_err) => match pkcs8 {
            Some(der) => Ed25519Key::from_pkcs8_maybe_unchecked_der(&der)
                .map(|ed| {
                    Signer::Ed25519(
                        DkimSigner::from_key(ed)
                            .domain(domain)
                            .selector(selector)
                            .headers(SIGNED_HEADERS),
                    )
                })
                .map_err(|err| format!("neither an RSA nor an Ed25519 key: {rsa_err}; {err}")),
            None => Err(format!("not a usable RSA key: {rsa_err}")),
        },
    }
}

fn mailbox(address: &Address) -> Result<Mailbox, Error> {
    let parsed = address
        .address
        .parse()
        .map_err(|_| Error::BadAddress(address.address.clone()))?;
    Ok(Mailbox::new(address.name.clone(), parsed))
}

/// Who the reply goes to: the original's Reply-To, or its From (To), and for reply-all also its
/// To and Cc (Cc) — never the reply's own From, never an address `is_own` claims, each once.
pub fn recipients(
    original: &MailEvent,
    from: &str,
    reply_all: bool,
    is_own: impl Fn(&str) -> bool,
) -> (Vec<Address>, Vec<Address>) {
    let email = &original.email;
    let primary: Vec<&Address> = if email.reply_to_addresses.is_empty() {
        vec![&email.from_address]
    } else {
        email.reply_to_addresses.iter().collect()
    };
    let others: Vec<&Address> = if reply_all {
        email
            .to_addresses
            .iter()
            .chain(&email.cc_addresses)
            .collect()
    } else {
        Vec::new()
    };
    let mut seen: Vec<String> = vec![from.to_ascii_lowercase()];
    let mut keep = |address: &Address| {
        let lowered = address.address.trim().to_ascii_lowercase();
        if lowered.is_empty() || !lowered.contains('@') || seen.contains(&lowered) {
            return false;
        }
        seen.push(lowered.clone());
        !is_own(&lowered)
    };
    let mut to: Vec<Address> = primary
        .into_iter()
        .filter(|address| keep(address))
        .cloned()
        .collect();
    let mut cc: Vec<Address> = others
        .into_iter()
        .filter(|address| keep(address))
        .cloned()
        .collect();
    if to.is_empty() {
        // The sender was the gateway itself: reply-all still reaches the others.
        std::mem::swap(&mut to, &mut cc);
    }
    (to, cc)
}

/// The subject with exactly one `Re:`: an existing `Re:` (any case) is kept as it is.
pub fn reply_subject(subject: &str) -> String {
    let trimmed = subject.trim();
    let has_re = trimmed
        .get(..3)
        .is_some_and(|head| head.eq_ignore_ascii_case("re:"));
    if has_re {
        trimmed.to_owned()
    } else if trimmed.is_empty() {
        "Re:".to_owned()
    } else {
        format!("Re: {trimmed}")
    }
}

/// `References` of the reply (RFC 5322 §3.6.4): the parent's References (or, without them, its
/// In-Reply-To) followed by the parent's Message-ID; ids without angle brackets.
pub fn references(original: &MailEvent) -> Vec<String> {
    let email = &original.email;
    let mut chain: Vec<String> = match (&email.references, &email.in_reply_to_id) {
        (Some(references), _) if !references.is_empty() => references.clone(),
        (_, Some(parent)) => vec![parent.clone()],
        _ => Vec::new(),
    };
    if let Some(id) = &email.message_id {
        chain.push(id.clone());
    }
    chain
        .into_iter()
        .map(|id| {
            id.trim()
                .trim_start_matches('<')
                .trim_end_matches('>')
                .to_owned()
        })
        .filter(|id| !id.is_empty())
        .collect()
}

#[cfg(test)]
mod tests;
