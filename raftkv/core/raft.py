"""The Raft state machine: one node's consensus logic with no I/O at all.

Theory of operation
-------------------
A `RaftCore` changes state only when the driver calls one of its inputs:

- `tick()`               time passed (one tick); drives elections and heartbeats;
- `step(message)`        a message from a peer arrived;
- `propose(data)`        a client command (leader only);
- `read_index(ctx)`      a linearizable read wants a safe index to read at;
- `transfer_leadership`, `campaign_now`, `propose_conf_change`, `make_snapshot` / `compact`.

It answers through `ready()`: one batch with what to persist, what to send, what to apply and
which reads are safe (see `Ready` for the order the driver must follow; the rule that matters is
*persist before sending what depends on it*). Then the driver calls `advance(ready)`. Between
`ready()` and `advance()` the driver must not call any input.

Term handling lives once, in `step()`: a message from a higher term makes us a follower of that
term (with the exceptions pre-vote and leader leases need), a message from a lower term is
answered so that a stale leader learns it is stale, or dropped. After that each role has its own
step function (`_step_leader`, `_step_candidate`, `_step_follower`) and its own tick function.

Features: randomized election timeouts, pre-vote, check-quorum (with leader stickiness: a node
that heard from a leader within an election timeout ignores vote requests), log replication with
fast conflict back-off and flow control (see progress.py), a no-op at the start of each term,
commit only by counting replicas of a current-term entry (Raft 5.4.2), ReadIndex reads (see
readonly.py) and optional lease reads, leadership transfer (TimeoutNow), snapshots and
InstallSnapshot, and membership changes one server at a time (Raft thesis 4.1): a configuration
takes effect as soon as its entry is appended, a leader accepts a new change only after the
previous one committed *and* after it committed an entry of its own term (the fix for the
single-server change bug the thesis errata describe).

The small private methods `_can_vote`, `_can_commit`, `_accept_entries`, `_leader_read`,
`_conf_in_effect` and `_conf_change_pending` are the seams the simulator's bug-injection tests
override; keep them small and separate.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from typing import Any

from .config import Config, ReadMode
from .events import (
    CampaignStarted,
    Committed,
    EntriesTruncated,
    Listener,
    LogCompacted,
    MembershipChanged,
    RoleChanged,
    SnapshotInstalled,
    SnapshotSent,
    SteppedDown,
    TraceEvent,
    TransferStarted,
    VoteCast,
)
from .log import CompactedError, RaftLog
from .messages import (
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
from .quorum import VoteResult, committed_index, has_quorum, vote_result
from .readonly import PendingRead, ReadIndexQueue

# Messages that vouch for nothing on the sender's disk: a leader's entries (it counts its own copy
# only once durable, see on_persisted), heartbeats and their answers, ReadIndex traffic, transfers.
# Votes and append acknowledgements are not among them: they promise durable state.
_EARLY_MESSAGE_TYPES = (
    AppendRequest,
    SnapshotRequest,
    HeartbeatRequest,
    HeartbeatResponse,
    ReadIndexRequest,
    ReadIndexResponse,
    TransferRequest,
    TimeoutNow,
)

# An InstallSnapshot unanswered for this many election timeouts is presumed lost and retried.
SNAPSHOT_RETRY_ELECTION_TIMEOUTS = 5


class NotLeaderError(Exception):
    def __init__(self, leader_id: str | None) -> None:
        super().__init__(f"not the leader (leader: {leader_id or 'unknown'})")
        self.leader_id = leader_id


class ProposalDroppedError(Exception):
    """The leader refused the proposal for now (transfer in progress, back-pressure, ...)."""


class RaftCore:
    def __init__(
        self,
        config: Config,
        rng: random.Random,
        durable: DurableState | None = None,
        listener: Listener | None = None,
    ) -> None:
        self.config = config
        self.id = config.node_id
        self._rng = rng
        self._listener = listener
        durable = durable or DurableState()
        hs = durable.hard_state
        self.term = hs.term
        self.voted_for = hs.voted_for
        snap = durable.snapshot
        if snap is not None:
            self.log = RaftLog(snap.meta.index, snap.meta.term, durable.entries)
            self._conf_history: list[tuple[int, ConfState]] = [(snap.meta.index, snap.meta.conf)]
        else:
            self.log = RaftLog(0, 0, durable.entries)
            self._conf_history = [(0, ConfState(tuple(config.voters), tuple(config.learners)))]
        self._snapshot = snap  # newest snapshot, sent to followers that need compacted entries
        self.role = Role.FOLLOWER
        # Last index this node's own disk is known to hold: a leader counts itself towards a
        # commit only up to here (see on_persisted).
        self.durable_index = self.log.last_index()
        self.log.committed = min(max(hs.commit, self.log.offset), self.log.last_index())
        self._record_conf_entries(durable.entries)
        self.conf = self._conf_in_effect()

        self.leader_id: str | None = None
        self.progress: dict[str, Progress] = {}
        self.votes: dict[str, bool] = {}
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_election_timeout = self._random_timeout()
        self.transfer_target: str | None = None
        self._term_start_index = 0
        self._pending_conf_index = 0
        self._reads = ReadIndexQueue()
        self._reads_waiting_for_term_commit: list[PendingRead] = []

        self._outbox: list[Message] = []
        self._commit_owed_to: set[str] = set()  # followers told of the commit index at ready() (_announce_commit)
        self._read_states: list[ReadState] = []
        self._snapshot_to_install: Snapshot | None = None
        self._prev_soft = SoftState(self.role, None, self.term)
        self._prev_hard = HardState(self.term, self.voted_for, self.log.committed)

    # ================================================================ inputs ====================

    def tick(self) -> None:
        if self.role is Role.LEADER:
            self._tick_leader()
        else:
            self._tick_election()

    def step(self, m: Message) -> None:
        if m.term > self.term:
            if isinstance(m, VoteRequest):
                if self._in_leader_lease() and not m.transfer:
                    # Leader stickiness: we heard from a live leader less than an election timeout
                    # ago, so this candidate is disruptive (e.g. it was partitioned away).
                    self._trace_vote(m, granted=False, reason="a leader is alive")
                    return
                if not m.pre_vote:
                    self._become_follower(m.term, None)
            elif isinstance(m, VoteResponse) and m.pre_vote and m.granted:
                pass  # a granted pre-vote carries the term we asked for, not the voter's own
            else:
                leader = m.src if isinstance(m, (AppendRequest, HeartbeatRequest, SnapshotRequest)) else None
                self._become_follower(m.term, leader)
        elif m.term < self.term:
            if isinstance(m, (AppendRequest, HeartbeatRequest)):
                # A stale leader (say, one that was partitioned) learns our term and steps down.
                self._send(AppendResponse(src=self.id, dst=m.src, term=self.term, success=False))
            elif isinstance(m, VoteRequest) and m.pre_vote:
                self._send(VoteResponse(src=self.id, dst=m.src, term=self.term, granted=False, pre_vote=True))
            return

        if isinstance(m, VoteRequest):
            self._handle_vote_request(m)
        elif self.role is Role.LEADER:
            self._step_leader(m)
        elif self.role is Role.FOLLOWER:
            self._step_follower(m)
        else:
            self._step_candidate(m)

    def propose(self, data: Sequence[bytes], kind: EntryKind = EntryKind.NORMAL) -> tuple[int, int]:
        """Append client commands; returns (term, index of the first). Raises if not possible now."""
        if self.role is not Role.LEADER:
            raise NotLeaderError(self.leader_id)
        if self.transfer_target is not None:
            raise ProposalDroppedError(f"leadership is being transferred to {self.transfer_target}")
        if self.log.last_index() - self.log.committed + len(data) > self.config.max_uncommitted_entries:
            raise ProposalDroppedError("too many uncommitted entries; retry shortly")
        first = self.log.last_index() + 1
        self._append([Entry(self.term, first + i, kind, d) for i, d in enumerate(data)])
        self._bcast_append(send_empty=False)
        self._maybe_commit()
        return self.term, first

    def propose_conf_change(self, change: ConfChange) -> tuple[int, int]:
        if self.role is not Role.LEADER:
            raise NotLeaderError(self.leader_id)
        if self.log.committed < self._term_start_index:
            raise ProposalDroppedError("the new leader has not committed an entry of its term yet")
        if self._conf_change_pending():
            raise ProposalDroppedError("another membership change is still in progress")
        conf = self.conf
        if change.kind is ConfChangeKind.REMOVE and change.node_id not in conf.members():
            raise ValueError(f"{change.node_id} is not a member")
        if change.kind is ConfChangeKind.ADD_VOTER and change.node_id in conf.voters:
            raise ValueError(f"{change.node_id} is already a voter")
        if change.kind is ConfChangeKind.ADD_LEARNER and change.node_id in conf.members():
            raise ValueError(f"{change.node_id} is already a member")
        if not change.apply_to(conf).voters:
            raise ValueError("cannot remove the last voter")
        return self.propose([change.encode()], EntryKind.CONF_CHANGE)

    def read_index(self, ctx: bytes) -> None:
        """Ask for a safe read index for `ctx`; the answer comes as a ReadState in a later Ready."""
        if self.role is Role.LEADER:
            self._leader_read(PendingRead(ctx, 0, self.id))
        elif self.leader_id is not None:
            self._send(ReadIndexRequest(src=self.id, dst=self.leader_id, term=self.term, ctx=ctx))
        else:
            self._read_states.append(ReadState(0, ctx, ok=False))

    def transfer_leadership(self, target: str) -> None:
        """Hand leadership to `target` (a follower forwards the request to the leader)."""
        if self.role is not Role.LEADER:
            if self.leader_id is None:
                raise NotLeaderError(None)
            self._send(TransferRequest(src=self.id, dst=self.leader_id, term=self.term, target=target))
            return
        if target == self.id or target == self.transfer_target:
            return
        if target not in self.conf.voters:
            raise ValueError(f"{target} is not a voter")
        self.transfer_target = target
        self.election_elapsed = 0  # the transfer is abandoned after one election timeout
        self._trace(TransferStarted, target=target)
        if self.progress[target].match == self.log.last_index():
            self._send(TimeoutNow(src=self.id, dst=target, term=self.term))
        else:
            self._send_append(target)

    def campaign_now(self) -> None:
        """Start an election at once, as the seed's "force election" button does.

        Voters treat it like a leadership transfer (they set aside the leader lease), so a node
        with an up-to-date log wins; one with a stale log loses, as Raft requires.
        """
        if not self._promotable():
            raise ValueError(f"{self.id} is not a voter")
        self._campaign(pre_vote=False, transfer=True)

    def report_snapshot(self, peer: str, delivered: bool) -> None:
        """The transport finished (or failed) streaming an InstallSnapshot to `peer`.

        On failure the leader probes again at once instead of waiting for the retry timeout;
        on success it waits for the follower's acknowledgement as usual.
        """
        pr = self.progress.get(peer)
        if pr is not None and pr.state is ProgressState.SNAPSHOT and not delivered:
            pr.become_probe()

    def make_snapshot(self, index: int, data: bytes) -> Snapshot:
        """Describe a state-machine image taken at applied `index` (the driver makes `data`)."""
        if not self.log.offset < index <= self.log.applied:
            raise ValueError(f"snapshot index {index} must be in ({self.log.offset}, {self.log.applied}]")
        return Snapshot(SnapshotMeta(index, self.log.term(index), self._conf_at(index)), data)

    def compact(self, snapshot: Snapshot, retain_entries: int = 0) -> None:
        """The driver made `snapshot` durable: drop log entries it covers (keeping a few)."""
        if self._snapshot is None or snapshot.meta.index > self._snapshot.meta.index:
            self._snapshot = snapshot
        upto = min(snapshot.meta.index, self.log.applied) - retain_entries
        if upto > self.log.offset:
            self.log.compact(upto)
            keep = [i for i, (idx, _) in enumerate(self._conf_history) if idx <= upto]
            self._conf_history = self._conf_history[keep[-1] :] if keep else self._conf_history
            self._trace(LogCompacted, index=snapshot.meta.index)

    # ================================================================ output ====================

    def has_ready(self) -> bool:
        return bool(
            self._outbox
            or self._commit_owed_to
            or self._read_states
            or self._snapshot_to_install
            or self.log.stable < self.log.last_index()
            or self.log.applied < self.log.committed
            or self._soft_state() != self._prev_soft
            or self._hard_state() != self._prev_hard
        )

    def ready(self) -> Ready:
        self._pay_commit_owed()
        rd = Ready()
        soft = self._soft_state()
        if soft != self._prev_soft:
            rd.soft_state = soft
        hard = self._hard_state()
        if hard != self._prev_hard:
            rd.hard_state = hard
            rd.new_term_or_vote = (hard.term, hard.voted_for) != (self._prev_hard.term, self._prev_hard.voted_for)
        rd.snapshot = self._snapshot_to_install
        rd.entries = self.log.unstable()
        rd.committed_entries = self.log.committed_to_apply(self.config.max_committed_per_ready)
        outbox, self._outbox = self._outbox, []
        if rd.new_term_or_vote:
            rd.messages = outbox  # a new term or vote must be durable before anyone hears of it
        else:
            for m in outbox:
                (rd.early_messages if isinstance(m, _EARLY_MESSAGE_TYPES) else rd.messages).append(m)
        rd.read_states, self._read_states = self._read_states, []
        return rd

    def advance(self, rd: Ready) -> None:
        if rd.soft_state:
            self._prev_soft = rd.soft_state
        if rd.hard_state:
            self._prev_hard = rd.hard_state
        if rd.snapshot is not None and rd.snapshot is self._snapshot_to_install:
            self._snapshot_to_install = None
        if rd.entries:
            self.log.stable_to(rd.entries[-1].index)
        if rd.committed_entries:
            self.log.applied = max(self.log.applied, rd.committed_entries[-1].index)

    def on_persisted(self, index: int, term: int) -> None:
        """The driver's fsync made the log durable up to (index, term).

        Raft thesis 10.2.1: a leader may send its entries before writing them itself, as long as
        it counts its own copy towards a commit only once it is durable; this is that count. A
        report about entries replaced meanwhile (a follower's truncation) is ignored; a later one
        covers the new entries.
        """
        if index > self.durable_index and self.log.matches(index, term):
            self.durable_index = index
            if self.role is Role.LEADER and self._maybe_commit():
                self._announce_commit()

    @property
    def pending_conf_index(self) -> int:
        """A leader's newest membership change's index: a new change waits until it commits."""
        return self._pending_conf_index

    @property
    def snapshot_index(self) -> int:
        """The index of the newest snapshot this core holds (0: none)."""
        return self._snapshot.meta.index if self._snapshot else 0

    # ================================================================ roles =====================

    def _become_follower(self, term: int, leader: str | None) -> None:
        self._stop_leading()
        self.role = Role.FOLLOWER
        self._reset(term)
        self.leader_id = leader
        self._trace(RoleChanged, role=self.role.value, leader=leader)

    def _become_pre_candidate(self) -> None:
        # Pre-vote (thesis 9.6): ask whether we *could* win before raising our term, so a node
        # that was cut off cannot force the cluster into a new term when it comes back.
        self._stop_leading()
        self.role = Role.PRE_CANDIDATE
        self.votes = {}
        self.leader_id = None
        self._trace(RoleChanged, role=self.role.value, leader=None)

    def _become_candidate(self) -> None:
        self._stop_leading()
        self.role = Role.CANDIDATE
        self._reset(self.term + 1)
        self.voted_for = self.id
        self._trace(RoleChanged, role=self.role.value, leader=None)

    def _become_leader(self) -> None:
        self.role = Role.LEADER
        self._reset(self.term)
        self.leader_id = self.id
        last = self.log.last_index()
        self.progress = {p: self._new_progress(last + 1) for p in self.conf.members() if p != self.id}
        self._trace(RoleChanged, role=self.role.value, leader=self.id)
        # A no-op lets the leader commit (and so learn the commit point of) earlier terms' entries.
        self._term_start_index = last + 1
        self._pending_conf_index = last + 1
        self._append([Entry(self.term, last + 1, EntryKind.NOOP)])
        self._bcast_append(send_empty=True)
        self._maybe_commit()

    def _reset(self, term: int) -> None:
        if term != self.term:
            self.term = term
            self.voted_for = None
        self.leader_id = None
        self.votes = {}
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_election_timeout = self._random_timeout()
        self.transfer_target = None

    def _stop_leading(self) -> None:
        if self.role is not Role.LEADER:
            return
        for read in self._reads.drain() + self._reads_waiting_for_term_commit:
            self._answer_read(read, ok=False)
        self._reads_waiting_for_term_commit = []
        self.progress = {}
        self._commit_owed_to.clear()

    def _new_progress(self, next_index: int) -> Progress:
        pr = Progress(next_index, self.config.max_inflight_appends)
        pr.recent_active = True  # give every peer one election timeout to show it is alive
        return pr

    def _random_timeout(self) -> int:
        et = self.config.election_timeout_ticks
        return et + self._rng.randrange(et)

    def _promotable(self) -> bool:
        """A voter may stand for election, and so may a server whose own removal has not committed
        (thesis 4.2.2): until it commits, the old configuration may still need this server. Without
        that, removing one of two voters deadlocks if the leader is cut off after appending the
        change: it no longer campaigns, and the other voter lacks the entry, so never gets its vote.
        Such a candidate asks the voters of its latest configuration; its own vote counts only if it
        is one of them (see _tally)."""
        return self.id in self.conf.voters or self.id in self._conf_at(self.log.committed).voters

    def _in_leader_lease(self) -> bool:
        return (
            self.config.check_quorum
            and self.leader_id is not None
            and self.election_elapsed < self.config.election_timeout_ticks
        )

    # ================================================================ ticks =====================

    def _tick_election(self) -> None:
        self.election_elapsed += 1
        if self.election_elapsed >= self.randomized_election_timeout and self._promotable():
            self.election_elapsed = 0
            self.randomized_election_timeout = self._random_timeout()
            self._campaign(pre_vote=self.config.pre_vote, transfer=False)

    def _tick_leader(self) -> None:
        self.heartbeat_elapsed += 1
        self.election_elapsed += 1
        retry_after = SNAPSHOT_RETRY_ELECTION_TIMEOUTS * self.config.election_timeout_ticks
        for pr in self.progress.values():
            pr.ticks_since_contact += 1
            if pr.state is ProgressState.SNAPSHOT:
                pr.snapshot_ticks += 1
                if pr.snapshot_ticks > retry_after:
                    pr.become_probe()  # presumed lost; the probe leads to a fresh snapshot
        if self.election_elapsed >= self.config.election_timeout_ticks:
            self.election_elapsed = 0
            if self.config.check_quorum:
                active = {p for p, pr in self.progress.items() if pr.recent_active} | {self.id}
                if not has_quorum(self.conf.voters, active):
                    self._trace(SteppedDown, reason="it lost contact with a majority (check-quorum)")
                    self._become_follower(self.term, None)
                    return
                for pr in self.progress.values():
                    pr.recent_active = False
            if self.transfer_target is not None:
                self._trace(SteppedDown, reason=f"transfer to {self.transfer_target} timed out")
                self.transfer_target = None
        if self.heartbeat_elapsed >= self.config.heartbeat_interval_ticks:
            self.heartbeat_elapsed = 0
            self._bcast_heartbeat(self._reads.round)

    # ================================================================ elections =================

    def _campaign(self, pre_vote: bool, transfer: bool) -> None:
        after_pre_vote = not pre_vote and self.role is Role.PRE_CANDIDATE
        if pre_vote:
            self._become_pre_candidate()
            vote_term = self.term + 1
        else:
            self._become_candidate()
            vote_term = self.term
        self._trace(CampaignStarted, pre_vote=pre_vote, transfer=transfer, after_pre_vote=after_pre_vote)
        self.votes[self.id] = True
        if self._tally() is not VoteResult.PENDING:
            return
        last_index, last_term = self.log.last_index(), self.log.last_term()
        for voter in self.conf.voters:
            if voter != self.id:
                self._send(
                    VoteRequest(
                        src=self.id,
                        dst=voter,
                        term=vote_term,
                        last_log_index=last_index,
                        last_log_term=last_term,
                        pre_vote=pre_vote,
                        transfer=transfer,
                    )
                )

    def _tally(self) -> VoteResult:
        result = vote_result(self.conf.voters, self.votes)
        if result is VoteResult.WON:
            if self.role is Role.PRE_CANDIDATE:
                self._campaign(pre_vote=False, transfer=False)
            else:
                self._become_leader()
        elif result is VoteResult.LOST:
            self._become_follower(self.term, None)
        return result

    def _handle_vote_request(self, m: VoteRequest) -> None:
        may_vote = self._can_vote(m)
        granted = may_vote and self.log.is_up_to_date(m.last_log_index, m.last_log_term)
        self._trace_vote(m, granted=granted, reason="" if granted or not self._listener else self._refusal(m, may_vote))
        if granted:
            self._send(VoteResponse(src=self.id, dst=m.src, term=m.term, granted=True, pre_vote=m.pre_vote))
            if not m.pre_vote:
                self.election_elapsed = 0
                self.voted_for = m.src
        else:
            self._send(VoteResponse(src=self.id, dst=m.src, term=self.term, granted=False, pre_vote=m.pre_vote))

    def _refusal(self, m: VoteRequest, may_vote: bool) -> str:
        """Why this node refuses `m`, in the words a learner reads in the feed."""
        if not may_vote:
            if self.voted_for is not None:
                return f"it voted for {self.voted_for} in term {self.term}"
            return f"it follows {self.leader_id}, the leader of term {self.term}"
        last_term, last_index = self.log.last_term(), self.log.last_index()
        return (f"its log is more up to date: it ends at term {last_term}, index {last_index}; the candidate's at "
                f"term {m.last_log_term}, index {m.last_log_index}")

    def _can_vote(self, m: VoteRequest) -> bool:
        """One vote per term: repeat it for the same candidate, refuse everyone else."""
        return (
            self.voted_for == m.src
            or (self.voted_for is None and self.leader_id is None)
            or (m.pre_vote and m.term > self.term)
        )

    def _trace_vote(self, m: VoteRequest, granted: bool, reason: str) -> None:
        if self._listener:
            self._trace(VoteCast, candidate=m.src, granted=granted, pre_vote=m.pre_vote, for_term=m.term, reason=reason)

    # ================================================================ role steps ================

    def _step_leader(self, m: Message) -> None:
        if isinstance(m, AppendResponse):
            self._handle_append_response(m)
        elif isinstance(m, HeartbeatResponse):
            self._handle_heartbeat_response(m)
        elif isinstance(m, ReadIndexRequest):
            self._leader_read(PendingRead(m.ctx, 0, m.src))
        elif isinstance(m, TransferRequest):
            self.transfer_leadership(m.target)

    def _step_candidate(self, m: Message) -> None:
        if isinstance(m, VoteResponse):
            if m.pre_vote == (self.role is Role.PRE_CANDIDATE):
                self.votes[m.src] = m.granted
                self._tally()
        elif isinstance(m, (AppendRequest, HeartbeatRequest, SnapshotRequest)):
            # Someone else won this term.
            self._become_follower(self.term, m.src)
            self._step_follower(m)
        elif isinstance(m, ReadIndexRequest):
            self._send(ReadIndexResponse(src=self.id, dst=m.src, term=self.term, ctx=m.ctx, index=0, ok=False))

    def _step_follower(self, m: Message) -> None:
        if isinstance(m, (AppendRequest, HeartbeatRequest, SnapshotRequest)):
            self.election_elapsed = 0
            self.leader_id = m.src
            if isinstance(m, AppendRequest):
                self._handle_append(m)
            elif isinstance(m, HeartbeatRequest):
                if self.log.commit_to(min(m.commit, self.log.last_index())):
                    self._trace(Committed, index=self.log.committed)
                self._send(HeartbeatResponse(src=self.id, dst=m.src, term=self.term, read_round=m.read_round))
            else:
                self._handle_snapshot(m)
        elif isinstance(m, TimeoutNow):
            if self._promotable():
                self._campaign(pre_vote=False, transfer=True)
        elif isinstance(m, TransferRequest):
            if self.leader_id is not None:
                self._send(TransferRequest(src=self.id, dst=self.leader_id, term=self.term, target=m.target))
        elif isinstance(m, ReadIndexRequest):
            self._send(ReadIndexResponse(src=self.id, dst=m.src, term=self.term, ctx=m.ctx, index=0, ok=False))
        elif isinstance(m, ReadIndexResponse):
            self._read_states.append(ReadState(m.index, m.ctx, m.ok))

    # ================================================================ replication: follower ====

    def _handle_append(self, m: AppendRequest) -> None:
        if m.prev_log_index < self.log.committed:
            # Everything up to our commit point already agrees with any leader's log.
            self._send_append_ack(m.src, self.log.committed)
            return
        if self.log.matches(m.prev_log_index, m.prev_log_term):
            last_new = self._accept_entries(m)
            if self.log.commit_to(min(m.commit, last_new)):
                self._trace(Committed, index=self.log.committed)
            if m.needs_answer or m.entries:
                self._send_append_ack(m.src, last_new)
            return
        # Reject with a hint so the leader can skip a whole term at once.
        last = self.log.last_index()
        if m.prev_log_index > last:
            conflict_term, conflict_index = 0, last + 1
        else:
            conflict_term = self.log.term(m.prev_log_index)
            conflict_index = self.log.first_index_of_term(m.prev_log_index)
        self._send(
            AppendResponse(
                src=self.id,
                dst=m.src,
                term=self.term,
                success=False,
                reject_index=m.prev_log_index,
                conflict_term=conflict_term,
                conflict_index=conflict_index,
            )
        )

    def _accept_entries(self, m: AppendRequest) -> int:
        """Append what is new in `m` after a matching prev entry; returns the last index it covers.

        Entries we already hold are skipped; from the first one whose term differs, our suffix is
        replaced (Raft figure 2, AppendEntries rule 3), never before it: a delayed, shorter request
        must not cut off entries a later request appended.
        """
        last = self.log.last_index()
        for i, e in enumerate(m.entries):
            if e.index > last or self.log.term(e.index) != e.term:
                if e.index <= last:
                    self._trace(EntriesTruncated, from_index=e.index)
                self._append(list(m.entries[i:]))
                break
        return m.prev_log_index + len(m.entries)

    def _send_append_ack(self, leader: str, match_index: int) -> None:
        self._send(AppendResponse(src=self.id, dst=leader, term=self.term, success=True, match_index=match_index))

    def _handle_snapshot(self, m: SnapshotRequest) -> None:
        meta = m.snapshot.meta
        if meta.index <= self.log.committed:
            self._send_append_ack(m.src, self.log.committed)
            return
        self.log.restore(meta.index, meta.term)
        self.durable_index = min(self.durable_index, self.log.last_index())
        self._conf_history = [(meta.index, meta.conf)]
        self._record_conf_entries(self.log.entries)
        self._set_conf(self._conf_in_effect())
        self._snapshot = m.snapshot
        self._snapshot_to_install = m.snapshot
        self._trace(SnapshotInstalled, index=meta.index)
        self._send_append_ack(m.src, meta.index)

    # ================================================================ replication: leader ======

    def _bcast_append(self, send_empty: bool) -> None:
        for peer in self.progress:
            self._send_append(peer, send_empty)

    def _announce_commit(self) -> None:
        """Tell every follower the new commit index. A follower being replicated to is told in an
        append it need not answer when it holds what the append follows: its answer would only
        repeat the acknowledgement of the entries it was sent (and at one write at a time each
        answer costs a wake-up on both ends). A follower that lacks them still answers, with its
        rejection; one being probed is asked as before. A lost announcement is made good by the
        next heartbeat, which carries the commit index too.

        A follower with nothing more to be sent is told when the messages are handed out
        (`ready`), and not at all if an append goes to it before then: every append carries the
        commit index. The driver proposes the writes that waited for this commit in the same turn
        (and etcd's gRPC calls come one per turn), so the empty announcement and the append with
        entries used to leave together, twice the messages for the same news."""
        last = self.log.last_index()
        for peer, pr in self.progress.items():
            if pr.state is ProgressState.REPLICATE and pr.next > last:
                self._commit_owed_to.add(peer)
            else:
                self._send_commit(peer, pr)

    def _pay_commit_owed(self) -> None:
        if not self._commit_owed_to:
            return
        assert self.role is Role.LEADER, "a commit announcement owed by a node that no longer leads"
        owed, self._commit_owed_to = self._commit_owed_to, set()
        for peer, pr in self.progress.items():  # in the progress's order: replays are deterministic
            if peer in owed:
                self._send_commit(peer, pr)

    def _send_commit(self, peer: str, pr: Progress) -> None:
        """The next append `peer` needs, even an empty one, for the commit index it carries; an empty
        one is answered only by a follower not being replicated to (_announce_commit)."""
        self._send_append(peer, empty_needs_answer=pr.state is not ProgressState.REPLICATE)

    def _send_append(self, peer: str, send_empty: bool = True, empty_needs_answer: bool = True) -> bool:
        """Send the next entries `peer` needs; True if entries went out (more may follow). Entries
        are always to be answered; an empty append only if `empty_needs_answer`."""
        pr = self.progress[peer]
        if pr.is_paused():
            return False
        try:
            prev_term = self.log.term(pr.next - 1)
            entries = (
                self.log.slice(pr.next, self.config.max_entries_per_append, self.config.max_bytes_per_append)
                if pr.next <= self.log.last_index()
                else []
            )
        except CompactedError:
            self._send_snapshot(peer, pr)
            return False
        if not entries and not send_empty:
            return False
        self._commit_owed_to.discard(peer)  # this append carries the commit index
        self._send(
            AppendRequest(
                src=self.id,
                dst=peer,
                term=self.term,
                prev_log_index=pr.next - 1,
                prev_log_term=prev_term,
                entries=tuple(entries),
                commit=self.log.committed,
                needs_answer=bool(entries) or empty_needs_answer,
            )
        )
        pr.sent(entries[-1].index if entries else pr.next - 1)
        return bool(entries)

    def _send_snapshot(self, peer: str, pr: Progress) -> None:
        assert self._snapshot is not None, "entries were compacted without a snapshot"
        pr.become_snapshot(self._snapshot.meta.index)
        self._trace(SnapshotSent, peer=peer, index=self._snapshot.meta.index)
        self._send(SnapshotRequest(src=self.id, dst=peer, term=self.term, snapshot=self._snapshot))

    def _bcast_heartbeat(self, read_round: int, to: Iterable[str] | None = None) -> None:
        """Heartbeats to `to` (default: every peer), carrying `read_round`."""
        for peer in self.progress if to is None else to:
            # Never tell a follower to commit past what it is known to hold.
            commit = min(self.progress[peer].match, self.log.committed)
            self._send(HeartbeatRequest(src=self.id, dst=peer, term=self.term, commit=commit, read_round=read_round))

    def _handle_append_response(self, m: AppendResponse) -> None:
        pr = self.progress.get(m.src)
        if pr is None:
            return
        pr.recent_active = True
        pr.ticks_since_contact = 0
        if not m.success:
            if m.reject_index == 0:
                # Not a log comparison (index 0 always matches): a follower's answer to a message
                # from an older term of ours, delayed until we led again in its current term.
                return
            if m.conflict_term == 0 and m.conflict_index <= pr.match <= m.reject_index:
                # The follower's log ends before what it acknowledged, in answer to an append
                # sent after that acknowledgement: its disk lost entries (a wiped or restored data
                # directory). An older rejection (reject_index below the match) is stale instead
                # and must not demote a follower that has caught up since. Probing again only
                # lowers bookkeeping, never the commit index.
                pr.become_probe()
                pr.match = m.conflict_index - 1
                pr.next = m.conflict_index
                self._send_append(m.src)
                return
            if not self._is_fresh_rejection(pr, m):
                return
            pr.become_probe()
            pr.next = max(min(self._next_after_rejection(m), m.reject_index), pr.match + 1)
            self._send_append(m.src)
            return
        if not pr.maybe_update(m.match_index):
            return
        if pr.state is ProgressState.PROBE or (pr.state is ProgressState.SNAPSHOT and pr.match >= pr.pending_snapshot):
            pr.become_replicate()
        if self._maybe_commit():
            self._announce_commit()
        else:
            while self._send_append(m.src, send_empty=False):
                pass
        if m.src == self.transfer_target and pr.match == self.log.last_index():
            self._send(TimeoutNow(src=self.id, dst=m.src, term=self.term))

    @staticmethod
    def _is_fresh_rejection(pr: Progress, m: AppendResponse) -> bool:
        if pr.state is ProgressState.REPLICATE:
            return m.reject_index > pr.match
        if pr.state is ProgressState.PROBE:
            return m.reject_index == pr.next - 1
        return False

    def _next_after_rejection(self, m: AppendResponse) -> int:
        if m.conflict_term:
            last_of_term = self.log.last_index_of_term(m.conflict_term)
            if last_of_term:
                return last_of_term + 1
        return m.conflict_index

    def _handle_heartbeat_response(self, m: HeartbeatResponse) -> None:
        pr = self.progress.get(m.src)
        if pr is None:
            return
        pr.recent_active = True
        pr.ticks_since_contact = 0
        pr.probe_sent = False
        if pr.state is ProgressState.REPLICATE and pr.inflight and pr.is_paused():
            pr.inflight.popleft()  # an append was probably lost; let one more through
        if pr.match < self.log.last_index():
            self._send_append(m.src)
        if m.read_round and m.src in self.conf.voters:
            for read in self._reads.ack(m.src, m.read_round, self.id, self.conf.voters):
                self._answer_read(read, ok=True)
            self._start_read_round()

    def _maybe_commit(self) -> bool:
        match = {p: pr.match for p, pr in self.progress.items()}
        match[self.id] = self.durable_index
        index = committed_index(self.conf.voters, match)
        if index <= self.log.committed or not self._can_commit(index):
            return False
        self.log.commit_to(index)
        self._trace(Committed, index=index)
        self._on_leader_commit()
        return True

    def _can_commit(self, index: int) -> bool:
        """Raft 5.4.2: only an entry of the current term is committed by counting replicas."""
        return self.log.term(index) == self.term

    def _on_leader_commit(self) -> None:
        if self._reads_waiting_for_term_commit and self._committed_own_term():
            waiting, self._reads_waiting_for_term_commit = self._reads_waiting_for_term_commit, []
            for read in waiting:
                self._leader_read(read)
        if self.id not in self.conf.voters and self._pending_conf_index <= self.log.committed:
            # Thesis 4.2.2: a leader that removed itself steps down once the removal commits.
            self._trace(SteppedDown, reason="it was removed from the cluster")
            self._become_follower(self.term, None)

    def _committed_own_term(self) -> bool:
        return self.log.committed >= self._term_start_index

    # ================================================================ reads =====================

    def _leader_read(self, read: PendingRead) -> None:
        if not self._committed_own_term():
            # Until its no-op commits, a new leader does not know the latest commit index.
            self._reads_waiting_for_term_commit.append(read)
            return
        read.index = self.log.committed
        single_voter = self.conf.voters == (self.id,)
        if single_voter or self._lease_holds() or self._requester_completes_quorum(read):
            self._answer_read(read, ok=True)
            return
        self._reads.add(read)
        self._start_read_round()

    def _lease_holds(self) -> bool:
        """ReadMode.LEADER_LEASE: a majority of voters answered us within the last election timeout.

        Each of them then still refuses other candidates (leader stickiness), so no other leader
        can exist. Being leader is not enough: check-quorum steps down only at its next check, up
        to two election timeouts after the majority last heard from us. One tick of margin covers
        the phase between our clock and theirs (and assumes an answer reaches us within a tick,
        besides the clock-rate assumption ReadMode.LEADER_LEASE states). Not during a transfer:
        TimeoutNow sets the voters' leases aside. Without a lease the read takes a heartbeat round.
        """
        if self.config.read_mode is not ReadMode.LEADER_LEASE or not self.config.check_quorum:
            return False
        if self.transfer_target is not None:
            return False
        lease_ticks = self.config.election_timeout_ticks - 1
        fresh = {p for p, pr in self.progress.items() if pr.ticks_since_contact < lease_ticks}
        return has_quorum(self.conf.voters, fresh | {self.id})

    def _requester_completes_quorum(self, read: PendingRead) -> bool:
        """A follower that asked for a read index and makes a majority with this leader (one of
        two followers) needs no heartbeat round: its own acceptance of the answer is the
        majority's second acknowledgement. It accepts an answer only in the term it was sent in,
        that is, only if it has voted in no later term since this leader recorded the index;
        so any leader of a later term was elected after that moment (readonly.py)."""
        return read.requester != self.id and has_quorum(self.conf.voters, {self.id, read.requester})

    def _start_read_round(self) -> None:
        read_round = self._reads.start_round()
        if read_round is not None:
            self._bcast_heartbeat(read_round, self._reads.to_ask(self.id, self.conf.voters))

    def _answer_read(self, read: PendingRead, ok: bool) -> None:
        if read.requester == self.id:
            self._read_states.append(ReadState(read.index, read.ctx, ok))
        else:
            self._send(
                ReadIndexResponse(
                    src=self.id, dst=read.requester, term=self.term, ctx=read.ctx, index=read.index, ok=ok
                )
            )

    # ================================================================ log & membership ==========

    def _append(self, entries: list[Entry]) -> None:
        first = entries[0].index
        if first <= self.log.last_index() and self._conf_history[-1][0] >= first:
            self._conf_history = [(i, c) for i, c in self._conf_history if i < first]
        self.log.append(entries)
        self.durable_index = min(self.durable_index, first - 1)
        self._record_conf_entries(entries)
        if self._conf_in_effect() != self.conf:
            self._set_conf(self._conf_in_effect())

    def _record_conf_entries(self, entries: Sequence[Entry]) -> None:
        for e in entries:
            if e.kind is EntryKind.CONF_CHANGE:
                self._conf_history.append((e.index, ConfChange.decode(e.data).apply_to(self._conf_history[-1][1])))
                if self.role is Role.LEADER:
                    self._pending_conf_index = e.index

    def _conf_in_effect(self) -> ConfState:
        """Thesis 4.1: a server acts on the latest configuration in its log, committed or not."""
        return self._conf_history[-1][1]

    def _conf_change_pending(self) -> bool:
        """Thesis 4.1: one change at a time; the next waits until the previous one committed."""
        return self._pending_conf_index > self.log.committed

    def _conf_at(self, index: int) -> ConfState:
        conf = self._conf_history[0][1]
        for i, c in self._conf_history:
            if i > index:
                break
            conf = c
        return conf

    def _set_conf(self, conf: ConfState) -> None:
        self.conf = conf
        self._trace(MembershipChanged, voters=tuple(conf.voters), learners=tuple(conf.learners))
        if self.role is not Role.LEADER:
            return
        members = set(conf.members())
        for gone in set(self.progress) - members:
            del self.progress[gone]
        for new in sorted(members - set(self.progress) - {self.id}):  # sorted: replays must not depend on hashing
            self.progress[new] = self._new_progress(self.log.last_index() + 1)
            self._send_append(new)
        if self.transfer_target is not None and self.transfer_target not in conf.voters:
            self.transfer_target = None

    # ================================================================ plumbing ==================

    def _send(self, m: Message) -> None:
        self._outbox.append(m)

    def _soft_state(self) -> SoftState:
        return SoftState(self.role, self.leader_id, self.term)

    def _hard_state(self) -> HardState:
        return HardState(self.term, self.voted_for, self.log.committed)

    def _trace(self, event_type: type[TraceEvent], **fields: Any) -> None:
        if self._listener:
            self._listener(event_type(node=self.id, term=self.term, **fields))
