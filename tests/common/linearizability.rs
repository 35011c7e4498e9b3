//! Linearizability checker for histories of a key-value store (put / get /
//! compare-and-swap), for fault-injection tests that drive a cluster with
//! concurrent clients and must show that what the clients saw is consistent
//! with one sequential execution.
//!
//! # History model
//!
//! A history is a list of [`Op`]s. Each op is one client request on one key,
//! with the time the client sent it (`call_ns`) and the time the client got the
//! answer (`return_ns`), both in nanoseconds on one monotonic clock (use the
//! [`Recorder`], which stamps them from one [`std::time::Instant`]).
//!
//! * `Put { value }`: sets the key. `return_ns: None` means the outcome is
//!   unknown (timeout, connection lost, error reply): the put may or may not
//!   have happened, and if it did, it took effect at some point after its
//!   call — possibly long after the client gave up.
//! * `Get { result }`: `result: None` means "key absent". A get only says
//!   something when it returned; a get that failed (error, timeout) has no
//!   effect and no observation, so the recorder drops it from the history
//!   ([`PendingOp::unknown`] on a get discards it, and the checker ignores any
//!   get with `return_ns: None`).
//! * `Cas { expect, new, result }`: if the key's value equals `expect`
//!   (`None` = the key must be absent) set it to `new`. `result: Some(true)`:
//!   it succeeded; `Some(false)`: it failed, so at its linearization point the
//!   value was *not* `expect`; `None`: unknown — it may have succeeded (at any
//!   point after its call) or not. A cas with `return_ns: None` is treated as
//!   unknown whatever its `result` says, and so is a cas that returned with
//!   `result: None` (an error reply: the request may still be applied later).
//!
//! Time intervals: an op with a known outcome must take effect at one instant
//! within `[call_ns, return_ns]`. Intervals that merely touch (`a.return_ns ==
//! b.call_ns`) are treated as concurrent: the checker never rejects a history
//! because of a clock tie, at the price of missing a violation that depends on
//! one.
//!
//! # Model
//!
//! Keys are independent registers (linearizability is compositional, so the
//! history is linearizable iff each key's sub-history is). Every key starts
//! absent. Per key the sequential specification is:
//! put sets the value; get returns the value (or absent); cas compares and
//! maybe sets. Ops with unknown outcome are *optional*: they have return time
//! +∞, may be linearized at any point after their call, or never.
//!
//! # Algorithm
//!
//! Wing & Gong's search with Lowe's memoization, as in Porcupine: the call and
//! return events of one key's ops are kept in a doubly linked list sorted by
//! time. The search walks the list from the front; at a call event it tries
//! to linearize that op next (apply it to the register; if legal and the
//! resulting state has not already been explored, unlink the op's events and
//! restart from the front). Reaching a return event means the op it belongs
//! to should have been linearized already, so the search backtracks: it
//! undoes the last linearized op and tries the next candidate after it. The
//! key is linearizable when every op with a known outcome has been
//! linearized; it is not when the search backtracks past the start.
//!
//! Ops with unknown outcome (*optional* ops) have no return event: they sit in
//! a second list, are tried after the required candidates (those called before
//! the first pending return), and may stay out forever. The memo holds the
//! states fully explored without success as (linearized required ops as a
//! bitset, register value, linearized optional ops as a bitset), and a new
//! state is skipped when a failed one has the same required set and value and
//! a *subset* of its optional ops: linearizing an optional op never helps
//! later (it constrains nothing, and leaving it out keeps the choice open).
//! This is Lowe's cache plus subsumption; together with trying required ops
//! first and never following an optional op directly by a put (the put alone
//! reaches the same value with less), it keeps timed-out ops from doubling the
//! search space each. The search is iterative (no recursion) and bounded by
//! [`CheckOptions::max_states_per_key`] states and roughly
//! [`CheckOptions::max_memo_bytes_per_key`] bytes of memo; past either the
//! key's verdict is [`Verdict::Unknown`], never a pass.
//!
//! One safe reduction is applied before searching: an optional write (unknown
//! put, or unknown cas) of a value that no get, and no cas's `expect`, ever
//! mentions is dropped when the key has no failed cas. In any linearization
//! that includes such a write, nothing but another write can follow it before
//! the value is overwritten, so leaving it out is equally valid. It also
//! keeps dead timed-out puts out of the candidates scanned at every step.
//!
//! For a failure, [`CheckResult::failure`] holds the key, its ops sorted by
//! call time, and an explanation: the longest linearizable prefix found, the
//! register value after it, the ops that could have come next (none of which
//! can), and the whole sub-history. [`to_porcupine_json`] exports a history as
//! a call/return event list for other tools.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::fmt::{self, Write as _};
use std::marker::PhantomData;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

// ---------------------------------------------------------------------------
// History model
// ---------------------------------------------------------------------------

/// One client request on one key. See the module documentation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Op {
    /// Which client (task, connection) issued it; only used for reports.
    pub client: u64,
    pub key: String,
    /// When the request was sent (ns since the recorder's start).
    pub call_ns: u64,
    /// When the answer arrived; `None` = timed out / unknown outcome: may or
    /// may not have happened, and may take effect any time after the call.
    pub return_ns: Option<u64>,
    pub kind: OpKind,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpKind {
    Put {
        value: String,
    },
    /// `result: None` = key absent. Only meaningful when the op returned.
    Get {
        result: Option<String>,
    },
    Cas {
        /// `None` = the key must be absent.
        expect: Option<String>,
        new: String,
        /// Did it succeed? `None` if unknown.
        result: Option<bool>,
    },
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ret = match self.return_ns {
            Some(r) => r.to_string(),
            None => "?".to_string(),
        };
        write!(
            f,
            "client {:>3} [{:>12} .. {:>12}] {}",
            self.client,
            self.call_ns,
            ret,
            describe_kind(&self.kind, self.return_ns.is_some())
        )
    }
}

fn show(v: &Option<String>) -> String {
    match v {
        Some(s) => format!("{s:?}"),
        None => "<absent>".to_string(),
    }
}

fn describe_kind(kind: &OpKind, returned: bool) -> String {
    match kind {
        OpKind::Put { value } if returned => format!("put({value:?}) -> ok"),
        OpKind::Put { value } => format!("put({value:?}) -> unknown"),
        OpKind::Get { result } if returned => format!("get() -> {}", show(result)),
        OpKind::Get { .. } => "get() -> unknown (ignored)".to_string(),
        OpKind::Cas {
            expect,
            new,
            result,
        } => {
            let outcome = match (returned, result) {
                (true, Some(true)) => "succeeded",
                (true, Some(false)) => "failed",
                _ => "unknown",
            };
            format!("cas({} -> {new:?}) -> {outcome}", show(expect))
        }
    }
}

// ---------------------------------------------------------------------------
// Recorder
// ---------------------------------------------------------------------------

/// Collects a history from concurrent clients. Cheap to clone (shared
/// state); `Send + Sync`, so it can be moved into tasks and threads. The lock
/// is held only to push or update one entry, never across an `.await`.
///
/// ```ignore
/// let rec = Recorder::new();
/// let p = rec.put(client, "k", "v1");
/// match client.put("k", "v1").await {
///     Ok(_) => p.ok(),
///     Err(_) => p.unknown(), // may still take effect later
/// }
/// let p = rec.get(client, "k");
/// match client.get("k").await {
///     Ok(v) => p.ok(v),
///     Err(_) => p.unknown(), // dropped from the history
/// }
/// let result = check(&rec.history());
/// ```
#[derive(Clone)]
pub struct Recorder {
    start: Instant,
    ops: Arc<Mutex<Vec<Option<Op>>>>,
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

impl Recorder {
    /// A recorder whose clock starts now.
    pub fn new() -> Self {
        Self::with_start(Instant::now())
    }

    /// A recorder whose clock starts at `start` (to share a time base).
    pub fn with_start(start: Instant) -> Self {
        Recorder {
            start,
            ops: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// Nanoseconds since the recorder's start.
    pub fn now_ns(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Option<Op>>> {
        // A panicking client task must not hide the rest of the history.
        self.ops.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn invoke<K>(&self, client: u64, key: String, kind: OpKind) -> PendingOp<K> {
        let call_ns = self.now_ns();
        let mut ops = self.lock();
        ops.push(Some(Op {
            client,
            key,
            call_ns,
            return_ns: None,
            kind,
        }));
        PendingOp {
            rec: self.clone(),
            idx: ops.len() - 1,
            _kind: PhantomData,
        }
    }

    /// Records the call of a put; call this just before sending it.
    pub fn put(
        &self,
        client: u64,
        key: impl Into<String>,
        value: impl Into<String>,
    ) -> PendingOp<PutCall> {
        let value = value.into();
        self.invoke(client, key.into(), OpKind::Put { value })
    }

    /// Records the call of a get; call this just before sending it.
    pub fn get(&self, client: u64, key: impl Into<String>) -> PendingOp<GetCall> {
        self.invoke(client, key.into(), OpKind::Get { result: None })
    }

    /// Records the call of a compare-and-swap (`expect: None` = must be
    /// absent); call this just before sending it.
    pub fn cas(
        &self,
        client: u64,
        key: impl Into<String>,
        expect: Option<String>,
        new: impl Into<String>,
    ) -> PendingOp<CasCall> {
        let kind = OpKind::Cas {
            expect,
            new: new.into(),
            result: None,
        };
        self.invoke(client, key.into(), kind)
    }

    /// The history so far, sorted by call time: discarded ops and gets
    /// without an answer left out; ops still pending have unknown outcome.
    pub fn history(&self) -> Vec<Op> {
        let mut out: Vec<Op> = self
            .lock()
            .iter()
            .flatten()
            .filter(|op| op.return_ns.is_some() || !matches!(op.kind, OpKind::Get { .. }))
            .cloned()
            .collect();
        out.sort_by_key(|op| op.call_ns);
        out
    }

    /// Number of ops recorded (including pending and discarded ones).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn finish(&self, idx: usize, f: impl FnOnce(&mut Option<Op>, u64)) {
        let now = self.now_ns();
        let mut ops = self.lock();
        if let Some(slot) = ops.get_mut(idx) {
            f(slot, now);
        }
    }
}

/// Marker for a pending put.
pub enum PutCall {}
/// Marker for a pending get.
pub enum GetCall {}
/// Marker for a pending cas.
pub enum CasCall {}

/// An op whose call is recorded and whose answer is not yet. Complete it with
/// `ok(..)` when the answer arrives, `unknown()` on a timeout or error, or
/// `discard()` if the request certainly never reached a server. Dropping it
/// without any of these leaves its outcome unknown, which is always safe.
#[must_use = "complete the op with ok(..), unknown() or discard()"]
pub struct PendingOp<K> {
    rec: Recorder,
    idx: usize,
    _kind: PhantomData<fn() -> K>,
}

impl PendingOp<PutCall> {
    /// The put was acknowledged.
    pub fn ok(self) {
        self.rec.finish(self.idx, |slot, now| {
            if let Some(op) = slot {
                op.return_ns = Some(now);
            }
        });
    }
}

impl PendingOp<GetCall> {
    /// The get answered `result` (`None` = key absent).
    pub fn ok(self, result: Option<String>) {
        self.rec.finish(self.idx, |slot, now| {
            if let Some(op) = slot {
                op.return_ns = Some(now);
                op.kind = OpKind::Get { result };
            }
        });
    }
}

impl PendingOp<CasCall> {
    /// The cas answered: `succeeded` tells whether it swapped.
    pub fn ok(self, succeeded: bool) {
        self.rec.finish(self.idx, |slot, now| {
            if let Some(op) = slot {
                op.return_ns = Some(now);
                if let OpKind::Cas { result, .. } = &mut op.kind {
                    *result = Some(succeeded);
                }
            }
        });
    }
}

impl<K> PendingOp<K> {
    /// Timed out or failed: the op may or may not take effect (a get is
    /// dropped from the history, having observed nothing).
    pub fn unknown(self) {}

    /// The op certainly had no effect (e.g. it was never sent).
    pub fn discard(self) {
        self.rec.finish(self.idx, |slot, _| *slot = None);
    }
}

// ---------------------------------------------------------------------------
// Results
// ---------------------------------------------------------------------------

/// Limits for [`check_with`].
#[derive(Clone, Debug)]
pub struct CheckOptions {
    /// Most (linearized-set, value) states the search may memoize for one
    /// key; past it the key's verdict is [`Verdict::Unknown`].
    pub max_states_per_key: u64,
    /// Rough bound on the memo's memory for one key (an entry costs about
    /// `ops / 8 + 40` bytes); past it the key's verdict is
    /// [`Verdict::Unknown`].
    pub max_memo_bytes_per_key: u64,
}

impl Default for CheckOptions {
    fn default() -> Self {
        CheckOptions {
            max_states_per_key: 1_000_000,
            max_memo_bytes_per_key: 256 << 20,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Linearizable,
    NotLinearizable {
        key: String,
    },
    /// The search hit [`CheckOptions::max_states_per_key`] or
    /// [`CheckOptions::max_memo_bytes_per_key`].
    Unknown {
        key: String,
    },
    /// The history itself is malformed (e.g. returns before its call).
    Invalid {
        key: String,
        reason: String,
    },
}

#[derive(Clone, Debug)]
pub struct KeyResult {
    pub key: String,
    /// Ops of this key that took part (unanswered gets not counted).
    pub ops: usize,
    /// Memoized states explored.
    pub states: u64,
    pub verdict: Verdict,
}

#[derive(Clone, Debug)]
pub struct Failure {
    pub key: String,
    /// The key's ops, sorted by call time.
    pub ops: Vec<Op>,
    pub explanation: String,
}

#[derive(Clone, Debug)]
pub struct CheckResult {
    /// True iff every key is [`Verdict::Linearizable`] (`Unknown` is not ok).
    pub ok: bool,
    /// Overall: the first violation (by key order), else the first invalid
    /// key, else the first unknown, else `Linearizable`.
    pub verdict: Verdict,
    pub keys_checked: usize,
    pub ops_checked: usize,
    /// One entry per key, sorted by key.
    pub per_key: Vec<KeyResult>,
    /// Details of the first non-linearizable (or invalid) key.
    pub failure: Option<Failure>,
}

impl CheckResult {
    /// True iff a real violation was found (not merely an undecided key).
    pub fn is_violation(&self) -> bool {
        matches!(self.verdict, Verdict::NotLinearizable { .. })
    }

    /// Panics with the report unless the history was proven linearizable.
    pub fn assert_linearizable(&self) {
        assert!(self.ok, "{self}");
    }
}

impl fmt::Display for CheckResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "linearizability: {:?} ({} keys, {} ops)",
            self.verdict, self.keys_checked, self.ops_checked
        )?;
        for k in &self.per_key {
            if k.verdict != Verdict::Linearizable {
                writeln!(
                    f,
                    "  key {:?}: {:?} after {} states, {} ops",
                    k.key, k.verdict, k.states, k.ops
                )?;
            }
        }
        if let Some(fail) = &self.failure {
            f.write_str(&fail.explanation)?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Checker
// ---------------------------------------------------------------------------

/// Checks `ops` with the default [`CheckOptions`].
pub fn check(ops: &[Op]) -> CheckResult {
    check_with(ops, &CheckOptions::default())
}

/// Checks `ops`, each key independently.
pub fn check_with(ops: &[Op], opts: &CheckOptions) -> CheckResult {
    let mut by_key: BTreeMap<&str, Vec<&Op>> = BTreeMap::new();
    for op in ops {
        if op.return_ns.is_none() && matches!(op.kind, OpKind::Get { .. }) {
            continue; // a get without an answer observed nothing
        }
        by_key.entry(op.key.as_str()).or_default().push(op);
    }

    let mut per_key = Vec::with_capacity(by_key.len());
    let mut failure = None;
    let mut ops_checked = 0;
    for (key, mut key_ops) in by_key {
        key_ops.sort_by_key(|op| op.call_ns);
        ops_checked += key_ops.len();
        let (verdict, states, explanation) = check_key(key, &key_ops, opts);
        if let Some(explanation) = explanation {
            if failure.is_none() {
                failure = Some(Failure {
                    key: key.to_string(),
                    ops: key_ops.iter().map(|op| (*op).clone()).collect(),
                    explanation,
                });
            }
        }
        per_key.push(KeyResult {
            key: key.to_string(),
            ops: key_ops.len(),
            states,
            verdict,
        });
    }

    let first = |pred: fn(&Verdict) -> bool| {
        per_key
            .iter()
            .find(|k| pred(&k.verdict))
            .map(|k| k.verdict.clone())
    };
    let verdict = first(|v| matches!(v, Verdict::NotLinearizable { .. }))
        .or_else(|| first(|v| matches!(v, Verdict::Invalid { .. })))
        .or_else(|| first(|v| matches!(v, Verdict::Unknown { .. })))
        .unwrap_or(Verdict::Linearizable);
    CheckResult {
        ok: verdict == Verdict::Linearizable,
        verdict,
        keys_checked: per_key.len(),
        ops_checked,
        per_key,
        failure,
    }
}

/// What an op does to the register, values interned (0 = absent).
#[derive(Clone, Copy, Debug)]
enum Action {
    Write(u32),
    Read(u32),
    CasOk {
        expect: u32,
        new: u32,
    },
    CasFail {
        expect: u32,
    },
    /// Unknown outcome: if it is linearized at all, it succeeded.
    CasMaybe {
        expect: u32,
        new: u32,
    },
}

impl Action {
    fn step(self, state: u32) -> Option<u32> {
        match self {
            Action::Write(v) => Some(v),
            Action::Read(v) => (state == v).then_some(state),
            Action::CasOk { expect, new } | Action::CasMaybe { expect, new } => {
                (state == expect).then_some(new)
            }
            Action::CasFail { expect } => (state != expect).then_some(state),
        }
    }
}

struct SearchOp {
    /// Index into the key's ops (sorted by call time).
    orig: usize,
    call: u64,
    /// `None`: optional (unknown outcome, return at +infinity).
    ret: Option<u64>,
    action: Action,
}

#[derive(Clone, Copy)]
enum Event {
    Call(usize),
    Return(usize),
    Sentinel,
}

/// Returns the verdict, the states explored, and an explanation for a
/// violation or an invalid history.
fn check_key<'a>(key: &str, ops: &[&'a Op], opts: &CheckOptions) -> (Verdict, u64, Option<String>) {
    for op in ops {
        if let Some(r) = op.return_ns {
            if r < op.call_ns {
                let reason = format!("op returns before its call: {op}");
                let explanation = format!("key {key:?}: invalid history: {reason}\n");
                let verdict = Verdict::Invalid {
                    key: key.to_string(),
                    reason,
                };
                return (verdict, 0, Some(explanation));
            }
        }
    }

    // Intern values: 0 = absent.
    let mut ids: HashMap<&'a str, u32> = HashMap::new();
    let mut names: Vec<Option<&'a str>> = vec![None];
    let mut intern = |v: Option<&'a str>| -> u32 {
        match v {
            None => 0,
            Some(s) => *ids.entry(s).or_insert_with(|| {
                names.push(Some(s));
                u32::try_from(names.len() - 1).unwrap_or(u32::MAX)
            }),
        }
    };
    let mut sops: Vec<SearchOp> = Vec::with_capacity(ops.len());
    for (orig, op) in ops.iter().enumerate() {
        let (action, ret) = match (&op.kind, op.return_ns) {
            (OpKind::Put { value }, ret) => (Action::Write(intern(Some(value))), ret),
            (OpKind::Get { .. }, None) => continue,
            (OpKind::Get { result }, ret) => (Action::Read(intern(result.as_deref())), ret),
            (
                OpKind::Cas {
                    expect,
                    new,
                    result,
                },
                ret,
            ) => {
                let expect = intern(expect.as_deref());
                let new = intern(Some(new));
                match (result, ret) {
                    (Some(true), Some(_)) => (Action::CasOk { expect, new }, ret),
                    (Some(false), Some(_)) => (Action::CasFail { expect }, ret),
                    _ => (Action::CasMaybe { expect, new }, None),
                }
            }
        };
        sops.push(SearchOp {
            orig,
            call: op.call_ns,
            ret,
            action,
        });
    }
    let value_count = names.len();

    // Drop optional writes of never-observed values (see module docs).
    let has_failed_cas = sops
        .iter()
        .any(|o| matches!(o.action, Action::CasFail { .. }));
    if !has_failed_cas {
        let mut observed = vec![false; value_count];
        for o in &sops {
            match o.action {
                Action::Read(v)
                | Action::CasOk { expect: v, .. }
                | Action::CasFail { expect: v }
                | Action::CasMaybe { expect: v, .. } => observed[v as usize] = true,
                Action::Write(_) => {}
            }
        }
        sops.retain(|o| match (o.ret, o.action) {
            (None, Action::Write(v)) | (None, Action::CasMaybe { new: v, .. }) => {
                observed[v as usize]
            }
            _ => true,
        });
    }

    let mut search = Search::new(&sops);
    let entry_bytes = 8 * sops.len().div_ceil(64) as u64 + 40;
    let max_states = opts
        .max_states_per_key
        .min(opts.max_memo_bytes_per_key / entry_bytes);
    let outcome = search.run(max_states);
    let states = search.explored;
    match outcome {
        Outcome::Linearizable => (Verdict::Linearizable, states, None),
        Outcome::Unknown => (
            Verdict::Unknown {
                key: key.to_string(),
            },
            states,
            None,
        ),
        Outcome::NotLinearizable => {
            let explanation = explain(key, ops, &sops, &names, &search);
            let verdict = Verdict::NotLinearizable {
                key: key.to_string(),
            };
            (verdict, states, Some(explanation))
        }
    }
}

enum Outcome {
    Linearizable,
    NotLinearizable,
    Unknown,
}

/// A doubly linked list over `0..len` nodes with sentinels, supporting
/// removal and LIFO re-insertion ("dancing links").
struct Links {
    next: Vec<usize>,
    prev: Vec<usize>,
}

impl Links {
    /// Nodes `1..=len` in order, between sentinels `0` (head) and `len + 1`.
    fn new(len: usize) -> Self {
        let tail = len + 1;
        Links {
            next: (0..=tail).map(|n| (n + 1).min(tail)).collect(),
            prev: (0..=tail).map(|n| n.saturating_sub(1)).collect(),
        }
    }

    fn unlink(&mut self, n: usize) {
        let (p, x) = (self.prev[n], self.next[n]);
        self.next[p] = x;
        self.prev[x] = p;
    }

    fn relink(&mut self, n: usize) {
        let (p, x) = (self.prev[n], self.next[n]);
        self.next[p] = n;
        self.prev[x] = n;
    }
}

const HEAD: usize = 0;

/// Where the search is looking for the next op to linearize.
#[derive(Clone, Copy)]
enum Pos {
    /// A node of the list of required ops' call and return events.
    Main(usize),
    /// A node of the list of optional ops' calls; ops called after
    /// `deadline` (the earliest return of a pending required op) are out.
    Optional { node: usize, deadline: u64 },
}

struct Frame {
    op: usize,
    /// Register value before `op`.
    state: u32,
    /// Where to resume (after `op`) when backtracking.
    resume: Pos,
}

fn set_bit(bits: &mut [u64], i: usize) {
    bits[i / 64] |= 1u64 << (i % 64);
}

fn clear_bit(bits: &mut [u64], i: usize) {
    bits[i / 64] &= !(1u64 << (i % 64));
}

fn is_subset(a: &[u64], b: &[u64]) -> bool {
    a.iter().zip(b).all(|(x, y)| x & !y == 0)
}

/// States fully explored without success, as register value -> linearized
/// required ops -> the sets of linearized optional ops (kept as an
/// antichain: no set is a superset of another).
///
/// Linearizing an optional op can never help later: it has no return event,
/// so it never constrains what may come next, and leaving it out keeps the
/// option of linearizing it later. So a state (R, O, v) is at least as
/// promising as (R, O', v) whenever O is a subset of O': if the former
/// failed, so does the latter. This subsumes Lowe's exact-match cache, and
/// collapses the 2^k variants of k timed-out ops in or out.
#[derive(Default)]
struct Memo {
    failed: HashMap<u32, FailedByRequired>,
}

/// Linearized required ops -> antichain of linearized optional-op sets.
type FailedByRequired = HashMap<Box<[u64]>, Vec<Box<[u64]>>>;

impl Memo {
    fn subsumed(&self, state: u32, req: &[u64], opt: &[u64]) -> bool {
        self.failed
            .get(&state)
            .and_then(|by_req| by_req.get(req))
            .is_some_and(|sets| sets.iter().any(|a| is_subset(a, opt)))
    }

    fn insert_failed(&mut self, state: u32, req: &[u64], opt: &[u64]) {
        let sets = self
            .failed
            .entry(state)
            .or_default()
            .entry(req.into())
            .or_default();
        if sets.iter().any(|a| is_subset(a, opt)) {
            return;
        }
        sets.retain(|a| !is_subset(opt, a));
        sets.push(opt.into());
    }
}

/// The WGL search over one key.
///
/// Required ops (known outcome) have call and return events in one linked
/// list, sorted by time; optional ops (unknown outcome) have only a call, in
/// a second list. At each step the search tries, in order, the required ops
/// called before the first pending return, then the optional ops called
/// before it. Trying required ops first makes the search reach states with
/// few optional ops linearized first, which is what lets [`Memo`] subsume
/// the rest.
struct Search<'a> {
    sops: &'a [SearchOp],
    /// Main list: node -> event.
    events: Vec<Event>,
    event_time: Vec<u64>,
    main: Links,
    /// Optional list: node (1-based) -> op.
    opt_ops: Vec<usize>,
    optional: Links,
    /// Per op: its call node (main or optional list), return node if any.
    call_node: Vec<usize>,
    ret_node: Vec<Option<usize>>,
    /// Per op: its bit in the required or optional bitset.
    bit: Vec<usize>,
    explored: u64,
    /// Longest sequence of linearized ops seen, and the value after it.
    best: Vec<usize>,
    best_state: u32,
}

impl<'a> Search<'a> {
    fn new(sops: &'a [SearchOp]) -> Self {
        // (time, is_return, op): calls sort before returns at equal times,
        // so touching intervals count as concurrent.
        let mut evs: Vec<(u64, bool, usize)> = Vec::with_capacity(2 * sops.len());
        let mut opts: Vec<(u64, usize)> = Vec::new();
        let mut bit = vec![0; sops.len()];
        let (mut n_req, mut n_opt) = (0, 0);
        for (i, o) in sops.iter().enumerate() {
            if let Some(r) = o.ret {
                evs.push((o.call, false, i));
                evs.push((r, true, i));
                bit[i] = n_req;
                n_req += 1;
            } else {
                opts.push((o.call, i));
                bit[i] = n_opt;
                n_opt += 1;
            }
        }
        evs.sort_unstable();
        opts.sort_unstable();

        let mut events = vec![Event::Sentinel];
        let mut event_time = vec![0];
        let mut call_node = vec![0; sops.len()];
        let mut ret_node = vec![None; sops.len()];
        for (n, &(time, is_ret, i)) in evs.iter().enumerate() {
            if is_ret {
                ret_node[i] = Some(n + 1);
                events.push(Event::Return(i));
            } else {
                call_node[i] = n + 1;
                events.push(Event::Call(i));
            }
            event_time.push(time);
        }
        events.push(Event::Sentinel);
        event_time.push(u64::MAX);

        let mut opt_ops = vec![usize::MAX];
        for (n, &(_, i)) in opts.iter().enumerate() {
            call_node[i] = n + 1;
            opt_ops.push(i);
        }
        opt_ops.push(usize::MAX);

        Search {
            sops,
            main: Links::new(evs.len()),
            events,
            event_time,
            optional: Links::new(opts.len()),
            opt_ops,
            call_node,
            ret_node,
            bit,
            explored: 0,
            best: Vec::new(),
            best_state: 0,
        }
    }

    /// Removes op `i`'s events.
    fn lift(&mut self, i: usize) {
        match self.ret_node[i] {
            Some(r) => {
                self.main.unlink(self.call_node[i]);
                self.main.unlink(r);
            }
            None => self.optional.unlink(self.call_node[i]),
        }
    }

    /// Undoes `lift(i)` (must be the most recent lift still in force).
    fn unlift(&mut self, i: usize) {
        match self.ret_node[i] {
            Some(r) => {
                self.main.relink(r);
                self.main.relink(self.call_node[i]);
            }
            None => self.optional.relink(self.call_node[i]),
        }
    }

    fn run(&mut self, max_states: u64) -> Outcome {
        let n_req = self.sops.iter().filter(|o| o.ret.is_some()).count();
        let n_opt = self.sops.len() - n_req;
        let mut required_left = n_req;
        let mut req = vec![0u64; n_req.div_ceil(64)];
        let mut opt = vec![0u64; n_opt.div_ceil(64)];
        let mut memo = Memo::default();
        let mut stack: Vec<Frame> = Vec::new();
        let mut state = 0u32;
        let mut pos = Pos::Main(self.main.next[HEAD]);
        loop {
            if required_left == 0 {
                return Outcome::Linearizable;
            }
            // The op to try at `pos`, with where to go if it is no good;
            // `None`: nothing left to try here, backtrack.
            let attempt = match pos {
                Pos::Main(node) => match self.events[node] {
                    Event::Call(i) => Some((i, Pos::Main(self.main.next[node]))),
                    // The first pending return: required ops are exhausted,
                    // on to the optional ones called before it.
                    Event::Return(_) => {
                        pos = Pos::Optional {
                            node: self.optional.next[HEAD],
                            deadline: self.event_time[node],
                        };
                        continue;
                    }
                    // Unreachable while required ops are left; be safe.
                    Event::Sentinel => None,
                },
                Pos::Optional { node, deadline } => {
                    let i = self.opt_ops[node];
                    if i == usize::MAX || self.sops[i].call > deadline {
                        None
                    } else {
                        let next = self.optional.next[node];
                        Some((
                            i,
                            Pos::Optional {
                                node: next,
                                deadline,
                            },
                        ))
                    }
                }
            };
            let Some((i, resume)) = attempt else {
                // Backtrack: the state after the top op is fully explored.
                let Some(frame) = stack.pop() else {
                    return Outcome::NotLinearizable;
                };
                memo.insert_failed(state, &req, &opt);
                let j = frame.op;
                if self.sops[j].ret.is_some() {
                    clear_bit(&mut req, self.bit[j]);
                    required_left += 1;
                } else {
                    clear_bit(&mut opt, self.bit[j]);
                }
                self.unlift(j);
                state = frame.state;
                pos = frame.resume;
                continue;
            };
            pos = resume;
            // An optional op followed directly by a write was pointless:
            // the same write without it reaches the same value with fewer
            // optional ops linearized, which is at least as good (see Memo)
            // and is tried from the parent.
            let after_optional = stack.last().is_some_and(|f| self.sops[f.op].ret.is_none());
            if after_optional && matches!(self.sops[i].action, Action::Write(_)) {
                continue;
            }
            let Some(new_state) = self.sops[i].action.step(state) else {
                continue;
            };
            let required = self.sops[i].ret.is_some();
            let bits = if required { &mut req } else { &mut opt };
            set_bit(bits, self.bit[i]);
            if memo.subsumed(new_state, &req, &opt) {
                let bits = if required { &mut req } else { &mut opt };
                clear_bit(bits, self.bit[i]);
                continue;
            }
            if self.explored >= max_states {
                return Outcome::Unknown;
            }
            self.explored += 1;
            stack.push(Frame {
                op: i,
                state,
                resume,
            });
            state = new_state;
            self.lift(i);
            if required {
                required_left -= 1;
            }
            if stack.len() > self.best.len() {
                self.best = stack.iter().map(|f| f.op).collect();
                self.best_state = state;
            }
            pos = Pos::Main(self.main.next[HEAD]);
        }
    }
}

/// Most lines of the full sub-history printed in an explanation.
const MAX_LISTED_OPS: usize = 400;

fn explain(
    key: &str,
    ops: &[&Op],
    sops: &[SearchOp],
    names: &[Option<&str>],
    search: &Search<'_>,
) -> String {
    let mut s = String::new();
    let required = sops.iter().filter(|o| o.ret.is_some()).count();
    let best_required = search
        .best
        .iter()
        .filter(|&&i| sops[i].ret.is_some())
        .count();
    let value = |id: u32| match names.get(id as usize).copied().flatten() {
        Some(v) => format!("{v:?}"),
        None => "<absent>".to_string(),
    };
    let _ = writeln!(
        s,
        "key {key:?} is NOT linearizable ({} ops, {} states explored)",
        ops.len(),
        search.explored
    );
    let _ = writeln!(
        s,
        "longest linearizable prefix found ({} ops, {best_required} of {required} with known outcome):",
        search.best.len()
    );
    for (n, &i) in search.best.iter().enumerate() {
        let _ = writeln!(
            s,
            "  {:>4}. #{:<4} {}",
            n + 1,
            sops[i].orig,
            ops[sops[i].orig]
        );
    }
    let _ = writeln!(s, "register after it: {}", value(search.best_state));

    // Which ops could have come next: not in the prefix, called before the
    // earliest return of a remaining op with known outcome.
    let mut in_best = vec![false; sops.len()];
    for &i in &search.best {
        in_best[i] = true;
    }
    let deadline = sops
        .iter()
        .enumerate()
        .filter(|(i, _)| !in_best[*i])
        .filter_map(|(_, o)| o.ret)
        .min()
        .unwrap_or(u64::MAX);
    let _ = writeln!(
        s,
        "ops that could come next (none is consistent with that value and what follows):"
    );
    for (i, o) in sops.iter().enumerate() {
        if !in_best[i] && o.call <= deadline {
            let _ = writeln!(s, "         #{:<4} {}", o.orig, ops[o.orig]);
        }
    }
    let _ = writeln!(s, "all ops of key {key:?} by call time:");
    for (n, op) in ops.iter().enumerate().take(MAX_LISTED_OPS) {
        let _ = writeln!(s, "         #{n:<4} {op}");
    }
    if ops.len() > MAX_LISTED_OPS {
        let _ = writeln!(
            s,
            "         ... {} more (see Failure::ops / to_porcupine_json)",
            ops.len() - MAX_LISTED_OPS
        );
    }
    s
}

// ---------------------------------------------------------------------------
// Export
// ---------------------------------------------------------------------------

fn json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn json_opt_str(out: &mut String, s: &Option<String>) {
    match s {
        Some(s) => json_str(out, s),
        None => out.push_str("null"),
    }
}

/// The history as a Porcupine-style JSON event list, sorted by time (calls
/// before returns at equal times):
///
/// ```text
/// [{"kind":"call","id":0,"clientId":1,"time":10,"key":"k","input":{"op":"put","value":"a"}},
///  {"kind":"return","id":0,"clientId":1,"time":20,"key":"k","output":{}},
///  {"kind":"call","id":1,...,"input":{"op":"get"}},
///  {"kind":"return","id":1,...,"output":{"value":"a"}},      // null = absent
///  {"kind":"call","id":2,...,"input":{"op":"cas","expect":null,"new":"b"}},
///  {"kind":"return","id":2,...,"output":{"ok":true}}]
/// ```
///
/// `id` is the op's index in `ops`. An op with unknown outcome (no
/// `return_ns`, or a cas with `result: None`) has only its call event, marked
/// `"unknown":true`; tools that need a return for every call should put one
/// at +infinity, which is how the checker treats it.
pub fn to_porcupine_json(ops: &[Op]) -> String {
    // (time, is_return, id)
    let mut events: Vec<(u64, bool, usize)> = Vec::with_capacity(ops.len() * 2);
    for (id, op) in ops.iter().enumerate() {
        events.push((op.call_ns, false, id));
        let known = !matches!(op.kind, OpKind::Cas { result: None, .. });
        if let (Some(r), true) = (op.return_ns, known) {
            events.push((r, true, id));
        }
    }
    events.sort_unstable();
    let mut out = String::from("[");
    for (n, &(time, is_return, id)) in events.iter().enumerate() {
        let op = &ops[id];
        out.push_str(if n == 0 { "\n  " } else { ",\n  " });
        let kind = if is_return { "return" } else { "call" };
        let _ = write!(
            out,
            "{{\"kind\":\"{kind}\",\"id\":{id},\"clientId\":{},\"time\":{time},\"key\":",
            op.client
        );
        json_str(&mut out, &op.key);
        if !is_return {
            out.push_str(",\"input\":{");
            match &op.kind {
                OpKind::Put { value } => {
                    out.push_str("\"op\":\"put\",\"value\":");
                    json_str(&mut out, value);
                }
                OpKind::Get { .. } => out.push_str("\"op\":\"get\""),
                OpKind::Cas { expect, new, .. } => {
                    out.push_str("\"op\":\"cas\",\"expect\":");
                    json_opt_str(&mut out, expect);
                    out.push_str(",\"new\":");
                    json_str(&mut out, new);
                }
            }
            out.push('}');
            let unknown =
                op.return_ns.is_none() || matches!(op.kind, OpKind::Cas { result: None, .. });
            if unknown {
                out.push_str(",\"unknown\":true");
            }
        } else {
            out.push_str(",\"output\":{");
            match &op.kind {
                OpKind::Put { .. } => {}
                OpKind::Get { result } => {
                    out.push_str("\"value\":");
                    json_opt_str(&mut out, result);
                }
                OpKind::Cas { result, .. } => {
                    let ok = matches!(result, Some(true));
                    let _ = write!(out, "\"ok\":{ok}");
                }
            }
            out.push('}');
        }
        out.push('}');
    }
    out.push_str(if events.is_empty() { "]" } else { "\n]" });
    out
}
