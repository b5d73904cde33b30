"""The node: drives a pure Raft core with real time, a real disk and a real network.

Theory of operation
-------------------
One asyncio task, the loop, owns the core. Everything else (the ticker, the transport's receive
callback, HTTP handlers) only queues inputs and wakes the loop. Each turn of the loop feeds the
core what was queued (received messages first, then ticks, operator actions, and *all* waiting
client proposals as one batch), then hands out every Ready, calling `advance()` at once, so the
loop never waits for the disk: ticks, heartbeats and reads keep flowing during a slow fsync.

What a Ready asks for is split the way the core marks it:
- `early_messages` (a leader's entries, heartbeats and their answers, ReadIndex traffic) leave
  immediately: they vouch for nothing on this node's disk;
- the writes and the other `messages` go to the disk pump, a second task that takes all Readys
  handed out so far, writes their snapshot / entries / hard state, fsyncs *once* (group commit
  across Readys), then sends their held messages in order: a vote or an append acknowledgement
  leaves only once what it vouches for is on disk. Then it reports `on_persisted` to the core,
  because a leader counts its own copy towards a commit only once it is durable (Raft thesis
  10.2.1: the leader writes in parallel with its followers);
- committed entries are applied at once: committed already means a majority holds them on disk.

A client write is answered only after its entry is committed and applied here, so an
acknowledged write survives kill -9 of any minority. While no leader is known, or the connection
to it is down (a leader killed with -9 closes it at once), writes and reads are held for up to
`no_leader_hold_s` (one maximum election timeout) and then go to the new leader, or fail 503:
held, they were never sent, so a failure means "not done". A follower does not propose: it sends each
turn's writes to the leader as one `ProposeForward` on the Raft link; the leader appends them and
answers with where they went (`ProposeAnswer`: index and term), and the follower then waits for
those indexes exactly as the leader waits for its own, answering from its own state machine
(every replica computes the same result). A proposal whose index ends up holding
another term's entry was definitely not applied (503); one that times out may still commit (504).
Reads go through ReadIndex (a follower asks the leader for the read point and serves it locally
once it has applied that far). Snapshots are frozen on the loop (a shallow copy) and encoded in a
worker thread, so a large state machine does not stall elections.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import itertools
import logging
import random
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from raftkv.core import (
    Config,
    Entry,
    EntryKind,
    HeartbeatRequest,
    HeartbeatResponse,
    Message,
    ProposalDroppedError,
    ProposeAnswer,
    ProposeForward,
    RaftCore,
    Ready,
    Role,
    TraceEvent,
)
from raftkv.core import (
    NotLeaderError as CoreNotLeader,
)
from raftkv.kv import Command, KVStateMachine, encode
from raftkv.storage import DiskStorage, RaftStorage
from raftkv.transport import ALL_PEERS, LinkFaults, TcpTransport, make_mtls_contexts

from .config import NodeConfig
from .errors import NoQuorumError, NotLeaderError, OutcomeUnknownError
from .metrics import NodeMetrics
from .observe import EventHub, kv_preview

log = logging.getLogger("raftkv.node")

Proposal = tuple[bytes, asyncio.Future[dict], float]  # (encoded command, its answer, proposed at)
# A write waiting for its index: (term, its answer, proposed at, deadline, the leader it was
# forwarded to or None)
Waiting = tuple[int, asyncio.Future[dict], float, float, str | None]

# The key a forwarded proposal's result carries: which leader took it (the API reports it).
FORWARDED_TO = "forwardedTo"
STATUS_EVERY_S = 0.25
DEADLINE_SWEEP_S = 0.05
UNSAFE_SYNC_EVERY_S = 1.0


class RaftNode:
    def __init__(self, cfg: NodeConfig, storage: RaftStorage | None = None) -> None:
        self.cfg = cfg
        self.id = cfg.node_id
        self.url = cfg.me.url
        self.hub = EventHub(self.id)
        self.metrics = NodeMetrics(self.id)
        self.storage = storage or DiskStorage(cfg.data_dir / "raft")
        durable = self.storage.load()
        self.kv = KVStateMachine()
        if durable.snapshot is not None:
            self.kv.restore(durable.snapshot.data)
        self._snapshot_index = durable.snapshot.meta.index if durable.snapshot else 0
        self.core = RaftCore(
            Config(
                self.id,
                voters=tuple(cfg.members),
                election_timeout_ticks=cfg.election_timeout_ticks,
                heartbeat_interval_ticks=cfg.heartbeat_interval_ticks,
                pre_vote=cfg.pre_vote,
                check_quorum=cfg.check_quorum,
                read_mode=cfg.read_mode,
            ),
            random.Random(),
            durable,
            listener=self._on_trace,
        )
        self.faults = LinkFaults(on_drop=self._on_drop)
        ssl_server = ssl_client = None
        if cfg.tls_ca and cfg.tls_cert and cfg.tls_key:
            ssl_server, ssl_client = make_mtls_contexts(str(cfg.tls_ca), str(cfg.tls_cert), str(cfg.tls_key))
        self.transport = TcpTransport(
            self.id,
            cfg.me.host,
            cfg.me.raft_port,
            {i: (m.host, m.raft_port) for i, m in cfg.peers().items()},
            self.faults,
            ssl_server=ssl_server,
            ssl_client=ssl_client,
        )
        self._disk = ThreadPoolExecutor(1, thread_name_prefix=f"{self.id}-wal")
        self._encoder = ThreadPoolExecutor(1, thread_name_prefix=f"{self.id}-snap")
        self._wake = asyncio.Event()
        self._disk_wake = asyncio.Event()
        self._ticks = 0
        self._inbox: list[Message] = []
        self._actions: list[Callable[[], None]] = []
        self._proposals: list[Proposal] = []
        self._reads: list[tuple[asyncio.Future[None], float]] = []  # (answer, asked at)
        self._waiting_proposals: dict[int, Waiting] = {}  # by log index
        # The leader's proposals not yet committed, for propose-to-commit: (first, last, proposed at).
        self._uncommitted: collections.deque[tuple[int, int, float]] = collections.deque()
        # ticket -> (leader, [(future, proposed at)], deadline): forwarded, not yet placed
        self._forwarded: dict[int, tuple[str, list[tuple[asyncio.Future[dict], float]], float]] = {}
        self._tickets = itertools.count(1)
        self._last_forward: tuple[int, str, float] | None = None  # (ticket, leader, sent at) until answered
        # One ReadIndex request (in flight at a time) serves every read that arrived before it:
        # ctx -> (those reads, asked at, deadline); then (read index, reads, deadline).
        self._waiting_reads: dict[bytes, tuple[list[asyncio.Future[None]], float, float]] = {}
        self._reads_by_index: list[tuple[int, list[asyncio.Future[None]], float]] = []
        # Readys handed out whose writes (and held messages) still wait for the disk pump.
        self._unsynced: list[Ready] = []
        self._written: tuple[int, int] | None = None  # (index, term) of the last entry written
        self._snapshotting = False
        self._storage_lock = asyncio.Lock()  # the storage takes one caller at a time
        self._heartbeat_sent: dict[str, float] = {}  # peer -> when the last unanswered heartbeat left
        self._caught_up_at: dict[str, float] = {}  # peer -> when it last held the leader's whole log
        self._read_ids = itertools.count()
        self._tasks: list[asyncio.Task] = []
        self._running = False
        self._leader: str | None = None
        self._last_unsafe_sync = time.monotonic()
        self.started_at = time.time()

    # ================================================================ lifecycle =================

    async def start(self) -> None:
        await self.transport.start(self._on_message)
        self._running = True
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._loop()),
            loop.create_task(self._disk_pump()),
            loop.create_task(self._ticker()),
            loop.create_task(self._status()),
            loop.create_task(self._sweep_deadlines()),
        ]
        log.info("node started id=%s http=%s raft_port=%d", self.id, self.url, self.cfg.me.raft_port)

    async def stop(self) -> None:
        """Graceful stop: write out what was handed to the disk, then close everything."""
        self._running = False
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._disk, lambda: None)  # let a cancelled batch's fsync finish
        await self._write_unsynced()  # what was handed out but not yet written
        await self.transport.close()
        await loop.run_in_executor(self._disk, self.storage.close)
        self._disk.shutdown(wait=True)
        self._encoder.shutdown(wait=False, cancel_futures=True)
        for fut in self._pending_futures():
            if not fut.done():
                fut.set_exception(OutcomeUnknownError("the node is shutting down"))
        log.info("node stopped id=%s", self.id)

    def _pending_futures(self) -> list[asyncio.Future]:
        return (
            [f for _, f, _ in self._proposals]
            + [f for f, _ in self._reads]
            + [w[1] for w in self._waiting_proposals.values()]
            + [f for _, items, _ in self._forwarded.values() for f, _ in items]
            + [f for w in self._waiting_reads.values() for f in w[0]]
            + [f for _, futs, _ in self._reads_by_index for f in futs]
        )

    # ================================================================ the public interface ======

    def leader_id(self) -> str | None:
        return self.core.leader_id

    def leader_url(self) -> str | None:
        leader = self.core.leader_id
        return self.cfg.members[leader].url if leader in self.cfg.members else None

    async def propose(self, command: Command) -> dict:
        """Replicate `command`; its state machine result once committed and applied here. On a
        follower the write goes to the leader, and the result says so: `FORWARDED_TO` names it."""
        fut: asyncio.Future[dict] = asyncio.get_running_loop().create_future()
        self._proposals.append((encode(command), fut, time.monotonic()))
        self._wake.set()
        return await fut  # the deadline sweep fails it with OutcomeUnknownError when it times out

    async def read_barrier(self) -> None:
        if self.cfg.unsafe_stale_reads and self.core.role is not Role.LEADER:
            return  # deliberately broken mode: serve whatever this replica has
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._reads.append((fut, time.monotonic()))
        self._wake.set()
        await fut

    async def force_election(self) -> dict:
        """The seed's button: this node campaigns now (through a leadership transfer if a leader is known)."""
        term_before = self.core.term
        done = asyncio.get_running_loop().create_future()

        def act() -> None:
            try:
                leader = self.core.leader_id
                if leader is not None and leader != self.id:
                    self.core.transfer_leadership(self.id)
                else:
                    self.core.campaign_now()
                done.set_result(None)
            except (ValueError, CoreNotLeader) as e:
                done.set_exception(NoQuorumError(str(e)))

        self._actions.append(act)
        self._wake.set()
        await done
        deadline = time.monotonic() + 2.0
        while self.core.term == term_before and time.monotonic() < deadline:
            await asyncio.sleep(self.cfg.tick_ms / 1000)
        return {"nodeId": self.id, "previousTerm": term_before, "term": self.core.term, "state": self.core.role.value}

    def set_partition(self, partitioned: bool, peers: list[str] | None, direction: str = "both") -> dict:
        """Cut (or restore) Raft traffic with `peers` (all if None); one way with direction
        "outbound" (we stop reaching them) or "inbound" (they stop reaching us)."""
        targets = self._known_peers(peers)
        if not partitioned or direction == "both":
            self.faults.set_partitioned(partitioned, peers)
        else:
            cut = self.faults.cut_outbound if direction == "outbound" else self.faults.cut_inbound
            for peer in targets:
                cut(peer)
        log.info("partition node=%s partitioned=%s peers=%s direction=%s", self.id, partitioned, targets, direction)
        return self._faults_changed()

    def set_link_quality(self, peers: list[str] | None, loss_percent: float | None, delay_ms: float | None) -> dict:
        """Loss and latency on this node's outbound Raft traffic to `peers` (all if None); 0 removes."""
        targets = [ALL_PEERS] if peers is None else self._known_peers(peers)
        for peer in targets:
            if loss_percent is not None:
                self.faults.set_loss(loss_percent, peer)
            if delay_ms is not None:
                self.faults.set_delay(delay_ms, peer)
        log.info("link node=%s peers=%s loss=%s delay_ms=%s", self.id, peers or "all", loss_percent, delay_ms)
        return self._faults_changed()

    def _known_peers(self, peers: list[str] | None) -> list[str]:
        unknown = sorted(set(peers or ()) - set(self.cfg.peers()))
        if unknown:
            raise ValueError(f"unknown peer ids: {unknown}; peers are {sorted(self.cfg.peers())}")
        return list(peers) if peers is not None else list(self.cfg.peers())

    def _faults_changed(self) -> dict:
        described = self.faults.describe()
        self.hub.publish({"type": "fault", "faults": described})
        return described

    def raft_state(self, digest: bool = False) -> dict:
        """/raft-state; with digest, also a hash of the whole state machine (costs a full snapshot)."""
        status = self.core.status()
        progress = status.pop("progress")
        tick_s = self.cfg.tick_ms / 1000
        peers = []
        for peer_id, member in self.cfg.peers().items():
            entry: dict[str, Any] = {"id": peer_id, "url": member.url}
            pr = progress.get(peer_id)
            if pr is not None:
                entry.update(pr)
                entry["lastContact"] = round(pr["ticksSinceContact"] * tick_s, 3)
                entry["lagEntries"] = status["logLength"] - pr["matchIndex"]
            peers.append(entry)
        status.update(
            peers=peers,
            url=self.url,
            tickMs=self.cfg.tick_ms,
            keys=len(self.kv),
            revision=self.kv.revision,
            requestKeys=self.kv.dedup_stats(),
            faults=self.faults.describe(),
            transport=self.transport.stats(),
            storage=dataclasses.asdict(self.storage.stats),
            uptime=round(time.time() - self.started_at, 3),
        )
        if digest:
            status["kvDigest"] = self.kv.digest()
        return status

    def health(self) -> dict:
        """Alive, and whether a leader is known: "ok", or "unavailable" with the reason (a 503)."""
        leader = self.core.leader_id
        health = {"status": "ok" if leader is not None else "unavailable", "node": self.id, "leader": leader,
                  "hasLeader": leader is not None, "term": self.core.term}
        if leader is None:
            health["reason"] = "no leader is known"
        return health

    def metrics_text(self) -> tuple[bytes, str]:
        self._refresh_gauges()
        return self.metrics.render()

    def record_request(self, route: str, method: str, status: int, seconds: float) -> None:
        self.metrics.on_http_request(route, method, status, seconds)

    async def watch(self) -> AsyncIterator[dict]:
        self.hub.publish(self._status_event())
        async for event in self.hub.subscribe():
            yield event

    # ================================================================ inputs ====================

    def _on_message(self, m: Message) -> None:
        self._inbox.append(m)
        self._wake.set()

    async def _ticker(self) -> None:
        interval = self.cfg.tick_ms / 1000
        next_at = time.monotonic()
        while True:
            next_at += interval
            now = time.monotonic()
            if next_at < now - interval:
                # Ticks missed while this process was busy are dropped, not replayed (as Go's
                # ticker under etcd does): ten replayed ticks in a few milliseconds let a leader's
                # check-quorum window pass before its followers' answers were even read.
                next_at = now
            await asyncio.sleep(max(0.0, next_at - now))
            self._ticks += 1
            self._wake.set()

    async def _status(self) -> None:
        while True:
            await asyncio.sleep(STATUS_EVERY_S)
            self._refresh_gauges()
            if self.hub.watched:
                self.hub.publish(self._status_event())

    def _status_event(self) -> dict:
        return {"type": "status", "state": self.raft_state(), "kv": kv_preview(self.kv)}

    # ================================================================ the loop ==================

    async def _loop(self) -> None:
        while self._running:
            await self._wake.wait()
            self._wake.clear()
            try:
                self._feed_core()
                self._hand_out_readies()
            except Exception:
                log.exception("node loop failed id=%s; stopping the node", self.id)
                raise

    def _feed_core(self) -> None:
        core = self.core
        # Messages before ticks: what arrived while this process was busy must count before the
        # busy time itself is taken for the peers' silence.
        inbox, self._inbox = self._inbox, []
        forwards: list[ProposeForward] = []
        for m in inbox:
            if type(m) is ProposeForward:
                forwards.append(m)
                continue
            if type(m) is ProposeAnswer:
                self._place_forwarded(m)
                continue
            if isinstance(m, HeartbeatRequest):
                self.metrics.on_heartbeat_received()
            elif isinstance(m, HeartbeatResponse) and (sent := self._heartbeat_sent.pop(m.src, None)) is not None:
                self.metrics.peer_rtt_seconds.labels(m.src).observe(time.monotonic() - sent)
            core.step(m)
        ticks, self._ticks = self._ticks, 0
        for _ in range(ticks):
            core.tick()
        actions, self._actions = self._actions, []
        for act in actions:
            act()
        leading = self.core.role is Role.LEADER
        own = self._proposals and (leading or (self._leader_reachable() and not self._forward_in_flight()))
        if forwards or own:
            self._propose_turn(forwards, self._take_own_batch() if own else [])
        if self._reads and self._may_ask_read_index() and (leading or self._leader_reachable()):
            reads, self._reads = [fut for fut, _ in self._reads if not fut.done()], []
            # Each of them arrived before this request, so its read index is safe for all of them.
            ctx = f"{self.id}:{next(self._read_ids)}".encode()
            now = time.monotonic()
            self._waiting_reads[ctx] = (reads, now, now + self.cfg.read_timeout_s)
            core.read_index(ctx)

    def _leader_reachable(self) -> bool:
        """A follower knows a leader and its connection to it is up: what it forwards can arrive."""
        leader = self.core.leader_id
        return leader is not None and self.transport.reachable(leader)

    def _fail_held(self, now: float) -> None:
        """503 for the writes and reads held longer than `no_leader_hold_s` for want of a leader:
        they were never sent, so nothing was done."""
        if self.core.role is Role.LEADER or self._leader_reachable():
            return
        cutoff = now - self.cfg.no_leader_hold_s
        leader = self.core.leader_id
        why = (NotLeaderError(None, None) if leader is None
               else NoQuorumError(f"the leader {leader} has been unreachable for {self.cfg.no_leader_hold_s:g} s"))
        expired = [p for p in self._proposals if p[2] <= cutoff]
        if expired:
            self._proposals = [p for p in self._proposals if p[2] > cutoff]
            _fail([fut for _, fut, _ in expired], why)
        if any(asked <= cutoff for _, asked in self._reads):
            _fail([fut for fut, asked in self._reads if asked <= cutoff], why)
            self._reads = [(fut, asked) for fut, asked in self._reads if asked > cutoff]

    def _patience_s(self) -> float:
        """How long an unanswered request to the leader holds back the next (a minimum election
        timeout: by then a lost leader is known to be lost)."""
        return self.cfg.election_timeout_ticks * self.cfg.tick_ms / 1000

    def _forward_in_flight(self) -> bool:
        """A follower keeps one ProposeForward in flight, like one ReadIndex: the writes that arrive
        meanwhile go together in the next, so the leader makes fewer, larger appends."""
        last = self._last_forward
        return (last is not None and last[1] == self.core.leader_id
                and time.monotonic() - last[2] < self._patience_s())

    def _may_ask_read_index(self) -> bool:
        """One ReadIndex request in flight at a time (as etcd does): reads that arrive meanwhile
        wait and share the next one, so under load a round serves many reads, not one per turn."""
        if not self._waiting_reads:
            return True
        return time.monotonic() - max(asked for _, asked, _ in self._waiting_reads.values()) >= self._patience_s()

    def _take_own_batch(self) -> list[Proposal]:
        batch = self._proposals[: self.cfg.max_batch_proposals]
        del self._proposals[: self.cfg.max_batch_proposals]
        if self._proposals:
            self._wake.set()  # the rest go in the next turn
        return [p for p in batch if not p[1].done()]

    def _propose_turn(self, forwards: list[ProposeForward], batch: list[Proposal]) -> None:
        """One append per loop turn: this node's own writes and every batch a follower forwarded
        go in one proposal (so one AppendRequest per follower, not one per source). A follower
        forwards its own writes to the leader instead."""
        leader = self.core.leader_id
        if batch and self.core.role is not Role.LEADER and leader is not None:
            ticket = next(self._tickets)
            self._forwarded[ticket] = (leader, [(fut, started) for _, fut, started in batch],
                                       batch[0][2] + self.cfg.proposal_timeout_s)
            self._last_forward = (ticket, leader, time.monotonic())
            self.transport.send([ProposeForward(src=self.id, dst=leader, term=self.core.term, ticket=ticket,
                                                datas=tuple(data for data, _, _ in batch))])
            batch = []
        forwards = [m for m in forwards if m.datas]
        datas = [data for m in forwards for data in m.datas] + [data for data, _, _ in batch]
        if not datas:
            return
        try:
            term, first = self.core.propose(datas)
        except (CoreNotLeader, ProposalDroppedError) as e:
            # CoreNotLeader for this node's own writes means no leader at all (else they went above).
            _fail([fut for _, fut, _ in batch],
                  NotLeaderError(None, None) if isinstance(e, CoreNotLeader) else NoQuorumError(str(e)))
            self.transport.send([ProposeAnswer(src=self.id, dst=m.src, term=self.core.term, ticket=m.ticket, index=0,
                                               error=str(e) or type(e).__name__) for m in forwards])
            return
        self._uncommitted.append((first, first + len(datas) - 1, time.monotonic()))
        # The answers leave before the entries' AppendRequests on the same links, so they arrive first.
        answers, index = [], first
        for m in forwards:
            answers.append(ProposeAnswer(src=self.id, dst=m.src, term=term, ticket=m.ticket, index=index))
            index += len(m.datas)
        self.transport.send(answers)
        for i, (_, fut, started) in enumerate(batch):
            self._wait_for(index + i, (term, fut, started, started + self.cfg.proposal_timeout_s, None))

    def _place_forwarded(self, m: ProposeAnswer) -> None:
        """The follower's side: wait for the indexes the leader gave, as for a local proposal."""
        if self._last_forward is not None and self._last_forward[0] == m.ticket:
            self._last_forward = None
            if self._proposals:
                self._wake.set()  # the writes that waited for this answer go now
        pending = self._forwarded.pop(m.ticket, None)
        if pending is None:
            return  # it timed out already (the client got a 504)
        leader, items, deadline = pending
        if m.index == 0:
            _fail([fut for fut, _ in items], NoQuorumError(f"the leader {m.src} did not take the write: {m.error}"))
            return
        applied = self.kv.applied_index
        for i, (fut, started) in enumerate(items):
            if m.index + i <= applied:  # applied before the answer came: the result is gone
                fut.set_exception(OutcomeUnknownError("the answer from the leader came too late to tell"))
            else:
                self._wait_for(m.index + i, (m.term, fut, started, deadline, leader))

    def _give_up_forwards(self, tickets: list[int], why: str) -> None:
        """504 for forwarded writes whose answer will not come: they may or may not have reached
        the leader's log, and may yet commit."""
        for ticket in tickets:
            self._give_up([fut for fut, _ in self._forwarded.pop(ticket)[1]], why)

    def _give_up(self, futures: list[asyncio.Future[dict]], why: str) -> None:
        """504 for writes this node stops waiting for: their outcome is unknown to it."""
        for fut in futures:
            if not fut.done():
                self.metrics.proposals_unknown.inc()
                fut.set_exception(OutcomeUnknownError(why))

    def _not_applied(self, fut: asyncio.Future[dict]) -> None:
        """503 for a write whose index now holds another term's entry: it will never be applied."""
        self.metrics.proposals_lost.inc()
        fut.set_exception(NoQuorumError("leadership changed before the write committed; it was not applied"))

    def _wait_for(self, index: int, waiting: Waiting) -> None:
        """Wait for the entry of `waiting`'s term at `index`. A write still waiting there from an
        older term lost its place: a leader that appends at an index holds no committed entry
        there (Leader Completeness), so that write was definitely not applied."""
        old = self._waiting_proposals.get(index)
        if old is not None and old[0] != waiting[0] and not old[1].done():
            self._not_applied(old[1])
        self._waiting_proposals[index] = waiting

    def _hand_out_readies(self) -> None:
        core = self.core
        while core.has_ready():
            rd = core.ready()
            core.advance(rd)
            if rd.early_messages:
                self.transport.send(rd.early_messages)
                self._note_messages(rd.early_messages)
            if rd.soft_state is not None:
                self._on_soft_state(rd)
            if rd.snapshot is not None:
                self.kv.restore(rd.snapshot.data)
                self._snapshot_index = rd.snapshot.meta.index
                self.metrics.snapshots.labels("installed").inc()
            # Committed means a majority holds it on disk (a leader counts itself only once its
            # own fsync is reported), so it applies now, whatever this node is still writing.
            if rd.committed_entries:
                self._note_commits(rd.committed_entries)
                answered = sum(self._apply_entry(e) for e in rd.committed_entries)
                if answered:
                    self.metrics.proposals_applied.inc(answered)  # once per batch: inc() takes a lock
            self._note_read_states(rd)
            if rd.hard_state is not None or rd.must_sync() or rd.messages or self._unsynced:
                self._unsynced.append(rd)
                self._disk_wake.set()
        self._release_reads()

    async def _disk_pump(self) -> None:
        while True:
            await self._disk_wake.wait()
            self._disk_wake.clear()
            while self._unsynced:
                await self._write_unsynced()
                if self._snapshot_due():
                    self._snapshotting = True
                    self._tasks.append(asyncio.get_running_loop().create_task(self._take_snapshot()))

    async def _write_unsynced(self) -> None:
        """One batch: everything handed out so far, written and fsynced once, then its held messages."""
        async with self._storage_lock:
            await self._write_batch()

    async def _write_batch(self) -> None:
        batch, self._unsynced = self._unsynced, []
        if not batch:
            return
        loop = asyncio.get_running_loop()
        storage, entries = self.storage, 0
        for rd in batch:
            if rd.snapshot is not None:
                await loop.run_in_executor(self._disk, storage.save_snapshot, rd.snapshot)
            if rd.entries:
                storage.append(rd.entries)
                self._written = (rd.entries[-1].index, rd.entries[-1].term)
                entries += len(rd.entries)
            if rd.hard_state is not None:
                storage.set_hard_state(rd.hard_state)
        # A batch that only records a commit index waits for the next fsync (see Ready).
        must_sync = any(rd.must_sync() for rd in batch)
        if must_sync and (
            not self.cfg.unsafe_skip_fsync or time.monotonic() - self._last_unsafe_sync >= UNSAFE_SYNC_EVERY_S
        ):
            # (the unsafe mode acknowledges what is only in memory, syncing once a second)
            self._last_unsafe_sync = time.monotonic()
            started = time.perf_counter()
            if self.core.role is Role.LEADER:
                # Off the loop: the leader's heartbeats and appends must not wait for its own disk.
                await loop.run_in_executor(self._disk, storage.sync)
            else:
                # On the loop: a follower's acknowledgements wait for this fsync anyway, and the
                # hand-off to a thread and back costs about 85 us of wake-ups per fsync on this VM
                # (bench/PROFILE.md). Its heartbeat answers wait too, as an etcd follower's do.
                storage.sync()
            self.metrics.fsync_seconds.observe(time.perf_counter() - started)
            self.metrics.fsync_batch.observe(entries)
        for rd in batch:
            if rd.messages:
                self.transport.send(rd.messages)
                self._note_messages(rd.messages)
        if must_sync and self._written is not None:
            self.core.on_persisted(*self._written)
            self._wake.set()  # a leader may commit now that its own copy counts

    def _apply_entry(self, e: Entry) -> bool:
        """Apply `e`; True if that answered a waiting write with its result."""
        if e.index <= self.kv.applied_index:
            return False  # a snapshot installed after this entry was handed out already covers it
        if e.kind is EntryKind.NORMAL:
            result = self.kv.apply(e.index, e.data)
        else:
            self.kv.apply_noop(e.index)
            result = None
        waiting = self._waiting_proposals.pop(e.index, None)
        if waiting is None:
            return False
        term, fut, started, _, leader = waiting
        if fut.done():
            return False
        if e.term == term and result is not None:
            self.metrics.apply_seconds.observe(time.monotonic() - started)
            fut.set_result(result if leader is None else {**result, FORWARDED_TO: leader})
            return True
        self._not_applied(fut)
        return False

    def _note_commits(self, entries: list[Entry]) -> None:
        """Propose-to-commit of this leader's proposals that `entries` committed: each write is
        timed once, by the leader, wherever its client sent it."""
        pending, last = self._uncommitted, entries[-1].index
        now = time.monotonic()
        while pending and pending[0][0] <= last:
            first, end, proposed = pending.popleft()
            if end > last:  # the rest of that proposal commits later
                pending.appendleft((last + 1, end, proposed))
                end = last
            self.metrics.commit_seconds.observe(now - proposed, end - first + 1)

    def _note_read_states(self, rd: Ready) -> None:
        now = time.monotonic()
        for rs in rd.read_states:
            waiting = self._waiting_reads.pop(rs.ctx, None)
            if waiting is None:
                continue
            futs, started, deadline = waiting
            if not rs.ok:
                _fail(futs, NoQuorumError("no leader could confirm this read; retry"))
                continue
            self.metrics.read_index_seconds.observe(now - started)
            self._reads_by_index.append((rs.index, futs, deadline))
        if rd.read_states and self._reads:
            self._wake.set()  # the reads that waited for that answer ask now

    def _release_reads(self) -> None:
        applied = self.kv.applied_index
        still = []
        for item in self._reads_by_index:
            if item[0] > applied:
                still.append(item)
                continue
            for fut in item[1]:
                if not fut.done():
                    fut.set_result(None)
        self._reads_by_index = still

    async def _sweep_deadlines(self) -> None:
        """Fail what waited too long: one timer for everything instead of one per request."""
        while True:
            await asyncio.sleep(DEADLINE_SWEEP_S)
            now = time.monotonic()
            self._fail_held(now)
            expired = [i for i, w in self._waiting_proposals.items() if w[3] <= now]
            self._give_up([self._waiting_proposals.pop(i)[1] for i in expired],
                          f"not applied within {self.cfg.proposal_timeout_s} s; it may or may not have been applied")
            self._give_up_forwards([t for t, w in self._forwarded.items() if w[2] <= now],
                                   "forwarded to the leader, and no answer came in time")
            for ctx in [c for c, w in self._waiting_reads.items() if w[2] <= now]:
                unconfirmed = self._waiting_reads.pop(ctx)[0]
                _fail(unconfirmed, OutcomeUnknownError("the read could not be confirmed in time; retry"))
            for _, futs, deadline in self._reads_by_index:
                if deadline <= now:
                    _fail(futs, OutcomeUnknownError("this node did not catch up in time; retry"))

    def _snapshot_due(self) -> bool:
        applied = self.kv.applied_index
        due = self.cfg.snapshot_every and applied - self._snapshot_index >= self.cfg.snapshot_every
        # Only at an index the WAL already holds, so entries still being written never precede it.
        return bool(due) and not self._snapshotting and applied <= self.core.durable_index

    async def _take_snapshot(self) -> None:
        try:
            started = time.perf_counter()
            loop = asyncio.get_running_loop()
            applied = self.kv.applied_index
            data = await loop.run_in_executor(self._encoder, self.kv.snapshot_later())
            snapshot = self.core.make_snapshot(applied, data)
            async with self._storage_lock:
                await loop.run_in_executor(self._disk, self.storage.save_snapshot, snapshot)
            self.core.compact(snapshot, retain_entries=self.cfg.snapshot_retain_entries)
            self._snapshot_index = applied
            self.metrics.snapshots.labels("taken").inc()
            self.metrics.snapshot_seconds.observe(time.perf_counter() - started)
            self.metrics.snapshot_bytes.set(len(snapshot.data))
            log.info("snapshot node=%s index=%d bytes=%d", self.id, applied, len(snapshot.data))
        except Exception:
            log.exception("snapshot failed node=%s; will retry at the next threshold", self.id)
        finally:
            self._snapshotting = False

    # ================================================================ observation ===============

    def _on_soft_state(self, rd: Ready) -> None:
        soft = rd.soft_state
        assert soft is not None
        self.metrics.on_soft_state(soft.role, soft.leader_id, soft.term, self._leader)
        if soft.role is not Role.LEADER:
            self._uncommitted.clear()  # another leader commits (or replaces) them now
        if soft.leader_id != self._leader:
            log.info("leader node=%s term=%d leader=%s role=%s", self.id, soft.term, soft.leader_id, soft.role.value)
            if (old := self._leader) is not None:  # a client must not wait out the timeout on a dead leader
                self._give_up_forwards([t for t, pending in self._forwarded.items() if pending[0] == old],
                                       f"forwarded to {old}, which stopped being the leader before it answered")
        self._leader = soft.leader_id

    def _on_trace(self, event: TraceEvent) -> None:
        if event.kind in ("send", "receive", "append"):
            return  # messages are reported per Ready, grouped (see _note_messages)
        if event.kind == "campaign" and not event.detail.get("pre_vote"):  # a pre-vote round is no election
            self.metrics.elections_started.inc()
        if self.hub.watched or event.kind not in ("commit",):
            self.hub.publish(
                {
                    "type": "trace",
                    "kind": event.kind,
                    "term": event.term,
                    "detail": event.detail,
                    "text": event.describe(),
                }
            )

    def _note_messages(self, messages: list[Message]) -> None:
        groups: dict[tuple[str, str], list[Message]] = {}
        for m in messages:
            groups.setdefault((m.dst, type(m).__name__), []).append(m)
        for (dst, kind), msgs in groups.items():
            self.metrics.messages_sent.labels(kind).inc(len(msgs))
            if kind == "HeartbeatRequest":
                self.metrics.heartbeats_sent.inc(len(msgs))
                self._heartbeat_sent.setdefault(dst, time.monotonic())
            if self.hub.watched:
                entries = sum(len(getattr(m, "entries", ())) for m in msgs)
                self.hub.publish(
                    {
                        "type": "msg",
                        "src": self.id,
                        "dst": dst,
                        "kind": kind,
                        "count": len(msgs),
                        "entries": entries,
                        "term": msgs[-1].term,
                        "dropped": False,
                    }
                )

    def _on_drop(self, m: Message, direction: str) -> None:
        self.metrics.messages_dropped.labels(direction).inc()
        if self.hub.watched:
            self.hub.publish(
                {
                    "type": "msg",
                    "src": m.src,
                    "dst": m.dst,
                    "kind": type(m).__name__,
                    "count": 1,
                    "term": m.term,
                    "dropped": True,
                    "direction": direction,
                }
            )

    def _refresh_gauges(self) -> None:
        m, core = self.metrics, self.core
        m.term.set(core.term)
        m.commit_index.set(core.log.committed)
        m.applied_index.set(self.kv.applied_index)
        m.last_log_index.set(core.log.last_index())
        m.keys.set(len(self.kv))
        tick_s = self.cfg.tick_ms / 1000
        now = time.monotonic()
        for peer in self.cfg.peers():
            pr = core.progress.get(peer)
            if pr is None or pr.match >= core.log.last_index():
                self._caught_up_at[peer] = now
            m.peer_lag_entries.labels(peer).set(core.log.last_index() - pr.match if pr else 0)
            m.peer_lag_seconds.labels(peer).set(now - self._caught_up_at.get(peer, now))
            m.peer_last_contact.labels(peer).set(pr.ticks_since_contact * tick_s if pr else 0)


def _fail(futures: list[asyncio.Future[Any]], error: Exception) -> None:
    for fut in futures:
        if not fut.done():
            fut.set_exception(error)
