"""What a Raft group shows the world: its core's trace events, its messages and its commits,
turned into Prometheus metrics and events on the node's Raft event stream.

Theory of operation
-------------------
The group calls the observer at the points where things happen (a trace event from the core, the
messages of a Ready leaving, a message the fault layer dropped, a proposal, a commit, a role
change); the observer matches on event and message *types* and never reads the core's state.
Events for the stream are built only while someone watches it (`EventHub.watched`), except the
few a late subscriber needs in the recent ring (role changes, votes, ...): commits, messages and
appends are too many to keep.

Propose-to-commit is timed by the leader for every write it commits, its own and those its
followers forwarded, so the leader's figures are the cluster's: each proposal's (first index, last
index, proposed at) waits in `_uncommitted` until a commit covers it.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import Any

from raftkv.core import (
    CampaignStarted,
    Committed,
    Entry,
    HeartbeatRequest,
    HeartbeatResponse,
    Message,
    Role,
    SoftState,
    TraceEvent,
)

from .event_stream import EventHub
from .metrics import NodeMetrics

__all__ = ["GroupObserver", "trace_to_json"]

@dataclass(frozen=True, slots=True)
class _Proposal:
    """A leader's proposal not yet wholly committed: entries first..last, proposed at a time."""

    first: int
    last: int
    proposed_at: float


def trace_to_json(event: TraceEvent) -> dict[str, Any]:
    """A trace event as the Raft event stream carries it (the dashboard's schema names the kinds)."""
    return {"type": "trace", "kind": event.kind, "term": event.term, "detail": event.details(),
            "text": event.describe()}


class GroupObserver:
    def __init__(self, node_id: str, metrics: NodeMetrics, hub: EventHub) -> None:
        self.node_id = node_id
        self.metrics = metrics
        self.hub = hub
        self._uncommitted: collections.deque[_Proposal] = collections.deque()
        self._heartbeat_sent: dict[str, float] = {}  # peer -> when the last unanswered heartbeat left

    # ---- the core -----------------------------------------------------------------------------

    def on_trace(self, event: TraceEvent) -> None:
        if isinstance(event, CampaignStarted) and not event.pre_vote:  # a pre-vote round is no election
            self.metrics.elections_started.inc()
        if self.hub.watched or not isinstance(event, Committed):
            self.hub.publish(trace_to_json(event))

    def on_soft_state(self, soft: SoftState, previous_leader: str | None) -> None:
        self.metrics.on_soft_state(soft.role, soft.leader_id, soft.term, previous_leader)
        if soft.role is not Role.LEADER:
            self._uncommitted.clear()  # another leader commits (or replaces) them now

    # ---- writes -------------------------------------------------------------------------------

    def on_proposed(self, first: int, last: int, now: float) -> None:
        self._uncommitted.append(_Proposal(first, last, now))

    def on_committed(self, entries: list[Entry], now: float) -> None:
        """Propose-to-commit of this leader's proposals that `entries` committed."""
        pending, last = self._uncommitted, entries[-1].index
        while pending and pending[0].first <= last:
            proposal = pending.popleft()
            end = proposal.last
            if end > last:  # the rest of that proposal commits later
                pending.appendleft(_Proposal(last + 1, end, proposal.proposed_at))
                end = last
            self.metrics.commit_seconds.observe(now - proposal.proposed_at, end - proposal.first + 1)

    # ---- messages -----------------------------------------------------------------------------

    def on_received(self, m: Message, now: float) -> None:
        if type(m) is HeartbeatRequest:
            self.metrics.on_heartbeat_received()
        elif type(m) is HeartbeatResponse and (sent := self._heartbeat_sent.pop(m.src, None)) is not None:
            self.metrics.peer_rtt_seconds.labels(m.src).observe(now - sent)

    def on_sent(self, messages: list[Message], now: float) -> None:
        groups: dict[tuple[str, str], list[Message]] = {}
        for m in messages:
            groups.setdefault((m.dst, type(m).__name__), []).append(m)
        for (dst, kind), msgs in groups.items():
            self.metrics.messages_sent.labels(kind)[0] += len(msgs)
            if kind == "HeartbeatRequest":
                self.metrics.heartbeats_sent.inc(len(msgs))
                self._heartbeat_sent.setdefault(dst, now)
            if self.hub.watched:
                entries = sum(len(getattr(m, "entries", ())) for m in msgs)
                self.hub.publish({"type": "msg", "src": self.node_id, "dst": dst, "kind": kind, "count": len(msgs),
                                  "entries": entries, "term": msgs[-1].term, "dropped": False,
                                  "preVote": getattr(msgs[-1], "pre_vote", False)})

    def on_drop(self, m: Message, direction: str) -> None:
        self.metrics.messages_dropped.labels(direction).inc()
        if self.hub.watched:
            self.hub.publish({"type": "msg", "src": m.src, "dst": m.dst, "kind": type(m).__name__, "count": 1,
                              "term": m.term, "dropped": True, "direction": direction,
                              "preVote": getattr(m, "pre_vote", False)})
