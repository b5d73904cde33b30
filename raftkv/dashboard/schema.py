"""The names the dashboard shows for Raft's messages and trace events, shared with its JavaScript.

Theory of operation
-------------------
The page labels what a node reports from this table alone: the server sends it in every `hello`
(`schema()`), so the Python that defines the message and event types and the JavaScript that draws
them cannot drift. Each message type has a label (what a person reads) and a glyph (the shape and
colour it is drawn with: one per family of messages); each trace event kind has a label. A test
requires every message class the codec carries and every trace event class to be named here.
"""

from __future__ import annotations

from typing import Any

from raftkv.core import (
    EVENT_TYPES,
    AppendRequest,
    AppendResponse,
    CampaignStarted,
    Committed,
    EntriesAppended,
    EntriesTruncated,
    HeartbeatRequest,
    HeartbeatResponse,
    LogCompacted,
    MembershipChanged,
    Message,
    MessageReceived,
    MessageSent,
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
from raftkv.node.peer_messages import ProposeAnswer, ProposeForward

__all__ = ["EVENT_LABELS", "GLYPHS", "MESSAGE_LABELS", "schema"]

# Glyph -> what the legend says it stands for (the page draws each with its own shape and colour).
GLYPHS: dict[str, str] = {
    "vote": "vote or pre-vote request/response",
    "append": "append (entries)",
    "hb": "heartbeat",
    "snap": "snapshot",
    "timeout": "leadership transfer (TimeoutNow, transfer request)",
    "read": "ReadIndex request/response",
    "forward": "write forwarded to the leader / its answer",
}

MESSAGE_LABELS: dict[type[Message], tuple[str, str]] = {  # type -> (label, glyph)
    VoteRequest: ("vote request", "vote"),
    VoteResponse: ("vote response", "vote"),
    AppendRequest: ("append entries", "append"),
    AppendResponse: ("append response", "append"),
    HeartbeatRequest: ("heartbeat", "hb"),
    HeartbeatResponse: ("heartbeat response", "hb"),
    SnapshotRequest: ("install snapshot", "snap"),
    TimeoutNow: ("TimeoutNow: campaign at once", "timeout"),
    TransferRequest: ("leadership transfer request", "timeout"),
    ReadIndexRequest: ("ReadIndex request", "read"),
    ReadIndexResponse: ("ReadIndex response", "read"),
    ProposeForward: ("writes forwarded to the leader", "forward"),
    ProposeAnswer: ("where the leader put forwarded writes", "forward"),
}

EVENT_LABELS: dict[type[TraceEvent], str] = {
    RoleChanged: "role change",
    CampaignStarted: "campaign",
    VoteCast: "vote",
    MessageSent: "message sent",
    MessageReceived: "message received",
    EntriesAppended: "entries appended",
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
assert {glyph for _, glyph in MESSAGE_LABELS.values()} <= set(GLYPHS), "a message uses an undeclared glyph"


def schema() -> dict[str, Any]:
    """The table as the page receives it: names are the classes' names and the events' kinds."""
    return {
        "messages": {cls.__name__: {"label": label, "glyph": glyph} for cls, (label, glyph) in MESSAGE_LABELS.items()},
        "glyphs": GLYPHS,
        "events": {cls.kind: label for cls, label in EVENT_LABELS.items()},
    }
