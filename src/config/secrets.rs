//! `[secrets]`: the key that encrypts stored signing secrets and the earlier keys that still
//! decrypt during a rotation (both redacted in `Debug`), with validation. The encryption itself
//! is [`crate::secrets`].

use std::fmt;

use serde::Deserialize;

use super::{Error, invalid};
use crate::secrets::{KEY_LEN, Keyring, key_id, parse_key};

const KEY_FORMAT: &str = "must be 32 bytes as base64 (`head -c32 /dev/urandom | base64`) or as \
                          64 hex characters";

#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecretsConfig {
    /// Encrypts every secret written from now on; unset, secrets are stored as plaintext.
    pub key: Option<String>,
    /// Earlier keys, for reading only: values written under them still decrypt until
    /// `mxhook rotate-secrets-key` has re-encrypted them under `key`.
    pub previous_keys: Vec<String>,
}

impl fmt::Debug for SecretsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let id = |text: &String| parse_key(text).map(|key| key_id(&key));
        f.debug_struct("SecretsConfig")
            .field("key_id", &self.key.as_ref().map(id))
            .field(
                "previous_key_ids",
                &self.previous_keys.iter().map(id).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl SecretsConfig {
    pub(super) fn validate(&self) -> Result<(), Error> {
        if let Some(key) = &self.key
            && parse_key(key).is_none()
        {
            return Err(invalid("secrets.key", KEY_FORMAT));
        }
        for (idx, key) in self.previous_keys.iter().enumerate() {
            if parse_key(key).is_none() {
                return Err(invalid(format!("secrets.previous_keys[{idx}]"), KEY_FORMAT));
            }
        }
        if self.key.is_none() && !self.previous_keys.is_empty() {
            // New secrets would be written as plaintext beside encrypted ones.
            return Err(invalid(
                "secrets.key",
                "must be set when secrets.previous_keys is (the key new secrets are written under)",
            ));
        }
        Ok(())
    }

    /// The keyring the database encrypts and decrypts with.
    ///
    /// # Errors
    /// As [`SecretsConfig::validate`]: a key that is not 32 bytes of base64 or hex.
    pub fn keyring(&self) -> Result<Keyring, Error> {
        self.validate()?;
        let parse = |key: &String| -> [u8; KEY_LEN] { parse_key(key).unwrap_or([0; KEY_LEN]) };
        let previous: Vec<[u8; KEY_LEN]> = self.previous_keys.iter().map(parse).collect();
        Keyring::new(self.key.as_ref().map(parse), &previous)
            .map_err(|err| invalid("secrets.key", err.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

    fn load(env: &[(&str, &str)]) -> Result<Config, crate::config::Error> {
        Config::load(
            None,
            env.iter()
                .map(|(name, value)| ((*name).to_owned(), (*value).to_owned())),
        )
    }

    #[test]
    fn the_key_comes_from_the_environment_and_is_redacted() {
        let config = load(&[
            ("MXHOOK_SECRETS__KEY", KEY),
            (
                "MXHOOK_SECRETS__PREVIOUS_KEYS",
                &format!("[\"{}\"]", "ab".repeat(32)),
            ),
        ])
        .expect("valid");
        let keys = config.secrets.keyring().expect("keyring");
        let key: [u8; 32] = std::array::from_fn(|n| u8::try_from(n).unwrap_or(0));
        assert_eq!(
            keys.current_id(),
            Some(crate::secrets::key_id(&key).as_str())
        );
        assert!(keys.has_key(&crate::secrets::key_id(&[0xab; 32])));
        let debug = format!("{config:?}");
        assert!(!debug.contains(KEY) && !debug.contains("abab"), "{debug}");
        assert!(debug.contains(&crate::secrets::key_id(&key)), "{debug}");
    }

    #[test]
    fn bad_keys_are_named() {
        for (env, key) in [
            (vec![("MXHOOK_SECRETS__KEY", "c2hvcnQ=")], "secrets.key"),
            (vec![("MXHOOK_SECRETS__KEY", "not base64!")], "secrets.key"),
            (
                vec![
                    ("MXHOOK_SECRETS__KEY", KEY),
                    ("MXHOOK_SECRETS__PREVIOUS_KEYS", "[\"x\"]"),
                ],
                "secrets.previous_keys[0]",
            ),
            (
                vec![("MXHOOK_SECRETS__PREVIOUS_KEYS", &*format!("[\"{KEY}\"]"))],
                "secrets.key",
            ),
        ] {
            let err = load(&env).expect_err("refused").to_string();
            assert!(err.contains(&format!("`{key}`")), "{err}");
        }
        // No section at all: the zero-config start, plaintext.
        let config = load(&[]).expect("valid");
        assert_eq!(
            config.secrets.keyring().expect("keyring").current_id(),
            None
        );
    }
}
