"""Is a key-value history linearizable?

Theory of operation
-------------------
Linearizability is compositional (Herlihy & Wing): a history is linearizable iff its restriction
to each key is. So each key is checked alone, as a single register whose absent value is None.
Values are interned to small ints through their canonical JSON, so the register is an int.

Per key we run the Wing & Gong search with Lowe's memoization, the algorithm of Porcupine and of
Knossos' "linear" checker. Every completed ("ok") op becomes a call event and a return event,
sorted by time into a doubly linked list. An op whose call comes before the first remaining
return may take effect now (it is in the "frontier"). If the register allows it (a read must see
the current value, a cas must find its expected value), we lift its two events out of the list,
push a choice point and look again. If no op in the frontier can go next, the op returning first
should already have taken effect: backtrack. When every ok op is placed the history is
linearizable; when the first choice point is exhausted it is not. Lowe's cache skips a
configuration (set of ops placed, register value) already explored: it failed then, too.

Unknown outcomes may take effect at any time after their call, or never: they have no return,
never block, and the search is done once all ok ops are placed (leaving some unknowns out).

Before searching, an O(n log n) check rejects the commonest violations outright: a read (or cas)
of a value that no op could have produced in time, or whose every possible source was
overwritten by an op that completed before the read began (the classic stale read). Those would
otherwise cost the search an exhaustive walk of everything before the read's deadline.

Plain Wing & Gong blows up at the concurrency of a real test (tens of clients on one key, most of
them writing). These reductions keep it near-linear on such histories; each is exact (it never
changes the verdict), and each is argued where it is applied:

- an op that never changes the value (read, failed cas), when legal now, is the only move
  tried: some linearization, if any, places it next;
- a move that would overwrite a value some unplaced op still needs, when no op invoked before
  that op's deadline can bring it back (directly, or through a short chain of cas), is not
  tried: with unique written values this catches a misplaced write at once, not at the deadline
  of the read it starves, maybe hundreds of ops later;
- an unknown op is placed just in time: only if an op that could go next wants the value it
  makes (or any change of value), and of the unknown writes of values nobody ever looks at,
  only the first, since they are interchangeable;
- the cache treats a configuration as seen if the same ok ops and value were reached before with
  a *subset* of the unknowns used, since more unused optional ops can only help.

Moves are tried most urgent first (the op whose return is next, then ops that let it take
effect, then by deadline), so a linearizable history is mostly walked straight through.

Ties: a call at the same instant as a return sorts first, so touching intervals are concurrent.
That is the lenient reading, chosen because the clocks of real clients are coarse.

The search is still exponential in the worst case (illegal histories with wide concurrency are
the slow ones), so it is bounded by steps and wall time; running out gives Verdict.UNKNOWN
("budget exceeded"), never a hang and never a false verdict. Memory grows with steps (one cache
entry per move, about n_ops/8 bytes each), so the step bound is also the memory bound.
"""

from __future__ import annotations

import bisect
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from raftkv.check.history import Operation, canonical_json


class Verdict(Enum):
    OK = "ok"
    ILLEGAL = "illegal"
    UNKNOWN = "unknown"  # the search ran out of budget


@dataclass(frozen=True)
class KeyResult:
    key: str
    verdict: Verdict
    explanation: str  # empty when OK
    ops_checked: int  # after dropping "fail" ops and unknown reads
    steps: int
    elapsed_s: float
    # For a failure: the longest linearization found (indices into the input history), and the
    # operations that were candidates at its dead end, the blocking one first.
    longest_prefix: tuple[int, ...] = ()
    unplaced: tuple[int, ...] = ()


@dataclass(frozen=True)
class CheckResult:
    keys: dict[str, KeyResult] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(r.verdict is Verdict.OK for r in self.keys.values())

    @property
    def verdict(self) -> Verdict:
        verdicts = {r.verdict for r in self.keys.values()}
        for v in (Verdict.ILLEGAL, Verdict.UNKNOWN):
            if v in verdicts:
                return v
        return Verdict.OK

    def explain(self) -> str:
        bad = [r for r in self.keys.values() if r.verdict is not Verdict.OK]
        if not bad:
            return f"linearizable ({len(self.keys)} keys)"
        return "\n\n".join(r.explanation for r in bad)


def check_history(
    ops: Iterable[Operation],
    *,
    max_steps_per_key: int | None = 1_000_000,
    timeout_s: float | None = 60.0,
) -> CheckResult:
    """Check a whole history, key by key, within one wall-clock deadline for all keys."""
    history = list(ops)
    by_key: dict[str, list[int]] = {}
    for index, op in enumerate(history):
        by_key.setdefault(op.key, []).append(index)
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    results = {}
    # Small keys first, so one hard key that eats the deadline does not hide easy verdicts.
    for key in sorted(by_key, key=lambda k: len(by_key[k])):
        results[key] = _check_key(history, key, by_key[key], max_steps_per_key, deadline)
    return CheckResult(keys=results)


# Operation codes for the search's inner loop, which works on ints only.
_READ, _WRITE, _CAS_TRUE, _CAS_FALSE, _DEL_ANY, _DEL_EXISTED, _DEL_ABSENT, _CAS_MAYBE = range(8)
_OBSERVERS = frozenset({_READ, _CAS_FALSE, _DEL_ABSENT})  # ops that never change the value
_LOST_CAS, _LOST_JUNK, _LOST_OTHER = range(3)  # the lists of unknown ops, see _KeySearch


class _Chains:
    """Sorted doubly linked lists over items 0..n-1, each item in at most one list.

    Removal is O(1) and so is putting an item back, provided items go back in the reverse order
    of their removal, which a depth-first search guarantees (Knuth's "dancing links").
    """

    def __init__(self, n_items: int, chains: list[list[int]]) -> None:
        self.heads = n_items  # list c's head sentinel is node n_items + c
        self.nxt = [-1] * (n_items + len(chains))
        self.prv = [-1] * (n_items + len(chains))  # stays -1 for items in no list
        for c, items in enumerate(chains):
            prev = n_items + c
            for item in items:
                self.nxt[prev], self.prv[item], prev = item, prev, item

    def first(self, c: int) -> int:
        return self.nxt[self.heads + c]  # -1 when empty

    def remove(self, item: int) -> None:
        p, n = self.prv[item], self.nxt[item]
        if p != -1:
            self.nxt[p] = n
            if n != -1:
                self.prv[n] = p

    def restore(self, item: int) -> None:
        p, n = self.prv[item], self.nxt[item]
        if p != -1:
            self.nxt[p] = item
            if n != -1:
                self.prv[n] = item


class _KeySearch:
    """The search state for one key. Its ops are renumbered 0..n-1, dropping those that cannot
    matter ("fail" ops, unknown reads); `src` maps them back to the input history."""

    def __init__(self, history: Sequence[Operation], indices: list[int]) -> None:
        interned: dict[str, int] = {}

        def intern(value: Any) -> int:
            return interned.setdefault(canonical_json(value), len(interned))

        self.absent = intern(None)
        self.src: list[int] = []
        self.is_ok: list[bool] = []
        self.code: list[int] = []
        self.arg_a: list[int] = []  # read: value seen; write: value; cas: expected
        self.arg_b: list[int] = []  # cas: new value
        self.call_time: list[float] = []
        self.return_time: list[float] = []
        for i in indices:
            op = history[i]
            if op.outcome == "fail" or (op.outcome == "unknown" and op.kind == "read"):
                continue  # no effect, and (for an unknown read) nothing observed
            ok = op.outcome == "ok"
            a = b = self.absent
            if op.kind == "read":
                c, a = _READ, intern(op.result)
            elif op.kind == "write":
                c, a = _WRITE, intern(op.value)
            elif op.kind == "delete":
                c = {None: _DEL_ANY, True: _DEL_EXISTED, False: _DEL_ABSENT}[op.result if ok else None]
            else:
                c = (_CAS_TRUE if op.result else _CAS_FALSE) if ok else _CAS_MAYBE
                a, b = intern(op.expected), intern(op.value)
            self.src.append(i)
            self.is_ok.append(ok)
            self.code.append(c)
            self.arg_a.append(a)
            self.arg_b.append(b)
            self.call_time.append(op.invoke_time)
            self.return_time.append(op.complete_time if ok else math.inf)  # type: ignore[arg-type]
        n = len(self.src)
        self.values = {v: k for k, v in interned.items()}

        # The Wing & Gong event list, of ok ops only. Calls sort before returns at equal times
        # (touching intervals count as concurrent). Unknown ops never return, so they never
        # block; they wait in their own list by call time, for the frontier to reach them.
        ok_ops = [o for o in range(n) if self.is_ok[o]]
        events = sorted([(self.call_time[o], 0, o) for o in ok_ops] + [(self.return_time[o], 1, o) for o in ok_ops])
        self.events = _Chains(len(events), [list(range(len(events)))])
        self.event_op = [o for _, _, o in events]
        self.event_is_call = [kind == 0 for _, kind, _ in events]
        self.call_event = [-1] * n
        self.return_event = [-1] * n
        for e, (_, kind, o) in enumerate(events):
            if kind == 0:
                self.call_event[o] = e
            else:
                self.return_event[o] = e

        # Separate bit numbering for ok and unknown ops, so the cache can compare unknown subsets.
        self.bit = [0] * n
        self.n_ok = n_unknown = 0
        for o, ok in enumerate(self.is_ok):
            if ok:
                self.bit[o], self.n_ok = 1 << self.n_ok, self.n_ok + 1
            else:
                self.bit[o], n_unknown = 1 << n_unknown, n_unknown + 1

        # For pruning: the value each ok op needs to find (-1 if none) and the value each op may
        # leave (-1 if none); per value, the unplaced ops needing it by deadline ("readers") and
        # those that could still produce it by call time ("producers").
        self.needs = [-1] * n
        self.makes = [-1] * n
        for o, c in enumerate(self.code):
            if c in (_READ, _CAS_TRUE) and self.is_ok[o]:
                self.needs[o] = self.arg_a[o]
            elif c == _DEL_ABSENT:
                self.needs[o] = self.absent
            if c == _WRITE:
                self.makes[o] = self.arg_a[o]
            elif c in (_CAS_TRUE, _CAS_MAYBE):
                self.makes[o] = self.arg_b[o]
            elif c in (_DEL_ANY, _DEL_EXISTED):
                self.makes[o] = self.absent
        by_deadline = sorted(range(n), key=lambda o: self.return_time[o])
        by_call = sorted(range(n), key=lambda o: self.call_time[o])
        self.readers = _Chains(n, self._by_value(by_deadline, self.needs))
        self.producers = _Chains(n, self._by_value(by_call, self.makes))
        # Unknown cas by expected value: the values they make depend on it.
        expects = [self.arg_a[o] if self.code[o] == _CAS_MAYBE else -1 for o in range(n)]
        self.maybe_readers = _Chains(n, self._by_value(by_call, expects))
        # Unknown ops by call time, in three lists: lost cas (frontier ops that may want a
        # value), "junk" (writes of a value no op reads, expects or refuses), and the rest. Junk
        # writes are interchangeable, since nothing can tell their values apart, so the search
        # only ever tries the first one.
        looked_for = {self.needs[o] for o in range(n)} | {
            self.arg_a[o] for o in range(n) if self.code[o] in (_CAS_MAYBE, _CAS_FALSE)
        }
        unknown_ops = sorted((o for o in range(n) if not self.is_ok[o]), key=lambda o: self.call_time[o])
        junk = {
            o
            for o in unknown_ops
            if self.code[o] == _WRITE and self.makes[o] not in looked_for and self.makes[o] != self.absent
        }
        self.unknowns = _Chains(
            n,
            [  # indexed by _LOST_CAS, _LOST_JUNK, _LOST_OTHER
                [o for o in unknown_ops if self.code[o] == _CAS_MAYBE],
                [o for o in unknown_ops if o in junk],
                [o for o in unknown_ops if o not in junk and self.code[o] != _CAS_MAYBE],
            ],
        )

    def _by_value(self, ops: list[int], value_of: list[int]) -> list[list[int]]:
        """Split `ops` (keeping their order) into one list per value; -1 means no list."""
        lists: list[list[int]] = [[] for _ in self.values]
        for o in ops:
            if value_of[o] != -1:
                lists[value_of[o]].append(o)
        return lists

    def starved(self, value: int, new: int, placing: int = -1) -> int:
        """Once the value is `new`, is there an unplaced op (other than `placing`) that needs
        `value` but that no unplaced op can bring back before the op completes? Returns the op
        with the earliest deadline if so, else -1."""
        r = self._first_reader(value, placing)
        if r != -1 and not self._producible(value, new, self.return_time[r], 3):
            return r
        # A lost cas from `value` may be how a value some op reads came about (a chain of cas):
        # check those values too.
        p = self.maybe_readers.first(value)
        while p != -1:
            made = self.arg_b[p]
            r = self._first_reader(made, placing)
            if p != placing and r != -1 and not self._producible(made, new, self.return_time[r], 3):
                return r
            p = self.maybe_readers.nxt[p]
        return -1

    def _first_reader(self, value: int, placing: int) -> int:
        r = self.readers.first(value)
        return self.readers.nxt[r] if r == placing and r != -1 else r

    def _producible(self, value: int, state: int, by: float, depth: int) -> bool:
        """Could the value go from `state` to `value` using unplaced ops invoked by `by`?

        Errs towards yes (so pruning on a no is exact): a cas counts if its expected value is
        producible in turn, up to `depth` links, and every other producer counts as is.
        """
        if value == state:
            return True
        p = self.producers.first(value)
        while p != -1 and self.call_time[p] <= by:
            if depth == 0 or self.code[p] not in (_CAS_TRUE, _CAS_MAYBE):
                return True
            if self._producible(self.arg_a[p], state, by, depth - 1):
                return True
            p = self.producers.nxt[p]
        return False

    def transition(self, o: int, state: int) -> int:
        """The register's value after op o, or -1 if o cannot take effect on this value."""
        c, a = self.code[o], self.arg_a[o]
        if c == _READ:
            return state if a == state else -1
        if c == _WRITE:
            new = a
        elif c in (_CAS_TRUE, _CAS_MAYBE):
            new = self.arg_b[o] if a == state else -1
        elif c == _CAS_FALSE:
            return state if a != state else -1
        elif c == _DEL_ANY:
            new = self.absent
        elif c == _DEL_EXISTED:
            return self.absent if state != self.absent else -1
        else:  # _DEL_ABSENT
            return state if state == self.absent else -1
        if new == state and not self.is_ok[o]:
            return -1  # an unknown op that changes nothing is no better than leaving it out
        return new

    def sourceless_reader(self) -> tuple[int, int, int] | None:
        """A quick necessary condition, checked before any search, that catches stale reads.

        An op needing value v (a read, a cas) takes it from some producer P of v (or from the
        initial absent value) invoked before the op completed; if P is a cas, its expected value
        must be one the register can ever hold. If an ok op M, which sets another value, began
        after P completed and completed before the reader began, M lies between them in every
        linearization, so P cannot be the source. Returns (reader, last producer ruled out or -1,
        its M or -1) for a reader with no possible source, else None. O(n log n), with suffix
        minima over the ok mutations sorted by call time.
        """
        n = len(self.src)
        # Values the register can ever hold: absent, what writes and deletes set, and what a cas
        # sets when its expected value can be held (a worklist over chains of cas).
        reachable = [False] * len(self.values)
        cas_from: list[list[int]] = [[] for _ in self.values]
        todo = [self.absent]
        for o in range(n):
            if self.code[o] in (_CAS_TRUE, _CAS_MAYBE):
                cas_from[self.arg_a[o]].append(o)
            elif self.makes[o] != -1:
                todo.append(self.makes[o])
        while todo:
            v = todo.pop()
            if not reachable[v]:
                reachable[v] = True
                todo += [self.makes[o] for o in cas_from[v]]
        muts = sorted((o for o in range(n) if self.is_ok[o] and self.makes[o] != -1), key=lambda o: self.call_time[o])
        calls = [self.call_time[o] for o in muts]
        # Suffix i: the mutation that completes first among muts[i:], and the first to complete
        # among those making another value than it does: (return time, value made, op).
        first: list[tuple[float, int, int]] = [(math.inf, -1, -1)] * (len(muts) + 1)
        other: list[tuple[float, int, int]] = [(math.inf, -1, -1)] * (len(muts) + 1)
        for i in range(len(muts) - 1, -1, -1):
            m = muts[i]
            new, best, alt = (self.return_time[m], self.makes[m], m), first[i + 1], other[i + 1]
            if new[1] == best[1]:
                best = min(best, new)
            elif new < best:
                best, alt = new, best
            elif new < alt:
                alt = new
            first[i], other[i] = best, alt

        def overwriter(after: float, value: int, before: float) -> int:
            i = bisect.bisect_right(calls, after)
            m = first[i] if first[i][1] != value else other[i]
            return m[2] if m[0] < before else -1

        for r in range(n):
            v = self.needs[r]
            if v == -1:
                continue
            ruled_out = blocker = -1
            sources = []
            p = self.producers.first(v)
            while p != -1 and self.call_time[p] <= self.return_time[r]:
                if p != r and (self.code[p] not in (_CAS_TRUE, _CAS_MAYBE) or reachable[self.arg_a[p]]):
                    sources.append(p)
                p = self.producers.nxt[p]
            if v == self.absent:
                sources.append(-1)  # the initial value, "written" before everything
            for p in sources:
                m = overwriter(-math.inf if p == -1 else self.return_time[p], v, self.call_time[r])
                if m == -1:
                    break
                ruled_out, blocker = p, m
            else:
                return r, ruled_out, blocker
        return None

    def why_not(self, o: int, state: int) -> str:
        """Why op o cannot go next from `state`, for the explanation of a dead end."""
        new = self.transition(o, state)
        if new < 0:
            return "impossible on this value"
        starved = self.starved(state, new, o) if new != state else -1
        if starved != -1:
            wanted = self.needs[starved]
            return (
                f"would lose {_show(self.values[wanted])}, which #{self.src[starved]} still needs, "
                f"and nothing can bring it back before #{self.src[starved]} completes"
            )
        return "every order that places it next fails later"

    def frontier(self) -> tuple[list[int], int]:
        """Ok ops whose call precedes the first pending return (in call order), and that op."""
        cands = []
        e = self.events.first(0)
        while e != -1 and self.event_is_call[e]:
            cands.append(self.event_op[e])
            e = self.events.nxt[e]
        return cands, (-1 if e == -1 else self.event_op[e])

    def unknown_candidates(self, state: int, cands: list[int], until: float) -> list[int]:
        """The unknown ops worth placing now, given the ok ops `cands` that could go next.

        Just-in-time: say a linearization places unknown op U now, changing the value from
        `state` to v, and Y comes right after U. Y is in the frontier now (U has no return, so
        placing it lets no new op in). If Y is a plain write or delete, drop U: nobody saw it.
        So only place U if some frontier op needs v exactly (a read, a cas, a delete that found
        nothing) or just a change from `state` (a failed cas expecting `state`, a delete that
        found a value while `state` is absent).
        """
        lost_cas = []
        u = self.unknowns.first(_LOST_CAS)
        while u != -1 and self.call_time[u] <= until:
            lost_cas.append(u)
            u = self.unknowns.nxt[u]
        wanted = set()
        any_change = False
        for y in cands + lost_cas:
            c = self.code[y]
            if c in (_READ, _CAS_TRUE, _CAS_MAYBE):
                wanted.add(self.arg_a[y])
            elif c == _DEL_ABSENT:
                wanted.add(self.absent)
            elif (c == _CAS_FALSE and self.arg_a[y] == state) or (c == _DEL_EXISTED and state == self.absent):
                any_change = True
        found = []
        if any_change:  # rare, and then any change will do: try them all
            for chain in (_LOST_CAS, _LOST_OTHER):
                u = self.unknowns.first(chain)
                while u != -1 and self.call_time[u] <= until:
                    found.append(u)
                    u = self.unknowns.nxt[u]
            # Junk writes are interchangeable (see __init__): the first stands for them all.
            u = self.unknowns.first(_LOST_JUNK)
            if u != -1 and self.call_time[u] <= until:
                found.append(u)
        else:
            for v in wanted:
                p = self.producers.first(v)
                while p != -1 and self.call_time[p] <= until:
                    if not self.is_ok[p]:
                        found.append(p)
                    p = self.producers.nxt[p]
        return sorted((u for u in found if self.makes[u] != state), key=lambda u: self.call_time[u])

    def moves(self, state: int) -> list[tuple[int, int]]:
        """The (op, new value) choices worth trying from here, most promising first."""
        cands, blocking = self.frontier()
        if blocking == -1:
            return []  # every ok op is placed: the search is over
        until = self.return_time[blocking]
        found = []
        for o in cands + self.unknown_candidates(state, cands, until):
            new = self.transition(o, state)
            if new < 0:
                continue
            if self.code[o] in _OBSERVERS:
                # Partial-order reduction: an op that never changes the value (a read, a failed
                # cas), legal now, can go first in *some* linearization if any exists: it is
                # concurrent with every pending op and changes nothing they see. So it is the
                # only move worth trying. (A write of the current value is not such an op: in
                # another place it would change the value.)
                return [(o, new)]
            if new != state and self.starved(state, new, o) != -1:
                # It would bury a value that some unplaced op still needs, and no op that could
                # bring the value back is invoked before that op's deadline.
                continue
            found.append((o, new))

        # Most urgent first: the op whose return is next, then ops after which it could take
        # effect (e.g. the write a pending read saw), then ops that need the current value (a
        # cas), then the rest; within each, the earliest deadline first.
        def urgency(move: tuple[int, int]) -> int:
            o, new = move
            if o == blocking:
                return 0
            if self.transition(blocking, new) >= 0:
                return 1
            return 2 if self.needs[o] == state else 3

        found.sort(key=lambda m: (urgency(m), self.return_time[m[0]]))
        return found

    def lift(self, o: int) -> None:
        """Mark op o as linearized: out of the event lists and of the pruning indexes."""
        if self.is_ok[o]:
            self.events.remove(self.call_event[o])
            self.events.remove(self.return_event[o])
        else:
            self.unknowns.remove(o)
        self.readers.remove(o)
        self.producers.remove(o)
        self.maybe_readers.remove(o)

    def unlift(self, o: int) -> None:
        self.maybe_readers.restore(o)
        self.producers.restore(o)
        self.readers.restore(o)
        if self.is_ok[o]:
            self.events.restore(self.return_event[o])
            self.events.restore(self.call_event[o])
        else:
            self.unknowns.restore(o)


def _check_key(
    history: Sequence[Operation],
    key: str,
    indices: list[int],
    max_steps: int | None,
    deadline: float | None,
) -> KeyResult:
    started = time.monotonic()
    s = _KeySearch(history, indices)
    sourceless = s.sourceless_reader()
    if sourceless is not None:  # a stale read, or a read of a value nobody wrote: no search needed
        return KeyResult(
            key=key,
            verdict=Verdict.ILLEGAL,
            explanation=_explain_sourceless(history, key, s, *sourceless),
            ops_checked=len(s.src),
            steps=0,
            elapsed_s=time.monotonic() - started,
            unplaced=(s.src[sourceless[0]],),
        )
    state = s.absent
    ok_bits = unknown_bits = ok_done = 0
    # Lowe's cache: (ok ops placed, value) -> the sets of unknown ops used on each visit.
    cache: dict[tuple[int, int], list[int]] = {}
    # One frame per placed op: [moves, next move to try, value here, op placed to get here].
    stack: list[list[Any]] = [[s.moves(state), 0, state, -1]]
    steps = 0
    best_ok = -1
    best_prefix: list[int] = []
    best_frontier: list[int] = []
    best_reasons: list[str] = []
    best_state = s.absent
    verdict = Verdict.OK
    while ok_done < s.n_ok:
        frame = stack[-1]
        moves = frame[0]
        if frame[1] < len(moves):
            steps += 1
            if steps & 0x3FF == 0 and (
                (max_steps is not None and steps > max_steps) or (deadline is not None and time.monotonic() > deadline)
            ):
                verdict = Verdict.UNKNOWN
                break
            o, new = moves[frame[1]]
            frame[1] += 1
            if s.is_ok[o]:
                nob, nub = ok_bits | s.bit[o], unknown_bits
            else:
                nob, nub = ok_bits, unknown_bits | s.bit[o]
            seen = cache.get((nob, new))
            if seen is None:
                cache[(nob, new)] = [nub]
            elif any(u & nub == u for u in seen):
                continue  # reached before with no more unknowns spent, and that visit failed
            else:
                seen.append(nub)
            s.lift(o)
            state, ok_bits, unknown_bits = new, nob, nub
            ok_done += s.is_ok[o]
            stack.append([s.moves(state), 0, state, o])
            continue
        # Dead end: every move from here fails.
        if ok_done > best_ok:
            best_ok, best_state = ok_done, state
            best_prefix = [s.src[f[3]] for f in stack[1:]]
            cands, blocking = s.frontier()
            stuck = [blocking] + [o for o in cands if o != blocking]
            best_frontier = [s.src[o] for o in stuck]
            best_reasons = [s.why_not(o, state) for o in stuck]
        if len(stack) == 1:
            verdict = Verdict.ILLEGAL
            break
        stack.pop()
        o = frame[3]
        s.unlift(o)
        if s.is_ok[o]:
            ok_bits &= ~s.bit[o]
            ok_done -= 1
        else:
            unknown_bits &= ~s.bit[o]
        state = stack[-1][2]

    elapsed = time.monotonic() - started
    explanation = ""
    if verdict is not Verdict.OK:
        explanation = _explain(
            history,
            key,
            verdict,
            s.n_ok,
            steps,
            elapsed,
            best_prefix,
            best_frontier,
            best_reasons,
            _show(s.values[best_state]),
        )
    return KeyResult(
        key=key,
        verdict=verdict,
        explanation=explanation,
        ops_checked=len(s.src),
        steps=steps,
        elapsed_s=elapsed,
        longest_prefix=tuple(best_prefix),
        unplaced=tuple(best_frontier),
    )


def _explain(
    history: Sequence[Operation],
    key: str,
    verdict: Verdict,
    n_ok: int,
    steps: int,
    elapsed_s: float,
    prefix: list[int],
    frontier: list[int],
    reasons: list[str],
    value: str,
) -> str:
    if verdict is Verdict.UNKNOWN:
        head = (
            f"key {key!r}: unknown verdict (budget exceeded after {steps} steps, "
            f"{elapsed_s:.1f}s); {n_ok} completed ops"
        )
    else:
        head = f"key {key!r}: NOT linearizable ({n_ok} completed ops, {steps} search steps)"
    if not frontier:
        return head
    lines = [head, f"Longest linearizable prefix found ({len(prefix)} ops, in order):"]
    shown = prefix[-10:]  # the tail is where the story is; the full list is in longest_prefix
    if len(prefix) > len(shown):
        lines.append(f"  ... {len(prefix) - len(shown)} earlier ops")
    lines += [f"  #{i} {history[i].describe()}" for i in shown]
    lines.append(f"after which the value is {value}. No op can go next. The next to complete:")
    lines.append(f"  #{frontier[0]} {history[frontier[0]].describe()}: {reasons[0]}")
    if len(frontier) > 1:
        lines.append("and the others invoked before it completed:")
        others = zip(frontier[1:20], reasons[1:20], strict=True)
        lines += [f"  #{i} {history[i].describe()}: {why}" for i, why in others]
        if len(frontier) > 20:
            lines.append(f"  ... and {len(frontier) - 20} more")
    return "\n".join(lines)


def _explain_sourceless(
    history: Sequence[Operation], key: str, s: _KeySearch, reader: int, producer: int, overwriter: int
) -> str:
    r = s.src[reader]
    value = _show(s.values[s.needs[reader]])
    lines = [f"key {key!r}: NOT linearizable: op #{r} needs the value {value}", f"  #{r} {history[r].describe()}"]
    if producer == -1 and overwriter == -1:
        lines.append("but no op that could produce it was invoked before it completed.")
    elif producer == -1:
        lines.append(
            f"but its only possible source, the initial value, was overwritten by "
            f"#{s.src[overwriter]}, which completed before #{r} began:"
        )
    else:
        p, m = s.src[producer], s.src[overwriter]
        lines.append(
            f"but every op that could have written it was overwritten before #{r} began; "
            f"the last one, #{p}, by #{m}, which began after #{p} completed:"
        )
        lines.append(f"  #{p} {history[p].describe()}")
    if overwriter != -1:
        lines.append(f"  #{s.src[overwriter]} {history[s.src[overwriter]].describe()}")
    return "\n".join(lines)


def _show(canonical: str) -> str:
    return "absent" if canonical == "null" else canonical
