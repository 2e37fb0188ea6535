//! Randomized schedules for a 3-node cluster: arbitrary delivery order,
//! loss, duplication, link cuts, crashes (also before an fsync) and
//! restarts. Agreement must hold throughout (the harness checks every
//! applied and every known-chosen slot against one global value per slot),
//! and once the faults stop the cluster must converge.

mod common;

use bytes::Bytes;
use common::Cluster;
use paxlog_core::{Proposal, Role};
use proptest::prelude::*;
use proptest::sample::Index;

const N: usize = 3;
const T: u64 = 4;

#[derive(Clone, Debug)]
enum Action {
    Tick(usize),
    TickAll,
    Deliver(Index),
    DeliverAll,
    Drop(Index),
    Duplicate(Index),
    Propose(usize),
    Cut(usize, usize),
    HealLinks,
    PauseSync(usize),
    ResumeSync(usize),
    Crash(usize),
    Restart(usize),
}

fn action() -> impl Strategy<Value = Action> {
    let node = || 0..N;
    prop_oneof![
        6 => node().prop_map(Action::Tick),
        4 => Just(Action::TickAll),
        12 => any::<Index>().prop_map(Action::Deliver),
        5 => Just(Action::DeliverAll),
        3 => any::<Index>().prop_map(Action::Drop),
        2 => any::<Index>().prop_map(Action::Duplicate),
        6 => node().prop_map(Action::Propose),
        1 => (node(), node()).prop_map(|(a, b)| Action::Cut(a, b)),
        1 => Just(Action::HealLinks),
        1 => node().prop_map(Action::PauseSync),
        3 => node().prop_map(Action::ResumeSync),
        1 => node().prop_map(Action::Crash),
        2 => node().prop_map(Action::Restart),
    ]
}

fn try_propose(c: &mut Cluster, i: usize, tag: &str) {
    if !c.nodes[i].is_up() {
        return;
    }
    let id = c.next_id(i);
    let proposal = Proposal {
        id,
        payload: Bytes::from(format!("{tag}{}", id.seq)),
    };
    // NoLeader / Overloaded are fine outcomes here.
    let _ = c.nodes[i].r_mut().propose(proposal);
    c.collect(i);
}

fn run(c: &mut Cluster, action: &Action) {
    match action {
        Action::Tick(i) => c.tick(*i),
        Action::TickAll => {
            for i in 0..N {
                c.tick(i);
            }
        }
        Action::Deliver(idx) => {
            if !c.queue.is_empty() {
                let k = idx.index(c.queue.len());
                if let Some(env) = c.queue.remove(k) {
                    c.deliver(env);
                }
            }
        }
        Action::DeliverAll => {
            c.deliver_all();
        }
        Action::Drop(idx) => {
            if !c.queue.is_empty() {
                let k = idx.index(c.queue.len());
                c.queue.remove(k);
            }
        }
        Action::Duplicate(idx) => {
            if !c.queue.is_empty() {
                let k = idx.index(c.queue.len());
                let env = c.queue[k].clone();
                c.queue.push_back(env);
            }
        }
        Action::Propose(i) => try_propose(c, *i, "p"),
        Action::Cut(a, b) => {
            if a != b {
                c.cut_link(*a, *b);
            }
        }
        Action::HealLinks => c.heal_all(),
        Action::PauseSync(i) => {
            if c.nodes[*i].is_up() {
                c.pause_sync(*i);
            }
        }
        Action::ResumeSync(i) => {
            if c.nodes[*i].is_up() {
                c.resume_sync(*i);
            }
        }
        Action::Crash(i) => {
            if c.nodes[*i].is_up() {
                c.crash(*i);
            }
        }
        Action::Restart(i) => {
            if !c.nodes[*i].is_up() {
                c.restart(*i);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn agreement_holds_under_any_delivery_order_loss_and_crashes(
        seed in any::<u64>(),
        actions in prop::collection::vec(action(), 50..400),
    ) {
        let mut c = Cluster::with_config(N as u32, seed, |cfg| {
            cfg.election_timeout_ticks = T;
            cfg.heartbeat_interval_ticks = 1;
            cfg.max_entries_per_message = 3;
        });
        for action in &actions {
            run(&mut c, action);
        }
        c.assert_prefix_consistent();

        // Faults stop: everyone is up, synced and connected.
        c.heal_all();
        for i in 0..N {
            if c.nodes[i].is_up() {
                c.resume_sync(i);
            } else {
                c.restart(i);
            }
        }
        c.tick_until(60 * T, "a stable leader after healing", |c| c.stable_leader().is_some());
        let leader = c.stable_leader().expect("leader");
        prop_assert_eq!(c.r(leader).role(), Role::Leader);
        try_propose(&mut c, leader, "final");
        c.tick_until(20 * T, "everyone applies the final command", |c| {
            let target = c.r(leader).chosen_upto();
            target.0 > 0 && (0..N).all(|i| c.r(i).applied_upto() == target)
                && c.node(leader).applied.iter().any(|(_, e)| {
                    matches!(e, paxlog_core::Entry::Command { payload, .. } if payload.starts_with(b"final"))
                })
        });
        c.assert_prefix_consistent();
        let reference = c.node(leader).applied.clone();
        for i in 0..N {
            prop_assert_eq!(&c.node(i).applied, &reference, "n{} diverged", i);
        }
    }
}
