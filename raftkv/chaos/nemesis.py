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
The one exception is `member`: membership changes follow a track of their own (its own seeded
draws, so adding `member` leaves the other kinds' schedule as it was), and a member stays out
while kills, pauses and partitions come and go, as in etcd's Jepsen test.

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
    member     remove a voter (the leader half the time) and stop its process; at the window's
               end add its name back as a new member, promoted once caught up (member_nemesis.py)

Victims are picked among the members of the moment (`MemberView`), by their cluster slot.

`Nemesis.heal_all()` undoes everything that may still be in effect (resume paused nodes, restart
killed ones, clear API partitions on every node, remove every nft rule, add back every member
still out); the runner calls it after the workload, also when something failed, before the final
reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from raftkv.chaos.clusters import ChaosCluster
from raftkv.chaos.connect import run_session
from raftkv.chaos.member_nemesis import MemberChanges
from raftkv.chaos.membership import MemberView
from raftkv.chaos.netns import Lab, NetState
from raftkv.chaos.recorder import FaultRecord, Recorder
from raftkv.chaos.workload import call

__all__ = ["KINDS", "FaultPlan", "Nemesis", "plan_schedule"]

KINDS = ("kill", "pause", "partition", "netns", "crash", "member")
VARIANTS = {
    "kill": ("node",),
    "crash": ("all",),
    "pause": ("node",),
    "partition": ("isolate", "split", "one-way"),
    "netns": ("isolate", "split", "bridge", "asymmetric", "loss", "latency"),
    "member": ("remove-readd",),
}
FIRST_FAULT_AFTER_S = 1.5
MIN_WINDOW_S, MAX_WINDOW_S = 1.5, 4.0  # every window is several election timeouts (0.2-0.4 s)
MIN_GAP_S, MAX_GAP_S = 1.0, 2.5
LOSS_PERCENT_CHOICES = (20, 30, 50)
API_FAULT_RETRY_S = 5.0  # how long to retry /simulate-partition on a node that refuses connections
LATENCY_MS_CHOICES = (30, 80, 150)  # one way, +- half of it as jitter; elections take 200-400 ms
MEMBER_FIRST_AFTER_S = 2.0
MEMBER_MIN_OUT_S, MEMBER_MAX_OUT_S = 2.0, 5.0  # how long a removed member stays out
MEMBER_MIN_GAP_S, MEMBER_MAX_GAP_S = 2.0, 4.0  # after its re-add began (which takes seconds of its own)


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
    """Every fault of a run, by start time: the faults' track and (with `member`) the membership track."""
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown nemesis kinds {sorted(unknown)}; choose from {', '.join(KINDS)}")
    if not node_ids:
        return []
    plans = _fault_plans(seed, tuple(k for k in kinds if k != "member"), duration_s, len(node_ids))
    if "member" in kinds:
        plans += _member_plans(seed, duration_s, len(node_ids))
    return sorted(plans, key=lambda p: p.start_s)


def _member_plans(seed: int, duration_s: float, node_count: int) -> list[FaultPlan]:
    """Remove-then-re-add windows, one at a time: a member is out for the window, then re-added."""
    rng = random.Random(f"nemesis/{seed}/member")
    plans: list[FaultPlan] = []
    t = MEMBER_FIRST_AFTER_S
    while True:
        out_s = round(rng.uniform(MEMBER_MIN_OUT_S, MEMBER_MAX_OUT_S), 2)
        if t + out_s > duration_s:
            return plans
        plans.append(FaultPlan(round(t, 2), out_s, "member", "remove-readd", rng.random() < 0.5,
                               rng.randrange(node_count)))
        t += out_s + rng.uniform(MEMBER_MIN_GAP_S, MEMBER_MAX_GAP_S)


def _fault_plans(seed: int, kinds: tuple[str, ...], duration_s: float, node_count: int) -> list[FaultPlan]:
    rng = random.Random(f"nemesis/{seed}")
    plans: list[FaultPlan] = []
    if not kinds:
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
                               rng.randrange(node_count), amount))
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
        view: MemberView,
        lab: Lab | None = None,
        http_timeout_s: float = 2.0,
    ) -> None:
        self.cluster = cluster
        self.recorder = recorder
        self.leader_now = leader_now  # a member id
        self.view = view
        self.lab = lab
        self.http_timeout_s = http_timeout_s
        self.members = MemberChanges(cluster, view, recorder, leader_now, len(cluster.urls))
        self.active: list[FaultRecord] = []
        self._api_partitioned: set[str] = set()
        self._killed: set[str] = set()
        self._paused: set[str] = set()

    async def run(self, schedule: list[FaultPlan], t_end: float) -> None:
        """Carry out `schedule` (times relative to the recorder's clock), stopping at `t_end`: the
        membership track beside the other faults'."""
        async with asyncio.TaskGroup() as tracks:
            tracks.create_task(self._run_faults([p for p in schedule if p.kind != "member"], t_end))
            tracks.create_task(self._run_member_changes([p for p in schedule if p.kind == "member"], t_end))

    async def _run_faults(self, plans: list[FaultPlan], t_end: float) -> None:
        for plan in plans:
            if plan.start_s >= t_end:
                break
            await asyncio.sleep(max(0.0, plan.start_s - self.recorder.now()))
            record = await self._inject(plan)
            self.active.append(record)
            try:
                await asyncio.sleep(max(0.0, min(plan.start_s + plan.duration_s, t_end) - self.recorder.now()))
            finally:
                self.active.remove(record)
                await self._heal(record)

    async def _run_member_changes(self, plans: list[FaultPlan], t_end: float) -> None:
        not_before = 0.0  # a re-added member gets a quiet gap as a voter before the next removal
        for plan in plans:
            await asyncio.sleep(max(0.0, plan.start_s - self.recorder.now(), not_before - self.recorder.now()))
            if self.recorder.now() >= t_end:  # an earlier re-add took the time this plan had
                break
            record = await self.members.remove(plan, self._forget_faults_on)
            if record is None:
                continue
            self.active.append(record)
            try:
                await asyncio.sleep(max(0.0, min(plan.start_s + plan.duration_s, t_end) - self.recorder.now()))
            finally:
                self.active.remove(record)
            # Not in `finally`: a re-add takes seconds; when the run cancels this track, heal_all does it.
            await self.members.rejoin_all()
            not_before = self.recorder.now() + MEMBER_MIN_GAP_S

    @property
    def current_label(self) -> str:
        """What is in effect now, for the progress line."""
        return " + ".join(r.label for r in self.active) or "-"

    # ---------------------------------------------------------------- injecting ----------------

    def _present(self) -> list[str]:
        """The cluster slots that hold a member now (a removed one is out until it is re-added)."""
        return [slot for slot in sorted(self.cluster.urls)
                if slot not in self.members.retired and self.view.member_of(slot) is not None]

    def _leader_slot(self) -> str | None:
        leader = self.leader_now()
        return self.view.slot_of(leader, self.cluster.urls) if leader else None

    def _victim(self, plan: FaultPlan, present: list[str]) -> tuple[str, bool]:
        leader = self._leader_slot() if plan.target_leader else None
        if leader in present:
            return leader, True
        return present[plan.pick % len(present)], False

    def _member_ids(self, slots: list[str]) -> list[str]:
        """The member ids in `slots` (what /simulate-partition names peers by)."""
        members = [self.view.member_of(slot) for slot in slots]
        return [m.id for m in members if m is not None]

    async def _inject(self, plan: FaultPlan) -> FaultRecord:
        present = self._present()
        victim, is_leader = self._victim(plan, present)
        role = " (leader)" if is_leader else ""
        rng = random.Random(f"{plan.start_s}/{plan.pick}")
        others = [n for n in present if n != victim]
        rng.shuffle(others)
        minority_size = (len(present) - 1) // 2
        minority = [victim, *others[: minority_size - 1]] if minority_size > 1 else [victim]
        majority = [n for n in present if n not in minority]
        details = {"plan": plan.describe(), "leaderAtStart": self.leader_now()}
        if plan.kind == "crash":
            everyone = list(present)
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
                    await self._api_partition(n, True, self._member_ids(majority), record)
        elif plan.kind == "netns" and plan.variant == "latency":
            delay = plan.amount
            record = self.recorder.fault_started("netns", f"latency {delay}+-{delay // 2} ms between all nodes "
                                                 "(NFQUEUE)", list(present), **details, latencyMs=delay)
            await self._change_lab(record, lambda lab: lab.add_latency(delay, delay // 2, plan.pick))
        elif plan.kind == "netns":
            state = self._net_state(plan, victim, role, minority, majority, others)
            targets = _nodes_in(state) or (list(present) if plan.variant == "loss" else [victim])
            record = self.recorder.fault_started("netns", f"{state.label} (nft)", targets,
                                                 **details, net=state.describe())
            await self._change_lab(record, lambda lab: lab.apply(state))
        else:
            raise ValueError(plan.kind)
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
        async with run_session() as session:
            while True:
                status, data, error, sent = await call(session, "POST", f"{self.cluster.urls[node]}/simulate-partition",
                                                       body, self.http_timeout_s)
                # A node still restarting after an earlier kill refuses connections for a moment.
                if status is not None or sent or loop.time() > deadline:
                    break
                await asyncio.sleep(0.2)
        if status == 200:
            if partitioned and node not in self.members.retired:  # a removed node's partition ended with it
                self._api_partitioned.add(node)
            else:
                self._api_partitioned.discard(node)
            if direction is not None and record is not None:
                self._note_partial_cut(node, direction, data, record)
        elif record is not None:
            record.error = ((record.error or "") + f" {node}: {status} {error or data}").strip()

    def _note_partial_cut(self, node: str, direction: str, answer: Any, record: FaultRecord) -> None:
        """A one-way cut lists the peers it cut: members it left out (added since the node started)
        still reach it, so the fault was not the one planned."""
        faults = answer.get("faults", {}) if isinstance(answer, dict) else {}
        cut = set(faults.get("cut_outbound" if direction == "outbound" else "cut_inbound", []))
        me = self.view.member_of(node)
        missed = sorted(set(self.view.members) - cut - {me.id if me else node})
        if missed:
            record.error = ((record.error or "") + f" {node} cut {direction} only {sorted(cut)}, not {missed}").strip()

    # ---------------------------------------------------------------- healing ------------------

    async def _heal(self, record: FaultRecord) -> None:
        try:
            await self.heal_faults()
        finally:
            self.recorder.fault_ended(record)

    async def heal_all(self) -> None:
        """Undo every fault that may be in effect, and add back every member still out; safe to call
        at any time, any number of times."""
        await self.heal_faults()
        await self.members.heal()

    def _forget_faults_on(self, slot: str) -> None:
        """A removed member's process is about to stop: its faults end with it, nothing to heal."""
        self._paused.discard(slot)
        self._killed.discard(slot)
        self._api_partitioned.discard(slot)

    async def heal_faults(self) -> None:
        """Undo every kill, pause and partition that may be in effect (membership stays as it is)."""
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
        return sorted(self._api_partitioned | self._killed | self._paused | set(self.members.retired))


def _nodes_in(state: NetState) -> list[str]:
    return sorted({n for pair in state.cuts for n in pair})
