//! A lease that one replica at a time holds for an interval, kept in a NATS
//! key-value bucket: the value is the lease's expiry (milliseconds since
//! the epoch); taking it is a create, or an update at the revision read, so
//! two replicas can never both win the same interval.

use std::time::Duration;

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use chrono::{DateTime, Utc};

pub(crate) const BUCKET: &str = "SHELL_QUERY_LEASES";

/// The bucket, declared at start with the streams (adapters/nats.rs).
pub async fn bucket(js: &jetstream::Context) -> Result<kv::Store, async_nats::jetstream::context::KeyValueError> {
    js.get_key_value(BUCKET).await
}

/// Whether a stored lease (its expiry) is still held at `now`. Pure.
pub(crate) fn held(value: &[u8], now: DateTime<Utc>) -> bool {
    std::str::from_utf8(value)
        .ok()
        .and_then(|v| v.trim().parse::<i64>().ok())
        .is_some_and(|expiry| expiry > now.timestamp_millis())
}

/// Takes the lease `name` until `now + hold`, unless another holder has it.
pub async fn try_take(store: &kv::Store, name: &str, hold: Duration, now: DateTime<Utc>) -> bool {
    let expiry = now + chrono::Duration::from_std(hold).unwrap_or(chrono::Duration::zero());
    let value = Bytes::from(expiry.timestamp_millis().to_string());
    match store.entry(name).await {
        Ok(None) => store.create(name, value).await.is_ok(),
        Ok(Some(entry)) if entry.operation == kv::Operation::Put && held(&entry.value, now) => false,
        Ok(Some(entry)) => store.update(name, value, entry.revision).await.is_ok(),
        Err(e) => {
            tracing::warn!(lease = name, error = %e, "cannot read the lease");
            false
        }
    }
}

/// Runs `pass` every `interval` on the one replica holding the lease `name`
/// for that interval, until `shutdown` turns true.
pub(crate) async fn periodically<F, Fut>(
    js: &jetstream::Context,
    name: &'static str,
    interval: Duration,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
    mut pass: F,
) where
    F: FnMut(DateTime<Utc>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut store = None;
    let mut tick = tokio::time::interval(interval);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        // NATS away at start or the bucket deleted: the job waits for it
        // (the consumer watch re-declares it), it is never disabled.
        if store.is_none() {
            match bucket(js).await {
                Ok(s) => store = Some(s),
                Err(e) => {
                    tracing::warn!(job = name, error = %e, "no lease bucket yet; trying again next interval");
                    continue;
                }
            }
        }
        let Some(store) = &store else { continue };
        let now = Utc::now();
        if try_take(store, name, interval, now).await {
            pass(now).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_is_held_until_its_expiry() {
        let now = Utc::now();
        let later = (now + chrono::Duration::seconds(5)).timestamp_millis().to_string();
        assert!(held(later.as_bytes(), now));
        assert!(!held(now.timestamp_millis().to_string().as_bytes(), now));
        assert!(!held(b"garbage", now));
    }
}
