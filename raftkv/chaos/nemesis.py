"""The nemesis: a seeded schedule of faults, and the code that injects and heals them.

Theory of operation
-------------------
`plan_schedule(seed, kinds, duration_s, node_ids)` is pure: the same arguments give the same list
of `FaultPlan`s (when, what, for how long, and *how to pick* the victims). Victims are picked at
injection time, because "the leader" is only known then: a plan says `target_leader=True` (hit
whoever leads now) or gives an index into the sorted node ids. So the schedule replays exactly
from `--seed`; which node was the leader is recorded in the `FaultRecord`.

Faults never overlap: inject, hold for the window, heal, then a quiet gap (so each fault's
effect on the history can be seen on its own, and the timeline's shaded windows are readable).

Kinds and variants:

    kill       kill -9 a node (the leader half the time), restart it from disk at the window's end
    crash      kill -9 every node at once (a power failure), restart them all: only what was
               fsynced survives, so this is where acknowledging before fsync shows
    pause      SIGSTOP a node for longer than an election timeout, then SIGCONT
    partition  POST /simulate-partition: isolate one node, cut a minority from the majority, or cut
               one direction of a node's traffic ("direction": outbound / inbound)
    netns      nftables cuts in the lab's bridge: isolate, majority/minority split, a "bridge" node
               that sees both halves, asymmetric (one direction of a node's traffic), random loss,
               added latency with jitter (NFQUEUE + raftkv.chaos.delayer, since there is no netem)

`Nemesis.heal_all()` undoes everything that may still be in effect (resume paused nodes, restart
killed ones, clear API partitions on every node, remove every nft rule); the runner calls it
after the workload, also when something failed, before the final reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable
from dataclasses import dataclass

from raftkv.chaos.clusters import ChaosCluster
from raftkv.chaos.netns import Lab, NetState
from raftkv.chaos.recorder import FaultRecord, Recorder
from raftkv.chaos.workload import call
from raftkv.client import single_send_session

__all__ = ["KINDS", "FaultPlan", "Nemesis", "plan_schedule"]

KINDS = ("kill", "pause", "partition", "netns", "crash")
VARIANTS = {
    "kill": ("node",),
    "crash": ("all",),
    "pause": ("node",),
    "partition": ("isolate", "split", "one-way"),
    "netns": ("isolate", "split", "bridge", "asymmetric", "loss", "latency"),
}
FIRST_FAULT_AFTER_S = 1.5
MIN_WINDOW_S, MAX_WINDOW_S = 1.5, 4.0  # every window is several election timeouts (0.2-0.4 s)
MIN_GAP_S, MAX_GAP_S = 1.0, 2.5
LOSS_PERCENT_CHOICES = (20, 30, 50)
API_FAULT_RETRY_S = 5.0  # how long to retry /simulate-partition on a node that refuses connections
LATENCY_MS_CHOICES = (30, 80, 150)  # one way, +- half of it as jitter; elections take 200-400 ms


@dataclass(frozen=True)
class FaultPlan:
    start_s: float
    duration_s: float
    kind: str
    variant: str
    target_leader: bool  # hit the leader of the moment (else the node at `pick`)
    pick: int  # index into the sorted node ids, and a seed for any further choice
    amount: int = 0  # loss: percent dropped; latency: milliseconds one way

    def describe(self) -> str:
        who = "the leader" if self.target_leader else f"node #{self.pick}"
        unit = "ms" if self.variant == "latency" else "%"
        extra = f" {self.amount}{unit}" if self.amount else ""
        return f"t={self.start_s:.1f}s +{self.duration_s:.1f}s {self.kind}/{self.variant}{extra} on {who}"


def plan_schedule(seed: int, kinds: tuple[str, ...], duration_s: float, node_ids: list[str]) -> list[FaultPlan]:
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown nemesis kinds {sorted(unknown)}; choose from {', '.join(KINDS)}")
    rng = random.Random(f"nemesis/{seed}")
    plans: list[FaultPlan] = []
    if not kinds or not node_ids:
        return plans
    # Kinds, and each kind's variants, come in shuffled rounds rather than independent draws, so
    # even a short run exercises every kind and variant asked for (and still varies by seed).
    kind_cycle = _Cycle(sorted(set(kinds)), rng)
    variant_cycles = {k: _Cycle(list(VARIANTS[k]), rng) for k in sorted(set(kinds))}
    t = FIRST_FAULT_AFTER_S
    while True:
        window = round(rng.uniform(MIN_WINDOW_S, MAX_WINDOW_S), 2)
        if t + window > duration_s:
            break
        kind = kind_cycle.next()
        variant = variant_cycles[kind].next()
        amount = (rng.choice(LOSS_PERCENT_CHOICES) if variant == "loss"
                  else rng.choice(LATENCY_MS_CHOICES) if variant == "latency" else 0)
        plans.append(FaultPlan(round(t, 2), window, kind, variant, rng.random() < 0.5,
                               rng.randrange(len(node_ids)), amount))
        t += window + rng.uniform(MIN_GAP_S, MAX_GAP_S)
    return plans


class _Cycle:
    """Endless shuffled rounds over `items`: every item once per round."""

    def __init__(self, items: list[str], rng: random.Random) -> None:
        self.items, self.rng, self.queue = items, rng, []

    def next(self) -> str:
        if not self.queue:
            self.queue = list(self.items)
            self.rng.shuffle(self.queue)
        return self.queue.pop()


class Nemesis:
    def __init__(
        self,
        cluster: ChaosCluster,
        recorder: Recorder,
        leader_now: Callable[[], str | None],
        lab: Lab | None = None,
        http_timeout_s: float = 2.0,
    ) -> None:
        self.cluster = cluster
        self.recorder = recorder
        self.leader_now = leader_now
        self.lab = lab
        self.http_timeout_s = http_timeout_s
        self.node_ids = sorted(cluster.urls)
        self.current: FaultRecord | None = None
        self._api_partitioned: set[str] = set()
        self._killed: set[str] = set()
        self._paused: set[str] = set()

    async def run(self, schedule: list[FaultPlan], t_end: float) -> None:
        """Carry out `schedule` (times relative to the recorder's clock), stopping at `t_end`."""
        for plan in schedule:
            if plan.start_s >= t_end:
                break
            await asyncio.sleep(max(0.0, plan.start_s - self.recorder.now()))
            record = await self._inject(plan)
            try:
                await asyncio.sleep(max(0.0, min(plan.start_s + plan.duration_s, t_end) - self.recorder.now()))
            finally:
                await self._heal(record)
                self.current = None

    # ---------------------------------------------------------------- injecting ----------------

    def _victim(self, plan: FaultPlan) -> tuple[str, bool]:
        leader = self.leader_now() if plan.target_leader else None
        if leader in self.node_ids:
            return leader, True
        return self.node_ids[plan.pick % len(self.node_ids)], False

    async def _inject(self, plan: FaultPlan) -> FaultRecord:
        victim, is_leader = self._victim(plan)
        role = " (leader)" if is_leader else ""
        rng = random.Random(f"{plan.start_s}/{plan.pick}")
        others = [n for n in self.node_ids if n != victim]
        rng.shuffle(others)
        minority_size = (len(self.node_ids) - 1) // 2
        minority = [victim, *others[: minority_size - 1]] if minority_size > 1 else [victim]
        majority = [n for n in self.node_ids if n not in minority]
        details = {"plan": plan.describe(), "leaderAtStart": self.leader_now()}
        if plan.kind == "crash":
            everyone = list(self.node_ids)
            record = self.recorder.fault_started("crash", "kill -9 every node at once (power failure)", everyone,
                                                 **details)
            for node in everyone:
                self.cluster.kill(node)
                self._killed.add(node)
        elif plan.kind == "kill":
            record = self.recorder.fault_started("kill", f"kill -9 {victim}{role}", [victim], **details)
            self.cluster.kill(victim)
            self._killed.add(victim)
        elif plan.kind == "pause":
            record = self.recorder.fault_started("pause", f"SIGSTOP {victim}{role}", [victim], **details)
            self.cluster.pause(victim)
            self._paused.add(victim)
        elif plan.kind == "partition":
            if plan.variant == "one-way":
                direction = "outbound" if plan.pick % 2 == 0 else "inbound"
                verb = "cannot send" if direction == "outbound" else "cannot receive"
                record = self.recorder.fault_started("partition", f"one-way: {victim}{role} {verb} (API)", [victim],
                                                     **details)
                await self._api_partition(victim, True, None, record, direction)
            elif plan.variant == "isolate" or len(minority) == 1:
                record = self.recorder.fault_started("partition", f"isolate {victim}{role} (API)", [victim], **details)
                await self._api_partition(victim, True, None, record)
            else:
                record = self.recorder.fault_started(
                    "partition", f"split {'+'.join(minority)} | {'+'.join(majority)} (API)", minority, **details)
                for n in minority:
                    await self._api_partition(n, True, majority, record)
        elif plan.kind == "netns" and plan.variant == "latency":
            delay = plan.amount
            record = self.recorder.fault_started("netns", f"latency {delay}+-{delay // 2} ms between all nodes "
                                                 "(NFQUEUE)", list(self.node_ids), **details, latencyMs=delay)
            await self._change_lab(record, lambda lab: lab.add_latency(delay, delay // 2, plan.pick))
        elif plan.kind == "netns":
            state = self._net_state(plan, victim, role, minority, majority, others)
            targets = _nodes_in(state) or (list(self.node_ids) if plan.variant == "loss" else [victim])
            record = self.recorder.fault_started("netns", f"{state.label} (nft)", targets,
                                                 **details, net=state.describe())
            await self._change_lab(record, lambda lab: lab.apply(state))
        else:
            raise ValueError(plan.kind)
        self.current = record
        return record

    async def _change_lab(self, record: FaultRecord, change: Callable[[Lab], None]) -> None:
        """Make a netns fault's change to the lab, off the event loop. A failure goes on the fault's
        record (the report and dashboard show it) instead of ending the run."""
        try:
            if self.lab is None:
                raise RuntimeError("netns faults need the cluster to run in a netns lab")
            await asyncio.to_thread(change, self.lab)
        except Exception as e:
            record.error = f"{type(e).__name__}: {e}"

    def _net_state(self, plan: FaultPlan, victim: str, role: str, minority: list[str], majority: list[str],
                   others: list[str]) -> NetState:
        if plan.variant == "isolate":
            return NetState.partition([[victim], others], f"isolate {victim}{role}")
        if plan.variant == "split":
            return NetState.partition([minority, majority], f"split {'+'.join(minority)} | {'+'.join(majority)}")
        if plan.variant == "bridge":
            half = len(others) // 2
            left, right = sorted(others[:half]), sorted(others[half:])
            return NetState.partition([[*left, victim], [*right, victim]],
                                      f"bridge {victim}{role} between {'+'.join(left)} | {'+'.join(right)}")
        if plan.variant == "asymmetric":
            if plan.pick % 2 == 0:
                cuts = frozenset((victim, o) for o in others)
                return NetState(cuts, 0, f"asymmetric: {victim}{role} cannot send")
            cuts = frozenset((o, victim) for o in others)
            return NetState(cuts, 0, f"asymmetric: {victim}{role} cannot receive")
        if plan.variant == "loss":
            return NetState(frozenset(), plan.amount, f"random loss {plan.amount}% between all nodes")
        raise ValueError(plan.variant)

    async def _api_partition(self, node: str, partitioned: bool, peers: list[str] | None,
                             record: FaultRecord | None, direction: str | None = None) -> None:
        body: dict = {"partitioned": partitioned}
        if peers is not None:
            body["peers"] = peers
        if direction is not None:
            body["direction"] = direction
        loop = asyncio.get_running_loop()
        deadline = loop.time() + API_FAULT_RETRY_S
        async with single_send_session() as session:
            while True:
                status, data, error, sent = await call(session, "POST", f"{self.cluster.urls[node]}/simulate-partition",
                                                       body, self.http_timeout_s)
                # A node still restarting after an earlier kill refuses connections for a moment.
                if status is not None or sent or loop.time() > deadline:
                    break
                await asyncio.sleep(0.2)
        if status == 200:
            if partitioned:
                self._api_partitioned.add(node)
            else:
                self._api_partitioned.discard(node)
        elif record is not None:
            record.error = ((record.error or "") + f" {node}: {status} {error or data}").strip()

    # ---------------------------------------------------------------- healing ------------------

    async def _heal(self, record: FaultRecord) -> None:
        try:
            await self.heal_all()
        finally:
            self.recorder.fault_ended(record)

    async def heal_all(self) -> None:
        """Undo every fault that may be in effect; safe to call at any time, any number of times."""
        for node in sorted(self._paused):
            with contextlib.suppress(Exception):
                self.cluster.resume(node)
        self._paused.clear()
        for node in sorted(self._killed):
            self.cluster.start(node)
        self._killed.clear()
        if self.lab is not None and self.lab.state.label != "healed":
            await asyncio.to_thread(self.lab.heal)
        if self.lab is not None:
            await asyncio.to_thread(self.lab.remove_latency)  # nothing to do when none is in place
        for node in sorted(self._api_partitioned):
            await self._api_partition(node, False, None, None)
        # A heal request that failed leaves the node in the set; try once more, then report.
        for node in sorted(self._api_partitioned):
            await asyncio.sleep(0.5)
            await self._api_partition(node, False, None, None)

    @property
    def unhealed(self) -> list[str]:
        return sorted(self._api_partitioned | self._killed | self._paused)


def _nodes_in(state: NetState) -> list[str]:
    return sorted({n for pair in state.cuts for n in pair})
