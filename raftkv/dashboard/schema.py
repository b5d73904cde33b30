"""The names and pictures the dashboard uses for Raft's messages and trace events, shared with its JavaScript.

Theory of operation
-------------------
The page labels and draws what a node reports from this table alone: the server sends it in every
`hello` (`schema()`), so the Python that defines the message and event types and the JavaScript that
draws them cannot drift. Each message type has a label (what a person reads) and a glyph of its
own; a vote request or answer that is a pre-vote has a label and glyph of its own too (its term is
the term the candidate *would* use; its own term does not move). A glyph is a shape, a family
(its colour: one per kind of conversation) and a fill (a request is solid, an answer hollow, a
pre-vote dashed), so no two message types look alike and the legend lists every one. Message
colours are saturated; the page's term colours are pale, so a message is never read as a term.

Each trace event kind has a label. A test requires every message class the codec carries and every
trace event class to be named here, and every glyph to be unique.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from raftkv.core import (
    EVENT_TYPES,
    AppendRequest,
    AppendResponse,
    CampaignStarted,
    Committed,
    EntriesTruncated,
    HeartbeatRequest,
    HeartbeatResponse,
    LogCompacted,
    MembershipChanged,
    Message,
    ReadIndexRequest,
    ReadIndexResponse,
    RoleChanged,
    SnapshotInstalled,
    SnapshotRequest,
    SnapshotSent,
    SteppedDown,
    TimeoutNow,
    TraceEvent,
    TransferRequest,
    TransferStarted,
    VoteCast,
    VoteRequest,
    VoteResponse,
)
from raftkv.node.peer_messages import EntryTraces, ProposeAnswer, ProposeForward, TracedProposeForward

__all__ = ["EVENT_LABELS", "FAMILIES", "GLYPHS", "MESSAGE_LABELS", "PRE_VOTE_LABELS", "Glyph", "schema"]

SHAPES = frozenset({"triangle", "square", "circle", "bigsquare", "diamond", "chevron", "hexagon", "arrow"})
FILLS = frozenset({"solid", "hollow", "dashed"})

# Family -> what its colour stands for (style.css gives each its colour: .m-<family>).
FAMILIES: dict[str, str] = {
    "vote": "elections",
    "prevote": "pre-vote (asking before raising the term)",
    "append": "replication",
    "hb": "heartbeats",
    "snap": "snapshots",
    "transfer": "leadership transfer",
    "read": "linearizable reads",
    "forward": "writes forwarded to the leader",
}


@dataclass(frozen=True, slots=True)
class Glyph:
    meaning: str  # the legend's words
    shape: str
    family: str
    fill: str

    def __post_init__(self) -> None:
        assert self.shape in SHAPES and self.family in FAMILIES and self.fill in FILLS, self


GLYPHS: dict[str, Glyph] = {
    "vote": Glyph("vote request", "triangle", "vote", "solid"),
    "vote-answer": Glyph("vote answer", "triangle", "vote", "hollow"),
    "pre-vote": Glyph("pre-vote request (for the term it would use)", "triangle", "prevote", "solid"),
    "pre-vote-answer": Glyph("pre-vote answer", "triangle", "prevote", "dashed"),
    "append": Glyph("append entries (larger: more entries)", "square", "append", "solid"),
    "append-answer": Glyph("append answer", "square", "append", "hollow"),
    "hb": Glyph("heartbeat", "circle", "hb", "solid"),
    "hb-answer": Glyph("heartbeat answer", "circle", "hb", "hollow"),
    "snap": Glyph("install snapshot", "bigsquare", "snap", "solid"),
    "timeout-now": Glyph("TimeoutNow: campaign at once", "diamond", "transfer", "solid"),
    "transfer": Glyph("leadership transfer request", "chevron", "transfer", "solid"),
    "read": Glyph("ReadIndex request", "hexagon", "read", "solid"),
    "read-answer": Glyph("ReadIndex answer", "hexagon", "read", "hollow"),
    "forward": Glyph("writes forwarded to the leader", "arrow", "forward", "solid"),
    "forward-answer": Glyph("where the leader put forwarded writes", "arrow", "forward", "hollow"),
    "traced-forward": Glyph("writes forwarded to the leader, with their traces", "arrow", "forward", "dashed"),
    "entry-traces": Glyph("which traces new entries belong to (only while tracing)", "square", "append", "dashed"),
}

MESSAGE_LABELS: dict[type[Message], tuple[str, str]] = {  # type -> (label, glyph)
    VoteRequest: ("vote request", "vote"),
    VoteResponse: ("vote answer", "vote-answer"),
    AppendRequest: ("append entries", "append"),
    AppendResponse: ("append answer", "append-answer"),
    HeartbeatRequest: ("heartbeat", "hb"),
    HeartbeatResponse: ("heartbeat answer", "hb-answer"),
    SnapshotRequest: ("install snapshot", "snap"),
    TimeoutNow: ("TimeoutNow: campaign at once", "timeout-now"),
    TransferRequest: ("leadership transfer request", "transfer"),
    ReadIndexRequest: ("ReadIndex request", "read"),
    ReadIndexResponse: ("ReadIndex answer", "read-answer"),
    ProposeForward: ("writes forwarded to the leader", "forward"),
    ProposeAnswer: ("where the leader put forwarded writes", "forward-answer"),
    TracedProposeForward: ("writes forwarded to the leader, with their traces", "traced-forward"),
    EntryTraces: ("which traces new entries belong to", "entry-traces"),
}

# A vote request or answer with pre_vote set: the same class, another conversation.
PRE_VOTE_LABELS: dict[type[Message], tuple[str, str]] = {
    VoteRequest: ("pre-vote request", "pre-vote"),
    VoteResponse: ("pre-vote answer", "pre-vote-answer"),
}

EVENT_LABELS: dict[type[TraceEvent], str] = {
    RoleChanged: "role change",
    CampaignStarted: "campaign",
    VoteCast: "vote",
    EntriesTruncated: "conflicting entries dropped",
    Committed: "commit",
    SnapshotSent: "snapshot sent",
    SnapshotInstalled: "snapshot installed",
    LogCompacted: "log compacted",
    MembershipChanged: "membership change",
    SteppedDown: "stepped down",
    TransferStarted: "leadership transfer",
}

assert set(EVENT_LABELS) == set(EVENT_TYPES), "every trace event type needs a label"
_USED = [glyph for _, glyph in (*MESSAGE_LABELS.values(), *PRE_VOTE_LABELS.values())]
assert sorted(_USED) == sorted(GLYPHS), "each glyph stands for exactly one message type (or its pre-vote)"
assert len({(g.shape, g.family, g.fill) for g in GLYPHS.values()}) == len(GLYPHS), "two glyphs look alike"


def message_label(kind: str, pre_vote: bool = False) -> tuple[str, str]:
    """(label, glyph) of a message type named by its class name; unknown names get a plain label."""
    for cls, named in MESSAGE_LABELS.items():
        if cls.__name__ == kind:
            return PRE_VOTE_LABELS[cls] if pre_vote and cls in PRE_VOTE_LABELS else named
    return kind, ""


def schema() -> dict[str, Any]:
    """The table as the page receives it: names are the classes' names and the events' kinds."""
    messages: dict[str, Any] = {}
    for cls, (label, glyph) in MESSAGE_LABELS.items():
        messages[cls.__name__] = {"label": label, "glyph": glyph}
        if cls in PRE_VOTE_LABELS:
            pre_label, pre_glyph = PRE_VOTE_LABELS[cls]
            messages[cls.__name__]["preVote"] = {"label": pre_label, "glyph": pre_glyph}
    return {
        "messages": messages,
        "glyphs": {name: asdict(g) for name, g in GLYPHS.items()},
        "families": FAMILIES,
        "events": {cls.kind: label for cls, label in EVENT_LABELS.items()},
    }
