"""Deterministic simulation of a whole cluster under faults, checked after every step.

Theory of operation
-------------------
Everything happens on one virtual clock (milliseconds) through one event queue ordered by
(time, sequence number). Nodes tick every `tick_ms`; messages are delivered after random delays
(see network.py); simulated clients issue writes, compare-and-sets and ReadIndex reads against
random nodes and record what they saw; a nemesis partitions the network (symmetric, one-way, a
bridge node), crashes and restarts nodes (at random, or aimed: a leader just elected, a voter
the moment its vote leaves, an isolated leader's successor the moment the network heals) and
makes disks slow. A slow disk splits a Ready in two
(persisted later, then finished): meanwhile the node is busy and queues its inputs, and a crash
in between loses the unsynced writes, as on a real machine.

The nemesis also changes the membership through the leader, one server at a time (see
membership.py): it adds learners (new servers with empty disks, or a removed server's name back
under a new id), promotes them, removes voters and the leader itself, and sometimes asks for a
second change at once, which a correct leader refuses until the first commits. A removed server
keeps running, and so keeps interfering, until its removal has committed and the nemesis stops
it for good. Nodes are told apart by id, so the safety checks span every configuration and every
incarnation, including servers that left.

Every random choice comes from RNGs derived from the seed, so a seed replays exactly: the same
deliveries, the same crash points, the same violation. Safety (invariants.py) is checked at every
Ready; at the end the faults stop, every node restarts, the leader brings the configuration back
to enough voters for a healthy cluster, and liveness is required of that final configuration: a
leader known by every member, and a new proposal applied on every member, within `liveness_ms`.
Finally the client history must be linearizable and every member's state machine identical.
"""

from __future__ import annotations

import heapq
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from raftkv.check import Operation, Verdict, check_history
from raftkv.core import (
    ConfChange,
    ConfChangeKind,
    Config,
    EntryKind,
    Message,
    NotLeaderError,
    ProposalDroppedError,
    RaftCore,
    Ready,
    Role,
    TraceEvent,
    VoteResponse,
)

from .invariants import InvariantViolation, SafetyMonitor
from .membership import Roster, describe, plan_change, restoring_change
from .network import LinkConditions, VirtualNetwork
from .replica import Applied, CoreFactory, Replica, encode_command

(TICK, DELIVER, PERSISTED, CLIENT, OP_TIMEOUT, NEMESIS, CRASH, RESTART, HEAL, CHECK, MEMBERSHIP,
 HEAL_AND_CRASH_LEADER) = range(12)

# Far more than a run writes (about 1,000 to 3,000 lines), yet bounded.
REPLAY_TRACE_LINES = 20_000


class LivenessViolation(AssertionError):
    pass


@dataclass(frozen=True)
class SimConfig:
    nodes: int = 3
    clients: int = 4
    keys: int = 2
    fault_ms: int = 3000
    liveness_ms: int = 4000
    tick_ms: int = 10
    election_timeout_ticks: int = 10
    heartbeat_interval_ticks: int = 2
    op_timeout_ms: int = 500
    nemesis_interval_ms: tuple[int, int] = (80, 400)
    faults: bool = True
    trace: bool = False  # also record the cores' own trace events (slower; used to replay a seed)


@dataclass
class SimResult:
    seed: int
    config: SimConfig
    violation: str | None = None
    operations: int = 0
    unknown_operations: int = 0
    elections: int = 0
    membership_changes: int = 0  # configurations committed
    faults: list[str] = field(default_factory=list)
    trace: list[str] = field(default_factory=list)
    end_ms: int = 0
    lin_verdict: str = "ok"

    @property
    def ok(self) -> bool:
        return self.violation is None

    def replay_command(self) -> str:
        return f"python -m raftkv.sim --seed {self.seed} --nodes {self.config.nodes} --trace"


@dataclass
class _PendingOp:
    op_id: str
    client: int
    kind: str
    key: str
    value: Any
    expected: Any
    node: str
    invoke_ms: int
    read_index: int | None = None


class Simulation:
    def __init__(self, seed: int, cfg: SimConfig, core_factory: CoreFactory = RaftCore) -> None:
        self.seed = seed
        self.cfg = cfg
        self.rng = random.Random(f"{seed}/sim")
        self.now = 0
        founders = tuple(f"n{i + 1}" for i in range(cfg.nodes))
        self.ids: list[str] = []  # every server process not stopped for good, members or not
        self.stopped: set[str] = set()  # servers that left the cluster and were stopped for good
        self.roster = Roster(founders)
        # During faults the nemesis may remove up to two voters (a 3-node cluster may shrink to a
        # single voter); the end of a run restores three voters before checking liveness.
        self.min_voters_during_faults = max(1, cfg.nodes - 2)
        self.min_voters_at_end = min(3, cfg.nodes)
        self.net = VirtualNetwork(random.Random(f"{seed}/net"), self._link_conditions())
        self.monitor = SafetyMonitor()
        self._snapshot_every = self.rng.choice([0, 0, 15, 40]) if cfg.faults else 0
        # Tiny batches split a new leader's catch-up across many requests, which opens the windows
        # that commit-rule bugs (the paper's figure 8) need.
        self._core_settings = {
            "election_timeout_ticks": cfg.election_timeout_ticks,
            "heartbeat_interval_ticks": cfg.heartbeat_interval_ticks,
            "max_entries_per_append": self.rng.choice([1, 2, 16]),
            "max_inflight_appends": self.rng.choice([1, 8]),
        }
        self._core_factory = core_factory
        self._listener = self._on_core_event if cfg.trace else None
        self.replicas: dict[str, Replica] = {}
        self.disk_delay_ms: dict[str, int] = {}
        self._busy: dict[str, Ready | None] = {}
        self._inbox: dict[str, list[Callable[[RaftCore], None]]] = {}
        self._waiting_reads: dict[str, list[_PendingOp]] = {}
        for node in founders:
            self._add_server(node)
        self._queue: list[tuple[int, int, int, Any]] = []
        self._seq = 0
        self.history: list[Operation] = []
        self._pending: dict[str, _PendingOp] = {}
        self._client_guess: dict[int, str | None] = dict.fromkeys(range(cfg.clients))
        self._op_counter = 0
        self._clients_on = True
        self._probe: tuple[str, int, int] | None = None  # (leader, term, index) of the liveness probe
        self._final_members: tuple[str, ...] = ()
        self._live_since: int | None = None
        self._kill_next_leader = False
        self._crash_next_voter = False
        self._cut_off_leaving_leaders = False
        self.result = SimResult(seed, cfg)
        # A replay (trace=True) keeps the whole run, membership changes included; a sweep keeps
        # the last lines for the report of a failure.
        self._trace: deque[str] = deque(maxlen=REPLAY_TRACE_LINES if cfg.trace else 120)

    # ---- driving -----------------------------------------------------------------------------

    def run(self) -> SimResult:
        cfg = self.cfg
        for node in self.ids:
            self._at(self.rng.randrange(cfg.tick_ms), TICK, node)
        for c in range(cfg.clients):
            self._at(self.rng.randrange(50), CLIENT, c)
        if cfg.faults:
            self._at(self.rng.randint(50, 300), NEMESIS, None)
        self._at(cfg.fault_ms, HEAL, None)
        deadline = cfg.fault_ms + cfg.liveness_ms
        try:
            while self._queue:
                self.now, _, kind, arg = heapq.heappop(self._queue)
                if self.now > deadline:
                    raise LivenessViolation(self._liveness_failure())
                self._dispatch(kind, arg)
                if self._live_since is not None and not self._pending and self.now - self._live_since > 300:
                    break
            self._check_convergence()
            self._check_linearizability()
        except (InvariantViolation, LivenessViolation) as e:
            self.result.violation = f"{type(e).__name__}: {e}"
        self.result.end_ms = self.now
        self.result.operations = len(self.history)
        self.result.unknown_operations = sum(op.outcome == "unknown" for op in self.history)
        self.result.elections = len(self.monitor.leaders_by_term)
        self.result.trace = list(self._trace)
        return self.result

    def _at(self, when: int, kind: int, arg: Any) -> None:
        self._seq += 1
        heapq.heappush(self._queue, (when, self._seq, kind, arg))

    def _dispatch(self, kind: int, arg: Any) -> None:
        if kind == TICK:
            if arg not in self.stopped:
                self._input(arg, RaftCore.tick)
                self._at(self.now + self.cfg.tick_ms, TICK, arg)
        elif kind == DELIVER:
            if self.net.can_reach(arg.src, arg.dst):
                self.net.delivered += 1
                self._input(arg.dst, lambda core, m=arg: core.step(m))
        elif kind == PERSISTED:
            self._persisted(*arg)
        elif kind == CLIENT:
            self._client_issue(arg)
        elif kind == OP_TIMEOUT:
            self._op_timeout(arg)
        elif kind == NEMESIS:
            self._nemesis()
        elif kind == CRASH:
            node, down_ms = arg
            if self.replicas[node].alive:
                self._crash(node)
                self._at(self.now + down_ms, RESTART, node)
        elif kind == RESTART:
            self._restart(arg)
        elif kind == HEAL:
            self._heal()
        elif kind == HEAL_AND_CRASH_LEADER:
            self._heal_and_crash_leader()
        elif kind == CHECK:
            self._liveness_check()
        elif kind == MEMBERSHIP:
            self._change_membership()

    # ---- nodes -------------------------------------------------------------------------------

    def _input(self, node: str, fn: Callable[[RaftCore], None]) -> None:
        r = self.replicas[node]
        if r.core is None:
            return
        if self._busy[node] is not None:
            self._inbox[node].append(fn)
            return
        fn(r.core)
        self._drain(node)

    def _drain(self, node: str) -> None:
        r = self.replicas[node]
        while r.core is not None and self._busy[node] is None and r.core.has_ready():
            rd = r.core.ready()
            self.monitor.before_persist(node, r.core, rd)
            if rd.soft_state:
                if self.cfg.trace:
                    self._note(f"{node} is {rd.soft_state.role.value} in term {rd.soft_state.term}")
                if self._kill_next_leader and rd.soft_state.role is Role.LEADER and self.now < self.cfg.fault_ms:
                    # Jepsen's favourite: kill a leader moments after it wins, mid catch-up.
                    self._kill_next_leader = False
                    self._at(self.now + self.rng.randint(1, 12), CRASH, (node, self.rng.randint(50, 600)))
            self._send(rd.early_messages)  # they vouch for nothing on this disk: before the write
            delay = self.disk_delay_ms[node]
            if delay and rd.must_sync():
                self._busy[node] = rd
                self._at(self.now + delay, PERSISTED, (node, rd))
                return
            r.persist(rd)
            self._finish(node, rd)

    def _persisted(self, node: str, rd: Ready) -> None:
        r = self.replicas[node]
        if self._busy[node] is not rd or r.core is None:
            return  # crashed while the write was in flight: it never reached the disk
        r.persist(rd)
        self._busy[node] = None
        self._finish(node, rd)
        inputs, self._inbox[node] = self._inbox[node], []
        for fn in inputs:
            if r.core is None:
                break  # an input stopped this very server (a membership change can)
            fn(r.core)
        self._drain(node)

    def _finish(self, node: str, rd: Ready) -> None:
        applied = self.replicas[node].finish(rd)
        self._send(rd.messages)
        if self._crash_next_voter and self.now < self.cfg.fault_ms and any(
                type(m) is VoteResponse and m.granted and not m.pre_vote for m in rd.messages):
            # Its vote has left; it reboots at once, and its vote is only as good as its disk:
            # asked again in the same term, it must not vote for another candidate.
            self._crash_next_voter = False
            self._at(self.now + self.rng.randint(0, 2), CRASH, (node, self.rng.randint(1, 5)))
        for entry, outcome in applied.results:
            self.monitor.on_apply(node, entry)
            if entry.kind is EntryKind.CONF_CHANGE:
                self._on_conf_applied(node, entry.index, ConfChange.decode(entry.data))
            if outcome is not None:
                op = self._pending.get(outcome[0])
                if op is not None and op.node == node:
                    self._complete(op, "ok", outcome[1])
        self._answer_reads(node, applied)

    def _answer_reads(self, node: str, applied: Applied) -> None:
        r = self.replicas[node]
        for rs in applied.read_states:
            op = self._pending.get(rs.ctx.decode())
            if op is None or op.node != node:
                continue
            if not rs.ok:
                self._complete(op, "fail", None)
            else:
                op.read_index = rs.index
                self._waiting_reads[node].append(op)
        if self._waiting_reads[node]:
            still = []
            for op in self._waiting_reads[node]:
                if op.op_id not in self._pending:
                    continue
                if r.sm.applied >= (op.read_index or 0):
                    self._complete(op, "ok", r.sm.values.get(op.key))
                else:
                    still.append(op)
            self._waiting_reads[node] = still

    def _send(self, messages: list[Message]) -> None:
        for m in messages:
            for delay in self.net.delays_for(m.src, m.dst):
                self._at(self.now + delay, DELIVER, m)

    def _crash(self, node: str) -> None:
        self.replicas[node].crash()
        self._busy[node] = None
        self._inbox[node] = []
        self._waiting_reads[node] = []
        self._fault(f"crash {node}")

    def _restart(self, node: str) -> None:
        if not self.replicas[node].alive and node not in self.stopped:
            self.replicas[node].start()
            self._note(f"restart {node} from its disk")

    def _add_server(self, node: str) -> None:
        """Boot a server with an empty disk. Like every server it knows the founding configuration
        (the configuration before index 1); its own place in the cluster it learns from the log."""
        config = Config(node, voters=self.roster.founders, **self._core_settings)
        self.replicas[node] = Replica(config, self.seed, self._core_factory, self._listener, self._snapshot_every)
        self.ids.append(node)
        self.disk_delay_ms[node] = 0
        self._busy[node] = None
        self._inbox[node] = []
        self._waiting_reads[node] = []

    def _start_incarnation(self, node: str) -> None:
        """Start the server a membership change just added, on a machine of its own or on the one
        an earlier incarnation of its name left (stopped for good first: its disk is wiped)."""
        previous = self.roster.joined(node)
        if previous is not None and previous not in self.stopped:
            self._stop_for_good(previous)
        self._add_server(node)
        self._at(self.now + self.rng.randrange(self.cfg.tick_ms), TICK, node)
        self._note(f"{node} starts with an empty disk" + (f", a new incarnation of {previous}" if previous else ""))

    def _stop_for_good(self, node: str) -> None:
        """A server whose removal committed is shut down and its disk discarded. Messages it sent
        may still arrive; being addressed by its id, they can never count for a later incarnation."""
        self.replicas[node].crash()
        self.ids.remove(node)
        self.stopped.add(node)
        self._busy[node] = None
        self._inbox[node] = []
        self._waiting_reads[node] = []
        self._fault(f"stop {node} for good (it left the cluster)")

    def _on_conf_applied(self, node: str, index: int, change: ConfChange) -> None:
        conf = self.roster.on_applied(index, change)
        if conf is None:
            return
        self.result.membership_changes += 1
        learners = f", learners {', '.join(conf.learners)}" if conf.learners else ""
        self._note(f"committed at {index}: {describe(change)}; voters {', '.join(conf.voters)}{learners}")
        leaving = change.kind is ConfChangeKind.REMOVE and change.node_id == node
        if self._cut_off_leaving_leaders and leaving and self.now < self.cfg.fault_ms:
            # The first server to apply its own removal is the leader that committed it. Cut off
            # now, it takes the commit index along: the voters that remain know of the change only
            # from their logs, and must elect a leader among themselves.
            self.net.cut([node], [n for n in self.ids if n != node])
            self._fault(f"cut off {node} the moment its own removal commits (entry {index})")

    # ---- clients -----------------------------------------------------------------------------

    def _client_issue(self, client: int) -> None:
        if not self._clients_on:
            return
        rng = self.rng
        kind = rng.choice(("write", "write", "cas", "read", "read"))
        key = f"k{rng.randrange(self.cfg.keys)}"
        guess = self._client_guess[client]
        node = guess if guess is not None and rng.random() < 0.9 else rng.choice(self.ids)
        self._op_counter += 1
        op_id = f"c{client}.{self._op_counter}"
        value = op_id if kind != "read" else None
        expected = None
        if kind == "cas":
            seen = [o.result if o.kind == "read" else o.value for o in self.history[-20:] if o.key == key]
            expected = rng.choice([*seen, None]) if seen else None
        op = _PendingOp(op_id, client, kind, key, value, expected, node, self.now)
        self._pending[op_id] = op
        self._at(self.now + self.cfg.op_timeout_ms, OP_TIMEOUT, op_id)
        if not self.replicas[node].alive:
            self._complete(op, "fail", None)  # connection refused: nothing happened
            return
        if kind == "read":
            self._input(node, lambda core: core.read_index(op_id.encode()))
            return
        data = encode_command(op_id, kind, key, value, expected)

        def submit(core: RaftCore) -> None:
            if op_id not in self._pending:
                return
            try:
                core.propose([data])
            except NotLeaderError as e:
                self._complete(op, "fail", None)
                self._client_guess[client] = e.leader_id  # like a redirect: try the leader next
            except ProposalDroppedError:
                self._complete(op, "fail", None)

        self._input(node, submit)

    def _op_timeout(self, op_id: str) -> None:
        op = self._pending.get(op_id)
        if op is not None:
            # A write may still commit later; a read that never answered had no effect.
            self._complete(op, "unknown" if op.kind != "read" else "fail", None)

    def _complete(self, op: _PendingOp, outcome: str, result: Any) -> None:
        del self._pending[op.op_id]
        if outcome != "ok":
            self._client_guess[op.client] = None
        elif op.kind != "read":
            self._client_guess[op.client] = op.node
        self.history.append(
            Operation(
                client=op.client,
                kind=op.kind,  # type: ignore[arg-type]
                key=op.key,
                invoke_time=float(op.invoke_ms),
                complete_time=None if outcome == "unknown" else float(self.now),
                outcome=outcome,  # type: ignore[arg-type]
                value=op.value,
                expected=op.expected,
                result=result,
            )
        )
        self._at(self.now + self.rng.randint(0, 20), CLIENT, op.client)

    # ---- nemesis -----------------------------------------------------------------------------

    def _nemesis(self) -> None:
        if self.now >= self.cfg.fault_ms:
            return
        rng, ids = self.rng, self.ids
        leader = self._leader()
        action = rng.choice(
            (
                "split",
                "isolate_leader",
                "one_way",
                "bridge",
                "heal",
                "crash",
                "crash_leader",
                "kill_new_leader",
                "crash_next_voter",
                "slow_disk",
                "heal",
                "membership",
                "membership",
                "membership",
                "cut_off_leaving_leaders",
                "stop_left",
            )
        )
        if action == "split" and len(ids) >= 2:
            shuffled = rng.sample(ids, len(ids))
            cut = rng.randint(1, len(ids) // 2)
            self.net.cut(shuffled[:cut], shuffled[cut:])
            self._fault(f"partition {shuffled[:cut]} | {shuffled[cut:]}")
        elif action == "isolate_leader" and leader:
            self.net.cut([leader], [n for n in ids if n != leader])
            self._fault(f"isolate leader {leader}")
            if rng.random() < 0.5:
                self._at(self.now + rng.randint(100, 600), HEAL_AND_CRASH_LEADER, None)
        elif action == "one_way" and len(ids) >= 2:
            a, b = rng.sample(ids, 2)
            self.net.cut([a], [b], one_way=True)
            self._fault(f"one-way cut {a} -> {b}")
        elif action == "bridge" and len(ids) >= 3:
            bridge, *rest = rng.sample(ids, len(ids))
            half = len(rest) // 2
            self.net.cut(rest[:half], rest[half:])
            self._fault(f"bridge {bridge} between {rest[:half]} and {rest[half:]}")
        elif action == "heal":
            self.net.heal()
            self._fault("heal network")

        elif action in ("crash", "crash_leader"):
            victim = leader if action == "crash_leader" and leader else rng.choice(ids)
            if self.replicas[victim].alive:
                self._crash(victim)
                self._at(self.now + rng.randint(50, 600), RESTART, victim)
        elif action == "cut_off_leaving_leaders":
            self._cut_off_leaving_leaders = True
            self._fault("from now on, a leader that commits its own removal is cut off at once")
        elif action == "kill_new_leader":
            self._kill_next_leader = True
            self._fault("will kill the next leader right after it is elected")
        elif action == "crash_next_voter":
            self._crash_next_voter = True
            self._fault("will reboot the next node that grants a vote, right after its vote leaves")
        elif action == "slow_disk":
            node = rng.choice(ids)
            self.disk_delay_ms[node] = rng.randint(2, 40)
            self._fault(f"slow disk on {node} ({self.disk_delay_ms[node]} ms per sync)")
        elif action == "membership":
            self._change_membership()
            if rng.random() < 0.5:
                # A second change right behind the first: a correct leader refuses it until the
                # first has committed.
                self._at(self.now + rng.randint(1, 40), MEMBERSHIP, None)
        elif action == "stop_left":
            left = [n for n in ids if n in self.roster.left]
            if left:
                self._stop_for_good(rng.choice(left))
        self._at(self.now + rng.randint(*self.cfg.nemesis_interval_ms), NEMESIS, None)

    def _heal_and_crash_leader(self) -> None:
        """After an isolated leader was replaced: heal, and crash its successor at once. The
        election that follows is between the old leader, whose log grew long and stale while it
        was cut off (clients kept writing to it), and the nodes that moved on without it."""
        leader = self._leader()
        if self.now >= self.cfg.fault_ms or leader is None or not self.replicas[leader].alive:
            return
        self.net.heal()
        self._crash(leader)
        self._at(self.now + self.rng.randint(50, 600), RESTART, leader)
        self._fault(f"heal network, and crash leader {leader} at once")

    def _change_membership(self) -> None:
        leader = self._leader()
        if leader is not None and self.now < self.cfg.fault_ms:
            self._input(leader, self._propose_random_change)

    def _propose_random_change(self, core: RaftCore) -> None:
        if core.role is Role.LEADER:
            change = plan_change(self.rng, self.roster, core, self.min_voters_during_faults)
            if change is not None:
                self._propose_change(core, change, self._fault)

    def _propose_change(self, core: RaftCore, change: ConfChange, record: Callable[[str], None]) -> None:
        try:
            core.propose_conf_change(change)
        except (NotLeaderError, ProposalDroppedError) as e:
            self._note(f"{core.id} refuses to {describe(change)}: {e}")
            return
        record(f"{core.id} proposes to {describe(change)}")
        if change.kind is ConfChangeKind.ADD_LEARNER:
            self._start_incarnation(change.node_id)

    def _fault(self, text: str) -> None:
        self.result.faults.append(f"t={self.now}ms {text}")
        self._note(text)

    def _link_conditions(self) -> LinkConditions:
        if not self.cfg.faults:
            return LinkConditions()
        return LinkConditions(
            drop_rate=self.rng.choice((0.0, 0.01, 0.05, 0.15)),
            duplicate_rate=self.rng.choice((0.0, 0.0, 0.03)),
            min_delay_ms=1,
            max_delay_ms=self.rng.choice((2, 8, 30)),
        )

    # ---- the end: heal, liveness, convergence, linearizability --------------------------------

    def _heal(self) -> None:
        self.net.heal()
        self.net.conditions = LinkConditions()
        self.disk_delay_ms = dict.fromkeys(self.disk_delay_ms, 0)
        for node in self.ids:
            self._restart(node)
        self._note("faults stop: network healed, every node running (removed ones too, until they are stopped)")
        self._at(self.now + 10, CHECK, None)

    def _leader(self) -> str | None:
        leaders = [n for n, r in self.replicas.items() if r.core is not None and r.core.role is Role.LEADER]
        return max(leaders, key=lambda n: self.replicas[n].core.term) if leaders else None  # type: ignore[union-attr]

    def _liveness_check(self) -> None:
        if self._live_since is not None:
            return
        leader = self._leader()
        core = self.replicas[leader].core if leader is not None else None
        if core is not None and self._settled_under(core):
            assert self._probe is not None
            self._live_since = self.now
            self._clients_on = False
            self._final_members = core.conf.members()
            members = ", ".join(self._final_members)
            self._note(f"live: probe entry {self._probe[2]} applied on every member ({members})")
            return
        self._at(self.now + 20, CHECK, None)

    def _settled_under(self, leader: RaftCore) -> bool:
        """Whether the cluster is live under `leader`: its configuration has enough voters (it is
        asked to restore them first), every member follows it, and a probe entry it proposed in
        this term is applied on every member (it is asked to propose one first)."""
        if len(leader.conf.voters) < self.min_voters_at_end:
            self._input(leader.id, self._propose_restoring_change)
            return False
        if not self._followed_by_every_member(leader):
            return False
        if self._probe is None or self._probe[:2] != (leader.id, leader.term):
            self._input(leader.id, self._propose_probe)  # the first, or again: a deposed leader may lose it
            return False
        return all(self.replicas[m].sm.applied >= self._probe[2] for m in leader.conf.members())

    def _propose_probe(self, core: RaftCore) -> None:
        try:
            _, index = core.propose([encode_command(f"probe@{self.now}", "write", "probe", self.now)])
        except (NotLeaderError, ProposalDroppedError):
            return
        self._probe = (core.id, core.term, index)

    def _propose_restoring_change(self, core: RaftCore) -> None:
        if core.role is Role.LEADER:
            change = restoring_change(self.roster, core.conf, self.min_voters_at_end)
            if change is not None:
                self._propose_change(core, change, self._note)

    def _followed_by_every_member(self, leader: RaftCore) -> bool:
        """The leader is a voter of its own configuration and every member names it leader."""
        return leader.id in leader.conf.voters and all(
            (core := self.replicas[m].core) is not None and core.leader_id == leader.id for m in leader.conf.members()
        )

    def _liveness_failure(self) -> str:
        states = {
            n: (r.core.role.value, r.core.term, r.core.leader_id, r.core.log.committed, r.sm.applied)
            if r.core
            else "down"
            for n, r in self.replicas.items()
            if n not in self.stopped
        }
        committed = self.roster.committed
        return (
            f"no leader committed a new entry on every member within {self.cfg.liveness_ms} ms of healing "
            f"(committed configuration: voters {committed.voters}, learners {committed.learners}): {states}"
        )

    def _check_convergence(self) -> None:
        members = self._final_members
        machines = {m: self.replicas[m].sm for m in members}
        if len({sm.applied for sm in machines.values()}) == 1:
            first = machines[members[0]].values
            for m, sm in machines.items():
                if sm.values != first:
                    raise InvariantViolation(f"replicas differ at index {sm.applied}: {m} has {sm.values}")

    def _check_linearizability(self) -> None:
        result = check_history(self.history, timeout_s=20.0)
        self.result.lin_verdict = result.verdict.value
        if result.verdict is Verdict.ILLEGAL:
            raise InvariantViolation("client history is not linearizable:\n" + result.explain())

    # ---- trace -------------------------------------------------------------------------------

    def _note(self, text: str) -> None:
        self._trace.append(f"t={self.now:>5}ms {text}")

    def _on_core_event(self, event: TraceEvent) -> None:
        self._note(event.describe())


def run_seed(seed: int, cfg: SimConfig | None = None, core_factory: CoreFactory = RaftCore) -> SimResult:
    return Simulation(seed, cfg or SimConfig(), core_factory).run()
