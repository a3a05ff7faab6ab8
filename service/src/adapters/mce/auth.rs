//! Access tokens per (tenant, user, MID), from the refresh-token grant.
//!
//! Refresh tokens rotate, so a refresh must happen once, not once per caller:
//! in this process one task per key refreshes while the others wait; across
//! replicas the credentials row is locked (through the [`CredentialStore`]) and re-read
//! under the lock, so a replica that lost the race uses the winner's token.
//! The new refresh token is stored in the same transaction that ends the lock.
//! This is the one place a transaction spans an HTTP call (the 15 s token
//! request): it is what makes rotation safe.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Duration as ChronoDuration, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use super::error::{MceError, Op};
use crate::adapters::crypto::Cipher;
use crate::adapters::store::StoreError;
use crate::adapters::store::credentials::CredentialStore;

/// A cached token is used until this long before it expires.
const EXPIRY_SKEW: ChronoDuration = ChronoDuration::seconds(60);

/// Tokens are cached per account: a tenant's user in one business unit.
pub(crate) type TokenKey = shell_query_core::account::Account;

#[derive(Clone)]
struct Cached {
    token: SecretString,
    expires_at: DateTime<Utc>,
}

impl Cached {
    fn usable(&self, now: DateTime<Utc>) -> bool {
        now < self.expires_at - EXPIRY_SKEW
    }
}

pub(crate) struct Auth {
    pub(super) credentials: CredentialStore,
    pub(super) cipher: Cipher,
    pub(super) client_id: String,
    pub(super) client_secret: SecretString,
    cache: Mutex<HashMap<TokenKey, Cached>>,
    /// One refresh at a time per key in this process.
    flights: Mutex<HashMap<TokenKey, Arc<tokio::sync::Mutex<()>>>>,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    refresh_token: Option<String>,
    #[serde(default = "default_expires_in")]
    expires_in: i64,
}

fn default_expires_in() -> i64 {
    1079
}

/// What one call to the token endpoint produced.
pub(crate) enum Grant {
    Granted {
        access_token: String,
        refresh_token: Option<String>,
        expires_in: i64,
    },
    Refused(String),
}

impl Auth {
    pub fn new(credentials: CredentialStore, cipher: Cipher, client_id: String, client_secret: SecretString) -> Self {
        Self {
            credentials,
            cipher,
            client_id,
            client_secret,
            cache: Mutex::default(),
            flights: Mutex::default(),
        }
    }

    fn cached(&self, key: &TokenKey) -> Option<Cached> {
        self.cache.lock().expect("token cache lock").get(key).cloned()
    }

    fn flight(&self, key: &TokenKey) -> Arc<tokio::sync::Mutex<()>> {
        self.flights
            .lock()
            .expect("flight map lock")
            .entry(key.clone())
            .or_default()
            .clone()
    }

    /// A usable access token. `refused` is a token MCE just refused: it is
    /// never handed out again, and a refresh happens unless another caller
    /// already replaced it.
    pub(crate) async fn token<F, Fut>(
        &self,
        key: &TokenKey,
        refused: Option<&str>,
        grant: F,
    ) -> Result<SecretString, MceError>
    where
        F: FnOnce(SecretString) -> Fut,
        Fut: std::future::Future<Output = Result<Grant, MceError>>,
    {
        let acceptable = |c: &Cached| c.usable(Utc::now()) && refused.is_none_or(|r| c.token.expose_secret() != r);
        if let Some(c) = self.cached(key).filter(acceptable) {
            return Ok(c.token);
        }
        let flight = self.flight(key);
        let _guard = flight.lock().await;
        if let Some(c) = self.cached(key).filter(acceptable) {
            return Ok(c.token);
        }
        let fresh = self.refresh_locked(key, refused, grant).await?;
        self.cache
            .lock()
            .expect("token cache lock")
            .insert(key.clone(), fresh.clone());
        Ok(fresh.token)
    }

    async fn refresh_locked<F, Fut>(&self, key: &TokenKey, refused: Option<&str>, grant: F) -> Result<Cached, MceError>
    where
        F: FnOnce(SecretString) -> Fut,
        Fut: std::future::Future<Output = Result<Grant, MceError>>,
    {
        let unavailable = |e: StoreError| MceError::CredentialsUnavailable(e.to_string());
        let locked = self
            .credentials
            .lock(key.tenant_id(), key.user_id(), key.mid.as_str())
            .await
            .map_err(unavailable)?
            .ok_or(MceError::CredentialsMissing)?;

        // Another replica may have refreshed while we waited for the lock.
        if let Some((stored, expires_at)) = locked.access_token() {
            let token = self.cipher.decrypt(stored).map_err(|_| MceError::Undecryptable)?;
            let cached = Cached {
                token: SecretString::from(token),
                expires_at,
            };
            if cached.usable(Utc::now()) && refused.is_none_or(|r| cached.token.expose_secret() != r) {
                locked.release().await.map_err(unavailable)?;
                return Ok(cached);
            }
        }
        let refresh = SecretString::from(
            self.cipher
                .decrypt(locked.refresh_token())
                .map_err(|_| MceError::Undecryptable)?,
        );
        match grant(refresh).await? {
            Grant::Refused(reason) => {
                locked.abandon().await.map_err(unavailable)?;
                Err(MceError::AuthExpired { detail: reason })
            }
            Grant::Granted {
                access_token,
                refresh_token,
                expires_in,
            } => {
                let now = Utc::now();
                let expires_at = now + ChronoDuration::seconds(expires_in.max(0));
                let rotated = refresh_token.filter(|r| !r.is_empty()).map(|r| self.cipher.encrypt(&r));
                locked
                    .store_tokens(self.cipher.encrypt(&access_token), rotated, expires_at, now)
                    .await;
                Ok(Cached {
                    token: SecretString::from(access_token),
                    expires_at,
                })
            }
        }
    }
}

/// Reads the token endpoint's answer: 200 with a token, or a refusal.
pub(crate) fn read_grant(status: u16, body: &str) -> Result<Grant, MceError> {
    match status {
        200..=299 => {
            let parsed: TokenResponse = serde_json::from_str(body).map_err(|e| MceError::Protocol {
                op: Op::Token.name(),
                detail: format!("token response: {e}"),
            })?;
            Ok(Grant::Granted {
                access_token: parsed.access_token,
                refresh_token: parsed.refresh_token,
                expires_in: parsed.expires_in,
            })
        }
        400 | 401 | 403 => {
            let error = serde_json::from_str::<serde_json::Value>(body)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
                .unwrap_or_else(|| format!("HTTP {status}"));
            Ok(Grant::Refused(format!("the refresh token was refused ({error})")))
        }
        429 => Err(MceError::RateLimited {
            op: Op::Token.name(),
            retry_after: None,
        }),
        _ => Err(MceError::Unavailable {
            op: Op::Token.name(),
            detail: format!("HTTP {status}"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_answers() {
        let ok = read_grant(
            200,
            r#"{"access_token":"a","refresh_token":"r2","expires_in":1079,"token_type":"Bearer"}"#,
        )
        .unwrap();
        assert!(
            matches!(ok, Grant::Granted { ref access_token, refresh_token: Some(ref r), expires_in: 1079 } if access_token == "a" && r == "r2")
        );
        let refused = read_grant(400, r#"{"error":"invalid_grant","error_description":"Token revoked"}"#).unwrap();
        assert!(matches!(refused, Grant::Refused(ref m) if m.contains("invalid_grant")));
        assert!(matches!(read_grant(503, ""), Err(MceError::Unavailable { .. })));
        assert!(matches!(read_grant(200, "nope"), Err(MceError::Protocol { .. })));
    }
}
