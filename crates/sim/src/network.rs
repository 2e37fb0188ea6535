//! The simulated network: per-message delay (hence reordering), loss,
//! duplication, and directed partitions.

use crate::Faults;
use paxlog_core::rng::SplitMix64;
use paxlog_core::NodeId;
use paxlog_server::wire::Wire;
use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, VecDeque};

/// Messages remembered for redelivery after a restart.
const RECENT: usize = 64;

struct Queued {
    deliver_tick: u64,
    order: u64,
    from: usize,
    to: usize,
    wire: Wire,
}

impl PartialEq for Queued {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Queued {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.deliver_tick, self.order).cmp(&(other.deliver_tick, other.order))
    }
}

/// Which directed links a partition cuts.
pub struct Partition {
    pub cut: Vec<(usize, usize)>,
}

impl Partition {
    pub fn draw(rng: &mut SplitMix64, nodes: u32, leader: Option<NodeId>) -> Partition {
        let n = nodes as usize;
        let mut cut = Vec::new();
        if n < 2 {
            // Nothing to cut off a single replica from.
            return Partition { cut };
        }
        let cut_both = |a: usize, b: usize, cut: &mut Vec<(usize, usize)>| {
            cut.push((a, b));
            cut.push((b, a));
        };
        match rng.range(0, 5) {
            // Isolate one node (the leader, if any, half the time).
            0 | 1 => {
                let victim = match leader {
                    Some(l) if rng.chance(1, 2) => l.0 as usize,
                    _ => rng.range(0, n as u64) as usize,
                };
                for other in (0..n).filter(|o| *o != victim) {
                    cut_both(victim, other, &mut cut);
                }
            }
            // Majority / minority split.
            2 => {
                let minority: Vec<usize> =
                    (0..n).filter(|_| rng.chance(1, 2)).take(n / 2).collect();
                for a in &minority {
                    for b in (0..n).filter(|b| !minority.contains(b)) {
                        cut_both(*a, b, &mut cut);
                    }
                }
            }
            // A bridge: two halves that cannot talk, one node that sees both.
            3 => {
                let bridge = rng.range(0, n as u64) as usize;
                let others: Vec<usize> = (0..n).filter(|o| *o != bridge).collect();
                let (left, right) = others.split_at(others.len() / 2);
                for a in left {
                    for b in right {
                        cut_both(*a, *b, &mut cut);
                    }
                }
            }
            // One-way loss between two nodes.
            _ => {
                let a = rng.range(0, n as u64) as usize;
                let b = (a + 1 + rng.range(0, n as u64 - 1) as usize) % n;
                cut.push((a, b));
            }
        }
        Partition { cut }
    }
}

pub struct Network {
    nodes: usize,
    blocked: Vec<bool>,
    queue: BinaryHeap<Reverse<Queued>>,
    calm: bool,
    /// The last messages sent, for late copies after a restart.
    recent: VecDeque<(usize, usize, Wire)>,
}

impl Network {
    pub fn new(nodes: u32) -> Network {
        let nodes = nodes as usize;
        Network {
            nodes,
            blocked: vec![false; nodes * nodes],
            queue: BinaryHeap::new(),
            calm: false,
            recent: VecDeque::new(),
        }
    }

    pub fn is_partitioned(&self) -> bool {
        self.blocked.iter().any(|b| *b)
    }

    pub fn apply(&mut self, partition: &Partition) {
        for (a, b) in &partition.cut {
            self.blocked[a * self.nodes + b] = true;
        }
    }

    pub fn heal(&mut self) {
        self.blocked.iter_mut().for_each(|b| *b = false);
    }

    /// From now on: no loss, no duplication, short delays.
    pub fn calm(&mut self) {
        self.calm = true;
    }

    /// Queues a message; returns (dropped, duplicated) counts.
    pub fn send(
        &mut self,
        from: usize,
        to: usize,
        wire: Wire,
        now_tick: u64,
        faults: &Faults,
        rng: &mut SplitMix64,
    ) -> (u64, u64) {
        if self.blocked[from * self.nodes + to] {
            return (1, 0);
        }
        let max_delay = if self.calm {
            2
        } else {
            faults.max_delay_ticks.max(1)
        };
        if !self.calm && rng.chance(faults.drop_per_mille, 1000) {
            return (1, 0);
        }
        if !self.calm {
            if self.recent.len() == RECENT {
                self.recent.pop_front();
            }
            self.recent.push_back((from, to, wire.clone()));
        }
        let mut duplicated = 0;
        if !self.calm && rng.chance(faults.duplicate_per_mille, 1000) {
            duplicated = 1;
            self.queue.push(Reverse(Queued {
                deliver_tick: now_tick + 1 + rng.range(0, max_delay),
                order: rng.next_u64(),
                from,
                to,
                wire: wire.clone(),
            }));
        }
        self.queue.push(Reverse(Queued {
            deliver_tick: now_tick + 1 + rng.range(0, max_delay),
            order: rng.next_u64(),
            from,
            to,
            wire,
        }));
        (0, duplicated)
    }

    /// Node `node` restarted: copies of recent messages from or to its
    /// previous incarnation arrive late (a slow path, a retransmission).
    /// Returns how many were queued.
    pub fn redeliver_stale(&mut self, node: usize, now_tick: u64, rng: &mut SplitMix64) -> u64 {
        let stale: Vec<(usize, usize, Wire)> = self
            .recent
            .iter()
            .filter(|(from, to, _)| *from == node || *to == node)
            .cloned()
            .collect();
        let mut queued = 0;
        for (from, to, wire) in stale {
            if !rng.chance(1, 2) {
                continue;
            }
            queued += 1;
            self.queue.push(Reverse(Queued {
                deliver_tick: now_tick + 1 + rng.range(0, 5),
                order: rng.next_u64(),
                from,
                to,
                wire,
            }));
        }
        queued
    }

    /// Messages due by `now_tick`, in delivery order, as (from, to, wire);
    /// a message whose link was cut while it was in flight is lost.
    pub fn take_due(&mut self, now_tick: u64) -> Vec<(usize, usize, Wire)> {
        let mut due = Vec::new();
        while self
            .queue
            .peek()
            .is_some_and(|Reverse(q)| q.deliver_tick <= now_tick)
        {
            if let Some(Reverse(q)) = self.queue.pop() {
                if !self.blocked[q.from * self.nodes + q.to] {
                    due.push((q.from, q.to, q.wire));
                }
            }
        }
        due
    }
}
