//! Watches: a client follows the changes to the keys in a range (a
//! prefix, for the HTTP API), round by round, from a round it names or from
//! now. One command runs per round; it may change several keys (a revoked
//! lease, an etcd txn), each at most once, all sent together. The round is
//! the events' id: a client that lost its connection (or its replica) asks
//! again from the round after the last it saw, at any replica, and misses
//! nothing and gets nothing twice, as long as that round is still in the
//! replica's history. The history also serves etcd reads at past
//! revisions (each event keeps the key's previous state).

use super::*;
use paxlog_kv::{KeyMeta, KeyRange, PreviousKv};

/// Events kept for resuming watches, at most (and at most
/// `WATCH_HISTORY_BYTES` of keys and values).
pub const WATCH_HISTORY_EVENTS: usize = 100_000;
pub const WATCH_HISTORY_BYTES: usize = 32 << 20;
/// Watches open at once at one replica.
pub const MAX_WATCHERS: usize = 1024;
/// Events queued for one watch beyond its replay; a watch that falls this
/// far behind is closed (its client resumes from its last round).
pub const WATCH_QUEUE_EVENTS: usize = 1024;

/// One change: `key` after `round` (`value: None`: deleted).
#[derive(Clone, Debug, Serialize)]
pub struct WatchEvent {
    pub round: u64,
    pub key: String,
    pub value: Option<Value>,
    /// The key's revisions and version after the change (`None`: deleted).
    #[serde(skip)]
    pub meta: Option<KeyMeta>,
    /// The lease the key is attached to after the change.
    #[serde(skip)]
    pub lease: Option<u64>,
    /// The key as it was before (`None`: it did not exist).
    #[serde(skip)]
    pub previous: Option<PreviousKv>,
    /// The last change of its round (a revoked lease deletes several keys
    /// in one round): a client resumes after the round once it saw this.
    #[serde(skip)]
    pub last_in_round: bool,
}

pub struct WatchRequest {
    pub range: KeyRange,
    /// The first round to report; `None`: from the next round applied.
    pub from_round: Option<u64>,
    pub reply: Reply<mpsc::Receiver<WatchEvent>>,
}

struct Watcher {
    range: KeyRange,
    tx: mpsc::Sender<WatchEvent>,
}

pub struct WatchHub {
    history: VecDeque<(WatchEvent, usize)>,
    history_bytes: usize,
    /// Every change at a round from here on is in `history`.
    history_from: u64,
    /// See [`WatchHub::compact`].
    compacted_revision: u64,
    watchers: Vec<Watcher>,
}

impl WatchHub {
    pub(crate) fn new(applied_round: u64) -> WatchHub {
        WatchHub {
            history: VecDeque::new(),
            history_bytes: 0,
            history_from: applied_round,
            compacted_revision: 0,
            watchers: Vec::new(),
        }
    }

    /// A change was applied: kept, and sent to the watches it matches.
    pub(crate) fn record(&mut self, event: WatchEvent) {
        self.watchers
            .retain(|w| !w.range.contains(&event.key) || w.tx.try_send(event.clone()).is_ok());
        let bytes = event.key.len()
            + event.value.as_ref().map_or(0, json_size)
            + event.previous.as_ref().map_or(0, |p| json_size(&p.value));
        self.history.push_back((event, bytes));
        self.history_bytes += bytes;
        while self.history.len() > WATCH_HISTORY_EVENTS || self.history_bytes > WATCH_HISTORY_BYTES
        {
            let Some((oldest, bytes)) = self.history.pop_front() else {
                break;
            };
            self.history_bytes -= bytes;
            self.history_from = oldest.round + 1;
        }
    }

    /// The store jumped to `applied_round` (a snapshot from a peer): the
    /// changes in between are unknown here, so the history restarts and
    /// open watches end (their clients resume, elsewhere if need be).
    pub(super) fn reset(&mut self, applied_round: u64) {
        self.history.clear();
        self.history_bytes = 0;
        self.history_from = applied_round;
        self.watchers.clear();
    }

    /// The first round whose changes are all kept.
    pub fn first_kept_round(&self) -> u64 {
        self.history_from
    }

    /// The kept changes at `round` and after, oldest first.
    pub fn events_from(&self, round: u64) -> impl DoubleEndedIterator<Item = &WatchEvent> {
        let start = self.history.partition_point(|(e, _)| e.round < round);
        self.history.range(start..).map(|(e, _)| e)
    }

    /// etcd's compaction at `revision`: reads below it are refused from
    /// now on (`compacted_revision`), and the changes no read or watch
    /// from it needs are dropped. A watch from `revision` needs the change
    /// that made it, written at round `revision - 1`.
    pub fn compact(&mut self, revision: u64) {
        let keep_from = revision.saturating_sub(1);
        while self
            .history
            .front()
            .is_some_and(|(e, _)| e.round < keep_from)
        {
            if let Some((_, bytes)) = self.history.pop_front() {
                self.history_bytes -= bytes;
            }
        }
        self.history_from = self.history_from.max(keep_from);
        self.compacted_revision = self.compacted_revision.max(revision);
    }

    /// The revision of the last etcd compaction here (0: none).
    pub fn compacted_revision(&self) -> u64 {
        self.compacted_revision
    }

    pub(super) fn subscribe(
        &mut self,
        range: KeyRange,
        from_round: Option<u64>,
        applied_round: u64,
    ) -> Result<mpsc::Receiver<WatchEvent>, DriverError> {
        let from = from_round.unwrap_or(applied_round);
        if from < self.history_from {
            return Err(DriverError::Gone(format!(
                "the changes before round {} are no longer kept here (asked from round {from}): read the current values and watch from round {applied_round}",
                self.history_from
            )));
        }
        self.watchers.retain(|w| !w.tx.is_closed());
        if self.watchers.len() >= MAX_WATCHERS {
            return Err(DriverError::Busy);
        }
        let replay: Vec<WatchEvent> = self
            .history
            .iter()
            .map(|(e, _)| e)
            .filter(|e| e.round >= from && range.contains(&e.key))
            .cloned()
            .collect();
        let (tx, rx) = mpsc::channel(replay.len() + WATCH_QUEUE_EVENTS);
        for event in replay {
            // Room for all of them was made above.
            let _ = tx.try_send(event);
        }
        self.watchers.push(Watcher { range, tx });
        Ok(rx)
    }

    pub(super) fn watcher_count(&self) -> usize {
        self.watchers.len()
    }
}

/// The size of `value` as compact JSON, roughly (for the history's bound).
fn json_size(value: &Value) -> usize {
    match value {
        Value::Null | Value::Bool(_) => 5,
        Value::Number(_) => 12,
        Value::String(s) => s.len() + 2,
        Value::Array(items) => 2 + items.iter().map(|v| json_size(v) + 1).sum::<usize>(),
        Value::Object(map) => {
            2 + map
                .iter()
                .map(|(k, v)| k.len() + 4 + json_size(v))
                .sum::<usize>()
        }
    }
}

impl Driver {
    /// After an entry was applied at `slot`: the keys it changed (the
    /// store notes them as it writes) go to the watches, with their values.
    pub(super) fn note_change(&mut self, slot: Slot) {
        let changes = self.kv.changes();
        let last = changes.len().saturating_sub(1);
        for (i, change) in changes.iter().enumerate() {
            let value = self.kv.get(&change.key).cloned();
            self.watch.record(WatchEvent {
                round: slot.0,
                key: change.key.clone(),
                meta: value.as_ref().and_then(|_| self.kv.meta(&change.key)),
                lease: value.as_ref().and_then(|_| self.kv.lease_of(&change.key)),
                value,
                previous: change.previous.clone(),
                last_in_round: i == last,
            });
        }
    }

    pub(super) fn start_watch(&mut self, request: WatchRequest) {
        let applied = self.kv.applied_upto().0;
        let answer = self
            .watch
            .subscribe(request.range, request.from_round, applied);
        self.metrics.watchers.set(self.watch.watcher_count() as i64);
        let _ = request.reply.send(answer);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn event(round: u64, key: &str) -> WatchEvent {
        WatchEvent {
            round,
            key: key.to_string(),
            value: Some(Value::from(round)),
            meta: None,
            lease: None,
            previous: None,
            last_in_round: true,
        }
    }

    fn drain(rx: &mut mpsc::Receiver<WatchEvent>) -> Vec<u64> {
        let mut rounds = Vec::new();
        while let Ok(e) = rx.try_recv() {
            rounds.push(e.round);
        }
        rounds
    }

    #[test]
    fn a_watch_replays_its_prefix_from_the_round_asked_then_follows() {
        let mut hub = WatchHub::new(0);
        for r in 0..6 {
            hub.record(event(r, if r % 2 == 0 { "a/x" } else { "b/x" }));
        }
        let mut rx = hub.subscribe(KeyRange::prefix("a/"), Some(2), 6).unwrap();
        assert_eq!(drain(&mut rx), vec![2, 4]);
        hub.record(event(6, "a/y"));
        hub.record(event(7, "b/y"));
        assert_eq!(drain(&mut rx), vec![6]);
        // From now: nothing replayed.
        let mut now = hub.subscribe(KeyRange::prefix(""), None, 8).unwrap();
        assert!(drain(&mut now).is_empty());
    }

    #[test]
    fn rounds_dropped_from_the_history_are_gone_and_a_snapshot_restarts_it() {
        let mut hub = WatchHub::new(10);
        assert!(matches!(
            hub.subscribe(KeyRange::prefix(""), Some(9), 10),
            Err(DriverError::Gone(_))
        ));
        for r in 10..(10 + WATCH_HISTORY_EVENTS as u64 + 5) {
            hub.record(event(r, "k"));
        }
        assert!(matches!(
            hub.subscribe(KeyRange::prefix(""), Some(14), 0),
            Err(DriverError::Gone(_))
        ));
        let mut rx = hub.subscribe(KeyRange::prefix(""), Some(15), 0).unwrap();
        assert_eq!(drain(&mut rx).len(), WATCH_HISTORY_EVENTS);
        // A snapshot from a peer: the open watch ends, the history restarts.
        hub.reset(500_000);
        assert!(rx.try_recv().is_err() && rx.is_closed());
        assert!(matches!(
            hub.subscribe(KeyRange::prefix(""), Some(499_999), 0),
            Err(DriverError::Gone(_))
        ));
        assert!(hub
            .subscribe(KeyRange::prefix(""), Some(500_000), 0)
            .is_ok());
    }

    #[test]
    fn a_watch_that_falls_behind_is_closed_and_the_history_has_a_byte_bound() {
        let mut hub = WatchHub::new(0);
        let mut slow = hub.subscribe(KeyRange::prefix(""), None, 0).unwrap();
        for r in 0..(WATCH_QUEUE_EVENTS as u64 + 1) {
            hub.record(event(r, "k"));
        }
        assert_eq!(hub.watcher_count(), 0, "dropped when its queue was full");
        assert_eq!(drain(&mut slow).len(), WATCH_QUEUE_EVENTS);
        assert!(slow.is_closed());
        let big = "x".repeat(1 << 20);
        for r in 2000..2040 {
            hub.record(WatchEvent {
                round: r,
                key: "big".into(),
                value: Some(Value::from(big.clone())),
                meta: None,
                lease: None,
                previous: None,
                last_in_round: true,
            });
        }
        assert!(hub.history_bytes <= WATCH_HISTORY_BYTES);
        assert!(hub.history.len() < 40);
    }
}
