"""Trace events: the one way the outside world watches a core.

The core calls an injected listener with a `TraceEvent` for every role change, campaign, vote,
truncation, commit, snapshot and membership change (messages and appends are in the Readys, and
an event each would double them in every reader). The driver, the metrics, the dashboard and the
simulator read only these (and the Ready batches), never the core's attributes, so the core's
internals stay free to change. With no listener the core builds no events at all.

Each kind of event is its own frozen dataclass, so readers match on types and fields instead of a
kind string and a dict; `kind` is the short stable name the dashboard's JSON carries, and
`describe()` the event in plain words for an event feed. `EVENT_TYPES` lists every kind: the
dashboard's schema is built from it, and a test requires each to be described there.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

__all__ = [
    "EVENT_TYPES",
    "CampaignStarted",
    "Committed",
    "EntriesTruncated",
    "Listener",
    "LogCompacted",
    "MembershipChanged",
    "RoleChanged",
    "SnapshotInstalled",
    "SnapshotSent",
    "SteppedDown",
    "TraceEvent",
    "TransferStarted",
    "VoteCast",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class TraceEvent:
    """What happened on `node` while it was in `term`."""

    kind: ClassVar[str] = ""
    node: str
    term: int

    def describe(self) -> str:
        """One line in plain words, for an event feed."""
        raise NotImplementedError

    def details(self) -> dict[str, Any]:
        """The fields particular to this kind (not node and term), as plain JSON-able data."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("node", "term")}


@dataclass(frozen=True, slots=True, kw_only=True)
class RoleChanged(TraceEvent):
    kind: ClassVar[str] = "role"
    role: str  # a Role's value: "follower", "pre-candidate", "candidate", "leader"
    leader: str | None

    def describe(self) -> str:
        return f"{self.node} became {self.role} in term {self.term}"


@dataclass(frozen=True, slots=True, kw_only=True)
class CampaignStarted(TraceEvent):
    kind: ClassVar[str] = "campaign"
    pre_vote: bool  # a pre-vote round asks without raising the term: no election yet
    transfer: bool  # started by a leadership transfer (TimeoutNow), not by a timeout
    after_pre_vote: bool = False  # the election a won pre-vote round leads to (its timeout came before)

    def describe(self) -> str:
        asked = "pre-votes" if self.pre_vote else "votes"
        why = ("was told to take over (leadership transfer)" if self.transfer
               else "won its pre-vote" if self.after_pre_vote else "timed out")
        return f"{self.node} {why} in term {self.term} and asked for {asked}"


@dataclass(frozen=True, slots=True, kw_only=True)
class VoteCast(TraceEvent):
    kind: ClassVar[str] = "vote"
    candidate: str
    granted: bool
    pre_vote: bool
    for_term: int
    reason: str | None = None  # why it was refused

    def describe(self) -> str:
        what = "pre-vote" if self.pre_vote else "vote"
        verdict = "granted" if self.granted else "refused"
        because = f" ({self.reason})" if self.reason else ""
        return f"{self.node} {verdict} its {what} to {self.candidate} for term {self.for_term}{because}"


@dataclass(frozen=True, slots=True, kw_only=True)
class EntriesTruncated(TraceEvent):
    kind: ClassVar[str] = "truncate"
    from_index: int

    def describe(self) -> str:
        return f"{self.node} dropped its conflicting entries from index {self.from_index}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Committed(TraceEvent):
    kind: ClassVar[str] = "commit"
    index: int

    def describe(self) -> str:
        return f"{self.node} committed up to index {self.index}"


@dataclass(frozen=True, slots=True, kw_only=True)
class SnapshotSent(TraceEvent):
    kind: ClassVar[str] = "snapshot_sent"
    peer: str
    index: int

    def describe(self) -> str:
        return f"{self.node} sent a snapshot at index {self.index} to {self.peer}"


@dataclass(frozen=True, slots=True, kw_only=True)
class SnapshotInstalled(TraceEvent):
    kind: ClassVar[str] = "snapshot_installed"
    index: int

    def describe(self) -> str:
        return f"{self.node} installed a snapshot at index {self.index}"


@dataclass(frozen=True, slots=True, kw_only=True)
class LogCompacted(TraceEvent):
    kind: ClassVar[str] = "compact"
    index: int

    def describe(self) -> str:
        return f"{self.node} compacted its log with a snapshot at index {self.index}"


@dataclass(frozen=True, slots=True, kw_only=True)
class MembershipChanged(TraceEvent):
    kind: ClassVar[str] = "conf"
    voters: tuple[str, ...]
    learners: tuple[str, ...]

    def describe(self) -> str:
        learners = f" and learners {', '.join(self.learners)}" if self.learners else ""
        return f"{self.node} now has voters {', '.join(self.voters)}{learners}"


@dataclass(frozen=True, slots=True, kw_only=True)
class SteppedDown(TraceEvent):
    kind: ClassVar[str] = "step_down"
    reason: str

    def describe(self) -> str:
        return f"{self.node} stepped down: {self.reason}"


@dataclass(frozen=True, slots=True, kw_only=True)
class TransferStarted(TraceEvent):
    kind: ClassVar[str] = "transfer"
    target: str

    def describe(self) -> str:
        return f"{self.node} hands leadership to {self.target}"


EVENT_TYPES: tuple[type[TraceEvent], ...] = (
    RoleChanged, CampaignStarted, VoteCast, EntriesTruncated, Committed, SnapshotSent, SnapshotInstalled,
    LogCompacted, MembershipChanged, SteppedDown, TransferStarted,
)
assert len({t.kind for t in EVENT_TYPES}) == len(EVENT_TYPES), "two event types share a kind"

Listener = Callable[[TraceEvent], None]
