"""The Raft core: a pure, deterministic state machine (no sockets, files, clocks or asyncio).

Drive it with `tick()`, `step()`, `propose()` and `read_index()`; carry out each `Ready` in the
order its docstring gives; call `advance()`. See raft.py for the theory of operation.
"""

from .config import Config, ReadMode
from .events import Listener, TraceEvent
from .log import CompactedError, RaftLog
from .messages import (
    MESSAGE_TYPES,
    AppendRequest,
    AppendResponse,
    ConfChange,
    ConfChangeKind,
    ConfState,
    DurableState,
    Entry,
    EntryKind,
    HardState,
    HeartbeatRequest,
    HeartbeatResponse,
    Message,
    ProposeAnswer,
    ProposeForward,
    ReadIndexRequest,
    ReadIndexResponse,
    ReadState,
    Ready,
    Role,
    Snapshot,
    SnapshotMeta,
    SnapshotRequest,
    SoftState,
    TimeoutNow,
    TransferRequest,
    VoteRequest,
    VoteResponse,
)
from .progress import Progress, ProgressState
from .quorum import VoteResult, committed_index, has_quorum, majority, vote_result
from .raft import NotLeaderError, ProposalDroppedError, RaftCore

__all__ = [
    "MESSAGE_TYPES",
    "AppendRequest",
    "AppendResponse",
    "CompactedError",
    "ConfChange",
    "ConfChangeKind",
    "ConfState",
    "Config",
    "DurableState",
    "Entry",
    "EntryKind",
    "HardState",
    "HeartbeatRequest",
    "HeartbeatResponse",
    "Listener",
    "Message",
    "NotLeaderError",
    "Progress",
    "ProgressState",
    "ProposalDroppedError",
    "ProposeAnswer",
    "ProposeForward",
    "RaftCore",
    "RaftLog",
    "ReadIndexRequest",
    "ReadIndexResponse",
    "ReadMode",
    "ReadState",
    "Ready",
    "Role",
    "Snapshot",
    "SnapshotMeta",
    "SnapshotRequest",
    "SoftState",
    "TimeoutNow",
    "TraceEvent",
    "TransferRequest",
    "VoteRequest",
    "VoteResponse",
    "VoteResult",
    "committed_index",
    "has_quorum",
    "majority",
    "vote_result",
]
