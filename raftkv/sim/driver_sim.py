"""The real node driver in a deterministic simulation: RaftGroups on a virtual clock, under faults.

Theory of operation
-------------------
Every node is a real `RaftGroup`, the code a node process runs, on in-memory links (MemoryTransport
behind a seeded latency, latency.py) and an in-memory disk, all on one `VirtualClockLoop`
(virtual_loop.py): a seed takes the same steps at the same virtual instants every time, and
seconds of cluster time pass in a fraction of a second. The disk's blocking work runs on the loop
too (`LoopExecutor`), at once or, on a slow disk, after a virtual delay.

What outlives a crash is a `SimNode`'s: its MemoryStorage (which keeps only what was synced), its
LinkFaults (the network does not heal because a process died) and its disk speed. A crash
abandons the disk work in flight, halts the group where it stands (`RaftGroup.halt`: nothing more
is written or sent) and crashes the storage; a restart builds a new group on what the storage kept.

One seeded RNG drives everything else: the run's settings (pre-vote, check-quorum, how often
snapshots are taken, the latency), a nemesis (partitions, isolating the leader, one-way cuts,
lossy links, crashes of any node or of the leader, slow disks, forced elections), and clients that
write, compare-and-set and read (`group.propose`; `group.read_barrier`, then the local state
machine) through random nodes, recording a history with unknown outcomes. Every node also runs
the real Lessor, and a lease client grants leases and keeps some alive (driver_leases.py).

Checked while it runs: persist before send (persist_before_send.py: each vote and append
acknowledgement is backed by its sender's synced disk), Election Safety and State Machine Safety
(driver_safety.py). At the end the faults stop and every node restarts; within `liveness_s` a
leader known to all must apply a new write on every node. Then every key is read through the
leader (into the history), no lease may have expired before its TTL since the last acknowledged
keep-alive and every lease must expire, every acknowledged write must sit at an index all nodes applied, the
state machines must be equal once the nodes have applied the same log, and the history must be
linearizable (raftkv/check). A failure carries the command that replays it and the run's last
events. An error nobody handled (raised on the loop), or a loop that spins without letting time
pass, fails the run; an error the node's code logged and carried on from is kept in the result,
since whether it mattered is for the checks above to tell.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raftkv.check import Operation, Verdict, check_history
from raftkv.core import Role
from raftkv.kv import Put
from raftkv.node import NodeConfig, NodeError, NoLeaderError, NotAppliedError, OutcomeUnknownError, RaftGroup
from raftkv.node.config import Member
from raftkv.node.lessor import Lessor
from raftkv.node.metrics import NodeMetrics
from raftkv.storage import MemoryStorage, RaftStorage
from raftkv.transport import LinkFaults, MemoryNetwork, Transport

from .driver_leases import TTLS_S, LeaseClient, LeaseLedger, LeaseWatchingKV, await_every_lease_gone
from .driver_safety import ClusterSafety, SafetyObserver
from .invariants import InvariantViolation
from .latency import LatencyTransport
from .persist_before_send import DiskLedger, PromiseCheckingTransport, RecordingStorage
from .runner import map_seeds
from .simulation import LivenessViolation
from .virtual_loop import LoopExecutor, VirtualClockStalled, run_virtual

__all__ = ["DriverSimConfig", "DriverSimResult", "DriverSimulation", "run_driver_seed", "run_driver_seeds"]

NEMESIS_ACTIONS = ("partition", "isolate_leader", "one_way", "lossy_link", "heal", "heal",
                   "crash", "crash_leader", "slow_disk", "force_election")
CLIENT_KINDS = ("write", "write", "cas", "read", "read")
TRACE_LINES, FULL_TRACE_LINES = 150, 20_000


@dataclass(frozen=True)
class DriverSimConfig:
    nodes: int = 3
    clients: int = 3
    keys: int = 2
    fault_s: float = 2.0  # virtual seconds of faults and clients before the cluster heals
    liveness_s: float = 4.0  # after healing, a new write must be applied everywhere within this
    tick_ms: int = 10
    election_timeout_ticks: int = 10
    heartbeat_interval_ticks: int = 2
    op_timeout_s: float = 1.0  # a client gives up on a request after this long
    check_promises: bool = True  # check each vote and acknowledgement against the sender's synced disk
    trace: bool = False  # keep the whole trace, with the cores' own events (replaying one seed)

    def replay_command(self, seed: int) -> str:
        return (f"python -m raftkv.sim --driver --seed {seed} --nodes {self.nodes} "
                f"--fault-ms {round(self.fault_s * 1000)} --trace")


@dataclass
class DriverSimResult:
    seed: int
    config: DriverSimConfig
    violation: str | None = None
    operations: int = 0
    unknown_operations: int = 0
    elections: int = 0
    promises_checked: int = 0  # votes and acknowledgements checked against their sender's synced disk
    leases_granted: int = 0
    keepalives_acknowledged: int = 0
    leases_expired: int = 0
    faults: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # what the node's code logged as an error and survived
    trace: list[str] = field(default_factory=list)
    end_s: float = 0.0
    history_digest: str = ""  # equal for two runs of one seed: they replayed exactly

    @property
    def ok(self) -> bool:
        return self.violation is None

    def replay_command(self) -> str:
        return self.config.replay_command(self.seed)


class SimNode:
    """One node: what survives its crashes (disk, network rules, disk speed) and its current group."""

    def __init__(self, sim: DriverSimulation, node_id: str) -> None:
        self.sim = sim
        self.id = node_id
        self.memory = MemoryStorage()
        self.ledger = DiskLedger(node_id)
        self.faults = LinkFaults(rng=random.Random(f"{sim.seed}/{node_id}/loss"))
        self.disk_delay_s = 0.0
        self.group: RaftGroup | None = None
        self.lessor: Lessor | None = None
        self.starts = 0
        self._executor = LoopExecutor()
        self._transport: Transport | None = None
        self._lessor_task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self.group is not None

    def slow_disk(self, delay_s: float) -> None:
        self.disk_delay_s = self._executor.delay_s = delay_s

    async def start(self) -> None:
        sim, cfg = self.sim, self.sim.cfg
        self.starts += 1
        self._executor = LoopExecutor(self.disk_delay_s)
        peers = [p for p in sim.ids if p != self.id]
        transport: Transport = LatencyTransport(sim.network.transport(self.id, peers, self.faults), sim.rng,
                                                *sim.latency_s)
        storage: RaftStorage = self.memory
        checking = None
        if cfg.check_promises:
            checking = transport = PromiseCheckingTransport(transport, self.ledger, sim.fail)
            storage = RecordingStorage(self.memory, self.ledger)
        metrics = NodeMetrics(self.id)
        observer = SafetyObserver(self.id, metrics, sim.safety, sim.note, trace_core=cfg.trace)
        group = RaftGroup(sim.node_config(self.id), storage, transport, LeaseWatchingKV(sim.leases), metrics,
                          observer, random.Random(f"{sim.seed}/{self.id}/{self.starts}"), executor=self._executor)
        if checking is not None:
            checking.bind(group.core)
        await transport.start(group.deliver)
        await group.start()
        assert group.failed is not None
        group.failed.add_done_callback(self._group_failed)
        # A follower relays keep-alives to the leader's client URL; here there is none, so the
        # lease client asks a leader directly, as a relayed request would reach it.
        lessor = Lessor(group, None, random.Random(f"{sim.seed}/{self.id}/{self.starts}/leases"))
        self._lessor_task = asyncio.get_running_loop().create_task(lessor.run())
        self.group, self.lessor, self._transport = group, lessor, transport

    def _group_failed(self, failed: asyncio.Future[BaseException]) -> None:
        """A task of the group died (a bug): say so with its cause, rather than let the run end in
        the liveness check that a dead group makes fail."""
        if not failed.cancelled():
            self.sim.fail(f"{self.id}'s group failed: {failed.result()!r}")

    async def crash(self) -> None:
        """kill -9: the disk work in flight never completes, and only what was synced survives."""
        group, lessor, transport, self.group, self.lessor = self.group, self.lessor, self._transport, None, None
        assert group is not None and lessor is not None and transport is not None
        self._lessor_task.cancel()
        await asyncio.gather(self._lessor_task, return_exceptions=True)
        await lessor.stop()
        self._executor.abandon()
        await group.halt()
        await transport.close()
        self.memory.crash()


class DriverSimulation:
    def __init__(self, seed: int, cfg: DriverSimConfig) -> None:
        self.seed = seed
        self.cfg = cfg
        self.rng = random.Random(f"{seed}/driver")
        self.ids = [f"n{i + 1}" for i in range(cfg.nodes)]
        self.network = MemoryNetwork()
        self.safety = ClusterSafety(self.fail)
        self.leases = LeaseLedger()
        self.pre_vote = self.rng.choice((True, False))
        self.check_quorum = self.rng.choice((True, False))
        self.snapshot_every = self.rng.choice((0, 0, 15, 50))
        self.latency_s = self.rng.choice(((0.0, 0.0), (0.0005, 0.002), (0.001, 0.015)))
        self.nodes = {node: SimNode(self, node) for node in self.ids}
        self.history: list[Operation] = []
        self.result = DriverSimResult(seed, cfg)
        self._trace: deque[str] = deque(maxlen=FULL_TRACE_LINES if cfg.trace else TRACE_LINES)
        self._failed = asyncio.Event()
        self._clients_on = True
        self._faults_on = True
        self._ops = 0
        self._workers: list[asyncio.Task[None]] = []  # the clients and the nemesis
        self._background: set[asyncio.Task[Any]] = set()  # pending restarts, forced elections

    def node_config(self, node: str) -> NodeConfig:
        cfg = self.cfg
        return NodeConfig(node_id=node, data_dir=Path("sim") / node,
                          members={n: Member(n, "127.0.0.1", 1, 2) for n in self.ids}, tick_ms=cfg.tick_ms,
                          election_timeout_ticks=cfg.election_timeout_ticks,
                          heartbeat_interval_ticks=cfg.heartbeat_interval_ticks, pre_vote=self.pre_vote,
                          check_quorum=self.check_quorum, snapshot_every=self.snapshot_every,
                          snapshot_retain_entries=3, proposal_timeout_s=cfg.op_timeout_s,
                          read_timeout_s=cfg.op_timeout_s)

    # ---- the run ------------------------------------------------------------------------------

    def run(self) -> DriverSimResult:
        errors = _ErrorLogs(self)
        logging.getLogger("raftkv").addHandler(errors)
        try:
            run_virtual(self._run())
        except VirtualClockStalled as stalled:
            self.result.violation = self.result.violation or f"livelock: {stalled} (a hot loop on a real clock)"
        finally:
            logging.getLogger("raftkv").removeHandler(errors)
        r = self.result
        r.operations = len(self.history)
        r.unknown_operations = sum(op.outcome == "unknown" for op in self.history)
        r.elections = len(self.safety.leaders_by_term)
        r.promises_checked = sum(n.ledger.checked.total() for n in self.nodes.values())
        r.leases_granted, r.leases_expired = len(self.leases.granted), len(self.leases.gone_at)
        r.keepalives_acknowledged = self.leases.keepalives_acknowledged
        r.trace = list(self._trace)
        r.history_digest = hashlib.blake2b("\n".join(op.describe() for op in self.history).encode()).hexdigest()
        return r

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _, context: self.fail(
            f"unhandled error on the loop: {context.get('message')} {context.get('exception')!r}"))
        low_ms, high_ms = (s * 1000 for s in self.latency_s)
        self.note(f"pre-vote {self.pre_vote}, check-quorum {self.check_quorum}, snapshot every "
                  f"{self.snapshot_every or 'never'}, latency {low_ms:g}-{high_ms:g} ms")
        try:
            for node in self.nodes.values():
                await node.start()
            scenario = loop.create_task(self._scenario())
            failed = loop.create_task(self._failed.wait())
            await asyncio.wait({scenario, failed}, return_when=asyncio.FIRST_COMPLETED)
            scenario.cancel()
            failed.cancel()
            outcome, _ = await asyncio.gather(scenario, failed, return_exceptions=True)
            if isinstance(outcome, (InvariantViolation, LivenessViolation)):
                self.fail(f"{type(outcome).__name__}: {outcome}")
            elif isinstance(outcome, Exception):
                raise outcome
        finally:
            self.result.end_s = loop.time()
            for task in [*self._workers, *self._background]:
                task.cancel()
            await asyncio.gather(*self._workers, *self._background, return_exceptions=True)
            for node in self.nodes.values():
                if node.running:
                    await node.crash()

    async def _scenario(self) -> None:
        clients = [asyncio.create_task(self._client(c)) for c in range(self.cfg.clients)]
        lease_client = LeaseClient(self.leases, random.Random(f"{self.seed}/leases"), self._lessors, self.note)
        clients.append(asyncio.create_task(lease_client.run(lambda: self._faults_on)))
        nemesis = asyncio.create_task(self._nemesis())
        self._workers = [*clients, nemesis]
        await asyncio.sleep(self.cfg.fault_s)
        self._faults_on = False
        await nemesis  # lets a crash in progress finish: cut short, it would leave a node half dead
        await self._heal()
        leader = await self._await_liveness()
        self._clients_on = False
        await asyncio.gather(*clients)
        await await_every_lease_gone(self._groups, self.leases, max(TTLS_S) + self.cfg.liveness_s)
        await self._read_every_key(leader)
        await self._await_same_log()
        self.safety.check_acknowledged(
            [op.value for op in self.history if op.outcome == "ok" and op.kind != "read" and op.result is not False],
            {n.id: n.group.kv.applied_index for n in self.nodes.values() if n.group is not None})
        self._check_linearizable()

    def fail(self, why: str) -> None:
        if self.result.violation is None:
            self.result.violation = why
            self.note(f"VIOLATION: {why.splitlines()[0]}")
            self._failed.set()

    def note(self, text: str) -> None:
        self._trace.append(f"t={asyncio.get_running_loop().time():8.4f}s {text}")

    def _fault(self, text: str) -> None:
        self.result.faults.append(f"t={asyncio.get_running_loop().time():.3f}s {text}")
        self.note(text)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # ---- clients ------------------------------------------------------------------------------

    async def _client(self, client: int) -> None:
        rng = self.rng
        while self._clients_on:
            await asyncio.sleep(rng.uniform(0.0, 0.02))
            if self._clients_on:
                await self._one_request(client, rng.choice(CLIENT_KINDS), f"k{rng.randrange(self.cfg.keys)}",
                                        rng.choice(self.ids))

    async def _one_request(self, client: int | str, kind: str, key: str, node: str) -> None:
        self._ops += 1
        value = f"c{client}.{self._ops}" if kind != "read" else None
        expected = self._expected_value(key) if kind == "cas" else None
        loop = asyncio.get_running_loop()
        invoked = loop.time()

        def record(outcome: str, result: Any = None) -> None:
            self.history.append(Operation(client=client, kind=kind, key=key,  # type: ignore[arg-type]
                                          invoke_time=invoked, complete_time=loop.time(),
                                          outcome=outcome, value=value, expected=expected,  # type: ignore[arg-type]
                                          result=result))

        group = self.nodes[node].group
        if group is None:
            record("fail")  # connection refused: nothing was asked
            return
        try:
            if kind == "read":
                await asyncio.wait_for(group.read_barrier(), self.cfg.op_timeout_s)
                found = group.kv.get(key)
                record("ok", None if found is None else found.value)
                return
            command = Put(key, value) if kind == "write" else (
                Put(key, value, prev_exist=False) if expected is None else Put(key, value, prev_value=expected))
            answer = await asyncio.wait_for(group.propose(command), self.cfg.op_timeout_s)
        except (NoLeaderError, NotAppliedError):
            record("fail")
            return
        except (OutcomeUnknownError, TimeoutError):
            record("unknown" if kind != "read" else "fail")
            return
        if answer.get("ok"):
            record("ok", True if kind == "cas" else None)
        elif kind == "cas" and answer.get("error") == "precondition_failed":
            record("ok", False)
        else:
            self.fail(f"{node} answered a {kind} of {key} with {answer}")

    def _expected_value(self, key: str) -> Any:
        """A value the key may hold: one recently written or read, or absent."""
        seen = [op.result if op.kind == "read" else op.value for op in self.history[-20:] if op.key == key]
        return self.rng.choice([*seen, None])

    # ---- faults -------------------------------------------------------------------------------

    async def _nemesis(self) -> None:
        rng = self.rng
        while self._faults_on:
            await asyncio.sleep(rng.uniform(0.08, 0.4))
            if self._faults_on:
                await self._inflict(rng.choice(NEMESIS_ACTIONS))

    async def _inflict(self, action: str) -> None:
        rng, ids = self.rng, self.ids
        leader = self._leader()
        if action == "partition":
            shuffled = rng.sample(ids, len(ids))
            cut = rng.randint(1, len(ids) // 2)
            side, rest = shuffled[:cut], shuffled[cut:]
            for a in side:
                self.nodes[a].faults.partition(rest)
            for b in rest:
                self.nodes[b].faults.partition(side)
            self._fault(f"partition {side} | {rest}")
        elif action == "isolate_leader" and leader is not None:
            self.nodes[leader].faults.isolate()
            self._fault(f"isolate the leader {leader}")
        elif action == "one_way":
            a, b = rng.sample(ids, 2)
            self.nodes[a].faults.cut_outbound(b)
            self._fault(f"one-way cut {a} -> {b}")
        elif action == "lossy_link":
            node, percent = rng.choice(ids), rng.choice((10, 30, 60))
            self.nodes[node].faults.set_loss(percent)
            self._fault(f"{node} loses {percent}% of what it sends")
        elif action == "heal":
            for n in self.nodes.values():
                n.faults.clear()
            self._fault("heal the network")
        elif action in ("crash", "crash_leader"):
            victim = leader if action == "crash_leader" and leader is not None else rng.choice(ids)
            if self.nodes[victim].running:
                down_s = rng.uniform(0.05, 0.6)
                self._fault(f"crash {victim} (back in {down_s * 1000:.0f} ms)")
                await self.nodes[victim].crash()
                self._spawn(self._restart_later(victim, down_s))
        elif action == "slow_disk":
            node, delay_s = rng.choice(ids), rng.uniform(0.002, 0.04)
            self.nodes[node].slow_disk(delay_s)
            self._fault(f"slow disk on {node} ({delay_s * 1000:.1f} ms per fsync)")
        elif action == "force_election":
            group = self.nodes[rng.choice(ids)].group
            if group is not None and group.id != leader:
                self._fault(f"force an election on {group.id}")
                self._spawn(self._force_election(group))

    async def _restart_later(self, node: str, delay_s: float) -> None:
        await asyncio.sleep(delay_s)
        if not self.nodes[node].running:
            await self.nodes[node].start()
            self.note(f"restart {node} from its disk")

    @staticmethod
    async def _force_election(group: RaftGroup) -> None:
        with contextlib.suppress(NodeError):  # refused (say, a transfer already under way): nothing happened
            await group.force_election()

    async def _heal(self) -> None:
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        for node in self.nodes.values():
            node.faults.clear()
            node.slow_disk(0.0)
            if not node.running:
                await node.start()
        self.note("faults stop: network healed, disks fast, every node running")

    def _leader(self) -> str | None:
        leaders = [n for n in self.nodes.values() if n.group is not None and n.group.core.role is Role.LEADER]
        return max(leaders, key=lambda n: n.group.core.term).id if leaders else None  # type: ignore[union-attr]

    # ---- the end ------------------------------------------------------------------------------

    def _lessors(self) -> dict[str, Lessor]:
        return {n.id: n.lessor for n in self.nodes.values() if n.lessor is not None}

    def _groups(self) -> list[RaftGroup]:
        return [n.group for n in self.nodes.values() if n.group is not None]

    async def _await_liveness(self) -> RaftGroup:
        """A leader every node names applies a new write on every node, within `liveness_s`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.cfg.liveness_s
        while loop.time() < deadline:
            leader = self._leader()
            if leader is not None and all(g.leader_id == leader for g in self._groups()):
                group = self.nodes[leader].group
                assert group is not None
                try:
                    await asyncio.wait_for(group.propose(Put("probe", loop.time())), self.cfg.op_timeout_s)
                    index = group.kv.applied_index
                    while loop.time() < deadline and any(g.kv.applied_index < index for g in self._groups()):
                        await asyncio.sleep(0.01)
                    if all(g.kv.applied_index >= index for g in self._groups()):
                        self.note(f"live: {leader} leads, and its write at {index} is applied on every node")
                        return group
                except (NodeError, TimeoutError):
                    pass  # try again, with whoever leads by then
            await asyncio.sleep(0.02)
        states = {n.id: (n.group.core.role.value, n.group.core.term, n.group.leader_id, n.group.kv.applied_index)
                  for n in self.nodes.values() if n.group is not None}
        raise LivenessViolation(f"no leader had a new write applied on every node within {self.cfg.liveness_s} s "
                                f"of healing: {states}")

    async def _read_every_key(self, leader: RaftGroup) -> None:
        """One last read of each key, so a lost write that was the last to its key shows too."""
        for k in range(self.cfg.keys):
            await self._one_request("final", "read", f"k{k}", leader.id)

    async def _await_same_log(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.cfg.liveness_s
        while len({g.kv.applied_index for g in self._groups()}) > 1 and loop.time() < deadline:
            await asyncio.sleep(0.01)
        applied = {g.id: g.kv.applied_index for g in self._groups()}
        if len(set(applied.values())) > 1:
            raise LivenessViolation(f"the nodes did not reach the same applied index: {applied}")
        digests = {g.id: g.kv.digest() for g in self._groups()}
        if len(set(digests.values())) > 1:
            raise InvariantViolation(f"the state machines differ at index {applied}: {digests}")

    def _check_linearizable(self) -> None:
        result = check_history(self.history, timeout_s=20.0)
        if result.verdict is Verdict.ILLEGAL:
            raise InvariantViolation("the client history is not linearizable:\n" + result.explain())


class _ErrorLogs(logging.Handler):
    """Collects the errors the node's code logged and carried on from (a failed snapshot is retried;
    a group whose loop died stops making progress, which the liveness check catches)."""

    def __init__(self, sim: DriverSimulation) -> None:
        super().__init__(logging.ERROR)
        self._sim = sim

    def emit(self, record: logging.LogRecord) -> None:
        error = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            error += f": {type(record.exc_info[1]).__name__}: {record.exc_info[1]}"
        self._sim.result.errors.append(error)
        self._sim.note(f"logged error: {error}")


def run_driver_seed(seed: int, cfg: DriverSimConfig | None = None) -> DriverSimResult:
    return DriverSimulation(seed, cfg or DriverSimConfig()).run()


def _run_quietly(job: tuple[int, DriverSimConfig]) -> DriverSimResult:
    result = run_driver_seed(*job)
    if result.ok:
        result.trace = []
    return result


def run_driver_seeds(seeds: Iterable[int], cfg: DriverSimConfig,
                     workers: int | None = None) -> Iterator[DriverSimResult]:
    """Each seed in its own run, spread over worker processes (one per core by default)."""
    yield from map_seeds(_run_quietly, [(seed, cfg) for seed in seeds], workers, 2)
