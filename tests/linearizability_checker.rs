//! Tests of the linearizability checker in `common/linearizability.rs`:
//! hand-written histories with known verdicts, histories generated from a
//! real sequential register under random interleavings (must pass), the same
//! with an impossible read injected (must fail), the state limit, the
//! recorder, and the JSON export.

#[path = "common/linearizability.rs"]
mod linearizability;

use linearizability::*;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

// ---------------------------------------------------------------------------
// History builders
// ---------------------------------------------------------------------------

fn op(client: u64, key: &str, call: u64, ret: Option<u64>, kind: OpKind) -> Op {
    Op {
        client,
        key: key.to_string(),
        call_ns: call,
        return_ns: ret,
        kind,
    }
}

fn put(client: u64, key: &str, call: u64, ret: u64, value: &str) -> Op {
    let kind = OpKind::Put {
        value: value.to_string(),
    };
    op(client, key, call, Some(ret), kind)
}

fn put_unknown(client: u64, key: &str, call: u64, value: &str) -> Op {
    let kind = OpKind::Put {
        value: value.to_string(),
    };
    op(client, key, call, None, kind)
}

fn get(client: u64, key: &str, call: u64, ret: u64, result: Option<&str>) -> Op {
    let kind = OpKind::Get {
        result: result.map(str::to_string),
    };
    op(client, key, call, Some(ret), kind)
}

fn cas(
    client: u64,
    key: &str,
    call: u64,
    ret: Option<u64>,
    expect: Option<&str>,
    new: &str,
    result: Option<bool>,
) -> Op {
    let kind = OpKind::Cas {
        expect: expect.map(str::to_string),
        new: new.to_string(),
        result,
    };
    op(client, key, call, ret, kind)
}

// ---------------------------------------------------------------------------
// Table of hand-written histories
// ---------------------------------------------------------------------------

struct Case {
    name: &'static str,
    ops: Vec<Op>,
    linearizable: bool,
}

fn case(name: &'static str, linearizable: bool, ops: Vec<Op>) -> Case {
    Case {
        name,
        ops,
        linearizable,
    }
}

const K: &str = "k";

fn cases() -> Vec<Case> {
    vec![
        case("empty history", true, vec![]),
        case(
            "get of a fresh key is absent",
            true,
            vec![get(1, K, 0, 1, None)],
        ),
        case(
            "sequential put/get/put/get",
            true,
            vec![
                put(1, K, 0, 1, "a"),
                get(1, K, 2, 3, Some("a")),
                put(2, K, 4, 5, "b"),
                get(3, K, 6, 7, Some("b")),
            ],
        ),
        case(
            "sequential cas chain",
            true,
            vec![
                cas(1, K, 0, Some(1), None, "a", Some(true)),
                cas(2, K, 2, Some(3), Some("a"), "b", Some(true)),
                cas(1, K, 4, Some(5), Some("a"), "c", Some(false)),
                get(3, K, 6, 7, Some("b")),
            ],
        ),
        case(
            "input order is irrelevant (unsorted ops)",
            true,
            vec![
                get(3, K, 6, 7, Some("b")),
                put(2, K, 4, 5, "b"),
                get(1, K, 2, 3, Some("a")),
                put(1, K, 0, 1, "a"),
            ],
        ),
        case(
            "overlapping puts, reads order them one way",
            true,
            vec![
                put(1, K, 0, 10, "a"),
                put(2, K, 5, 15, "b"),
                get(3, K, 6, 12, Some("a")),
                get(3, K, 20, 30, Some("b")),
            ],
        ),
        case(
            "overlapping puts, reads order them the other way",
            true,
            vec![
                put(1, K, 0, 10, "a"),
                put(2, K, 5, 15, "b"),
                get(3, K, 6, 12, Some("b")),
                get(3, K, 20, 30, Some("a")),
            ],
        ),
        case(
            "overlapping puts, later reads disagree",
            false,
            vec![
                put(1, K, 0, 10, "a"),
                put(2, K, 5, 15, "b"),
                get(3, K, 20, 30, Some("b")),
                get(4, K, 31, 40, Some("a")),
            ],
        ),
        case(
            "read concurrent with a write may see the old value",
            true,
            vec![
                put(1, K, 0, 1, "a"),
                put(2, K, 10, 20, "b"),
                get(3, K, 11, 19, Some("a")),
            ],
        ),
        case(
            "read concurrent with a write may see the new value",
            true,
            vec![
                put(1, K, 0, 1, "a"),
                put(2, K, 10, 20, "b"),
                get(3, K, 11, 19, Some("b")),
            ],
        ),
        case(
            "concurrent reads see new then old (allowed: read 2 before write)",
            true,
            vec![
                put(1, K, 0, 1, "a"),
                put(2, K, 10, 40, "b"),
                get(3, K, 11, 20, Some("b")),
                get(4, K, 12, 30, Some("a")),
            ],
        ),
        case(
            "new-old inversion: read starts after another read saw the new value",
            false,
            vec![
                put(1, K, 0, 1, "a"),
                put(2, K, 10, 40, "b"),
                get(3, K, 11, 20, Some("b")),
                get(4, K, 21, 30, Some("a")),
            ],
        ),
        case(
            "stale read after a completed write",
            false,
            vec![
                put(1, K, 0, 1, "a"),
                put(2, K, 2, 3, "b"),
                get(3, K, 4, 5, Some("a")),
            ],
        ),
        case(
            "read of absent after a completed write",
            false,
            vec![put(1, K, 0, 1, "a"), get(2, K, 2, 3, None)],
        ),
        case(
            "read of a value never written",
            false,
            vec![put(1, K, 0, 1, "a"), get(2, K, 2, 3, Some("zzz"))],
        ),
        case(
            "read of a value before its write was called",
            false,
            vec![get(2, K, 0, 1, Some("a")), put(1, K, 2, 3, "a")],
        ),
        case(
            "touching intervals count as concurrent",
            true,
            vec![put(1, K, 0, 5, "a"), get(2, K, 5, 6, None)],
        ),
        case(
            "lost update: two successful cas from the same expected value",
            false,
            vec![
                put(1, K, 0, 1, "0"),
                cas(2, K, 2, Some(10), Some("0"), "1", Some(true)),
                cas(3, K, 3, Some(11), Some("0"), "2", Some(true)),
            ],
        ),
        case(
            "concurrent cas from the same value: one wins, one fails",
            true,
            vec![
                put(1, K, 0, 1, "0"),
                cas(2, K, 2, Some(10), Some("0"), "1", Some(true)),
                cas(3, K, 3, Some(11), Some("0"), "2", Some(false)),
                get(1, K, 12, 13, Some("1")),
            ],
        ),
        case(
            "cas fails although the value certainly matched",
            false,
            vec![
                put(1, K, 0, 1, "a"),
                cas(2, K, 2, Some(3), Some("a"), "b", Some(false)),
            ],
        ),
        case(
            "cas fails, a concurrent write explains it",
            true,
            vec![
                put(1, K, 0, 1, "a"),
                put(3, K, 2, 4, "c"),
                cas(2, K, 2, Some(3), Some("a"), "b", Some(false)),
                get(1, K, 5, 6, Some("c")),
            ],
        ),
        case(
            "cas expecting absent succeeds on a fresh key",
            true,
            vec![
                cas(1, K, 0, Some(1), None, "a", Some(true)),
                get(1, K, 2, 3, Some("a")),
            ],
        ),
        case(
            "cas expecting absent succeeds on an existing key",
            false,
            vec![
                put(1, K, 0, 1, "a"),
                cas(2, K, 2, Some(3), None, "b", Some(true)),
            ],
        ),
        case(
            "cas expecting absent fails on a fresh key",
            false,
            vec![cas(1, K, 0, Some(1), None, "a", Some(false))],
        ),
        case(
            "successful cas must be visible to later reads",
            false,
            vec![
                put(1, K, 0, 1, "a"),
                cas(2, K, 2, Some(3), Some("a"), "b", Some(true)),
                get(3, K, 4, 5, Some("a")),
            ],
        ),
        case(
            "unknown put, observed later",
            true,
            vec![
                put(1, K, 0, 1, "a"),
                put_unknown(2, K, 2, "x"),
                get(3, K, 10, 11, Some("x")),
            ],
        ),
        case(
            "unknown put, never observed",
            true,
            vec![
                put(1, K, 0, 1, "a"),
                put_unknown(2, K, 2, "x"),
                get(3, K, 10, 11, Some("a")),
                get(3, K, 12, 13, Some("a")),
            ],
        ),
        case(
            "unknown put takes effect long after later ops",
            true,
            vec![
                put_unknown(2, K, 0, "x"),
                put(1, K, 5, 6, "a"),
                get(3, K, 10, 11, Some("a")),
                put(1, K, 20, 21, "b"),
                get(3, K, 30, 31, Some("x")),
            ],
        ),
        case(
            "unknown put observed, then undone",
            false,
            vec![
                put(1, K, 0, 1, "a"),
                put_unknown(2, K, 2, "x"),
                get(3, K, 3, 4, Some("x")),
                get(3, K, 5, 6, Some("a")),
            ],
        ),
        case(
            "unknown put observed before its call",
            false,
            vec![get(3, K, 0, 1, Some("x")), put_unknown(2, K, 5, "x")],
        ),
        case(
            "unknown put with a failed cas on the key (no pruning)",
            true,
            vec![
                put(1, K, 0, 1, "a"),
                put_unknown(2, K, 2, "x"),
                cas(3, K, 5, Some(6), Some("a"), "b", Some(false)),
                get(1, K, 7, 8, Some("x")),
            ],
        ),
        case(
            "failed cas explained only by an unknown put nobody reads",
            true,
            vec![
                put(1, K, 0, 1, "a"),
                put_unknown(2, K, 2, "x"),
                cas(3, K, 5, Some(6), Some("a"), "b", Some(false)),
                put(1, K, 7, 8, "c"),
                get(1, K, 9, 10, Some("c")),
            ],
        ),
        case(
            "unknown cas took effect",
            true,
            vec![
                put(1, K, 0, 1, "a"),
                cas(2, K, 2, None, Some("a"), "b", None),
                get(3, K, 10, 11, Some("b")),
            ],
        ),
        case(
            "unknown cas did not take effect",
            true,
            vec![
                put(1, K, 0, 1, "a"),
                cas(2, K, 2, None, Some("a"), "b", None),
                get(3, K, 10, 11, Some("a")),
            ],
        ),
        case(
            "unknown cas takes effect between two reads",
            true,
            vec![
                put(1, K, 0, 1, "a"),
                cas(2, K, 2, None, Some("a"), "b", None),
                get(3, K, 10, 11, Some("a")),
                get(3, K, 12, 13, Some("b")),
            ],
        ),
        case(
            "unknown cas observed, then undone",
            false,
            vec![
                put(1, K, 0, 1, "a"),
                cas(2, K, 2, None, Some("a"), "b", None),
                get(3, K, 10, 11, Some("b")),
                get(3, K, 12, 13, Some("a")),
            ],
        ),
        case(
            "unknown cas cannot succeed when the value never matched",
            false,
            vec![
                put(1, K, 0, 1, "a"),
                cas(2, K, 2, None, Some("z"), "b", None),
                get(3, K, 10, 11, Some("b")),
            ],
        ),
        case(
            "cas that returned an error (result unknown) may apply later",
            true,
            vec![
                put(1, K, 0, 1, "a"),
                cas(2, K, 2, Some(3), Some("a"), "b", None),
                get(3, K, 10, 11, Some("a")),
                get(3, K, 12, 13, Some("b")),
            ],
        ),
        case(
            "timed-out cas with a result is still unknown",
            true,
            vec![
                put(1, K, 0, 1, "a"),
                cas(2, K, 2, None, Some("a"), "b", Some(true)),
                get(3, K, 10, 11, Some("a")),
            ],
        ),
        case(
            "get without an answer is ignored",
            true,
            vec![
                put(1, K, 0, 1, "a"),
                op(
                    2,
                    K,
                    2,
                    None,
                    OpKind::Get {
                        result: Some("nonsense".into()),
                    },
                ),
            ],
        ),
        case(
            "many keys, each fine on its own",
            true,
            vec![
                put(1, "a", 0, 10, "1"),
                put(2, "b", 0, 10, "1"),
                put(3, "c", 0, 10, "1"),
                get(1, "a", 11, 12, Some("1")),
                get(2, "b", 11, 12, Some("1")),
                get(3, "c", 11, 12, Some("1")),
                get(4, "d", 11, 12, None),
            ],
        ),
        case(
            "keys are separate registers: a put to one is not seen by another",
            false,
            vec![put(1, "a", 0, 1, "1"), get(2, "b", 2, 3, Some("1"))],
        ),
    ]
}

#[test]
fn table_of_histories() {
    let mut wrong = Vec::new();
    for c in cases() {
        let r = check(&c.ops);
        let expected = if c.linearizable {
            r.ok
        } else {
            r.is_violation() && r.failure.is_some()
        };
        if !expected {
            wrong.push(format!(
                "case {:?}: expected {}, got:\n{r}",
                c.name,
                if c.linearizable {
                    "linearizable"
                } else {
                    "a violation"
                }
            ));
        }
        let mut keys: Vec<&str> = c.ops.iter().map(|o| o.key.as_str()).collect();
        keys.sort_unstable();
        keys.dedup();
        assert_eq!(r.keys_checked, keys.len(), "case {:?}", c.name);
        assert_eq!(r.per_key.len(), keys.len(), "case {:?}", c.name);
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn failure_report_names_key_and_lists_ops() {
    let ops = vec![
        put(1, "good", 0, 1, "a"),
        get(2, "good", 2, 3, Some("a")),
        put(1, "bad", 0, 1, "a"),
        put(2, "bad", 2, 3, "b"),
        get(3, "bad", 4, 5, Some("a")),
        put(1, "zzz", 0, 1, "a"),
    ];
    let r = check(&ops);
    assert!(!r.ok);
    assert_eq!(
        r.verdict,
        Verdict::NotLinearizable {
            key: "bad".to_string()
        }
    );
    assert_eq!(r.keys_checked, 3);
    assert_eq!(r.ops_checked, 6);
    let verdicts: Vec<(&str, bool)> = r
        .per_key
        .iter()
        .map(|k| (k.key.as_str(), k.verdict == Verdict::Linearizable))
        .collect();
    assert_eq!(
        verdicts,
        vec![("bad", false), ("good", true), ("zzz", true)]
    );
    let f = r.failure.as_ref().expect("failure details");
    assert_eq!(f.key, "bad");
    assert_eq!(f.ops.len(), 3);
    assert!(f.ops.windows(2).all(|w| w[0].call_ns <= w[1].call_ns));
    assert!(f.explanation.contains("\"bad\""), "{}", f.explanation);
    assert!(
        f.explanation.contains("get() -> \"a\""),
        "{}",
        f.explanation
    );
    let text = r.to_string();
    assert!(text.contains("NotLinearizable"), "{text}");
}

#[test]
fn malformed_history_is_invalid_not_ok() {
    let r = check(&[put(1, K, 10, 5, "a")]);
    assert!(!r.ok);
    assert!(!r.is_violation());
    assert!(matches!(r.verdict, Verdict::Invalid { .. }), "{r}");
}

/// `n` overlapping puts followed by a read of a value never written: the
/// search must try every order of the puts before it can give up.
fn exhaustive_history(n: u64) -> Vec<Op> {
    let mut ops: Vec<Op> = (0..n)
        .map(|c| put(c, K, c, 1000, &format!("v{c}")))
        .collect();
    ops.push(get(99, K, 2000, 2001, Some("never")));
    ops
}

#[test]
fn state_limit_gives_unknown_not_pass() {
    let ops = exhaustive_history(12);
    let r = check_with(
        &ops,
        &CheckOptions {
            max_states_per_key: 500,
            ..CheckOptions::default()
        },
    );
    assert!(!r.ok);
    assert!(!r.is_violation());
    assert_eq!(r.verdict, Verdict::Unknown { key: K.to_string() });
    assert_eq!(r.per_key[0].states, 500);

    // The memory bound works the same way (1 word of bitset + overhead
    // per entry: 48 bytes).
    let r = check_with(
        &ops,
        &CheckOptions {
            max_memo_bytes_per_key: 48 * 300,
            ..CheckOptions::default()
        },
    );
    assert_eq!(r.verdict, Verdict::Unknown { key: K.to_string() });
    assert_eq!(r.per_key[0].states, 300);

    // With the default limits the same history is decided.
    let r = check(&ops);
    assert!(r.is_violation(), "{r}");
}

// ---------------------------------------------------------------------------
// Generated histories
// ---------------------------------------------------------------------------

/// SplitMix64: small, deterministic, good enough for test generation.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

struct GenParams {
    clients: u64,
    keys: u64,
    ops_per_client: u64,
    /// Percent chance that an op times out (unknown outcome).
    timeout_percent: u64,
}

#[derive(Clone, Copy, PartialEq)]
enum Phase {
    /// Called, not yet applied to the register.
    Called,
    /// Applied; the answer is on its way.
    Applied,
}

/// Runs clients against one real sequential register per key, with random
/// interleavings of call, linearization point and return, and records what
/// the clients see. Ops that time out are recorded with unknown outcome and
/// may still be applied later, or never. Every history produced is
/// linearizable by construction.
fn generate(rng: &mut Rng, p: &GenParams) -> Vec<Op> {
    let mut reg: HashMap<String, Option<String>> = HashMap::new();
    let mut written: HashMap<String, Vec<String>> = HashMap::new();
    let mut ops: Vec<Op> = Vec::new();
    let mut dropped = vec![];
    // Per client: ops left, and the in-flight op (index into ops, phase).
    let mut left: Vec<u64> = vec![p.ops_per_client; p.clients as usize];
    let mut inflight: Vec<Option<(usize, Phase)>> = vec![None; p.clients as usize];
    // Timed-out ops not yet applied: they may be applied later, or never.
    let mut zombies: Vec<usize> = Vec::new();
    let mut t: u64 = 0;
    let mut seq = 0u64;

    // Applies `op` to the register and fills in what it observed.
    fn apply(op: &mut Op, reg: &mut HashMap<String, Option<String>>) {
        let cur = reg.entry(op.key.clone()).or_insert(None);
        match &mut op.kind {
            OpKind::Put { value } => *cur = Some(value.clone()),
            OpKind::Get { result } => *result = cur.clone(),
            OpKind::Cas {
                expect,
                new,
                result,
            } => {
                let ok = *cur == *expect;
                if ok {
                    *cur = Some(new.clone());
                }
                *result = Some(ok);
            }
        }
    }

    loop {
        let active = left.iter().any(|&l| l > 0) || inflight.iter().any(Option::is_some);
        if !active {
            break;
        }
        t += 1 + rng.below(3);
        // Occasionally apply (or forget) a zombie.
        if !zombies.is_empty() && rng.chance(10) {
            let z = zombies.swap_remove(rng.below(zombies.len() as u64) as usize);
            if rng.chance(50) {
                apply(&mut ops[z], &mut reg);
            }
            // The client never learns the result.
            if let OpKind::Cas { result, .. } = &mut ops[z].kind {
                *result = None;
            }
            continue;
        }
        let c = rng.below(p.clients) as usize;
        match inflight[c] {
            None if left[c] > 0 => {
                left[c] -= 1;
                seq += 1;
                let key = format!("key{}", rng.below(p.keys));
                let history = written.entry(key.clone()).or_default();
                let kind = match rng.below(3) {
                    0 => {
                        let value = format!("c{c}-{seq}");
                        history.push(value.clone());
                        OpKind::Put { value }
                    }
                    1 => OpKind::Get { result: None },
                    _ => {
                        let expect = if rng.chance(50) {
                            reg.get(&key).cloned().flatten()
                        } else if !history.is_empty() && rng.chance(80) {
                            Some(history[rng.below(history.len() as u64) as usize].clone())
                        } else {
                            None
                        };
                        let new = format!("c{c}-{seq}");
                        history.push(new.clone());
                        OpKind::Cas {
                            expect,
                            new,
                            result: None,
                        }
                    }
                };
                ops.push(Op {
                    client: c as u64,
                    key,
                    call_ns: t,
                    return_ns: None,
                    kind,
                });
                inflight[c] = Some((ops.len() - 1, Phase::Called));
            }
            None => {}
            Some((i, phase)) => {
                if rng.chance(p.timeout_percent) {
                    // Time out: the client gives up and moves on.
                    inflight[c] = None;
                    if matches!(ops[i].kind, OpKind::Get { .. }) {
                        dropped.push(i); // a failed get is not recorded
                    } else if phase == Phase::Called {
                        zombies.push(i);
                    } else if let OpKind::Cas { result, .. } = &mut ops[i].kind {
                        *result = None;
                    }
                } else if phase == Phase::Called {
                    apply(&mut ops[i], &mut reg);
                    inflight[c] = Some((i, Phase::Applied));
                } else {
                    ops[i].return_ns = Some(t);
                    inflight[c] = None;
                }
            }
        }
    }
    // Zombies never applied: outcome unknown, which they already are.
    for z in zombies {
        if let OpKind::Cas { result, .. } = &mut ops[z].kind {
            *result = None;
        }
    }
    dropped.sort_unstable();
    for i in dropped.into_iter().rev() {
        ops.remove(i);
    }
    // Shuffle: the checker must not rely on input order.
    for i in (1..ops.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        ops.swap(i, j);
    }
    ops
}

#[test]
fn random_valid_histories_are_accepted() {
    let mut unknown_ops = 0;
    for seed in 0..400u64 {
        let mut rng = Rng(seed);
        let p = GenParams {
            clients: 1 + rng.below(6),
            keys: 1 + rng.below(3),
            ops_per_client: 1 + rng.below(30),
            timeout_percent: [0, 3, 10][rng.below(3) as usize],
        };
        let ops = generate(&mut rng, &p);
        unknown_ops += ops.iter().filter(|o| o.return_ns.is_none()).count();
        let r = check(&ops);
        assert!(
            r.ok,
            "seed {seed}: generated history rejected:\n{r}\n{}",
            to_porcupine_json(&ops)
        );
        assert_eq!(r.ops_checked, ops.len(), "seed {seed}");
    }
    assert!(
        unknown_ops > 100,
        "generator made few unknown ops: {unknown_ops}"
    );
}

#[test]
fn random_histories_with_an_impossible_read_are_rejected() {
    let mut mutated = 0;
    for seed in 1000..1200u64 {
        let mut rng = Rng(seed);
        let p = GenParams {
            clients: 1 + rng.below(5),
            keys: 1 + rng.below(3),
            ops_per_client: 1 + rng.below(25),
            timeout_percent: [0, 5][rng.below(2) as usize],
        };
        let mut ops = generate(&mut rng, &p);
        let gets: Vec<usize> = (0..ops.len())
            .filter(|&i| matches!(ops[i].kind, OpKind::Get { .. }))
            .collect();
        if gets.is_empty() {
            continue;
        }
        let i = gets[rng.below(gets.len() as u64) as usize];
        ops[i].kind = OpKind::Get {
            result: Some("never-written".to_string()),
        };
        mutated += 1;
        let r = check(&ops);
        assert!(
            r.is_violation(),
            "seed {seed}: impossible read not caught:\n{r}"
        );
        let f = r.failure.as_ref().expect("failure details");
        assert_eq!(f.key, ops[i].key, "seed {seed}");
    }
    assert!(mutated > 100, "only {mutated} histories mutated");
}

#[test]
fn many_keys_are_checked_independently() {
    let mut rng = Rng(7);
    let p = GenParams {
        clients: 8,
        keys: 50,
        ops_per_client: 100,
        timeout_percent: 5,
    };
    let ops = generate(&mut rng, &p);
    let r = check(&ops);
    assert!(r.ok, "{r}");
    assert_eq!(r.keys_checked, 50);
    assert_eq!(r.ops_checked, ops.len());
    assert_eq!(r.per_key.iter().map(|k| k.ops).sum::<usize>(), ops.len());
}

/// 5 clients × 200 ops on 3 keys, every client nearly always in flight, with
/// timeouts. No timing assertion: it must simply come back with a verdict.
#[test]
fn performance_sanity() {
    let mut rng = Rng(42);
    let p = GenParams {
        clients: 5,
        keys: 3,
        ops_per_client: 200,
        timeout_percent: 3,
    };
    let ops = generate(&mut rng, &p);
    let started = Instant::now();
    let r = check(&ops);
    let states: u64 = r.per_key.iter().map(|k| k.states).sum();
    eprintln!(
        "valid: {} ops, {} keys, {states} states, {:?}",
        r.ops_checked,
        r.keys_checked,
        started.elapsed()
    );
    assert!(r.ok, "{r}");

    // The same with an impossible read near the end: the search has to
    // exhaust the alternatives before it can say no.
    let mut bad = ops.clone();
    let last_get = (0..bad.len())
        .filter(|&i| matches!(bad[i].kind, OpKind::Get { .. }))
        .max_by_key(|&i| bad[i].call_ns)
        .expect("a get");
    bad[last_get].kind = OpKind::Get {
        result: Some("never-written".to_string()),
    };
    let started = Instant::now();
    let r = check(&bad);
    let states: u64 = r.per_key.iter().map(|k| k.states).sum();
    eprintln!(
        "invalid: {:?}, {states} states, {:?}",
        r.verdict,
        started.elapsed()
    );
    assert!(!r.ok);
    assert!(
        matches!(
            r.verdict,
            Verdict::NotLinearizable { .. } | Verdict::Unknown { .. }
        ),
        "{r}"
    );
}

/// Brute-force reference: tries every order of every subset of the ops that
/// contains all ops with known outcome, respecting real time. Single key.
fn brute_force_linearizable(ops: &[Op]) -> bool {
    struct B {
        call: u64,
        ret: Option<u64>,
        kind: OpKind,
    }
    let bs: Vec<B> = ops
        .iter()
        .filter(|o| o.return_ns.is_some() || !matches!(o.kind, OpKind::Get { .. }))
        .map(|o| {
            let known =
                o.return_ns.is_some() && !matches!(o.kind, OpKind::Cas { result: None, .. });
            B {
                call: o.call_ns,
                ret: if known { o.return_ns } else { None },
                kind: o.kind.clone(),
            }
        })
        .collect();
    fn step(b: &B, state: &Option<String>) -> Option<Option<String>> {
        match &b.kind {
            OpKind::Put { value } => Some(Some(value.clone())),
            OpKind::Get { result } => (result == state).then(|| state.clone()),
            OpKind::Cas {
                expect,
                new,
                result,
            } => {
                let matches = expect == state;
                match (b.ret, result) {
                    (Some(_), Some(false)) => (!matches).then(|| state.clone()),
                    _ => matches.then(|| Some(new.clone())),
                }
            }
        }
    }
    fn go(bs: &[B], used: &mut Vec<bool>, state: &Option<String>) -> bool {
        let done = bs
            .iter()
            .zip(used.iter())
            .all(|(b, &u)| u || b.ret.is_none());
        if done {
            return true;
        }
        for i in 0..bs.len() {
            if used[i] {
                continue;
            }
            let blocked = (0..bs.len())
                .any(|j| j != i && !used[j] && bs[j].ret.is_some_and(|r| r < bs[i].call));
            if blocked {
                continue;
            }
            if let Some(next) = step(&bs[i], state) {
                used[i] = true;
                let ok = go(bs, used, &next);
                used[i] = false;
                if ok {
                    return true;
                }
            }
        }
        false
    }
    let mut used = vec![false; bs.len()];
    go(&bs, &mut used, &None)
}

/// Small arbitrary (mostly wrong) single-key histories: the checker must
/// agree with the brute-force reference on every one.
#[test]
fn agrees_with_brute_force_on_small_histories() {
    let values = ["a", "b", "c"];
    let (mut yes, mut no) = (0, 0);
    for seed in 0..8000u64 {
        let mut rng = Rng(seed ^ 0x5eed);
        let n = 1 + rng.below(8);
        let mut ops = Vec::new();
        for c in 0..n {
            let call = rng.below(20);
            let ret = call + rng.below(8);
            let ret = if rng.chance(20) { None } else { Some(ret) };
            let value = |rng: &mut Rng| values[rng.below(3) as usize].to_string();
            let kind = match rng.below(3) {
                0 => OpKind::Put {
                    value: value(&mut rng),
                },
                1 => OpKind::Get {
                    result: if rng.chance(25) {
                        None
                    } else {
                        Some(value(&mut rng))
                    },
                },
                _ => OpKind::Cas {
                    expect: if rng.chance(25) {
                        None
                    } else {
                        Some(value(&mut rng))
                    },
                    new: value(&mut rng),
                    result: [None, Some(true), Some(false)][rng.below(3) as usize],
                },
            };
            ops.push(op(c, K, call, ret, kind));
        }
        let expected = brute_force_linearizable(&ops);
        let r = check(&ops);
        assert!(
            !matches!(r.verdict, Verdict::Unknown { .. }),
            "seed {seed}: {r}"
        );
        assert_eq!(r.ok, expected, "seed {seed}: {ops:#?}\n{r}");
        if expected {
            yes += 1;
        } else {
            no += 1;
        }
    }
    assert!(yes > 500 && no > 500, "unbalanced: {yes} ok, {no} not");
}

// ---------------------------------------------------------------------------
// Recorder
// ---------------------------------------------------------------------------

#[test]
fn recorder_is_shareable() {
    fn assert_traits<T: Clone + Send + Sync + 'static>() {}
    fn assert_send<T: Send + 'static>() {}
    assert_traits::<Recorder>();
    assert_send::<PendingOp<PutCall>>();
    assert_send::<PendingOp<GetCall>>();
    assert_send::<PendingOp<CasCall>>();
}

#[test]
fn recorder_outcomes() {
    let rec = Recorder::new();
    rec.put(1, "k", "a").ok();
    rec.get(1, "k").ok(Some("a".to_string()));
    rec.put(2, "k", "lost").unknown();
    rec.get(2, "k").unknown(); // dropped
    rec.cas(3, "k", Some("a".to_string()), "b").ok(false);
    rec.cas(3, "k", Some("a".to_string()), "c").unknown();
    rec.put(4, "k", "never-sent").discard();
    let pending = rec.put(5, "k", "dropped-handle");
    drop(pending); // like a cancelled task: unknown outcome
    rec.get(1, "k").ok(Some("lost".to_string()));

    assert_eq!(rec.len(), 9);
    let h = rec.history();
    assert_eq!(h.len(), 7, "{h:#?}");
    assert!(h.windows(2).all(|w| w[0].call_ns <= w[1].call_ns));
    assert!(h.iter().all(|o| o.return_ns.is_none_or(|r| r >= o.call_ns)));
    let unknown: Vec<&str> = h
        .iter()
        .filter(|o| o.return_ns.is_none())
        .map(|o| match &o.kind {
            OpKind::Put { value } => value.as_str(),
            OpKind::Cas { new, .. } => new.as_str(),
            OpKind::Get { .. } => "get",
        })
        .collect();
    assert_eq!(unknown, vec!["lost", "c", "dropped-handle"]);
    assert!(matches!(
        h[3].kind,
        OpKind::Cas {
            result: Some(false),
            ..
        }
    ));
    // The failed cas "a"->"b" and the last get are both explained by the
    // unknown put "lost" taking effect before them.
    let r = check(&h);
    assert!(r.ok, "{r}");
}

/// Threads doing real operations on a mutex-protected map, recorded with a
/// shared recorder: always linearizable.
#[test]
fn recorder_with_threads_on_a_real_register() {
    let rec = Recorder::new();
    let store: Arc<Mutex<HashMap<String, String>>> = Arc::default();
    let threads: Vec<_> = (0..4u64)
        .map(|c| {
            let rec = rec.clone();
            let store = Arc::clone(&store);
            std::thread::spawn(move || {
                let mut rng = Rng(c);
                for n in 0..150 {
                    let key = format!("k{}", rng.below(2));
                    let value = format!("{c}-{n}");
                    match rng.below(3) {
                        0 => {
                            let p = rec.put(c, &key, &value);
                            store.lock().expect("lock").insert(key, value);
                            p.ok();
                        }
                        1 => {
                            let p = rec.get(c, &key);
                            let v = store.lock().expect("lock").get(&key).cloned();
                            p.ok(v);
                        }
                        _ => {
                            let expect = store.lock().expect("lock").get(&key).cloned();
                            let p = rec.cas(c, &key, expect.clone(), &value);
                            let mut s = store.lock().expect("lock");
                            let ok = s.get(&key) == expect.as_ref();
                            if ok {
                                s.insert(key, value);
                            }
                            drop(s);
                            p.ok(ok);
                        }
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("thread");
    }
    let h = rec.history();
    assert_eq!(h.len(), 600);
    let r = check(&h);
    assert!(r.ok, "{r}");
    assert_eq!(r.keys_checked, 2);
}

// ---------------------------------------------------------------------------
// JSON export
// ---------------------------------------------------------------------------

#[test]
fn porcupine_json_export() {
    let ops = vec![
        put(1, K, 0, 10, "a \"quoted\"\n\\ value"),
        get(2, K, 5, 6, None),
        cas(3, K, 7, Some(20), None, "b", Some(false)),
        put_unknown(4, K, 8, "x"),
        cas(5, K, 9, Some(12), Some("a"), "c", None),
        get(2, K, 11, 15, Some("a")),
    ];
    let json = to_porcupine_json(&ops);
    let v: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
    let events = v.as_array().expect("array");
    // 6 calls, 4 returns (unknown put and unknown cas have none).
    assert_eq!(events.len(), 10, "{json}");
    let times: Vec<u64> = events
        .iter()
        .map(|e| e["time"].as_u64().expect("time"))
        .collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{json}");
    for (id, op) in ops.iter().enumerate() {
        let of_id: Vec<&serde_json::Value> = events
            .iter()
            .filter(|e| e["id"].as_u64() == Some(id as u64))
            .collect();
        assert_eq!(of_id[0]["kind"], "call");
        assert_eq!(of_id[0]["clientId"].as_u64(), Some(op.client));
        assert_eq!(of_id[0]["key"], K);
        let known = op.return_ns.is_some() && !matches!(op.kind, OpKind::Cas { result: None, .. });
        assert_eq!(of_id.len(), if known { 2 } else { 1 }, "id {id}: {json}");
        if known {
            assert_eq!(of_id[1]["kind"], "return");
        } else {
            assert_eq!(of_id[0]["unknown"], true);
        }
    }
    assert_eq!(events[0]["input"]["op"], "put");
    assert_eq!(events[0]["input"]["value"], "a \"quoted\"\n\\ value");
    let get_ret = events
        .iter()
        .find(|e| e["id"] == 1 && e["kind"] == "return")
        .expect("get return");
    assert!(get_ret["output"]["value"].is_null());
    let cas_call = events
        .iter()
        .find(|e| e["id"] == 2 && e["kind"] == "call")
        .expect("cas call");
    assert!(cas_call["input"]["expect"].is_null());
    assert_eq!(cas_call["input"]["new"], "b");

    assert_eq!(to_porcupine_json(&[]), "[]");
    let empty: serde_json::Value = serde_json::from_str("[]").expect("json");
    assert_eq!(empty, serde_json::Value::Array(vec![]));
}
