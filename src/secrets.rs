//! Secrets at rest: the one place where stored signing secrets are encrypted and decrypted.
//!
//! Every secret the gateway signs or verifies with is stored through [`Keyring::seal`] and read
//! back through [`Keyring::open`] (the database layer calls them; nothing else touches the
//! stored form): inbox webhook secrets and their previous secret, provider ingress secrets and
//! their previous secret, the webhook secret of a domain's template, and the gateway's own
//! attachment-URL key.
//!
//! # Stored form
//!
//! With `secrets.key` configured a secret is stored as
//! `enc:v1:<key id>:<base64(nonce ‖ ciphertext ‖ tag)>`: AES-256-GCM (aws-lc-rs) under a fresh
//! random 96-bit nonce per value. The key id is the first 8 hex characters of
//! SHA-256(`"mxhook secrets key id v1\0"` ‖ key): it names the key that opens the value, so a
//! rotation can hold values under two keys at once, and it reveals nothing of the key (a
//! 32-bit digest of 256 random bits).
//!
//! Without a key a secret is stored as given (the zero-config default still runs), and a stored
//! value without the `enc:` prefix is read as such a plaintext value: databases written before
//! encryption keep working, and `mxhook rotate-secrets-key` encrypts them. A plaintext secret
//! that itself starts with `enc:` cannot be told apart from an encrypted one, so it is refused
//! when no key is configured ([`Error::AmbiguousPlaintext`]).
//!
//! # Bound to its place
//!
//! The additional authenticated data is the [`Place`] (table and column) and the row's key
//! (the inbox id; inbox id and provider; the domain name; the gateway key's name), so a
//! ciphertext copied into another row, another inbox or another kind of secret does not open:
//! someone who can write the database but not read the key cannot make one inbox sign with
//! another's secret. A row's current and previous secret share one place on purpose: rotation
//! moves the current value into the previous column in SQL (`previous_secret = secret`), and
//! both are valid secrets of the same endpoint anyway.

use std::fmt;

use aws_lc_rs::aead::{AES_256_GCM, Aad, NONCE_LEN, Nonce, RandomizedNonceKey};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use sha2::Digest as _;

/// The prefix of every encrypted value; the version names the format and the algorithm.
const PREFIX: &str = "enc:v1:";

/// Length of a key in bytes (AES-256).
pub const KEY_LEN: usize = 32;

/// Length of a key id in hex characters.
const KEY_ID_LEN: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The value is encrypted under a key this process does not have.
    #[error(
        "a stored secret ({place}) is encrypted under key id {key_id}, which is not configured: \
         set `secrets.key` (or add to `secrets.previous_keys`) the key with id {key_id}"
    )]
    UnknownKey { key_id: String, place: String },
    /// The value does not open: altered, moved from another row, or cut short.
    #[error("a stored secret ({place}) does not decrypt: it was altered or moved from another row")]
    Tampered { place: String },
    /// The value starts like an encrypted one but is not in the format.
    #[error("a stored secret ({place}) is not in the `enc:v1:<key id>:<base64>` format")]
    Malformed { place: String },
    /// Without a key, a secret starting with `enc:` would be read back as an encrypted value.
    #[error(
        "a secret starting with `enc:` can only be stored with `secrets.key` configured ({place})"
    )]
    AmbiguousPlaintext { place: String },
    #[error("encrypting a secret failed")]
    Seal,
    /// Re-encrypting needs a key to encrypt under.
    #[error("`secrets.key` is not set: there is no key to encrypt the stored secrets under")]
    NoKey,
}

/// What kind of secret a stored value is: the table and column it lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// `inboxes.webhook_secret` and `inboxes.webhook_previous_secret`, by inbox id.
    InboxWebhook,
    /// `ingress_secrets.secret` and `.previous_secret`, by inbox id and provider.
    IngressSecret,
    /// The `webhook_secret` of `domains.template_json`, by domain name.
    DomainTemplate,
    /// `gateway_keys.secret` and `.previous_secret`, by key name.
    GatewayKey,
}

impl Place {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InboxWebhook => "inboxes.webhook_secret",
            Self::IngressSecret => "ingress_secrets.secret",
            Self::DomainTemplate => "domains.template_json.webhook_secret",
            Self::GatewayKey => "gateway_keys.secret",
        }
    }
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One AES-256-GCM key and its id.
struct Key {
    id: String,
    key: RandomizedNonceKey,
}

/// The configured keys: the current one (every write) and the previous ones (read only).
#[derive(Default)]
pub struct Keyring {
    current: Option<Key>,
    previous: Vec<Key>,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field("current", &self.current.as_ref().map(|key| &key.id))
            .field(
                "previous",
                &self.previous.iter().map(|key| &key.id).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// The id of a key (see the module docs).
pub fn key_id(key: &[u8; KEY_LEN]) -> String {
    let mut digest = sha2::Sha256::new();
    digest.update(b"mxhook secrets key id v1\0");
    digest.update(key);
    hex::encode(digest.finalize())[..KEY_ID_LEN].to_owned()
}

/// A key as configured: 32 bytes as standard base64 (padded or not), or as 64 hex characters.
/// `None` when it is neither.
pub fn parse_key(text: &str) -> Option<[u8; KEY_LEN]> {
    let text = text.trim();
    let bytes = if text.len() == 2 * KEY_LEN && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        hex::decode(text).ok()?
    } else {
        STANDARD
            .decode(text)
            .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(text))
            .ok()?
    };
    bytes.try_into().ok()
}

/// The additional authenticated data of a value: a version tag, the place and the row's key
/// parts, each length-prefixed so no two different rows give the same bytes.
fn aad(place: Place, row: &[&str]) -> Vec<u8> {
    let mut aad = b"mxhook secret v1".to_vec();
    for part in std::iter::once(place.as_str()).chain(row.iter().copied()) {
        let len = u32::try_from(part.len()).unwrap_or(u32::MAX);
        aad.extend_from_slice(&len.to_be_bytes());
        aad.extend_from_slice(part.as_bytes());
    }
    aad
}

/// What [`Keyring::status`] finds of a stored value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored {
    Plaintext,
    /// Encrypted under the key with this id.
    Encrypted(String),
}

/// The key id of a stored value, or `None` when it is plaintext. Malformed values are an error.
///
/// # Errors
/// [`Error::Malformed`].
pub fn stored_key_id(stored: &str, place: Place) -> Result<Option<String>, Error> {
    if !stored.starts_with("enc:") {
        return Ok(None);
    }
    let rest = stored
        .strip_prefix(PREFIX)
        .ok_or_else(|| malformed(place))?;
    let (id, _) = rest.split_once(':').ok_or_else(|| malformed(place))?;
    if id.len() != KEY_ID_LEN || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(malformed(place));
    }
    Ok(Some(id.to_owned()))
}

fn malformed(place: Place) -> Error {
    Error::Malformed {
        place: place.to_string(),
    }
}

impl Keyring {
    /// A keyring with `current` for writing (none: plaintext) and `previous` for reading too.
    ///
    /// # Errors
    /// [`Error::Seal`] if aws-lc-rs refuses a key (it takes every 32-byte key).
    pub fn new(current: Option<[u8; KEY_LEN]>, previous: &[[u8; KEY_LEN]]) -> Result<Self, Error> {
        let make = |bytes: &[u8; KEY_LEN]| -> Result<Key, Error> {
            Ok(Key {
                id: key_id(bytes),
                key: RandomizedNonceKey::new(&AES_256_GCM, bytes).map_err(|_| Error::Seal)?,
            })
        };
        let current = current.as_ref().map(make).transpose()?;
        let mut keys: Vec<Key> = Vec::with_capacity(previous.len());
        for bytes in previous {
            let key = make(bytes)?;
            let known = current.iter().chain(keys.iter()).any(|k| k.id == key.id);
            if !known {
                keys.push(key);
            }
        }
        Ok(Self {
            current,
            previous: keys,
        })
    }

    /// The id of the key new values are written under; `None` writes plaintext.
    pub fn current_id(&self) -> Option<&str> {
        self.current.as_ref().map(|key| key.id.as_str())
    }

    /// Whether a value under this key id opens here.
    pub fn has_key(&self, id: &str) -> bool {
        self.find(id).is_some()
    }

    fn find(&self, id: &str) -> Option<&Key> {
        self.current
            .iter()
            .chain(self.previous.iter())
            .find(|key| key.id == id)
    }

    /// The stored form of `secret` at `place` in the row keyed by `row`.
    ///
    /// # Errors
    /// [`Error::AmbiguousPlaintext`] without a key for a secret starting with `enc:`;
    /// [`Error::Seal`] if encryption fails.
    pub fn seal(&self, place: Place, row: &[&str], secret: &str) -> Result<String, Error> {
        let Some(key) = &self.current else {
            if secret.starts_with("enc:") {
                return Err(Error::AmbiguousPlaintext {
                    place: place.to_string(),
                });
            }
            return Ok(secret.to_owned());
        };
        let mut in_out = secret.as_bytes().to_vec();
        let nonce = key
            .key
            .seal_in_place_append_tag(Aad::from(aad(place, row)), &mut in_out)
            .map_err(|_| Error::Seal)?;
        let nonce: &[u8; NONCE_LEN] = nonce.as_ref();
        let mut blob = Vec::with_capacity(NONCE_LEN + in_out.len());
        blob.extend_from_slice(nonce);
        blob.extend_from_slice(&in_out);
        Ok(format!("{PREFIX}{}:{}", key.id, STANDARD.encode(blob)))
    }

    /// [`Self::seal`] of an optional secret.
    ///
    /// # Errors
    /// As [`Self::seal`].
    pub fn seal_opt(
        &self,
        place: Place,
        row: &[&str],
        secret: Option<&str>,
    ) -> Result<Option<String>, Error> {
        secret
            .map(|secret| self.seal(place, row, secret))
            .transpose()
    }

    /// The secret a stored value holds.
    ///
    /// # Errors
    /// [`Error::UnknownKey`] when its key is not configured, [`Error::Tampered`] when it does
    /// not open (altered, or from another row or place), [`Error::Malformed`].
    pub fn open(&self, place: Place, row: &[&str], stored: &str) -> Result<String, Error> {
        let Some(id) = stored_key_id(stored, place)? else {
            return Ok(stored.to_owned());
        };
        let key = self.find(&id).ok_or_else(|| Error::UnknownKey {
            key_id: id.clone(),
            place: place.to_string(),
        })?;
        let encoded = &stored[PREFIX.len() + KEY_ID_LEN + 1..];
        let mut blob = STANDARD.decode(encoded).map_err(|_| malformed(place))?;
        if blob.len() < NONCE_LEN + AES_256_GCM.tag_len() {
            return Err(malformed(place));
        }
        let tampered = || Error::Tampered {
            place: place.to_string(),
        };
        let (nonce, sealed) = blob.split_at_mut(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| tampered())?;
        let plain = key
            .key
            .open_in_place(nonce, Aad::from(aad(place, row)), sealed)
            .map_err(|_| tampered())?;
        String::from_utf8(plain.to_vec()).map_err(|_| tampered())
    }

    /// [`Self::open`] of an optional stored value.
    ///
    /// # Errors
    /// As [`Self::open`].
    pub fn open_opt(
        &self,
        place: Place,
        row: &[&str],
        stored: Option<&str>,
    ) -> Result<Option<String>, Error> {
        stored
            .map(|stored| self.open(place, row, stored))
            .transpose()
    }

    /// What the stored value is, for the rotation and the startup check.
    ///
    /// # Errors
    /// [`Error::Malformed`].
    pub fn status(stored: &str, place: Place) -> Result<Stored, Error> {
        Ok(match stored_key_id(stored, place)? {
            None => Stored::Plaintext,
            Some(id) => Stored::Encrypted(id),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_A: [u8; KEY_LEN] = [7; KEY_LEN];
    const KEY_B: [u8; KEY_LEN] = [9; KEY_LEN];

    fn ring(current: [u8; KEY_LEN]) -> Keyring {
        Keyring::new(Some(current), &[]).expect("keyring")
    }

    #[test]
    fn round_trip_and_stored_form() {
        let keys = ring(KEY_A);
        let sealed = keys
            .seal(Place::InboxWebhook, &["agent"], "whsec_abc")
            .expect("seal");
        assert!(sealed.starts_with(&format!("enc:v1:{}:", key_id(&KEY_A))));
        assert!(!sealed.contains("whsec_abc"));
        assert_eq!(
            keys.open(Place::InboxWebhook, &["agent"], &sealed)
                .expect("open"),
            "whsec_abc"
        );
        // A fresh nonce per value: the same secret never gives the same stored text.
        let again = keys
            .seal(Place::InboxWebhook, &["agent"], "whsec_abc")
            .expect("seal");
        assert_ne!(sealed, again);
        // The empty secret too.
        let empty = keys.seal(Place::GatewayKey, &["k"], "").expect("seal");
        assert_eq!(
            keys.open(Place::GatewayKey, &["k"], &empty).expect("open"),
            ""
        );
    }

    #[test]
    fn tampered_values_do_not_open() {
        let keys = ring(KEY_A);
        let sealed = keys
            .seal(Place::InboxWebhook, &["agent"], "secret")
            .expect("seal");
        let (head, body) = sealed.rsplit_once(':').expect("format");
        let mut blob = STANDARD.decode(body).expect("base64");
        for index in [0, NONCE_LEN, blob.len() - 1] {
            blob[index] ^= 1;
            let altered = format!("{head}:{}", STANDARD.encode(&blob));
            assert!(matches!(
                keys.open(Place::InboxWebhook, &["agent"], &altered),
                Err(Error::Tampered { .. })
            ));
            blob[index] ^= 1;
        }
        let cut = &sealed[..sealed.len() - 8];
        assert!(keys.open(Place::InboxWebhook, &["agent"], cut).is_err());
        assert!(matches!(
            keys.open(Place::InboxWebhook, &["agent"], "enc:v1:zz:abc"),
            Err(Error::Malformed { .. })
        ));
        assert!(matches!(
            keys.open(Place::InboxWebhook, &["agent"], "enc:v2:whatever"),
            Err(Error::Malformed { .. })
        ));
    }

    #[test]
    fn a_value_is_bound_to_its_row_and_place() {
        let keys = ring(KEY_A);
        let sealed = keys
            .seal(Place::IngressSecret, &["agent", "calcom"], "s")
            .expect("seal");
        for (place, row) in [
            (Place::IngressSecret, vec!["other", "calcom"]),
            (Place::IngressSecret, vec!["agent", "calendly"]),
            // The length prefixes keep ("agentc", "alcom") apart from ("agent", "calcom").
            (Place::IngressSecret, vec!["agentc", "alcom"]),
            (Place::InboxWebhook, vec!["agent", "calcom"]),
        ] {
            assert!(
                matches!(keys.open(place, &row, &sealed), Err(Error::Tampered { .. })),
                "{place} {row:?}"
            );
        }
    }

    #[test]
    fn unknown_key_ids_name_the_key() {
        let sealed = ring(KEY_A)
            .seal(Place::InboxWebhook, &["agent"], "s")
            .expect("seal");
        let err = ring(KEY_B)
            .open(Place::InboxWebhook, &["agent"], &sealed)
            .expect_err("another key");
        assert!(matches!(&err, Error::UnknownKey { key_id, .. } if *key_id == key_id_of_a()));
        assert!(err.to_string().contains("secrets.key"), "{err}");
        let none = Keyring::default()
            .open(Place::InboxWebhook, &["agent"], &sealed)
            .expect_err("no key");
        assert!(none.to_string().contains(&key_id_of_a()), "{none}");
    }

    fn key_id_of_a() -> String {
        key_id(&KEY_A)
    }

    #[test]
    fn previous_keys_open_and_the_current_one_writes() {
        let old = ring(KEY_A)
            .seal(Place::InboxWebhook, &["agent"], "s")
            .expect("seal");
        let rotated = Keyring::new(Some(KEY_B), &[KEY_A, KEY_B]).expect("keyring");
        assert_eq!(rotated.current_id(), Some(key_id(&KEY_B).as_str()));
        assert_eq!(
            rotated
                .open(Place::InboxWebhook, &["agent"], &old)
                .expect("open"),
            "s"
        );
        let new = rotated
            .seal(Place::InboxWebhook, &["agent"], "s")
            .expect("seal");
        assert_eq!(
            Keyring::status(&new, Place::InboxWebhook).expect("status"),
            Stored::Encrypted(key_id(&KEY_B))
        );
    }

    #[test]
    fn plaintext_without_a_key() {
        let none = Keyring::default();
        assert_eq!(
            none.seal(Place::InboxWebhook, &["a"], "plain")
                .expect("seal"),
            "plain"
        );
        assert_eq!(
            none.open(Place::InboxWebhook, &["a"], "plain")
                .expect("open"),
            "plain"
        );
        assert!(matches!(
            none.seal(Place::InboxWebhook, &["a"], "enc:x"),
            Err(Error::AmbiguousPlaintext { .. })
        ));
        // Legacy plaintext reads with a key configured too.
        assert_eq!(
            ring(KEY_A)
                .open(Place::InboxWebhook, &["a"], "legacy")
                .expect("open"),
            "legacy"
        );
    }

    #[test]
    fn keys_parse_from_base64_and_hex() {
        let b64 = STANDARD.encode(KEY_A);
        assert_eq!(parse_key(&b64), Some(KEY_A));
        assert_eq!(parse_key(b64.trim_end_matches('=')), Some(KEY_A));
        assert_eq!(parse_key(&hex::encode(KEY_A)), Some(KEY_A));
        assert_eq!(parse_key(&STANDARD.encode([1u8; 16])), None);
        assert_eq!(parse_key("not a key"), None);
        assert_eq!(key_id(&KEY_A).len(), KEY_ID_LEN);
        assert_ne!(key_id(&KEY_A), key_id(&KEY_B));
    }
}
