//! The service on a three-server JetStream cluster (routes on loopback,
//! each server with its own store, every stream and the lease bucket at
//! three replicas) while servers die: the leader of the jobs stream killed
//! with SIGKILL mid-batch, a rolling restart of all three, and the one
//! server a worker knows dying under it. After each batch the chaos checks
//! hold (every run terminal as planned, one Perform and one terminal event
//! per run, the DLQ holding exactly the bad inputs) and no message is left
//! in the jobs stream.

use std::collections::BTreeSet;
use std::time::Duration;

use async_nats::jetstream;
use tests::{NatsServer, wait_for};

use crate::chaos::{Planned, SETTINGS, check_batch, finish, seed, submit_batch};
use crate::support::System;

/// Every server of the system, the first one and its peers.
fn servers(system: &mut System) -> Vec<&mut NatsServer> {
    std::iter::once(&mut system.nats)
        .chain(system.peers.iter_mut())
        .collect()
}

/// The name of the server leading the jobs stream, if it has one now.
async fn leader_now(js: &jetstream::Context) -> Option<String> {
    let mut stream = js.get_stream("SHELL_QUERY_JOBS").await.ok()?;
    let info = stream.info().await.ok()?;
    info.cluster
        .as_ref()
        .and_then(|c| c.leader.clone())
        .filter(|name| !name.is_empty())
}

/// The name of the server leading the jobs stream, once there is a leader.
async fn jobs_leader(js: &jetstream::Context) -> String {
    wait_for("the jobs stream to have a leader", Duration::from_secs(60), || async {
        leader_now(js).await.is_some()
    })
    .await;
    leader_now(js).await.expect("a leader")
}

/// Waits until every replica of the jobs stream is current again.
async fn replicas_current(js: &jetstream::Context) {
    wait_for(
        "all three replicas of the jobs stream current",
        Duration::from_secs(60),
        || async {
            let Ok(mut stream) = js.get_stream("SHELL_QUERY_JOBS").await else {
                return false;
            };
            let Ok(info) = stream.info().await else { return false };
            info.cluster.as_ref().is_some_and(|c| {
                c.leader.is_some() && c.replicas.len() == 2 && c.replicas.iter().all(|r| r.current && !r.offline)
            })
        },
    )
    .await;
}

/// No message is left behind in the jobs stream once every run is over.
async fn nothing_stranded(system: &System) {
    let js = &system.js;
    wait_for("the jobs stream to be empty", Duration::from_secs(60), || async {
        let Ok(mut stream) = js.get_stream("SHELL_QUERY_JOBS").await else {
            return false;
        };
        stream.info().await.is_ok_and(|i| i.state.messages == 0)
    })
    .await;
}

/// Sends the cancels, waits for every run to end, and checks the batch:
/// the chaos checks, and nothing left in the jobs stream.
async fn end_batch(system: &System, planned: &[Planned], seed: u64) {
    let mut sent = BTreeSet::new();
    finish(system, planned, &mut sent, seed).await;
    check_batch(system, planned, seed).await;
    nothing_stranded(system).await;
}

async fn some_runs_started(system: &System, n: usize) {
    wait_for("some runs to start in MCE", Duration::from_secs(90), || async {
        system.sim.count("soap:Perform:QueryDefinition") >= n
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_streams_are_replicated_three_times() {
    let system = System::start_clustered(SETTINGS).await;
    for name in [
        "SHELL_QUERY_JOBS",
        "SHELL_QUERY_STATUS",
        "SHELL_QUERY_DLQ",
        "SHELL_QUERY_ADVISORIES",
        "KV_SHELL_QUERY_LEASES",
    ] {
        let mut stream = system.js.get_stream(name).await.expect("the stream exists");
        let info = stream.info().await.expect("its info");
        assert_eq!(info.config.num_replicas, 3, "{name}");
    }
    // A restart of the worker with STREAM_REPLICAS=1 does not lower them.
    let mut system = system;
    system.kill_worker();
    system.extra.push(("STREAM_REPLICAS".into(), "1".into()));
    system.start_worker().await;
    let mut stream = system.js.get_stream("SHELL_QUERY_JOBS").await.unwrap();
    assert_eq!(stream.info().await.unwrap().config.num_replicas, 3, "never lowered");
    assert!(
        system.log().contains("num_replicas 3 (settings 1)"),
        "the mismatch is reported:\n{}",
        system.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_survives_the_jobs_stream_leader_killed_mid_batch() {
    let seed = seed();
    let mut system = System::start_clustered(SETTINGS).await;
    let planned = submit_batch(&system, 14, 1).await;
    some_runs_started(&system, 3).await;

    let leader = jobs_leader(&system.js).await;
    let killed = servers(&mut system)
        .into_iter()
        .position(|s| s.name() == Some(leader.as_str()))
        .expect("the leader is one of ours");
    servers(&mut system)[killed].stop();
    let new_leader = jobs_leader(&system.js).await;
    assert_ne!(new_leader, leader, "another server leads the jobs stream");
    // More runs start while the old leader is down.
    some_runs_started(&system, 6).await;
    servers(&mut system)[killed].resume().await;
    replicas_current(&system.js).await;

    end_batch(&system, &planned, seed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_survives_a_rolling_restart_of_all_three_servers() {
    let seed = seed();
    let mut system = System::start_clustered(SETTINGS).await;
    let planned = submit_batch(&system, 14, 1).await;
    some_runs_started(&system, 3).await;
    for i in 0..3 {
        servers(&mut system)[i].stop();
        jobs_leader(&system.js).await;
        servers(&mut system)[i].resume().await;
        replicas_current(&system.js).await;
    }
    end_batch(&system, &planned, seed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_knows_one_server_moves_to_another_when_it_dies() {
    let seed = seed();
    let mut system = System::start_clustered(SETTINGS).await;
    // The worker is given one server; the others it learns from the cluster.
    let only = system.peers[1].url();
    system.kill_worker();
    system.extra.push(("NATS_URL".into(), only));
    system.start_worker().await;
    let planned = submit_batch(&system, 10, 1).await;
    some_runs_started(&system, 3).await;

    system.peers[1].stop();
    // The batch ends while the one server the worker was given stays down.
    let mut sent = BTreeSet::new();
    finish(&system, &planned, &mut sent, seed).await;
    assert!(
        system.worker.as_ref().expect("a worker").ready().await,
        "connected to another server:\n{}",
        system.log()
    );
    check_batch(&system, &planned, seed).await;
    nothing_stranded(&system).await;
    system.peers[1].resume().await;
}
