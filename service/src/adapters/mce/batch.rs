//! Status checks that fall due together share one call. The first tick of a
//! tenant, user and business unit to ask opens a batch and waits a short
//! window (`STATUS_BATCH_WINDOW_MS`), then for its place at the tenant's
//! admission; the ticks of the same key that ask meanwhile join it, up to
//! `STATUS_BATCH_MAX`. So a batch grows with congestion (group commit): the
//! longer a tenant's calls wait for a place, the more checks each one
//! answers, and the fewer calls the tenant makes per check. Then one `Retrieve
//! AsyncActivityStatus` with a `TaskID IN (...)` filter answers them all,
//! each result matched back by the TaskID it names. A task the answer leaves
//! out is asked alone; a tenant whose MCE refuses the `IN` filter is asked
//! one task at a time for a while (`REFUSAL_MEMORY`). A lone tick makes the
//! same single call as before.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, oneshot};
use uuid::Uuid;

use super::error::MceError;
use super::soap::AsyncStatus;

/// How long a tenant whose MCE refused an `IN` filter is asked one task at
/// a time.
pub(crate) const REFUSAL_MEMORY: Duration = Duration::from_secs(600);

type Answer = Result<AsyncStatus, MceError>;
type Key = shell_query_core::account::Account;

/// What a batch asks MCE through: one account's session (`client::Session`,
/// whose `Mce` holds the batcher).
pub(crate) trait StatusSource: Sync {
    /// A place at the tenant's admission, held for one call.
    type Place: Send;
    /// The account it speaks for.
    fn key(&self) -> Key;
    /// Waits for a place at the tenant's admission; `Err` is the answer
    /// every check of the batch then gets.
    fn place(&self) -> impl Future<Output = Result<Self::Place, MceError>> + Send;
    /// One task's status (the call takes its own place).
    fn async_status(&self, task_id: &str) -> impl Future<Output = Answer> + Send;
    /// One task's status, in a place already held.
    fn async_status_in(&self, place: Self::Place, task_id: &str) -> impl Future<Output = Answer> + Send;
    /// The statuses of several tasks in one call, by TaskID, in a place
    /// already held.
    fn async_statuses_in(
        &self,
        place: Self::Place,
        task_ids: &[&str],
    ) -> impl Future<Output = Result<HashMap<String, AsyncStatus>, MceError>> + Send;
}

struct Batch {
    items: Mutex<Vec<(String, oneshot::Sender<Answer>)>>,
    full: Notify,
}

/// Every open batch, by tenant, user and business unit.
#[derive(Default)]
pub(crate) struct StatusBatcher {
    window: Duration,
    max: usize,
    open: Mutex<HashMap<Key, Arc<Batch>>>,
    refused: Mutex<HashMap<Uuid, Instant>>,
}

enum Role {
    /// Asks alone (batching off, or the tenant refused `IN`).
    Alone,
    /// Opened the batch: waits, then asks for everyone.
    Leader(Arc<Batch>, oneshot::Receiver<Answer>),
    /// Joined a batch: waits for the leader's answer.
    Follower(oneshot::Receiver<Answer>),
}

impl StatusBatcher {
    /// `window` zero turns batching off.
    pub fn new(window: Duration, max: usize) -> Self {
        Self {
            window,
            max: max.max(1),
            ..Self::default()
        }
    }

    /// The status of one task, asked together with the other tasks of the
    /// same key that fall due within the window.
    pub(crate) async fn status(&self, session: &impl StatusSource, task_id: &str) -> Answer {
        let key = session.key();
        match self.join(&key, task_id) {
            Role::Alone => session.async_status(task_id).await,
            Role::Follower(answer) => answer.await.unwrap_or_else(|_| session_lost()),
            Role::Leader(batch, answer) => {
                // Closed when the leader is done with it, or dropped (a
                // cancelled tick): then its members hear "abandoned" and
                // the next check opens a new batch, none waits forever.
                let mut lead = Lead {
                    open: &self.open,
                    key,
                    batch,
                };
                tokio::select! {
                    _ = tokio::time::sleep(self.window) => {}
                    _ = lead.batch.full.notified() => {}
                }
                // The batch stays open while its call waits for a place:
                // the checks that fall due meanwhile join it (until full).
                let place = session.place().await;
                let items = lead.close();
                match place {
                    Ok(place) => self.answer(session, place, items).await,
                    Err(e) => {
                        for (_, tx) in items {
                            let _ = tx.send(Err(e.clone()));
                        }
                    }
                }
                answer.await.unwrap_or_else(|_| session_lost())
            }
        }
    }

    fn join(&self, key: &Key, task_id: &str) -> Role {
        if self.window.is_zero() {
            return Role::Alone;
        }
        {
            let mut refused = self.refused.lock().expect("batch lock");
            match refused.get(&key.tenant_id()) {
                Some(until) if *until > Instant::now() => return Role::Alone,
                Some(_) => {
                    refused.remove(&key.tenant_id());
                }
                None => {}
            }
        }
        let (tx, rx) = oneshot::channel();
        let mut open = self.open.lock().expect("batch lock");
        if let Some(batch) = open.get(key) {
            let mut items = batch.items.lock().expect("batch lock");
            items.push((task_id.to_string(), tx));
            if items.len() >= self.max {
                // Full: its leader asks now; the next tick opens a new one.
                batch.full.notify_one();
                drop(items);
                open.remove(key);
            }
            return Role::Follower(rx);
        }
        let batch = Arc::new(Batch {
            items: Mutex::new(vec![(task_id.to_string(), tx)]),
            full: Notify::new(),
        });
        if self.max > 1 {
            open.insert(key.clone(), batch.clone());
        }
        Role::Leader(batch, rx)
    }

    /// Asks MCE for every item, in the place the leader holds, and sends
    /// each its answer.
    async fn answer<S: StatusSource>(
        &self,
        session: &S,
        place: S::Place,
        items: Vec<(String, oneshot::Sender<Answer>)>,
    ) {
        if items.len() == 1 {
            let (task, tx) = items.into_iter().next().expect("one item");
            let _ = tx.send(session.async_status_in(place, &task).await);
            return;
        }
        let ids: Vec<&str> = items.iter().map(|(t, _)| t.as_str()).collect();
        let mut found = match session.async_statuses_in(place, &ids).await {
            Ok(found) => found,
            Err(e) if e.is_transient() => {
                for (_, tx) in items {
                    let _ = tx.send(Err(e.clone()));
                }
                return;
            }
            Err(e) => {
                // MCE refused the filter itself: one task at a time for a while.
                tracing::warn!(error = %e, "MCE refused a TaskID IN filter; asking one task at a time");
                self.refused
                    .lock()
                    .expect("batch lock")
                    .insert(session.key().tenant_id(), Instant::now() + REFUSAL_MEMORY);
                HashMap::new()
            }
        };
        let mut missing = Vec::new();
        for (task, tx) in items {
            match found.remove(&task) {
                Some(status) => {
                    let _ = tx.send(Ok(status));
                }
                None => missing.push((task, tx)),
            }
        }
        let asked = missing.into_iter().map(|(task, tx)| async move {
            let _ = tx.send(session.async_status(&task).await);
        });
        futures::future::join_all(asked).await;
    }
}

/// A batch as its leader holds it.
struct Lead<'a> {
    open: &'a Mutex<HashMap<Key, Arc<Batch>>>,
    key: Key,
    batch: Arc<Batch>,
}

impl Lead<'_> {
    /// Stops the batch taking members; its members so far.
    fn close(&mut self) -> Vec<(String, oneshot::Sender<Answer>)> {
        {
            let mut open = self.open.lock().expect("batch lock");
            if open.get(&self.key).is_some_and(|b| Arc::ptr_eq(b, &self.batch)) {
                open.remove(&self.key);
            }
        }
        std::mem::take(&mut *self.batch.items.lock().expect("batch lock"))
    }
}

impl Drop for Lead<'_> {
    fn drop(&mut self) {
        // Dropping the members' senders answers them "abandoned".
        drop(self.close());
    }
}

/// The leader went away before answering (its tick was dropped).
fn session_lost() -> Answer {
    Err(MceError::Unavailable {
        op: super::error::Op::AsyncStatuses.name(),
        detail: "the batch's call was abandoned".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use shell_query_core::account::{Account, Mid};

    /// A source whose admission never gives a place (a congested tenant).
    struct Stuck(Account);

    impl StatusSource for Stuck {
        type Place = ();
        fn key(&self) -> Key {
            self.0.clone()
        }
        async fn place(&self) -> Result<(), MceError> {
            std::future::pending().await
        }
        async fn async_status(&self, _: &str) -> Answer {
            std::future::pending().await
        }
        async fn async_status_in(&self, _: (), _: &str) -> Answer {
            std::future::pending().await
        }
        async fn async_statuses_in(&self, _: (), _: &[&str]) -> Result<HashMap<String, AsyncStatus>, MceError> {
            std::future::pending().await
        }
    }

    #[tokio::test]
    async fn a_leader_dropped_while_it_waits_for_a_place_leaves_no_member_waiting() {
        let batcher = Arc::new(StatusBatcher::new(Duration::from_millis(1), 50));
        let source = Arc::new(Stuck(Account::new(Uuid::new_v4(), None, Mid::parse("1").unwrap())));
        let leader = {
            let (batcher, source) = (batcher.clone(), source.clone());
            tokio::spawn(async move { batcher.status(&*source, "t1").await })
        };
        // The leader's window passes; it waits for its place, the batch open.
        while batcher.open.lock().unwrap().is_empty() {
            tokio::task::yield_now().await;
        }
        let member = {
            let (batcher, source) = (batcher.clone(), source.clone());
            tokio::spawn(async move { batcher.status(&*source, "t2").await })
        };
        while batcher
            .open
            .lock()
            .unwrap()
            .values()
            .all(|b| b.items.lock().unwrap().len() < 2)
        {
            tokio::task::yield_now().await;
        }
        leader.abort();
        let answer = tokio::time::timeout(Duration::from_secs(10), member)
            .await
            .expect("the member is answered, not left waiting")
            .expect("the member's task ends");
        assert!(matches!(answer, Err(MceError::Unavailable { .. })), "{answer:?}");
        assert!(
            batcher.open.lock().unwrap().is_empty(),
            "the next check opens a new batch"
        );
    }

    /// A source whose place is given when the test says, and which answers
    /// every task of a call, recording each call's tasks.
    struct Gated {
        account: Account,
        open: tokio::sync::Semaphore,
        calls: Mutex<Vec<usize>>,
    }

    impl StatusSource for Gated {
        type Place = ();
        fn key(&self) -> Key {
            self.account.clone()
        }
        async fn place(&self) -> Result<(), MceError> {
            self.open.acquire().await.expect("open").forget();
            Ok(())
        }
        async fn async_status(&self, task: &str) -> Answer {
            self.async_status_in((), task).await
        }
        async fn async_status_in(&self, _: (), _: &str) -> Answer {
            self.calls.lock().unwrap().push(1);
            Ok(AsyncStatus {
                status: Some("Processing".into()),
                error_msg: None,
                completed_date: None,
            })
        }
        async fn async_statuses_in(&self, _: (), ids: &[&str]) -> Result<HashMap<String, AsyncStatus>, MceError> {
            self.calls.lock().unwrap().push(ids.len());
            Ok(ids
                .iter()
                .map(|id| {
                    let status = AsyncStatus {
                        status: Some("Processing".into()),
                        error_msg: None,
                        completed_date: None,
                    };
                    (id.to_string(), status)
                })
                .collect())
        }
    }

    #[tokio::test]
    async fn a_batch_grows_while_its_call_waits_for_a_place_and_one_call_answers_all() {
        let batcher = Arc::new(StatusBatcher::new(Duration::from_millis(1), 50));
        let source = Arc::new(Gated {
            account: Account::new(Uuid::new_v4(), None, Mid::parse("1").unwrap()),
            open: tokio::sync::Semaphore::new(0),
            calls: Mutex::new(Vec::new()),
        });
        let check = |task: String| {
            let (batcher, source) = (batcher.clone(), source.clone());
            tokio::spawn(async move { batcher.status(&*source, &task).await })
        };
        let mut checks = vec![check("t0".into())];
        // Past its window, the leader waits for its place, the batch open...
        while batcher.open.lock().unwrap().is_empty() {
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        // ...and the checks that fall due meanwhile join it.
        checks.extend((1..11).map(|i| check(format!("t{i}"))));
        while batcher
            .open
            .lock()
            .unwrap()
            .values()
            .all(|b| b.items.lock().unwrap().len() < 11)
        {
            tokio::task::yield_now().await;
        }
        source.open.add_permits(1);
        for c in checks {
            assert!(c.await.unwrap().is_ok());
        }
        assert_eq!(*source.calls.lock().unwrap(), [11], "one call for the eleven checks");
    }
}
