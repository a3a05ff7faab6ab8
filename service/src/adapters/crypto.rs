//! The encryption format shared with the reference and the API:
//! AES-256-GCM, stored as `base64(iv[12] || tag[16] || ciphertext)`, keys as
//! 64 hex characters. Several keys allow rotation: the first encrypts, all
//! are tried to decrypt.

use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

const IV_LEN: usize = 12;
const TAG_LEN: usize = 16;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    /// A key is not 64 hex characters.
    #[error("an encryption key must be 64 hex characters (32 bytes)")]
    BadKey,
    /// No key was given.
    #[error("no encryption key is configured")]
    NoKey,
    /// The stored value is not base64 or too short to hold iv and tag.
    #[error("the value is not in the base64(iv|tag|ciphertext) format")]
    Malformed,
    /// No configured key authenticates the value.
    #[error("the value does not decrypt with any configured key")]
    Undecryptable,
    /// The plaintext is not UTF-8.
    #[error("the decrypted value is not UTF-8 text")]
    NotText,
}

/// The configured keys. `Debug` never shows key material.
#[derive(Clone)]
pub struct Cipher {
    keys: Vec<Aes256Gcm>,
}

impl std::fmt::Debug for Cipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Cipher({} key(s))", self.keys.len())
    }
}

impl Cipher {
    /// Parses a comma-separated list of hex keys; the first one encrypts.
    pub fn parse(keys: &str) -> Result<Self, CryptoError> {
        let keys = keys
            .split(',')
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .map(|k| {
                let bytes = hex::decode(k).map_err(|_| CryptoError::BadKey)?;
                if bytes.len() != 32 {
                    return Err(CryptoError::BadKey);
                }
                Ok(Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&bytes)))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if keys.is_empty() {
            return Err(CryptoError::NoKey);
        }
        Ok(Self { keys })
    }

    pub fn encrypt(&self, plaintext: &str) -> String {
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let sealed = self.keys[0]
            .encrypt(&nonce, plaintext.as_bytes())
            .expect("AES-GCM encryption of an in-memory buffer cannot fail");
        // aes-gcm yields ciphertext || tag; the shared format wants iv || tag || ciphertext.
        let (body, tag) = sealed.split_at(sealed.len() - TAG_LEN);
        let mut out = Vec::with_capacity(IV_LEN + sealed.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(tag);
        out.extend_from_slice(body);
        STANDARD.encode(out)
    }

    pub fn decrypt(&self, stored: &str) -> Result<String, CryptoError> {
        let raw = STANDARD.decode(stored.trim()).map_err(|_| CryptoError::Malformed)?;
        if raw.len() < IV_LEN + TAG_LEN {
            return Err(CryptoError::Malformed);
        }
        let (iv, rest) = raw.split_at(IV_LEN);
        let (tag, body) = rest.split_at(TAG_LEN);
        let mut sealed = Vec::with_capacity(rest.len());
        sealed.extend_from_slice(body);
        sealed.extend_from_slice(tag);
        let nonce = Nonce::from_slice(iv);
        let plain = self
            .keys
            .iter()
            .find_map(|key| key.decrypt(nonce, sealed.as_slice()).ok())
            .ok_or(CryptoError::Undecryptable)?;
        String::from_utf8(plain).map_err(|_| CryptoError::NotText)
    }
}

/// SHA-256 hex of a text: what may be logged or stored instead of the SQL.
pub(crate) fn sha256_hex(text: &str) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(text.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    const OTHER: &str = "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100";

    /// Produced outside this code base (Python `cryptography`'s AESGCM with
    /// iv 0a0b..15), laid out as the reference's Node code does.
    const FOREIGN: &str = "CgsMDQ4PEBESExQV5c0pH1n3SGe93m/Xa0SuZx3YXLoOrr9YwmuzaLCBgzqSc/JB0A6b";

    #[test]
    fn decrypts_a_value_made_by_the_reference_format() {
        let cipher = Cipher::parse(KEY).unwrap();
        assert_eq!(cipher.decrypt(FOREIGN).unwrap(), "refresh-token-from-node");
    }

    #[test]
    fn round_trips_and_lays_out_iv_tag_ciphertext() {
        let cipher = Cipher::parse(KEY).unwrap();
        let stored = cipher.encrypt("hello");
        let raw = STANDARD.decode(&stored).unwrap();
        assert_eq!(raw.len(), IV_LEN + TAG_LEN + "hello".len());
        assert_eq!(cipher.decrypt(&stored).unwrap(), "hello");
        assert_ne!(cipher.encrypt("hello"), stored, "a fresh IV every time");
    }

    #[test]
    fn rotation_decrypts_with_any_key_and_encrypts_with_the_first() {
        let old = Cipher::parse(OTHER).unwrap();
        let rotated = Cipher::parse(&format!("{KEY}, {OTHER}")).unwrap();
        assert_eq!(rotated.decrypt(&old.encrypt("x")).unwrap(), "x");
        let only_new = Cipher::parse(KEY).unwrap();
        assert_eq!(only_new.decrypt(&rotated.encrypt("y")).unwrap(), "y");
    }

    #[test]
    fn rejects_bad_keys_and_values() {
        assert_eq!(Cipher::parse("abc").unwrap_err(), CryptoError::BadKey);
        assert_eq!(Cipher::parse(&"zz".repeat(32)).unwrap_err(), CryptoError::BadKey);
        assert_eq!(Cipher::parse(" , ").unwrap_err(), CryptoError::NoKey);
        let cipher = Cipher::parse(KEY).unwrap();
        assert_eq!(cipher.decrypt("not base64!").unwrap_err(), CryptoError::Malformed);
        assert_eq!(cipher.decrypt("AAAA").unwrap_err(), CryptoError::Malformed);
        let wrong = Cipher::parse(OTHER).unwrap();
        assert_eq!(wrong.decrypt(FOREIGN).unwrap_err(), CryptoError::Undecryptable);
    }

    #[test]
    fn debug_hides_keys() {
        let text = format!("{:?}", Cipher::parse(KEY).unwrap());
        assert!(!text.contains("0001"), "{text}");
    }
}
