//! Per-key linearizability check with the WGL checker of `todc-utils`
//! (an external crate), against a register with compare-and-swap.
//!
//! Indeterminate writes/CAS (timeouts, 5xx, broken connections) get their
//! response placed after every other event, Jepsen-style: the checker may
//! then linearize them anywhere after their invocation, including "never"
//! (= at the very end, where they are invisible).

use crate::history::{Kind, OpRec, Outcome};
use std::collections::BTreeMap;
use std::sync::mpsc;
use std::time::{Duration, Instant};
use todc_utils::linearizability::history::{Action, History};
use todc_utils::linearizability::WGLChecker;
use todc_utils::specifications::Specification;

#[derive(Clone, Debug)]
pub enum ROp {
    Read(Option<u64>),
    Write(u64),
    /// `result`: None if indeterminate, else (succeeded, current value if reported).
    Cas {
        expected: Option<u64>,
        new: u64,
        result: Option<(bool, Option<Option<u64>>)>,
    },
}

pub struct CasRegister;

impl Specification for CasRegister {
    type State = Option<u64>;
    type Operation = ROp;

    fn init() -> Self::State {
        None
    }

    fn apply(op: &ROp, state: &Option<u64>) -> (bool, Option<u64>) {
        match op {
            ROp::Read(v) => (v == state, *state),
            ROp::Write(v) => (true, Some(*v)),
            ROp::Cas {
                expected,
                new,
                result: None,
            } => {
                if expected == state {
                    (true, Some(*new))
                } else {
                    (true, *state)
                }
            }
            ROp::Cas {
                expected,
                new,
                result: Some((ok, current)),
            } => {
                let matches = expected == state;
                if matches != *ok {
                    return (false, *state);
                }
                let after = if matches { Some(*new) } else { *state };
                match current {
                    Some(c) if *c != after => (false, *state),
                    _ => (true, after),
                }
            }
        }
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct KeyVerdict {
    pub key: String,
    pub ops: usize,
    pub indeterminate: usize,
    /// Some(true) linearizable, Some(false) not, None: not decided in time.
    pub linearizable: Option<bool>,
}

fn to_rop(op: &OpRec) -> Option<ROp> {
    match (op.kind, op.outcome) {
        (_, Outcome::Fail) => None,
        (Kind::Read, Outcome::Ok) => Some(ROp::Read(op.read)),
        (Kind::Read, Outcome::Info) => None,
        (Kind::Write, _) => Some(ROp::Write(op.value?)),
        (Kind::Cas, o) => Some(ROp::Cas {
            expected: op.expected,
            new: op.value?,
            result: if o == Outcome::Ok {
                Some((op.cas_ok?, op.cas_current))
            } else {
                None
            },
        }),
    }
}

/// Builds the todc history of one key's operations.
fn build(ops: &[&OpRec]) -> Option<History<ROp>> {
    // (time, is_response, process, action)
    let mut events: Vec<(f64, bool, usize, Action<ROp>)> = Vec::new();
    for (pid, op) in ops.iter().enumerate() {
        let Some(r) = to_rop(op) else { continue };
        events.push((op.invoke_ms, false, pid, Action::Call(r.clone())));
        let at = if op.outcome == Outcome::Info {
            f64::INFINITY
        } else {
            op.complete_ms
        };
        events.push((at, true, pid, Action::Response(r)));
    }
    if events.is_empty() {
        return None;
    }
    // Calls before responses on ties: the weaker real-time constraint.
    events.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    Some(History::from_actions(
        events.into_iter().map(|(_, _, p, a)| (p, a)).collect(),
    ))
}

/// Checks every key; gives up (verdict None) on keys not done by `budget`.
/// Keys are checked cheapest first (fewest indeterminate operations, then
/// fewest operations): an indeterminate operation stays open to the end of
/// the history and can make one key's search exponential, and it must not
/// eat the budget of the others. With `stop_at_first_violation` the search
/// ends at the first non-linearizable key (the caller only needs one).
pub fn check_all(
    ops: &[OpRec],
    budget: Duration,
    stop_at_first_violation: bool,
) -> Vec<KeyVerdict> {
    let mut by_key: BTreeMap<String, Vec<OpRec>> = BTreeMap::new();
    for op in ops {
        by_key.entry(op.key.clone()).or_default().push(op.clone());
    }
    let keys: Vec<(String, Vec<OpRec>)> = by_key.into_iter().collect();
    let mut verdicts: Vec<KeyVerdict> = keys
        .iter()
        .map(|(k, v)| KeyVerdict {
            key: k.clone(),
            ops: v.iter().filter(|o| to_rop(o).is_some()).count(),
            indeterminate: v.iter().filter(|o| o.outcome == Outcome::Info).count(),
            linearizable: None,
        })
        .collect();
    let mut order: Vec<usize> = (0..keys.len()).collect();
    order.sort_by_key(|&i| (verdicts[i].indeterminate, verdicts[i].ops));
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for i in order {
            let v = &keys[i].1;
            let refs: Vec<&OpRec> = v.iter().collect();
            let ok = match build(&refs) {
                None => true,
                Some(h) => WGLChecker::<CasRegister>::is_linearizable(h),
            };
            if tx.send((i, ok)).is_err() {
                return;
            }
        }
    });
    let deadline = Instant::now() + budget;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((i, ok)) => {
                verdicts[i].linearizable = Some(ok);
                if !ok && stop_at_first_violation {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    verdicts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(kind: Kind, t0: f64, t1: f64, value: Option<u64>, read: Option<u64>) -> OpRec {
        OpRec {
            client: 0,
            node: 0,
            key: "k".into(),
            kind,
            value,
            expected: None,
            read,
            cas_ok: None,
            cas_current: None,
            outcome: Outcome::Ok,
            invoke_ms: t0,
            complete_ms: t1,
            error: None,
        }
    }

    #[test]
    fn stale_read_is_flagged() {
        let ops = vec![
            op(Kind::Write, 0.0, 1.0, Some(1), None),
            op(Kind::Write, 2.0, 3.0, Some(2), None),
            op(Kind::Read, 4.0, 5.0, None, Some(1)),
        ];
        let v = check_all(&ops, Duration::from_secs(5), false);
        assert_eq!(v[0].linearizable, Some(false));
    }

    #[test]
    fn indeterminate_write_may_apply_late() {
        let mut w = op(Kind::Write, 0.0, 1.0, Some(7), None);
        w.outcome = Outcome::Info;
        let ops = vec![
            w,
            op(Kind::Read, 2.0, 3.0, None, None),
            op(Kind::Read, 4.0, 5.0, None, Some(7)),
        ];
        let v = check_all(&ops, Duration::from_secs(5), false);
        assert_eq!(v[0].linearizable, Some(true));
    }
}
