"""The values that flow in and out of the Raft core.

Everything here is an immutable value: log entries, the durable hard state, snapshots and the
messages peers exchange. The core never serialises them; the storage and the transport do, each
in its own codec, so the core stays free of any wire or disk format.

Node ids are strings ("node1"). Index 0 / term 0 stand for "before the first entry".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum, IntEnum

import msgpack


class Role(Enum):
    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre-candidate"
    CANDIDATE = "candidate"
    LEADER = "leader"


class EntryKind(IntEnum):
    NORMAL = 0  # client command, opaque bytes for the state machine
    NOOP = 1  # appended by every new leader so it can commit entries of earlier terms
    CONF_CHANGE = 2  # membership change; data is an encoded ConfChange


# Not frozen, though never changed once built: one is made per write on every replica (the leader's
# propose, a follower's decode, replay), and a frozen dataclass takes four times as long to build.
@dataclass(slots=True)
class Entry:
    term: int
    index: int
    kind: EntryKind = EntryKind.NORMAL
    data: bytes = b""


@dataclass(frozen=True, slots=True)
class HardState:
    """What must be on disk before the node acts on it (Raft paper, figure 2, "persistent state")."""

    term: int = 0
    voted_for: str | None = None
    commit: int = 0


@dataclass(frozen=True, slots=True)
class ConfState:
    """A cluster configuration: voters form quorums, learners only receive the log."""

    voters: tuple[str, ...]
    learners: tuple[str, ...] = ()

    def members(self) -> tuple[str, ...]:
        return self.voters + self.learners


class ConfChangeKind(Enum):
    ADD_VOTER = "add_voter"  # also promotes a learner
    ADD_LEARNER = "add_learner"
    REMOVE = "remove"


@dataclass(frozen=True, slots=True)
class ConfChange:
    """One membership change. `context` is opaque to the core and travels in the entry (etcd's
    ConfChange.Context): the node layer puts the member's name and addresses there, so that every
    replica learns them from the log itself."""

    kind: ConfChangeKind
    node_id: str
    context: bytes = b""

    def encode(self) -> bytes:
        return msgpack.packb([self.kind.value, self.node_id, self.context])

    @classmethod
    def decode(cls, data: bytes) -> ConfChange:
        if data[:1] != b"\x93":  # written before changes carried a context: "kind:node_id"
            kind, _, node_id = data.decode().partition(":")
            return cls(ConfChangeKind(kind), node_id)
        kind, node_id, context = msgpack.unpackb(data)
        return cls(ConfChangeKind(kind), node_id, context)

    def apply_to(self, conf: ConfState) -> ConfState:
        voters = [v for v in conf.voters if v != self.node_id]
        learners = [v for v in conf.learners if v != self.node_id]
        if self.kind is ConfChangeKind.ADD_VOTER:
            voters.append(self.node_id)
        elif self.kind is ConfChangeKind.ADD_LEARNER:
            learners.append(self.node_id)
        return ConfState(tuple(voters), tuple(learners))


@dataclass(frozen=True, slots=True)
class SnapshotMeta:
    index: int
    term: int
    conf: ConfState


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A state-machine image covering the log up to meta.index; data is opaque to the core."""

    meta: SnapshotMeta
    data: bytes = b""


# ---- messages between peers -------------------------------------------------------------------
# Every message carries the sender's term; step() handles term comparison once for all of them.


@dataclass(frozen=True, slots=True, kw_only=True)
class Message:
    src: str
    dst: str
    term: int


@dataclass(frozen=True, slots=True, kw_only=True)
class VoteRequest(Message):
    """RequestVote; with pre_vote the term is the one the sender *would* use, its own is unchanged."""

    last_log_index: int
    last_log_term: int
    pre_vote: bool = False
    transfer: bool = False  # leadership transfer: voters must not refuse because of a leader lease


@dataclass(frozen=True, slots=True, kw_only=True)
class VoteResponse(Message):
    granted: bool
    pre_vote: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class AppendRequest(Message):
    """Entries to append after prev, and the leader's commit index.

    `needs_answer` is False only on an empty one that announces a new commit index to a follower
    the leader replicates to: a follower that holds what it follows does not answer it (the answer
    would only repeat an acknowledgement already on its way); one that does not, rejects it.
    """

    prev_log_index: int
    prev_log_term: int
    entries: tuple[Entry, ...] = ()
    commit: int = 0
    needs_answer: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class AppendResponse(Message):
    """Answer to AppendRequest and SnapshotRequest.

    On success match_index is the last index known to equal the leader's log. On rejection
    reject_index is the prev_log_index that did not match, and the conflict hint lets the leader
    skip a whole term per round trip (Raft thesis 5.3, "fast back-off").
    """

    success: bool
    match_index: int = 0
    reject_index: int = 0
    conflict_term: int = 0
    conflict_index: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class HeartbeatRequest(Message):
    commit: int
    read_round: int = 0  # ReadIndex confirmation round this heartbeat belongs to


@dataclass(frozen=True, slots=True, kw_only=True)
class HeartbeatResponse(Message):
    read_round: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class SnapshotRequest(Message):
    """InstallSnapshot. The transport may stream snapshot.data in chunks; the core sees it whole."""

    snapshot: Snapshot


@dataclass(frozen=True, slots=True, kw_only=True)
class TimeoutNow(Message):
    """Leadership transfer: the target campaigns at once, without waiting for a timeout."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TransferRequest(Message):
    """A follower asks the leader to hand leadership to `target`."""

    target: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ReadIndexRequest(Message):
    """A follower asks the leader for a safe read index on behalf of its client read `ctx`."""

    ctx: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class ReadIndexResponse(Message):
    ctx: bytes
    index: int
    ok: bool = True


MESSAGE_TYPES: tuple[type[Message], ...] = (
    VoteRequest,
    VoteResponse,
    AppendRequest,
    AppendResponse,
    HeartbeatRequest,
    HeartbeatResponse,
    SnapshotRequest,
    TimeoutNow,
    TransferRequest,
    ReadIndexRequest,
    ReadIndexResponse,
)


# ---- what the core hands back -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SoftState:
    """Volatile facts worth telling the driver about when they change."""

    role: Role
    leader_id: str | None
    term: int


@dataclass(frozen=True, slots=True)
class ReadState:
    """The read `ctx` is linearizable once the state machine has applied `index`.

    ok=False means the read could not be confirmed (no leader, or leadership was lost before a
    majority answered): the driver should fail it and let the client retry.
    """

    index: int
    ctx: bytes
    ok: bool = True


@dataclass(slots=True)
class Ready:
    """One batch of work for the driver, to be carried out in this order:

    0. `early_messages` may be sent at once, before anything is written: they vouch for nothing
       on this node's disk (a leader's entries, heartbeats, ReadIndex traffic);
    1. persist `snapshot` (if any), then `entries` (an entry at index i replaces the stored
       entry at i and everything after it), then `hard_state` (if any), and fsync if
       `must_sync()`: a hard state that only moves the commit index may wait for the next fsync
       (a commit index lost in a crash is learnt again from the leader; figure 2 of the Raft
       paper keeps it volatile), so it costs no fsync of its own;
    2. only then send `messages`: a vote or an append acknowledgement promises that step 1 is
       durable (persist before sending what depends on it);
    3. restore the state machine from `snapshot` (if any), then apply `committed_entries`
       (committed means a majority, counting this node only once durable, holds them on disk,
       so they may be applied before step 1 of this Ready completes);
    4. hand `read_states` to waiting readers (each may run once applied >= its index);
    5. call `advance(ready)` on the core, and once step 1 is durable report it with
       `on_persisted(index, term)` of the last entry written (a leader counts itself only then).

    `advance` may come before the fsync, as long as messages and durability reports keep this
    order; the core takes no other input between `ready()` and `advance()`.
    """

    soft_state: SoftState | None = None
    hard_state: HardState | None = None
    snapshot: Snapshot | None = None
    entries: list[Entry] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)
    early_messages: list[Message] = field(default_factory=list)
    committed_entries: list[Entry] = field(default_factory=list)
    read_states: list[ReadState] = field(default_factory=list)
    new_term_or_vote: bool = False  # `hard_state` carries a term or vote not yet on disk

    def __bool__(self) -> bool:
        return bool(
            self.soft_state
            or self.hard_state
            or self.snapshot
            or self.entries
            or self.messages
            or self.early_messages
            or self.committed_entries
            or self.read_states
        )

    def must_sync(self) -> bool:
        """Whether step 1 needs an fsync before this Ready's messages go."""
        return bool(self.snapshot or self.entries or self.new_term_or_vote)


@dataclass(slots=True)
class DurableState:
    """What survives a crash: the storage hands this back on start and the core resumes from it.

    `entries` are contiguous and start right after the snapshot (or at index 1 without one).
    """

    hard_state: HardState = field(default_factory=HardState)
    snapshot: Snapshot | None = None
    entries: list[Entry] = field(default_factory=list)
