//! Membership changes on real processes (issue 13): five replicas listed,
//! three voting. Under write load the cluster grows to five voters (each
//! new replica added as a learner, then promoted), then the leader removes
//! itself and the remaining four elect a new one, and one more is removed
//! (three voters again). No acknowledged write is lost, every member
//! converges, and a removed replica refuses writes and says why.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::Duration;

const LONG: Duration = Duration::from_secs(60);

fn members(port: u16) -> Value {
    get(port, "/v1/members").unwrap().body
}

/// Sends a change to whichever replica leads, retrying while leadership
/// moves or the learner catches up (503, 409).
fn change(c: &Cluster, action: &str, id: u32) -> Value {
    let body = json!({ "action": action, "id": id });
    wait_for(LONG, &format!("{action} {id}"), || {
        let leader = c.leader()?;
        match post_json(c.port(leader), "/v1/members", &body) {
            Ok(r) if r.status == 200 => Some(r.body),
            Ok(r) if r.status == 503 || r.status == 409 => None,
            Ok(r) => panic!("{action} {id}: {} {}", r.status, r.raw),
            Err(_) => None,
        }
    })
}

fn voters(v: &Value) -> Vec<u64> {
    v["voters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect()
}

#[test]
fn grow_from_three_to_five_then_shrink_to_three_removing_the_leader_under_load() {
    let mut c = Cluster::new(5, &["--initial-voters", "3"]);
    c.start_all();
    let first = c.wait_leader();
    assert!(first < 3, "only the first three vote");
    let before = members(c.port(0));
    assert_eq!(voters(&before), vec![0, 1, 2]);
    assert_eq!(before["epoch"], 0);
    // A replica outside the cluster refuses writes at once.
    let r = put(c.port(4), "outside", &json!(1)).unwrap();
    assert_eq!(r.status, 503, "{}", r.raw);
    assert!(
        r.body["error"].as_str().unwrap().contains("not a member"),
        "{}",
        r.raw
    );

    let ports: Vec<u16> = (0..5).map(|i| c.port(i)).collect();
    let load = Load::start(ports, 3, "grow");
    load.wait_progress(20, LONG, "writes before the changes");
    for id in [3, 4] {
        let added = change(&c, "add", id);
        assert!(added["learners"].as_array().unwrap().contains(&json!(id)));
        load.wait_progress(10, LONG, "writes with a learner");
        let promoted = change(&c, "promote", id);
        assert!(voters(&promoted).contains(&(id as u64)), "{promoted}");
    }
    let five = members(c.port(c.wait_leader()));
    assert_eq!(voters(&five), vec![0, 1, 2, 3, 4]);
    assert_eq!(five["epoch"], 4);
    load.wait_progress(20, LONG, "writes with five voters");

    // The leader removes itself: it hands over to the other four.
    let leader = c.wait_leader();
    let removed = change(&c, "remove", leader as u32);
    assert!(!voters(&removed).contains(&(leader as u64)));
    let new_leader = wait_for(LONG, "a new leader among the rest", || {
        c.leader().filter(|l| *l != leader)
    });
    assert_ne!(new_leader, leader);
    load.wait_progress(20, LONG, "writes after the leader left");
    // Back to three voters: one more (not the leader) is removed.
    let second = (0..5)
        .find(|i| *i != leader && Some(*i) != c.leader())
        .unwrap();
    let three = change(&c, "remove", second as u32);
    assert_eq!(voters(&three).len(), 3, "{three}");
    load.wait_progress(20, LONG, "writes with three voters again");
    let (acked, errors) = load.finish();
    assert!(errors.is_empty(), "{errors:?}");

    // The removed replica says why it takes no writes.
    let r = put(c.port(leader), "after-removal", &json!(1)).unwrap();
    assert_eq!(r.status, 503, "{}", r.raw);
    assert!(
        r.body["error"].as_str().unwrap().contains("not a member"),
        "{}",
        r.raw
    );

    // Every member has every acknowledged write.
    let members_now: Vec<usize> = (0..5).filter(|i| *i != leader && *i != second).collect();
    for &i in &members_now {
        for (key, value) in acked.iter().rev().take(50).chain(acked.iter().take(50)) {
            let path = format!("/v1/kv/{key}");
            let got = wait_for(LONG, &format!("{key} on replica {i}"), || {
                get(c.port(i), &path).ok().filter(|r| r.status == 200)
            });
            assert_eq!(&got.body["value"], value, "{key} on replica {i}");
        }
    }
    let epochs: Vec<Value> = members_now
        .iter()
        .map(|&i| members(c.port(i))["epoch"].clone())
        .collect();
    assert!(epochs.iter().all(|e| e == &json!(6)), "{epochs:?}");
}

/// A voter dies for good (its folder is gone): removing another voter now
/// would leave too few reachable voters, and is refused with the numbers;
/// a new replica is added, promoted, and the dead one removed, under load.
#[test]
fn replace_a_dead_replica_and_refuse_a_change_that_loses_the_quorum() {
    let mut c = Cluster::new(4, &["--initial-voters", "3"]);
    for i in 0..3 {
        c.start(i);
    }
    let leader = c.wait_leader();
    let dead = (leader + 1) % 3;
    let other = 3 - leader - dead;
    let ports: Vec<u16> = (0..3).filter(|i| *i != dead).map(|i| c.port(i)).collect();
    let load = Load::start(ports, 2, "replace");
    load.wait_progress(10, LONG, "writes before the loss");
    c.kill(dead);
    std::fs::remove_dir_all(c.data_dir(dead)).unwrap();
    // Wait until the leader notices the dead replica is gone.
    std::thread::sleep(Duration::from_millis(1500));
    let leader = c.wait_leader();
    let body = json!({ "action": "remove", "id": other });
    let r = post_json(c.port(leader), "/v1/members", &body).unwrap();
    assert_eq!(r.status, 400, "{}", r.raw);
    assert!(
        r.body["error"]
            .as_str()
            .unwrap()
            .contains("fewer than a quorum"),
        "{}",
        r.raw
    );
    c.start(3);
    change(&c, "add", 3);
    change(&c, "promote", 3);
    let after = change(&c, "remove", dead as u32);
    let mut expected: Vec<u64> = vec![leader as u64, other as u64, 3];
    expected.sort();
    assert_eq!(voters(&after), expected);
    load.wait_progress(10, LONG, "writes after the replacement");
    let (acked, errors) = load.finish();
    assert!(errors.is_empty(), "{errors:?}");
    for (key, value) in acked.iter().take(30) {
        let path = format!("/v1/kv/{key}");
        let got = wait_for(LONG, &format!("{key} on the new replica"), || {
            get(c.port(3), &path).ok().filter(|r| r.status == 200)
        });
        assert_eq!(&got.body["value"], value);
    }
}
