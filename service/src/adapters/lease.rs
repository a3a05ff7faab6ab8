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

/// The key listing the replicas alive: a JSON object of instance id to
/// expiry (milliseconds since the epoch), each replica renewing its own.
const MEMBERS: &str = "replicas";
/// How often a replica renews its entry, and how long an entry lasts.
pub(crate) const MEMBERSHIP_BEAT: Duration = Duration::from_secs(5);
pub(crate) const MEMBERSHIP_HOLD: Duration = Duration::from_secs(15);

/// The members after `me` renews its entry until `until` (or leaves, when
/// `None`), those expired at `now` dropped. Pure.
pub(crate) fn renewed(value: &[u8], me: &str, until: Option<i64>, now: i64) -> std::collections::BTreeMap<String, i64> {
    let mut members: std::collections::BTreeMap<String, i64> = serde_json::from_slice(value).unwrap_or_default();
    members.retain(|_, expiry| *expiry > now);
    match until {
        Some(until) => {
            members.insert(me.to_string(), until);
        }
        None => {
            members.remove(me);
        }
    }
    members
}

/// Keeps this replica listed among the live ones and tells `count` how
/// many there are, every [`MEMBERSHIP_BEAT`], until `shutdown`; then
/// leaves the list. Each replica takes its part of every tenant's MCE
/// budget from the count (DECISIONS.md, "One budget across replicas").
pub(crate) async fn keep_membership(
    js: jetstream::Context,
    count: impl Fn(u32) + Send + 'static,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let me = uuid::Uuid::new_v4().to_string();
    let mut beat = tokio::time::interval(MEMBERSHIP_BEAT);
    let mut store = None;
    loop {
        tokio::select! {
            _ = beat.tick() => {}
            _ = shutdown.changed() => break,
        }
        if store.is_none() {
            store = bucket(&js).await.ok();
        }
        let Some(store) = &store else { continue };
        let hold = chrono::Duration::from_std(MEMBERSHIP_HOLD).unwrap_or_default();
        match renew(store, &me, Some((Utc::now() + hold).timestamp_millis())).await {
            Ok(members) => count(members.max(1)),
            // Another replica renewed at the same moment: next beat.
            Err(e) => tracing::debug!(error = %e, "replica list not renewed this beat"),
        }
    }
    if let Some(store) = &store
        && let Err(e) = renew(store, &me, None).await
    {
        tracing::debug!(error = %e, "leaving the replica list; it expires instead");
    }
}

/// One read-modify-write of the list at the revision read; the members
/// after it.
async fn renew(store: &kv::Store, me: &str, until: Option<i64>) -> Result<u32, String> {
    let now = Utc::now().timestamp_millis();
    let entry = store.entry(MEMBERS).await.map_err(|e| e.to_string())?;
    let members = renewed(
        entry.as_ref().map(|e| e.value.as_ref()).unwrap_or_default(),
        me,
        until,
        now,
    );
    let value = Bytes::from(serde_json::to_vec(&members).map_err(|e| e.to_string())?);
    match entry {
        Some(entry) => store
            .update(MEMBERS, value, entry.revision)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())?,
        None => store
            .create(MEMBERS, value)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())?,
    }
    Ok(u32::try_from(members.len()).unwrap_or(u32::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_replica_list_keeps_the_live_and_drops_the_expired() {
        let list = renewed(b"", "a", Some(100), 0);
        assert_eq!(list.len(), 1);
        let list = renewed(&serde_json::to_vec(&list).unwrap(), "b", Some(150), 50);
        assert_eq!(list.len(), 2);
        let list = renewed(&serde_json::to_vec(&list).unwrap(), "b", Some(250), 120);
        assert_eq!(list.keys().collect::<Vec<_>>(), ["b"], "a expired");
        let left = renewed(&serde_json::to_vec(&list).unwrap(), "b", None, 130);
        assert!(left.is_empty());
        assert_eq!(
            renewed(b"not json", "c", Some(10), 0).len(),
            1,
            "a garbled list starts again"
        );
    }

    #[test]
    fn a_lease_is_held_until_its_expiry() {
        let now = Utc::now();
        let later = (now + chrono::Duration::seconds(5)).timestamp_millis().to_string();
        assert!(held(later.as_bytes(), now));
        assert!(!held(now.timestamp_millis().to_string().as_bytes(), now));
        assert!(!held(b"garbage", now));
    }
}
