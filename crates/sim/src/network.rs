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
    /// Messages in flight per directed link (the transport's send queue).
    in_flight: Vec<usize>,
    /// A failed connection drops what is sent on its link until this tick.
    reconnect_at: Vec<u64>,
    /// The transport's limits (see `Faults`); 0 is no bound.
    link_queue_cap: usize,
    max_frame_bytes: usize,
    frame: Vec<u8>,
    load: LoadCounts,
    /// What was dropped for its size, for the checker: a node whose
    /// message cannot fit in a frame would repeat it forever.
    pub oversized_kinds: Vec<String>,
}

/// The transport's own drops, counted.
#[derive(Clone, Copy, Debug, Default)]
pub struct LoadCounts {
    pub queue_full: u64,
    pub resets: u64,
    pub reset_drops: u64,
    pub oversized: u64,
}

impl Network {
    pub fn new(nodes: u32, faults: &Faults) -> Network {
        let nodes = nodes as usize;
        Network {
            nodes,
            blocked: vec![false; nodes * nodes],
            queue: BinaryHeap::new(),
            calm: false,
            recent: VecDeque::new(),
            in_flight: vec![0; nodes * nodes],
            reconnect_at: vec![0; nodes * nodes],
            link_queue_cap: faults.link_queue_cap,
            max_frame_bytes: if faults.max_frame_bytes == 0 {
                paxlog_transport::DEFAULT_MAX_FRAME_BYTES
            } else {
                faults.max_frame_bytes
            },
            frame: Vec::new(),
            load: LoadCounts::default(),
            oversized_kinds: Vec::new(),
        }
    }

    pub fn load_counts(&self) -> LoadCounts {
        self.load
    }

    /// The connection from `from` to `to` failed: what was written to it
    /// and not yet read is lost, and it drops sends until `until`.
    pub fn reset_link(&mut self, from: usize, to: usize, until: u64) {
        let link = from * self.nodes + to;
        let before = self.queue.len();
        self.queue
            .retain(|Reverse(q)| !(q.from == from && q.to == to));
        self.load.reset_drops += (before - self.queue.len()) as u64;
        self.in_flight[link] = 0;
        self.reconnect_at[link] = until;
        self.load.resets += 1;
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
        let link = from * self.nodes + to;
        if self.blocked[link] {
            return (1, 0);
        }
        // The real transport's drops, in its order: the frame limit at
        // encoding, then the bounded queue, then a connection being re-made.
        // The size check encodes only in seeds that draw a small limit.
        if self.max_frame_bytes < paxlog_transport::DEFAULT_MAX_FRAME_BYTES
            && paxlog_transport::wire::encode_frame(&wire, &mut self.frame)
                .map_or(true, |len| len > self.max_frame_bytes)
        {
            self.load.oversized += 1;
            self.oversized_kinds.push(wire_kind(&wire));
            return (1, 0);
        }
        if self.link_queue_cap > 0 && self.in_flight[link] >= self.link_queue_cap {
            self.load.queue_full += 1;
            return (1, 0);
        }
        if now_tick < self.reconnect_at[link] {
            self.load.reset_drops += 1;
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
            self.in_flight[link] += 1;
            self.queue.push(Reverse(Queued {
                deliver_tick: now_tick + 1 + rng.range(0, max_delay),
                order: rng.next_u64(),
                from,
                to,
                wire: wire.clone(),
            }));
        }
        self.in_flight[link] += 1;
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
            self.in_flight[from * self.nodes + to] += 1;
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
                let link = q.from * self.nodes + q.to;
                self.in_flight[link] = self.in_flight[link].saturating_sub(1);
                if !self.blocked[link] {
                    due.push((q.from, q.to, q.wire));
                }
            }
        }
        due
    }
}

fn wire_kind(wire: &Wire) -> String {
    let debug = format!("{wire:?}");
    debug
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
}
