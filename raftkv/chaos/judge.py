"""The judge: was the recorded run correct? Linearizability, lost acknowledged writes, divergent
replicas, two leaders in one term; plus the numbers a person wants (outcomes, faults, terms).

Theory of operation
-------------------
The judge reads only the `Recorder` (and the final per-node local reads), never the cluster, so
a history saved as JSON can be judged again later. Its checks, strongest first:

1. **Linearizability per key** (`raftkv.check.check_history`): the final linearizable reads on
   every node are part of the history, so "every node returns the newest value" is included.
   ILLEGAL is a violation; a checker that ran out of budget is *inconclusive*, not a pass.
2. **Acknowledged writes present at the end**: for every write that got 200 (and every CAS that
   swapped), the final value of its key must be its value, or the value of a write that could
   have come after it: one that was not finished before it began (an unknown write may take
   effect at any time after its call). A final value nobody wrote is a phantom. This is implied
   by (1) but reads better when it fails.
   Its mirror image: a value that some client *read*, written only by a request that was
   answered "definitely not applied" (503, refused connection), shows a failure report that lied
   ("failed write applied", with the node and the answer it gave).
3. **No divergent replicas**: after convergence, every node's *local* state (`?stale=true`)
   holds the same value for every key, and nodes that applied the same index report the same
   digest of their whole state machine (`/raft-state?digest=true`, when the nodes offer it).
4. **Election safety, sampled**: no two nodes seen as leader in the same term.
5. **Liveness after healing**: the cluster elected a leader and converged, and every final read
   got an answer, within the bound. A failure here is reported as inconclusive (exit 3), not as
   a safety violation.
6. **Watches, leases and locks** (with `--workload watch,lease,lock`): each is judged by a module
   of its own (watchers.py, leases.py, locks.py) into a `SideCheck`, whose violations and
   inconclusive notes count here like the others'.

`Judgement.exit_code`: 0 passed, 1 a safety violation (1-4), 3 inconclusive (budget or liveness).
"""

from __future__ import annotations

import dataclasses
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from raftkv.chaos.recorder import Recorder, answer_of
from raftkv.check import CheckResult, Operation, Verdict, check_history
from raftkv.check.history import canonical_json

__all__ = ["Judgement", "SideCheck", "judge"]

FINAL_CLIENT = "final"

_ValueWriters = dict[str, dict[str, list[int]]]  # built by `_writers_by_value`, which says what counts


@dataclass
class SideCheck:
    """What one of the watch, lease and lock judges found: `stats` are the numbers a person wants
    (how much was checked), `violations` break a promise, `inconclusive` kept the judge from
    checking something."""

    name: str  # "watch", "lease", "lock"
    stats: dict[str, Any] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)
    inconclusive: list[str] = field(default_factory=list)

    def line(self) -> str:
        verdict = "VIOLATION" if self.violations else "inconclusive" if self.inconclusive else "ok"
        return f"{self.name}: {verdict} (" + ", ".join(f"{k} {v}" for k, v in self.stats.items()) + ")"

    def to_json(self) -> dict[str, Any]:
        return {"stats": self.stats, "violations": self.violations, "inconclusive": self.inconclusive}


@dataclass
class Judgement:
    check: CheckResult
    lost_writes: list[str] = field(default_factory=list)
    failed_but_applied: list[str] = field(default_factory=list)
    suspect_ops: list[int] = field(default_factory=list)  # indices into the history, for the timeline
    # True when the history is linearizable once every write answered "definitely not applied"
    # is counted as unknown, and nothing else is wrong: the bug is then in how failures are
    # reported (a real bug still: a client would retry and apply twice), not in replication.
    explained_by_failed_writes: bool = False
    divergence: list[str] = field(default_factory=list)
    election_safety: list[str] = field(default_factory=list)
    liveness: list[str] = field(default_factory=list)
    outcome_counts: dict[str, dict[str, int]] = field(default_factory=dict)
    fault_counts: dict[str, int] = field(default_factory=dict)
    fault_errors: list[str] = field(default_factory=list)
    membership_changes: dict[str, int] = field(default_factory=dict)  # action -> how many were done
    leaders_by_term: dict[int, list[str]] = field(default_factory=dict)
    final_values: dict[str, Any] = field(default_factory=dict)
    side_checks: list[SideCheck] = field(default_factory=list)

    @property
    def violations(self) -> list[str]:
        out = []
        if self.check.verdict is Verdict.ILLEGAL:
            bad = sorted(k for k, r in self.check.keys.items() if r.verdict is Verdict.ILLEGAL)
            out.append(f"NOT linearizable on key(s) {', '.join(bad)}")
        out += [f"acknowledged write lost: {x}" for x in self.lost_writes]
        out += [f"failed write applied: {x}" for x in self.failed_but_applied]
        out += [f"divergent replicas: {x}" for x in self.divergence]
        out += [f"two leaders in one term: {x}" for x in self.election_safety]
        out += [f"{c.name}: {x}" for c in self.side_checks for x in c.violations]
        return out

    @property
    def inconclusive(self) -> list[str]:
        out = []
        if self.check.verdict is Verdict.UNKNOWN:
            out.append("the linearizability search ran out of budget on some key")
        return out + self.liveness + [f"{c.name}: {x}" for c in self.side_checks for x in c.inconclusive]

    @property
    def exit_code(self) -> int:
        return 1 if self.violations else 3 if self.inconclusive else 0

    @property
    def verdict(self) -> str:
        return "VIOLATION" if self.violations else "INCONCLUSIVE" if self.inconclusive else "PASS"

    def to_json(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "exitCode": self.exit_code,
            "violations": self.violations,
            "inconclusive": self.inconclusive,
            "linearizability": {
                k: {"verdict": r.verdict.value, "opsChecked": r.ops_checked, "steps": r.steps,
                    "elapsedS": round(r.elapsed_s, 3), "explanation": r.explanation,
                    "longestPrefix": list(r.longest_prefix), "unplaced": list(r.unplaced)}
                for k, r in sorted(self.check.keys.items())
            },
            "lostWrites": self.lost_writes,
            "failedButApplied": self.failed_but_applied,
            "explainedByFailedWrites": self.explained_by_failed_writes,
            "suspectOps": self.suspect_ops,
            "divergence": self.divergence,
            "electionSafety": self.election_safety,
            "liveness": self.liveness,
            "outcomes": self.outcome_counts,
            "faults": self.fault_counts,
            "faultErrors": self.fault_errors,
            "membershipChanges": self.membership_changes,
            "leadersByTerm": {str(t): ns for t, ns in sorted(self.leaders_by_term.items())},
            "finalValues": self.final_values,
            **{c.name: c.to_json() for c in self.side_checks},
        }

    def summary(self) -> str:
        ops = self.outcome_counts.get("all", {})
        lines = [
            f"verdict: {self.verdict}",
            f"operations: {sum(ops.values())} (ok {ops.get('ok', 0)}, fail {ops.get('fail', 0)}, "
            f"unknown {ops.get('unknown', 0)}); by kind: "
            + ", ".join(f"{k} {sum(v.values())}" for k, v in sorted(self.outcome_counts.items()) if k != "all"),
            "faults: " + (", ".join(f"{k} x{n}" for k, n in sorted(self.fault_counts.items())) or "none"),
            *([f"membership changes done: {self.membership_changes.get('remove', 0)} removed, "
               f"{self.membership_changes.get('re-add', 0)} re-added"] if "member" in self.fault_counts else []),
            f"terms seen: {len(self.leaders_by_term)}; leaders: "
            + ", ".join(f"t{t}={'/'.join(ns)}" for t, ns in sorted(self.leaders_by_term.items())),
            f"linearizability: {self.check.verdict.value} over {len(self.check.keys)} key(s)",
            *(c.line() for c in self.side_checks),
        ]
        lines += [f"VIOLATION: {v}" for v in self.violations]
        if self.explained_by_failed_writes:
            lines.append("(counting every failed write as unknown, the history is linearizable: the bug is in "
                         "how failures are reported, not in replication)")
        if self.check.verdict is Verdict.ILLEGAL:
            lines.append(self.check.explain())
        lines += [f"INCONCLUSIVE: {v}" for v in self.inconclusive]
        lines += [f"note: fault not fully injected: {e}" for e in self.fault_errors]
        return "\n".join(lines)


def judge(
    recorder: Recorder,
    local_values: dict[str, dict[str, Any]] | None = None,
    converged: bool = True,
    liveness: list[str] | None = None,
    check_timeout_s: float = 60.0,
    digests: dict[str, Any] | None = None,
    side_checks: list[SideCheck] | None = None,
) -> Judgement:
    """`digests`: {node: [lastApplied, kvDigest]} read after convergence (nodes that applied the
    same index must hold byte-identical state machines). `side_checks`: the watch, lease and lock
    judges' findings (judged beforehand from their own records)."""
    ops = recorder.ops
    result = check_history(ops, timeout_s=check_timeout_s)
    j = Judgement(check=result, liveness=list(liveness or []), side_checks=list(side_checks or []))

    by_kind: dict[str, Counter] = defaultdict(Counter)
    for op in ops:
        by_kind[op.kind][op.outcome] += 1
        by_kind["all"][op.outcome] += 1
    j.outcome_counts = {k: dict(v) for k, v in by_kind.items()}
    j.fault_counts = dict(Counter(f.kind for f in recorder.faults))
    j.fault_errors = [f"{f.label}: {f.error}" for f in recorder.faults if f.error]
    j.membership_changes = _membership_changes(recorder)

    written = _writers_by_value(ops)
    _check_final(ops, written, j)
    _check_failed_writes(recorder, written, j)
    if local_values is not None and converged:
        for key, per_node in sorted(local_values.items()):
            shown = {n: canonical_json(v) for n, v in sorted(per_node.items())}
            if len(set(shown.values())) > 1:
                j.divergence.append(f"{key}: " + ", ".join(f"{n}={v}" for n, v in shown.items()))

    if digests and converged:
        by_index: dict[Any, dict[str, Any]] = defaultdict(dict)
        for node, (applied, digest) in sorted(digests.items()):
            by_index[applied][node] = digest
        for applied, per_node in sorted(by_index.items(), key=lambda kv: str(kv[0])):
            if len(set(per_node.values())) > 1:
                j.divergence.append(f"state machines differ at applied index {applied}: "
                                    + ", ".join(f"{n}={d}" for n, d in sorted(per_node.items())))

    leaders: dict[int, set[str]] = defaultdict(set)
    for s in recorder.samples:
        if s.state == "leader" and s.term is not None:
            leaders[s.term].add(s.node)
    j.leaders_by_term = {t: sorted(ns) for t, ns in sorted(leaders.items())}
    j.election_safety = [f"term {t}: {', '.join(ns)}" for t, ns in j.leaders_by_term.items() if len(ns) > 1]

    # Last: it needs every other check's answer, and is skipped when one of them already failed.
    j.explained_by_failed_writes = _explained_by_failed_writes(ops, j, check_timeout_s)
    return j


def _membership_changes(recorder: Recorder) -> dict[str, int]:
    """How many of each member nemesis action got done (from the actions on its fault records)."""
    done: Counter[str] = Counter()
    for f in recorder.faults:
        if f.kind == "member":
            done.update(a["action"] for a in f.details.get("actions", []) if a["outcome"].startswith("done"))
    return dict(sorted(done.items()))


def _writers_by_value(ops: list[Operation]) -> _ValueWriters:
    """{key: {canonical value: indices of the writes and cas that may have stored it}}, in
    history order. The one index both `_check_final` and `_check_failed_writes` read, so "who
    wrote this value" has one answer.

    A cas refused with 412 (outcome "ok", result False) read the value and wrote nothing, so it is
    left out: counting it would hide a phantom final value, and would hide a failed write that was
    read (its "ok" outcome would pass for an honest writer). A cas or write with an unknown outcome
    may have written, so it stays; so do those answered "definitely not applied", because whether
    that answer was true is exactly what `_check_failed_writes` asks.
    """
    written: _ValueWriters = {}
    for i, op in enumerate(ops):
        if op.kind == "write" or (op.kind == "cas" and op.result is not False):
            written.setdefault(op.key, {}).setdefault(canonical_json(op.value), []).append(i)
    return written


def _check_final(ops: list[Operation], written: _ValueWriters, j: Judgement) -> None:
    finals: dict[str, list[Operation]] = defaultdict(list)
    for op in ops:
        if op.client == FINAL_CLIENT and op.kind == "read":
            finals[op.key].append(op)
    keys = sorted({op.key for op in ops})
    for key in keys:
        answered = [op for op in finals.get(key, []) if op.outcome == "ok"]
        if len(answered) < len(finals.get(key, [])) or not answered:
            j.liveness.append(f"final read of {key} got no answer from some node")
        if not answered:
            continue
        final = answered[-1].result
        j.final_values[key] = final
        # Failed writes count as producers here: one that took effect anyway is reported by
        # `_check_failed_writes`, and must not also make its value look like a phantom.
        by_value, final_text = written.get(key, {}), canonical_json(final)
        producers = [ops[i] for i in by_value.get(final_text, [])]
        if final is not None and not producers:
            j.lost_writes.append(f"{key}: final value {final_text} was never written (phantom)")
            continue
        for w in (ops[i] for i in sorted(i for text, ids in by_value.items() if text != final_text for i in ids)):
            if w.outcome != "ok":
                continue
            later = [p for p in producers
                     if p.outcome != "ok" or p.complete_time is None or p.complete_time >= w.invoke_time]
            if not later:
                j.lost_writes.append(
                    f"{key}: {w.describe()} was acknowledged, but every node ends with {final_text}, "
                    "which was written before it")


def _check_failed_writes(recorder: Recorder, written: _ValueWriters, j: Judgement) -> None:
    ops = recorder.ops
    reported: set[tuple[str, str]] = set()
    for i, op in enumerate(ops):
        if op.kind != "read" or op.outcome != "ok" or op.result is None:
            continue
        seen = (op.key, canonical_json(op.result))
        writers = written.get(op.key, {}).get(seen[1], [])
        if seen in reported or not writers or any(ops[w].outcome != "fail" for w in writers):
            continue
        reported.add(seen)
        for w in writers:
            meta = recorder.op_meta[w]
            answer = answer_of(meta)
            j.failed_but_applied.append(
                f"#{w} {ops[w].describe()} via {meta.get('node')} was answered {answer} "
                f"({meta.get('error', '')!s}) = definitely not applied, yet #{i} {op.describe()} "
                f"via {recorder.op_meta[i].get('node')} saw its value")
            j.suspect_ops += [w, i]


def _explained_by_failed_writes(ops: list[Operation], j: Judgement, timeout_s: float) -> bool:
    """`Judgement.explained_by_failed_writes`, from a judgement whose other checks are done.

    Linearizability is checked key by key, and counting a failed write as unknown only adds an
    op that may be left out, so a key that passed still passes: only the ILLEGAL keys are searched
    again. A key whose search ran out of budget was never shown linearizable, so it is not
    searched again (that could cost a whole budget more) and the answer is False.
    """
    if j.lost_writes or j.divergence or j.election_safety:
        return False  # something besides the failure reports is wrong
    illegal = {k for k, r in j.check.keys.items() if r.verdict is Verdict.ILLEGAL}
    if not (illegal or j.failed_but_applied):
        return False  # nothing to explain
    if any(r.verdict is Verdict.UNKNOWN for r in j.check.keys.values()):
        return False
    # Distrust every "definitely not applied" answer to a write: is the rest consistent?
    as_unknown = [dataclasses.replace(op, outcome="unknown") if op.outcome == "fail" and op.kind != "read" else op
                  for op in ops if op.key in illegal]
    return check_history(as_unknown, timeout_s=timeout_s).ok
