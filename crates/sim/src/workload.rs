//! What simulated clients ask for: real `KvCommand`s on a handful of keys,
//! among them counters (`ctrN += 1`) whose final values expose any command
//! that ran twice, and (in some seeds) deletes of keys.

use paxlog_core::rng::SplitMix64;
use paxlog_core::Entry;
use paxlog_kv::{
    Compare, CompareOp, CompareTarget, KeyRange, KvCommand, KvOptions, KvStore, Txn, TxnOp,
};

/// Counter names. Statement names and keys share one namespace, so these
/// must not be among `KEYS`.
pub const COUNTERS: [&str; 2] = ["ctr0", "ctr1"];

/// Keys for puts and compare-and-sets. Few, so compare-and-sets succeed now
/// and then.
const KEYS: [&str; 4] = ["k0", "k1", "k2", "k3"];

/// One client command. Values are small integers so compare-and-sets with a
/// guessed expected value sometimes win.
pub fn draw_command(rng: &mut SplitMix64) -> KvCommand {
    let key = KEYS[rng.range(0, KEYS.len() as u64) as usize].to_string();
    let counter = COUNTERS[rng.range(0, COUNTERS.len() as u64) as usize];
    let small = |rng: &mut SplitMix64| rng.range(0, 4).to_string();
    match rng.range(0, 100) {
        0..55 => KvCommand::Put {
            key,
            value_json: small(rng),
        },
        55..70 => {
            let expected_json = if rng.chance(1, 4) {
                None
            } else {
                Some(small(rng))
            };
            let new_json = small(rng);
            // On k3, the same compare-and-set as etcd's API sends it: a
            // transaction (no extra draw, so seeds keep their schedules).
            if key == "k3" {
                etcd_style_cas(key, expected_json, new_json)
            } else {
                KvCommand::Cas {
                    key,
                    expected_json,
                    new_json,
                }
            }
        }
        // State dependent: running one twice shows in the counter's value.
        70..95 => KvCommand::Exec {
            source: format!("{counter} += 1"),
        },
        // Creates the counter if it is absent (`+=` on a missing name fails
        // with a name error, which changes nothing).
        _ => KvCommand::Cas {
            key: counter.to_string(),
            expected_json: None,
            new_json: "0".to_string(),
        },
    }
}

/// A compare-and-set as an etcd client writes it: compare the value (or,
/// for "absent", the create revision with 0), put on success, read the key
/// on failure.
fn etcd_style_cas(key: String, expected_json: Option<String>, new_json: String) -> KvCommand {
    let target = match &expected_json {
        Some(json) => CompareTarget::Value(json.clone().into_bytes()),
        None => CompareTarget::CreateRevision(0),
    };
    KvCommand::Txn(Txn {
        compares: vec![Compare {
            range: KeyRange::One(key.clone()),
            target,
            op: CompareOp::Equal,
        }],
        success: vec![TxnOp::Put {
            key: key.clone(),
            value_json: new_json,
            lease: None,
            ignore_value: false,
            ignore_lease: false,
            prev_kv: false,
        }],
        failure: vec![TxnOp::Range {
            range: KeyRange::One(key),
            limit: 0,
            keys_only: false,
            count_only: false,
        }],
    })
}

/// Keys a linearizable read asks for.
pub fn draw_read_key(rng: &mut SplitMix64) -> &'static str {
    let all = [KEYS[0], KEYS[1], KEYS[2], KEYS[3], COUNTERS[0], COUNTERS[1]];
    all[rng.range(0, all.len() as u64) as usize]
}

/// The one key a command may change (a counter for `ctrN += 1`).
pub fn key_of(command: &KvCommand) -> Option<&str> {
    match command {
        KvCommand::Put { key, .. } | KvCommand::Cas { key, .. } => Some(key),
        KvCommand::Txn(txn) => txn.success.iter().find_map(|op| match op {
            TxnOp::Put { key, .. } => Some(key.as_str()),
            _ => None,
        }),
        KvCommand::Exec { source } => {
            if let Some(name) = source.strip_prefix("del ") {
                return KEYS.iter().copied().find(|k| *k == name);
            }
            let name = source.strip_suffix(" += 1")?;
            COUNTERS.iter().copied().find(|c| *c == name)
        }
        _ => None,
    }
}

/// The counter an entry increments, if it is one of our `ctrN += 1`.
pub fn counter_of(entry: &Entry) -> Option<&'static str> {
    let Entry::Command { payload, .. } = entry else {
        return None;
    };
    let Ok(KvCommand::Exec { source }) = KvCommand::decode(payload) else {
        return None;
    };
    let name = source.strip_suffix(" += 1")?;
    COUNTERS.iter().copied().find(|c| *c == name)
}

/// Store options for one seed (identical on all its replicas): mostly the
/// defaults, under which no session expires in a run; sometimes a session
/// table smaller than the number of clients, or sessions that expire after a
/// few dozen idle rounds, so `request_expired` answers happen.
pub fn draw_kv_options(rng: &mut SplitMix64, clients: usize) -> (KvOptions, usize) {
    let mut options = KvOptions::default();
    let mut clients = clients;
    let tiny_table = |rng: &mut SplitMix64, options: &mut KvOptions, clients: &mut usize| {
        options.max_sessions = rng.range(2, 5) as usize;
        // More clients than sessions: sessions keep expiring (least recently
        // used first) while their clients are still busy.
        *clients = (*clients).max(options.max_sessions + rng.range(1, 3) as usize);
    };
    match rng.range(0, 20) {
        0..=3 => tiny_table(rng, &mut options, &mut clients),
        4..=6 => options.session_expiry_rounds = rng.range(20, 201),
        7 => {
            tiny_table(rng, &mut options, &mut clients);
            options.session_expiry_rounds = rng.range(20, 201);
        }
        _ => {}
    }
    (options, clients)
}

/// A store with the run's options and, for the planted bug, the stamp check
/// switched off.
pub fn new_store(options: KvOptions, ignore_request_stamps: bool) -> KvStore {
    let mut store = KvStore::new(options);
    store.ignore_request_stamps = ignore_request_stamps;
    store
}

/// A digest of a store's replicated state (its snapshot image, which is
/// canonical: keys and sessions in order), to compare replicas cheaply.
pub fn digest(image: &[u8]) -> u64 {
    use std::hash::{DefaultHasher, Hash, Hasher};
    let mut hasher = DefaultHasher::new();
    image.hash(&mut hasher);
    hasher.finish()
}
