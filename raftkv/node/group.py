"""One Raft group: a pure core driven with real time, a storage and a transport it is given.

Theory of operation
-------------------
One asyncio task, the loop, owns the core. Everything else (the ticker, the transport's receive
callback, client calls) only queues inputs and wakes the loop. Each turn feeds the core what was
queued, in this order: received messages (before ticks, so what arrived while the process was
busy counts before the busy time is taken for the peers' silence), ticks, operator actions, one
proposal made of every waiting write (this node's and every batch a follower forwarded), and one
ReadIndex round for every waiting read. Then it hands out every Ready, calling `advance()` at
once, so the loop never waits for the disk.

What a Ready asks for is split the way the core marks it (Raft figure 2 and thesis 10.2.1):
`early_messages` (a leader's appends and heartbeats, ReadIndex traffic: nothing that vouches for
this node's disk) leave at once, with whatever else the turn sent before them (a leader's
ProposeAnswers): a turn's messages reach the transport together, one write per peer. The writes
and the other `messages` go to the disk pump (persist.py), which sends those only after their
fsync; committed entries are applied at once, since committed already means a majority holds
them on disk.

Where a write waits is proposals.py, where a read waits is reads.py. A follower does not propose:
it forwards each turn's writes to the leader as one `ProposeForward` and waits for the indexes
the leader answers, exactly as the leader waits for its own. While no leader is known, or the
connection to it is down (a leader killed with -9 closes it at once), writes and reads are held
for up to `no_leader_hold_s` and then go to the new leader, or fail with NoLeaderError: held, they
were never sent. Snapshots are taken by snapshots.py without stalling the loop.

The group knows nothing of HTTP or sockets: it is given its storage and its transport (real or
in-memory), and it reads time from its event loop, so a loop with a virtual clock drives it
deterministically (given an `executor` that runs the disk's blocking work on that loop too, and a
seeded `rng`). `halt()` drops a group the way kill -9 drops a process, for simulated crashes.

While tracing is on (tracing.py) the group tells its `Tracing` what happens to traced writes and
reads: submitted, forwarded, proposed, acknowledged, committed, applied; and sends the followers
the trace context of new entries (`EntryTraces`). While it is off, `self.tracing` is None and
each of those places costs one test of it; while it is on and nothing traced is in flight (the
unsampled requests), one more (`holds_requests`, `holds_entries`), before any per-write work.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

from raftkv.core import (
    AppendResponse,
    ConfChange,
    Config,
    DurableState,
    Entry,
    EntryKind,
    HardState,
    Message,
    ProposalDroppedError,
    RaftCore,
    Ready,
    Role,
)
from raftkv.core import NotLeaderError as CoreNotLeader
from raftkv.kv import Command, KVStateMachine, encode
from raftkv.storage import RaftStorage
from raftkv.transport import Transport

from . import tracing as node_tracing
from .config import NodeConfig
from .errors import MembershipRefused, NoLeaderError, NotAppliedError, OutcomeUnknownError, fail
from .gathering import GATHER_S, Gathering
from .membership import bootstrap_state, is_self_describing
from .metrics import NodeMetrics
from .observe import GroupObserver
from .peer_messages import FORWARD_TYPES, EntryTraces, ProposeAnswer, ProposeForward, TracedProposeForward
from .persist import DiskPump
from .proposals import ForwardLedger, PlacedWrite, ProposalTracker, QueuedWrite
from .reads import ReadTracker
from .snapshots import Snapshotter
from .watch import PROGRESS_EVERY_S, WatchHub

__all__ = ["RaftGroup"]

log = logging.getLogger("raftkv.node")

STALL_WARNING_EVERY_S = 10.0  # at most one warning of a stalled loop per this long

DEADLINE_SWEEP_S = 0.05


class _WakeAt:
    """One loop timer that wakes the group at the earliest of the times it is set to."""

    def __init__(self, wake: Callable[[], None]) -> None:
        self._wake = wake
        self._handle: asyncio.Handle | None = None
        self._due = 0.0  # kept here: for a time already due uvloop returns a plain Handle, without when()

    def set(self, due: float) -> None:
        if self._handle is not None:
            if self._due <= due:
                return
            self._handle.cancel()
        self._due = due
        self._handle = asyncio.get_running_loop().call_at(due, self._fire)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _fire(self) -> None:
        self._handle = None
        self._wake()


class RaftGroup:
    def __init__(self, cfg: NodeConfig, storage: RaftStorage, transport: Transport, kv: KVStateMachine,
                 metrics: NodeMetrics, observer: GroupObserver, rng: random.Random | None = None,
                 *, executor: Executor | None = None, on_members: Callable[[], None] | None = None) -> None:
        self.cfg = cfg
        self.id = cfg.node_id
        self.kv = kv
        self.transport = transport
        self.metrics = metrics
        self.observer = observer
        self._on_members = on_members or (lambda: None)
        durable = _load_or_found(cfg, storage)
        rng = rng or random.Random()
        if durable.snapshot is not None:
            kv.restore(durable.snapshot.data)
        # A self-describing log (membership.py) builds its configuration from its own entries;
        # a data directory from before that takes the command line's members as its voters.
        voters = () if is_self_describing(durable) or cfg.join_url else tuple(cfg.members)
        self.core = RaftCore(
            Config(self.id, voters=voters, election_timeout_ticks=cfg.election_timeout_ticks,
                   heartbeat_interval_ticks=cfg.heartbeat_interval_ticks, pre_vote=cfg.pre_vote,
                   check_quorum=cfg.check_quorum, read_mode=cfg.read_mode),
            rng, durable, listener=observer.on_trace)
        self.proposals = ProposalTracker(self.id, cfg.proposal_timeout_s, metrics, first_ticket=time.time_ns())
        self.forward_ledger = ForwardLedger()
        self._appended = (0, 0, 0.0)  # (term, last index, when) of this node's last proposal as the leader
        self._write_gathering = Gathering()  # gathered writes wait after an append that carried several
        self.reads = ReadTracker(self.id, cfg.read_timeout_s)
        self.pump = DiskPump(self.id, storage, self._send, self._on_persisted,
                             lambda: self.core.role is Role.LEADER, metrics, unsafe_skip_fsync=cfg.unsafe_skip_fsync,
                             executor=executor)
        self.watches = WatchHub(kv)
        self.tracing = node_tracing.active  # None: tracing is off (the OTEL_* variables did not ask)
        self.pump.tracing = self.tracing
        self.snapshots = Snapshotter(cfg, self.core, kv, self.pump, metrics,
                                     durable.snapshot.meta.index if durable.snapshot else 0, executor)
        self._now: Callable[[], float] = time.monotonic  # the running loop's clock once started
        # The lab changes these at run time: slow motion stretches the tick without a restart, and
        # a held clock lets nothing time out while a person steps through messages.
        self.tick_ms = cfg.tick_ms
        self.clock_held = False
        self.stall_warned_at = -STALL_WARNING_EVERY_S  # when a stalled loop was last warned of
        self.failed: asyncio.Future[BaseException] | None = None  # set to what killed the group
        self._wake = asyncio.Event()
        self._writes_held = _WakeAt(self._wake.set)  # wakes the loop when held writes go
        self._reads_held = _WakeAt(self._wake.set)  # wakes the loop when gathered reads are asked for
        self._ticks = 0
        self._inbox: list[Message] = []
        self._forwards: list[ProposeForward] = []  # followers' batches, waiting for this leader's next append
        # What a loop turn sends, gathered so that each peer's link gets one write per turn (a
        # follower's ProposeAnswer and the AppendRequest carrying its writes); None outside a turn.
        self._turn_outbox: list[Message] | None = None
        self._actions: list[Callable[[], None]] = []
        self._leader: str | None = None
        self._tasks: list[asyncio.Task] = []
        self._running = False
        self._stopping: asyncio.Task | None = None

    # ================================================================ lifecycle =================

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._now = loop.time
        self._running = True
        self.failed = loop.create_future()
        self._tasks = [loop.create_task(self._loop()), loop.create_task(self.pump.run(self.snapshots.maybe_start)),
                       loop.create_task(self._ticker()), loop.create_task(self._sweep_deadlines())]
        for task in self._tasks:
            task.add_done_callback(self._task_ended)

    def _task_ended(self, task: asyncio.Task) -> None:
        """A task of the group died of an exception (a disk that cannot be written, a bug): the
        group cannot go on safely, and must not look alive while it persists nothing. `failed`
        tells whoever runs it (a node process exits)."""
        if task.cancelled() or task.exception() is None or self.failed.done():
            return
        log.critical("node %s cannot go on: its %s task failed", self.id, task.get_coro().__qualname__,
                     exc_info=task.exception())
        self.failed.set_result(task.exception())

    async def stop(self) -> None:
        """Graceful: write out what was handed to the disk, then fail what still waits (504). A
        group that failed only halts: its disk is not to be trusted with more. Stopping twice (a
        removed member's group stops itself, then its process gets SIGTERM) waits for the first."""
        if self._stopping is None:
            self._stopping = asyncio.get_running_loop().create_task(self._stop())
        await asyncio.shield(self._stopping)

    async def _stop(self) -> None:
        if self.failed is not None and self.failed.done():
            await self.halt()
            return
        self._running = False
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.snapshots.stop()
        await self.pump.close()
        fail(self.proposals.answers() + self.reads.answers(), OutcomeUnknownError("the node is shutting down"))

    async def halt(self) -> None:
        """Die as kill -9 does: every task stops where it is, before any of them runs again, and
        nothing more is written or sent; what the storage had not synced is the storage's to lose.
        Clients still waiting learn nothing (504), as when their connection resets."""
        self._running = False
        for task in self._tasks:
            task.cancel()
        await self.snapshots.stop()  # cancels its task before it first awaits
        await asyncio.gather(*self._tasks, return_exceptions=True)
        fail(self.proposals.answers() + self.reads.answers(), OutcomeUnknownError("the node crashed"))

    # ================================================================ what clients call =========

    @property
    def leader_id(self) -> str | None:
        return self.core.leader_id

    def deliver(self, m: Message) -> None:
        """The transport's receive callback."""
        self._inbox.append(m)
        self._wake.set()

    async def propose(self, command: Command, *, leader_term: int | None = None,
                      gathered: bool = False) -> dict[str, Any]:
        """Replicate `command`; its state machine result once committed and applied here. On a
        follower the write goes to the leader, and the result says so (proposals.FORWARDED_TO).
        With `leader_term`, only this node appends it, as the leader of that term, or it fails
        with NotAppliedError: a decision that leader made (a lease expiry on its clock) must not be
        carried out by the next leader, to which a plain write would be forwarded. A `gathered`
        write comes from a source that hands writes over one per loop iteration: a leader may hold
        it for up to GATHER_S after its last append (`_commit_pending`, gathering.py)."""
        answer: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        if self.tracing is not None:
            self.tracing.track(answer)
        self.proposals.submit(encode(command), answer, self._now(), leader_term, gathered)
        self._wake.set()
        return await answer  # the deadline sweep fails it with OutcomeUnknownError when it times out

    async def read_barrier(self, *, gathered: bool = False) -> None:
        """Returns once a read of the local state machine is linearizable (ReadIndex). A
        `gathered` read comes from a source that hands reads over one per loop iteration: its round
        may wait for up to GATHER_S after the last (gathering.py)."""
        if self.cfg.unsafe_stale_reads and self.core.role is not Role.LEADER:
            return  # deliberately broken mode: serve whatever this replica has
        answer: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.tracing is not None:
            self.tracing.track(answer)
        self.reads.submit(answer, self._now(), gathered)
        self._wake.set()
        await answer

    async def await_leader(self) -> str:
        """The leader, once this node leads or knows a leader it can reach; NoLeaderError after the
        same hold a write gets (a leader killed a moment ago is replaced within it)."""
        deadline = self._now() + self.no_leader_hold_s
        while not (self.core.role is Role.LEADER or self._leader_reachable()):
            if self._now() >= deadline:
                raise NoLeaderError(f"no reachable leader for {self.no_leader_hold_s:g} s")
            await asyncio.sleep(self.tick_ms / 1000)
        leader = self.core.leader_id
        assert leader is not None
        return leader

    def transfer_leadership(self, target: str) -> None:
        """Ask the core to hand leadership to `target` (at the loop's next turn)."""
        self._actions.append(lambda: self.core.transfer_leadership(target))
        self._wake.set()

    async def change_membership(self, change: ConfChange) -> dict[str, Any]:
        """Propose a membership change on this leader; the result once it is committed and
        applied here. Refusals (core rules) are MembershipRefused; not leading is NoLeaderError."""
        answer: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()

        def act() -> None:
            try:
                term, index = self.core.propose_conf_change(change)
            except CoreNotLeader:
                answer.set_exception(NoLeaderError("this node is not the leader"))
            except ProposalDroppedError as e:
                answer.set_exception(MembershipRefused("pending", str(e), pendingIndex=self.core.pending_conf_index))
            except ValueError as e:
                answer.set_exception(MembershipRefused("invalid", str(e)))
            else:
                now = self._now()
                self.proposals.place(index, PlacedWrite(term, answer, now, now + self.cfg.proposal_timeout_s, None))

        self._actions.append(act)
        self._wake.set()
        return await answer

    async def force_election(self) -> dict[str, Any]:
        """The seed's button: this node campaigns now (through a leadership transfer if a leader is known)."""
        term_before = self.core.term
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def act() -> None:
            try:
                leader = self.core.leader_id
                if leader is not None and leader != self.id:
                    self.core.transfer_leadership(self.id)
                else:
                    self.core.campaign_now()
                done.set_result(None)
            except (ValueError, CoreNotLeader) as e:
                done.set_exception(NotAppliedError(str(e)))

        self._actions.append(act)
        self._wake.set()
        await done
        deadline = self._now() + 2.0
        while self.core.term == term_before and self._now() < deadline:
            await asyncio.sleep(self.tick_ms / 1000)
        return {"nodeId": self.id, "previousTerm": term_before, "term": self.core.term, "state": self.core.role.value}

    # ================================================================ the loop ==================

    async def _ticker(self) -> None:
        next_at = self._now()
        while True:
            interval = self.tick_ms / 1000  # read each time: the lab changes it at run time
            next_at += interval
            now = self._now()
            if next_at < now - interval:
                # Ticks missed while this process was busy are dropped, not replayed (as Go's
                # ticker under etcd does): ten replayed ticks in a few milliseconds let a leader's
                # check-quorum window pass before its followers' answers were even read.
                next_at = now
            await asyncio.sleep(max(0.0, next_at - now))
            self._tick_was_late(self._now() - next_at)
            if not self.clock_held:
                self._ticks += 1
                self._wake.set()

    def _tick_was_late(self, late: float) -> None:
        self.metrics.tick_lateness.observe(late)
        if late >= self._patience_s() / 2 and self._now() - self.stall_warned_at >= STALL_WARNING_EVERY_S:
            self.stall_warned_at = self._now()
            log.warning("event loop stalled node=%s late_ms=%.0f: nothing was sent or answered meanwhile; "
                        "a follower waits %.0f-%.0f ms for a heartbeat", self.id, late * 1000,
                        self._patience_s() * 1000, 2 * self._patience_s() * 1000)

    async def _loop(self) -> None:
        while self._running:
            await self._wake.wait()
            self._wake.clear()
            self._turn_outbox = []
            try:
                self._feed_core()
                self._hand_out_readies()
            finally:
                self._send_turn_outbox()
                self._turn_outbox = None

    def _feed_core(self) -> None:
        core, now = self.core, self._now()
        inbox, self._inbox = self._inbox, []
        tracing = self.tracing
        for m in inbox:
            if type(m) in FORWARD_TYPES:
                self._forwards.append(m)
            elif type(m) is ProposeAnswer:
                if tracing is not None and tracing.holds_requests() and \
                        (batch := self.proposals.forwarded.get(m.ticket)) is not None:
                    tracing.forward_answered(m.ticket, m.index, m.error, [w.answer for w in batch.writes])
                if self.proposals.place_forwarded(m, self.kv.applied_index) and self.proposals.queued:
                    self._wake.set()  # the writes that waited for that answer go now
            elif type(m) is EntryTraces:
                if tracing is not None:
                    tracing.entries_from_leader(m.first_index, m.traceparents)
            else:
                self.observer.on_received(m, now)
                core.step(m)
                if tracing is not None and type(m) is AppendResponse and m.success:
                    tracing.acknowledged(m.src, m.match_index)
        ticks, self._ticks = self._ticks, 0
        for _ in range(ticks):
            core.tick()
        actions, self._actions = self._actions, []
        for act in actions:
            act()
        leading = core.role is Role.LEADER
        patience_s = self._patience_s()
        held = leading and bool(self.proposals.queued or self._forwards) and self._commit_pending(now)
        own = self.proposals.queued and ((leading and not held) or (not leading and (
            self._leader_reachable() and not self.proposals.forward_in_flight(core.leader_id, now, patience_s))))
        if not leading and self._leader_reachable():
            assert core.leader_id is not None
            if resent := self.proposals.resends(core.leader_id, core.term, now, patience_s):
                self._send(resent)
        forwards, self._forwards = ([], self._forwards) if held else (self._forwards, [])
        if forwards or own:
            self._propose_turn(forwards, self._take_own_batch() if own else [], now)
        if self.reads.queued and self.reads.may_ask(now, patience_s) and (leading or self._leader_reachable()):
            if (due := self.reads.gathering.due(now, self.reads.queued, GATHER_S)) is not None:
                self._reads_held.set(due)
            else:
                self._reads_held.cancel()
                ctx = self.reads.start_round(now)
                if tracing is not None:
                    tracing.read_round(ctx, self.reads.rounds[ctx].reads)
                core.read_index(ctx)

    def _commit_pending(self, now: float) -> bool:
        """This leader's last proposal is not committed yet, and was made less than a tick ago. Its
        own writes and the batches followers forward that come meanwhile wait and go in the next
        append together, once it commits (this loop's turn on the acknowledgement or the fsync that
        commits it proposes them), as a follower keeps one forward in flight. Writes that arrive one
        per event-loop iteration (etcd's gRPC calls do), or forwards that arrive one after another
        from different followers, would otherwise cost an append, a message per follower and an
        fsync each; a lone write never waits. A tick bounds the wait: a leader cut off from its
        followers (or a commit slower than that) appends what it is given, as Raft's leaders do.

        Gathered writes (gathering.py) may wait longer, after the commit: not while a follower's
        forward waits too, which is appended at once and takes them along."""
        term, last, at = self._appended
        if term != self.core.term or now >= at + self.tick_ms / 1000:
            return False
        if self.core.log.committed < last:
            self._writes_held.set(at + self.tick_ms / 1000)  # the ticker may be held (the lab): they go by then
            return True
        if not self._forwards and (
                due := self._write_gathering.due(now, self.proposals.queued, GATHER_S)) is not None:
            self._writes_held.set(due)
            return True
        return False

    @property
    def no_leader_hold_s(self) -> float:
        """How long a write or read waits for a leader: as configured, or one maximum election
        timeout at the current tick length."""
        if self.cfg.no_leader_hold_ms is not None:
            return self.cfg.no_leader_hold_ms / 1000
        return 2 * self.cfg.election_timeout_ticks * self.tick_ms / 1000

    def _patience_s(self) -> float:
        """How long an unanswered request to the leader holds back the next (a minimum election
        timeout: by then a lost leader is known to be lost)."""
        return self.cfg.election_timeout_ticks * self.tick_ms / 1000

    def _leader_reachable(self) -> bool:
        """A follower knows a leader and its connection to it is up: what it forwards can arrive."""
        leader = self.core.leader_id
        return leader is not None and self.transport.reachable(leader)

    def _take_own_batch(self) -> list[QueuedWrite]:
        batch = self.proposals.take_batch(self.cfg.max_batch_proposals)
        if self.proposals.queued:
            self._wake.set()  # the rest go in the next turn
        return batch

    def _propose_turn(self, forwards: list[ProposeForward], batch: list[QueuedWrite], now: float) -> None:
        """One append per loop turn: this node's own writes and every batch a follower forwarded
        go in one proposal (so one AppendRequest per follower, not one per source). A follower
        forwards its own writes to the leader instead."""
        batch = self._within_their_leadership(batch)
        leader = self.core.leader_id
        tracing = self.tracing
        if batch and self.core.role is not Role.LEADER and leader is not None:
            forward = self.proposals.forward(batch, leader, self.core.term, now)
            if tracing is not None and tracing.holds_requests() and (
                    traces := tracing.forwarding(forward.ticket, leader, [w.answer for w in batch])) is not None:
                forward = TracedProposeForward(src=forward.src, dst=forward.dst, term=forward.term,
                                               ticket=forward.ticket, datas=forward.datas, oldest=forward.oldest,
                                               traceparents=traces)
            self._send([forward])
            batch = []
        fresh: dict[tuple[str, int], ProposeForward] = {}
        other_terms = []
        for m in forwards:
            if m.term != self.core.term:
                # Only a forward of this leader's own term may be appended: the ledger that keeps a
                # copy sent again from being appended twice knows this term's tickets only.
                other_terms.append(ProposeAnswer(src=self.id, dst=m.src, term=self.core.term, ticket=m.ticket,
                                                 index=0, error=f"forwarded in term {m.term}, "
                                                                f"and this node is in term {self.core.term}"))
            elif (answer := self.forward_ledger.known(m, self.core.term)) is not None:
                self._send([answer])  # a batch sent again: its answer (or it) was lost on the way
            elif m.datas:
                # A copy sent again can arrive in the turn of the original (the leader's loop was
                # held up): one ticket, one append.
                fresh.setdefault((m.src, m.ticket), m)
        self._send(other_terms)
        forwards = list(fresh.values())
        datas = [data for m in forwards for data in m.datas] + [w.data for w in batch]
        if not datas:
            return
        try:
            term, first = self.core.propose(datas)
        except (CoreNotLeader, ProposalDroppedError) as e:
            refused = NoLeaderError() if isinstance(e, CoreNotLeader) else NotAppliedError(str(e))
            fail([w.answer for w in batch], refused)
            refusals = [ProposeAnswer(src=self.id, dst=m.src, term=self.core.term, ticket=m.ticket, index=0,
                                      error=str(e) or type(e).__name__) for m in forwards]
            self.forward_ledger.record(refusals)
            self._send(refusals)
            return
        self.observer.on_proposed(first, first + len(datas) - 1, now)
        self._appended = (term, first + len(datas) - 1, now)
        self._write_gathering.started(now, batch)
        self._writes_held.cancel()
        if tracing is not None:
            self._trace_proposal(tracing, forwards, batch, first, term)
        # The answers leave before the entries' AppendRequests on the same links, so they arrive first.
        answers, index = [], first
        for m in forwards:
            answers.append(ProposeAnswer(src=self.id, dst=m.src, term=term, ticket=m.ticket, index=index))
            index += len(m.datas)
        self.forward_ledger.record(answers)
        self._send(answers)
        self.proposals.place_own(index, term, batch)

    def _trace_proposal(self, tracing: node_tracing.Tracing, forwards: list[ProposeForward], batch: list[QueuedWrite],
                        first: int, term: int) -> None:
        """`propose` spans for the traced writes just appended at `first`.., and their trace
        context for every follower, sent before the AppendRequests that carry them."""
        if not tracing.holds_requests() and not any(type(m) is TracedProposeForward for m in forwards):
            return  # not one write of this turn is traced
        parents = []
        for m in forwards:
            parents += (tracing.parents_of_forward(m.traceparents) if type(m) is TracedProposeForward
                        else [None] * len(m.datas))
        parents += [tracing.traced(w.answer) for w in batch]
        traces = tracing.proposed(first, term, parents, self.core.conf.voters)
        if traces is not None:
            self._send([EntryTraces(src=self.id, dst=peer, term=term, first_index=first, traceparents=traces)
                        for peer in self.core.progress])

    def _within_their_leadership(self, batch: list[QueuedWrite]) -> list[QueuedWrite]:
        """The batch less the writes bound to a leadership this node no longer holds (those fail)."""
        core = self.core
        leading_in = core.term if core.role is Role.LEADER else None
        ended = [w for w in batch if w.leader_term is not None and w.leader_term != leading_in]
        if not ended:
            return batch
        fail([w.answer for w in ended], NotAppliedError(f"{self.id} no longer leads in the term that proposed it"))
        return [w for w in batch if w not in ended]

    # ================================================================ Readys =====================

    def _hand_out_readies(self) -> None:
        core = self.core
        while core.has_ready():
            rd = core.ready()
            core.advance(rd)
            # The commit is known from here, and its announcement may leave with early_messages: a
            # follower can apply and answer before this node applies, so a trace's time is this one.
            committed_ns = time.time_ns() if self.tracing is not None and rd.committed_entries else 0
            if rd.early_messages:
                self._send(rd.early_messages)
                self._send_turn_outbox()  # before the apply below: followers learn a commit soonest
            if rd.soft_state is not None:
                self._on_soft_state(rd)
            if rd.snapshot is not None:
                self.kv.restore(rd.snapshot.data)
                self.snapshots.installed(rd.snapshot.meta.index)
                self.watches.restored()
                self._on_members()  # its member table may name members, or addresses, this node has not seen
            if rd.committed_entries:
                self._apply(rd.committed_entries, committed_ns)
            for state in rd.read_states:
                if self.tracing is not None:
                    self.tracing.read_confirmed(state)
                if (seconds := self.reads.confirmed(state, self._now())) is not None:
                    self.metrics.read_index_seconds.observe(seconds)
            if rd.read_states and self.reads.queued:
                self._wake.set()  # the reads that waited for that answer ask now
            if rd.hard_state is not None or rd.must_sync() or rd.messages or self.pump.busy:
                self.pump.hand(rd)
        self.reads.release(self.kv.applied_index)

    def _apply(self, entries: list[Entry], committed_ns: int) -> None:
        """Committed means a majority holds them on disk (a leader counts itself only once its own
        fsync is reported), so they apply now, whatever this node is still writing."""
        now = self._now()
        self.observer.on_committed(entries, now)
        answered = 0
        tracing = self.tracing
        traced = tracing.committed(entries, self.proposals.placed, committed_ns) if tracing is not None else None
        # (None too while nothing traced is in flight: then the loop below tests one name per entry)
        member_details = self.kv.member_details_changed
        for e in entries:
            if e.index <= self.kv.applied_index:
                continue  # a snapshot installed after this entry was handed out already covers it
            if traced is not None and e.index in traced:
                apply_started_ns = time.time_ns()
            if e.kind is EntryKind.NORMAL:
                result = self.kv.apply(e.index, e.data, answer=self.proposals.wants_result(e.index))
            elif e.kind is EntryKind.CONF_CHANGE:
                result = self.kv.apply_membership(e.index, ConfChange.decode(e.data))
                self.metrics.conf_changes.inc()
                self._on_members()
            else:
                self.kv.apply_noop(e.index)
                result = None
            if traced is not None and tracing is not None and e.index in traced:
                tracing.applied(traced[e.index], e.index, apply_started_ns)
            answered += self.proposals.applied(e, result, now)
        self.watches.flush()
        if self.kv.member_details_changed != member_details:  # a member published or moved its address
            self._on_members()
        if answered:
            self.metrics.proposals_applied.inc(answered)  # once per batch: inc() takes a lock

    def _send(self, messages: list[Message]) -> None:
        if self._turn_outbox is not None:
            self._turn_outbox += messages
        else:
            self._transmit(messages)

    def _send_turn_outbox(self) -> None:
        if self._turn_outbox:
            outbox, self._turn_outbox = self._turn_outbox, []
            self._transmit(outbox)

    def _transmit(self, messages: list[Message]) -> None:
        self.transport.send(messages)
        self.observer.on_sent(messages, self._now())

    def _on_persisted(self, index: int, term: int) -> None:
        self.core.on_persisted(index, term)
        self._wake.set()  # a leader may commit now that its own copy counts

    def _on_soft_state(self, rd: Ready) -> None:
        soft = rd.soft_state
        assert soft is not None
        self.observer.on_soft_state(soft, self._leader)
        if soft.leader_id != self._leader:
            log.info("leader node=%s term=%d leader=%s role=%s", self.id, soft.term, soft.leader_id, soft.role.value)
            if self._leader is not None:
                self.proposals.leader_changed(self._leader)
        self._leader = soft.leader_id

    # ================================================================ time =======================

    async def _sweep_deadlines(self) -> None:
        """Fail what waited too long: one timer for everything instead of one per request; and tell
        idle watchers how current they are."""
        progress_at = self._now() + PROGRESS_EVERY_S
        while True:
            await asyncio.sleep(DEADLINE_SWEEP_S)
            now = self._now()
            if now >= progress_at:
                self.watches.progress()
                progress_at = now + PROGRESS_EVERY_S
            self._fail_held(now)
            self.proposals.expire(now)
            self.reads.expire(now)

    def _fail_held(self, now: float) -> None:
        """NoLeaderError for what was held longer than `no_leader_hold_s` for want of a leader."""
        if self.core.role is Role.LEADER or self._leader_reachable():
            return
        leader = self.core.leader_id
        why = NoLeaderError() if leader is None else NotAppliedError(
            f"the leader {leader} has been unreachable for {self.no_leader_hold_s:g} s")
        held_since = now - self.no_leader_hold_s
        self.proposals.fail_queued(held_since, why)
        self.reads.fail_queued(held_since, why)


def _load_or_found(cfg: NodeConfig, storage: RaftStorage) -> DurableState:
    """The storage's durable state; a fresh one of a founding member is first given the founding
    entries every founder writes alike (membership.py). A node that joins starts empty."""
    durable = storage.load()
    fresh = durable.snapshot is None and not durable.entries and durable.hard_state == HardState()
    if not fresh or cfg.join_url:
        return durable
    founding = bootstrap_state(cfg.members)
    storage.append(founding.entries)
    storage.set_hard_state(founding.hard_state)
    storage.sync()
    return storage.load()
