"""Raft's safety properties (paper figure 3), checked incrementally as the simulation runs.

Each check hooks into the moment a property could first break, so checking after every step
costs little:

- Election Safety: when a node reports itself leader, no other node led that term.
- Leader Append-Only: a leader's Ready never rewrites an index it already held in its term.
- Log Matching: every entry written anywhere is registered by (index, term) together with its
  data and the term of the entry before it; a second, different registration is a violation.
  Because the previous term is part of the record, agreement at (index, term) forces agreement
  of the whole prefix, by induction.
- Leader Completeness: when a node becomes leader, its log holds every entry any node has
  reported committed (its Ready's hard state) by then.
- State Machine Safety: every applied entry matches what any other node applied at that index.

Nodes are told apart by id alone, and a server that rejoins with a fresh disk comes back under a
new id (see membership.py), so every check spans every configuration and every incarnation:
a leader of some term in one configuration excludes a leader of that term in any other, and an
entry committed in one configuration must be in every later leader's log, whoever is a member
by then. Nothing here is forgotten when a node leaves the cluster.
"""

from __future__ import annotations

from raftkv.core import Entry, RaftCore, Ready, Role


class InvariantViolation(AssertionError):
    pass


class SafetyMonitor:
    def __init__(self) -> None:
        self.leaders_by_term: dict[int, str] = {}
        self._leader_mark: dict[str, tuple[int, int]] = {}  # node -> (term, last index seen as leader)
        self._entries: dict[tuple[int, int], tuple[int, bytes, int]] = {}
        self._applied: dict[int, tuple[int, int, bytes]] = {}
        self._committed_terms: dict[int, int] = {}  # index -> term, for every index reported committed
        self.max_committed = 0

    def before_persist(self, node: str, core: RaftCore, rd: Ready) -> None:
        """Called with each Ready before the replica persists it."""
        if rd.entries:
            self._check_append_only(node, core, rd.entries[0].index)
            for e in rd.entries:
                self._register(node, core, e)
        if rd.hard_state and rd.hard_state.commit > self.max_committed:
            self._note_committed(core, rd.hard_state.commit)
        if rd.soft_state and rd.soft_state.role is Role.LEADER:
            term = rd.soft_state.term
            other = self.leaders_by_term.setdefault(term, node)
            if other != node:
                raise InvariantViolation(f"Election Safety: {other} and {node} both led term {term}")
            self._check_completeness(node, core)
        if core.role is Role.LEADER:
            self._leader_mark[node] = (core.term, core.log.last_index())
        else:
            self._leader_mark.pop(node, None)

    def _check_append_only(self, node: str, core: RaftCore, first_written: int) -> None:
        mark = self._leader_mark.get(node)
        if mark and mark[0] == core.term and core.role is Role.LEADER and first_written <= mark[1]:
            raise InvariantViolation(
                f"Leader Append-Only: leader {node} rewrote index {first_written} of its log in term {core.term}"
            )

    def _register(self, node: str, core: RaftCore, e: Entry) -> None:
        prev_term = core.log.term(e.index - 1)
        record = (e.kind.value, e.data, prev_term)
        known = self._entries.setdefault((e.index, e.term), record)
        if known != record:
            raise InvariantViolation(
                f"Log Matching: {node} holds entry {e.index}/term {e.term} with previous term {prev_term}, "
                f"but another log holds it with previous term {known[2]}"
                + (" and different data" if known[1] != e.data else "")
            )

    def _note_committed(self, core: RaftCore, commit: int) -> None:
        """Record the terms of the entries `core` newly reports committed. Log Matching ties each
        (index, term) to one entry, so the term is enough to recognise it later."""
        log = core.log
        for index in range(max(self.max_committed + 1, log.first_index()), commit + 1):
            self._committed_terms[index] = log.term(index)
        self.max_committed = commit

    def _check_completeness(self, node: str, core: RaftCore) -> None:
        log = core.log
        for index in range(log.first_index(), self.max_committed + 1):
            term = self._committed_terms.get(index)
            if term is not None and (index > log.last_index() or log.term(index) != term):
                raise InvariantViolation(
                    f"Leader Completeness: new leader {node} (term {core.term}) lacks committed entry {index}"
                )

    def on_apply(self, node: str, e: Entry) -> None:
        record = (e.term, e.kind.value, e.data)
        known = self._applied.setdefault(e.index, record)
        if known != record:
            raise InvariantViolation(
                f"State Machine Safety: {node} applied entry {e.index} of term {e.term}, "
                f"another node applied term {known[0]} there"
            )
