"""Raft's safety rules, watched from the outside of real Raft groups through their observers.

Theory of operation
-------------------
A `RaftGroup` tells its observer when its role changes and which committed entries it hands to its
state machine; `SafetyObserver` is a `GroupObserver` (so metrics and events still work) that also
passes both to one `ClusterSafety` shared by every group of a simulated cluster, across restarts:

- Election Safety: no two nodes lead the same term (Raft figure 3).
- State Machine Safety: an entry committed at an index is the entry every node commits there
  (SafetyMonitor.on_apply, the same check the core simulator makes). A node that lost a write it
  had acknowledged, or a vote it had given, ends up committing something else at that index.
- Acknowledged writes: every write a client was told succeeded sits at an index every node has
  applied by the end (`check_acknowledged`), so a write acknowledged and then lost by a crash that
  no node ever replaced is caught as well.

A violation is reported through `report`, not raised: it happens inside a group's own task, which
must not die of it before the simulation stops and prints the trace.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from raftkv.core import Entry, EntryKind, Role, SoftState, TraceEvent
from raftkv.kv import InvalidCommand, Put, decode
from raftkv.node.event_stream import EventHub
from raftkv.node.metrics import NodeMetrics
from raftkv.node.observe import GroupObserver

from .invariants import InvariantViolation, SafetyMonitor

__all__ = ["ClusterSafety", "SafetyObserver"]


class ClusterSafety:
    def __init__(self, report: Callable[[str], None]) -> None:
        self._report = report
        self.monitor = SafetyMonitor()
        self.leaders_by_term: dict[int, str] = {}
        self.index_of_value: dict[object, int] = {}  # a written value -> the index it was committed at

    def became_leader(self, node: str, term: int) -> None:
        other = self.leaders_by_term.setdefault(term, node)
        if other != node:
            self._report(f"Election Safety: {other} and {node} both led term {term}")

    def committed(self, node: str, entries: list[Entry]) -> None:
        for e in entries:
            try:
                self.monitor.on_apply(node, e)
            except InvariantViolation as violation:
                self._report(str(violation))
                return
            if e.kind is EntryKind.NORMAL:
                self._remember_value(e)

    def _remember_value(self, e: Entry) -> None:
        try:
            cmd = decode(e.data)
        except InvalidCommand:
            return
        if type(cmd) is Put:
            self.index_of_value.setdefault(cmd.value, e.index)

    def check_acknowledged(self, values: Iterable[object], applied_by_node: dict[str, int]) -> None:
        """Raise unless every acknowledged written value is at an index every node applied."""
        lowest_node = min(applied_by_node, key=applied_by_node.__getitem__)
        lowest = applied_by_node[lowest_node]
        for value in values:
            index = self.index_of_value.get(value)
            if index is None:
                raise InvariantViolation(f"the acknowledged write of {value!r} was never committed by any node")
            if index > lowest:
                raise InvariantViolation(f"the acknowledged write of {value!r} at index {index} is missing on "
                                         f"{lowest_node}, which applied only up to {lowest}")


class SafetyObserver(GroupObserver):
    """A group's observer that also reports its role changes and commits to a ClusterSafety, and
    notes role changes (and, with `trace_core`, the core's own events) in the run's trace."""

    def __init__(self, node_id: str, metrics: NodeMetrics, safety: ClusterSafety, note: Callable[[str], None],
                 *, trace_core: bool = False) -> None:
        super().__init__(node_id, metrics, EventHub(node_id))
        self.safety = safety
        self._note = note
        self._trace_core = trace_core

    def on_trace(self, event: TraceEvent) -> None:
        super().on_trace(event)
        if self._trace_core:
            self._note(f"{self.node_id}: {event.describe()}")

    def on_soft_state(self, soft: SoftState, previous_leader: str | None) -> None:
        super().on_soft_state(soft, previous_leader)
        self._note(f"{self.node_id} is {soft.role.value} in term {soft.term} (leader {soft.leader_id})")
        if soft.role is Role.LEADER:
            self.safety.became_leader(self.node_id, soft.term)

    def on_committed(self, entries: list[Entry], now: float) -> None:
        super().on_committed(entries, now)
        self.safety.committed(self.node_id, entries)
