"""Live safety checks over what the nodes report: flagged red in the page if ever broken.

Theory of operation
-------------------
The dashboard sees each node's status (role, term, commit index, last applied index, KV revision
and key count, log length) a few times a second, plus the core's role-change trace events. From
those alone it checks three of Raft's guarantees, each one a property that must hold for *every*
pair of observations, whenever they were taken, so sampling can miss a violation but never
invent one:

* Election Safety: at most one node is leader in any term.
* State Machine Safety: two nodes that have applied the same index have the same KV revision and
  the same number of keys (the state machine is deterministic, so equal prefixes give equal states).
* Leader Completeness / committed entries never lost: a leader of term T holds at least every
  index that any node reported committed in a term before T; and a running node's commit index
  never goes backwards.

A broken check stays broken (with the first evidence) until the dashboard restarts: a violation
is never something to scroll past.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MAX_APPLIED_SAMPLES_PER_NODE = 4096  # bounded memory: old applied indexes are forgotten


@dataclass
class Check:
    id: str
    name: str
    explain: str
    violation: str | None = None
    observations: int = 0

    def describe(self) -> dict:
        return {
            "id": self.id,
            "name": self.name,
            "explain": self.explain,
            "ok": self.violation is None,
            "violation": self.violation,
            "observations": self.observations,
        }


@dataclass
class SafetyChecker:
    leaders: dict[int, str] = field(default_factory=dict)  # term -> the leader seen in it
    applied: dict[str, dict[int, tuple[int, int]]] = field(default_factory=dict)  # node -> index -> (rev, keys)
    commit: dict[str, tuple[float, int]] = field(default_factory=dict)  # node -> (uptime, commit index)
    committed_by_term: dict[int, int] = field(default_factory=dict)  # term -> highest commit seen in it
    checks: dict[str, Check] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for c in (
            Check("one-leader", "At most one leader per term", "Election Safety (Raft §5.2)"),
            Check("same-state", "Applied prefixes agree", "State Machine Safety (§5.4.3): equal applied index, "
                  "equal KV revision and key count"),
            Check("never-lost", "Committed entries never lost", "Leader Completeness (§5.4): a new leader holds "
                  "every entry committed before its term; commit indexes never go back"),
        ):
            self.checks[c.id] = c

    def describe(self) -> list[dict]:
        return [c.describe() for c in self.checks.values()]

    def _fail(self, check_id: str, text: str) -> bool:
        c = self.checks[check_id]
        if c.violation is None:
            c.violation = text
            return True
        return False

    def observe_leader(self, node: str, term: int) -> bool:
        """A node said it is leader of `term`. True if this broke a check for the first time."""
        c = self.checks["one-leader"]
        c.observations += 1
        other = self.leaders.setdefault(term, node)
        if other != node:
            return self._fail("one-leader", f"both {other} and {node} were leader in term {term}")
        return False

    def observe_status(self, node: str, s: dict) -> bool:
        """One status report of one node. True if a check broke for the first time."""
        broke = False
        term, commit = int(s.get("term", 0)), int(s.get("commitIndex", 0))
        if s.get("state") == "leader":
            broke |= self.observe_leader(node, term)
        # State Machine Safety
        applied = int(s.get("lastApplied", 0))
        if "revision" in s and "keys" in s:
            c = self.checks["same-state"]
            mine = (int(s["revision"]), int(s["keys"]))
            samples = self.applied.setdefault(node, {})
            samples[applied] = mine
            if len(samples) > MAX_APPLIED_SAMPLES_PER_NODE:
                del samples[min(samples)]
            for other, their in self.applied.items():
                if other != node and applied in their:
                    c.observations += 1
                    if their[applied] != mine:
                        broke |= self._fail(
                            "same-state",
                            f"at applied index {applied}, {other} had revision/keys {their[applied]} "
                            f"but {node} had {mine}",
                        )
        # Committed entries never lost
        c = self.checks["never-lost"]
        c.observations += 1
        uptime = float(s.get("uptime", 0.0))
        before = self.commit.get(node)
        if before is not None and uptime >= before[0] and commit < before[1]:
            broke |= self._fail("never-lost", f"{node}'s commit index went back from {before[1]} to {commit}")
        self.commit[node] = (uptime, commit)
        if commit > self.committed_by_term.get(term, 0):
            self.committed_by_term[term] = commit
        if s.get("state") == "leader":
            earlier = max((c for t, c in self.committed_by_term.items() if t < term), default=0)
            if int(s.get("logLength", 0)) < earlier:
                broke |= self._fail(
                    "never-lost",
                    f"{node} leads term {term} with a log ending at {s.get('logLength')}, but index {earlier} "
                    "was committed in an earlier term",
                )
        return broke
