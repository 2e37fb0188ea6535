//! The join flow on real processes (issue 13): a new replica started with
//! only its own address (a host name) and one member's joins under write
//! load, is promoted once caught up, and survives a restart; a replica
//! that died with its disk is replaced by a new one at a new address with
//! `paxlog member replace`. No acknowledged write is lost and every member
//! converges.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::Duration;

const LONG: Duration = Duration::from_secs(90);

fn members(port: u16) -> Value {
    get(port, "/v1/members").unwrap().body
}

fn ids(v: &Value, field: &str) -> Vec<u64> {
    v[field]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect()
}

fn own_id(port: u16) -> u64 {
    status(port).unwrap()["id"].as_u64().unwrap()
}

#[test]
fn a_new_replica_joins_through_one_member_and_a_dead_one_is_replaced_at_a_new_address() {
    let mut c = Cluster::new(3, &[]);
    c.start_all();
    let leader = c.wait_leader();
    let ports: Vec<u16> = (0..3).map(|i| c.port(i)).collect();
    let load = Load::start(ports, 2, "join");
    load.wait_progress(20, LONG, "writes before the join");

    // Bad input is refused with the reason, and changes nothing.
    let bad = post_json(
        c.port(leader),
        "/v1/members",
        &json!({"action": "add", "peer_addr": "no port here"}),
    )
    .unwrap();
    assert_eq!(bad.status, 400, "{}", bad.raw);
    let both = post_json(
        c.port(leader),
        "/v1/members",
        &json!({"action": "add", "id": 7, "peer_addr": "a:1"}),
    )
    .unwrap();
    assert_eq!(both.status, 400, "{}", both.raw);

    // A new replica knows one member (a follower, so the join must find
    // the leader) and its own address.
    let via = (leader + 1) % 3;
    let new = c.add_slot();
    let cmd = c.joiner_command(new, via, &["--promote"]);
    c.start_with(new, cmd);
    let new_id = own_id(c.port(new));
    assert_eq!(new_id, 3, "the first id after the bootstrap replicas");
    let four = wait_for(LONG, "the new replica to vote", || {
        let m = members(c.port(c.wait_leader()));
        ids(&m, "voters").contains(&new_id).then_some(m)
    });
    assert_eq!(ids(&four, "voters"), vec![0, 1, 2, 3], "{four}");
    let entry = four["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == json!(new_id))
        .unwrap()
        .clone();
    assert_eq!(
        entry["peer"],
        json!(format!("localhost:{}", c.peer_ports[new]))
    );
    load.wait_progress(20, LONG, "writes with the new voter");
    // A second replica joining at the address of one that runs would share
    // its id: refused (409), and nothing changes.
    let twin = post_json(
        c.port(c.wait_leader()),
        "/v1/members",
        &json!({"action": "add", "peer_addr": format!("localhost:{}", c.peer_ports[new]), "join": true}),
    )
    .unwrap();
    assert_eq!(twin.status, 409, "{}", twin.raw);
    assert!(
        twin.body["error"].as_str().unwrap().contains("is running"),
        "{}",
        twin.raw
    );

    // The joined replica restarts from its folder (it remembers its id and
    // its cluster; no join this time).
    c.kill(new);
    let cmd = c.joiner_command(new, via, &[]);
    c.start_with(new, cmd);
    assert_eq!(own_id(c.port(new)), new_id);

    // A voter dies with its disk; a new replica at a new address replaces
    // it. `member replace` adds it, waits until it caught up and is
    // promoted, then removes the dead one.
    let leader = c.wait_leader();
    let dead = (0..3).find(|i| *i != leader && *i != via).unwrap();
    c.kill(dead);
    std::fs::remove_dir_all(c.data_dir(dead)).unwrap();
    let replacement = c.add_slot();
    let peer = format!("localhost:{}", c.peer_ports[replacement]);
    let http = format!("127.0.0.1:{}", c.port(replacement));
    let endpoint = format!("http://127.0.0.1:{}", c.port(via));
    let dead_arg = dead.to_string();
    let replace = std::thread::spawn(move || {
        run_paxlog(&[
            "member",
            "replace",
            &dead_arg,
            &peer,
            "--member-http",
            &http,
            "--endpoints",
            &endpoint,
        ])
    });
    // Started while (or after) the change is placed: its join finds itself
    // registered already and takes that id.
    let cmd = c.joiner_command(replacement, via, &[]);
    c.start_with(replacement, cmd);
    let (exit, stdout, stderr) = replace.join().unwrap();
    assert!(exit.success(), "replace failed: {stdout}\n{stderr}");
    let replacement_id = own_id(c.port(replacement));
    assert_eq!(replacement_id, 4);
    let after: Value = serde_json::from_str(&stdout).unwrap();
    let mut expected: Vec<u64> = (0..5).filter(|i| *i != dead as u64).collect();
    expected.sort();
    assert_eq!(ids(&after, "voters"), expected, "{after}");
    load.wait_progress(20, LONG, "writes after the replacement");
    let (acked, errors) = load.finish();
    assert!(errors.is_empty(), "{errors:?}");

    // Every member has every acknowledged write; all converge.
    for i in [0, 1, 2, new, replacement] {
        if i == dead {
            continue;
        }
        for (key, value) in acked.iter().rev().take(40).chain(acked.iter().take(40)) {
            let path = format!("/v1/kv/{key}");
            let got = wait_for(LONG, &format!("{key} on slot {i}"), || {
                get(c.port(i), &path).ok().filter(|r| r.status == 200)
            });
            assert_eq!(&got.body["value"], value, "{key} on slot {i}");
        }
    }
    c.wait_converged(LONG);
}

/// A bootstrap replica whose folder is lost, started again as `new` (as a
/// StatefulSet or compose file does) with the members' addresses in
/// `--join`: it finds the cluster exists, starts as `existing` and recovers
/// before it votes, instead of bootstrapping on what it forgot.
#[test]
fn a_bootstrap_replica_on_a_lost_folder_finds_the_cluster_and_recovers() {
    let mut c = Cluster::new(3, &[]);
    c.start_all();
    let leader = c.wait_leader();
    let ports: Vec<u16> = (0..3).map(|i| c.port(i)).collect();
    let load = Load::start(ports, 2, "lost");
    load.wait_progress(20, LONG, "writes before the loss");
    let lost = (leader + 1) % 3;
    c.kill(lost);
    std::fs::remove_dir_all(c.data_dir(lost)).unwrap();
    let others: Vec<String> = (0..3)
        .filter(|i| *i != lost)
        .map(|i| format!("127.0.0.1:{}", c.port(i)))
        .collect();
    let mut cmd = c.node_command_as(lost, "new");
    cmd.args(["--join", &others.join(",")]);
    c.start_with(lost, cmd);
    let log = std::fs::read_to_string(c.log_path(lost)).unwrap();
    assert!(
        log.contains("starting as existing, to recover before voting"),
        "{log}"
    );
    load.wait_progress(20, LONG, "writes after the restart");
    let (acked, errors) = load.finish();
    assert!(errors.is_empty(), "{errors:?}");
    for (key, value) in acked.iter().take(40) {
        let path = format!("/v1/kv/{key}");
        let got = wait_for(LONG, &format!("{key} on the restarted replica"), || {
            get(c.port(lost), &path).ok().filter(|r| r.status == 200)
        });
        assert_eq!(&got.body["value"], value);
    }
    c.wait_converged(LONG);
}
