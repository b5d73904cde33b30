"""Leases in the driver simulation: the real Lessor on every simulated node, and a client that
grants leases, attaches a key to each, and keeps some of them alive, through crashes, partitions
and leader changes. Of the others, some get one late keep-alive, sent just as they run out: the
moment a lessor may already be revoking them.

Theory of operation
-------------------
Every node's state machine is a `LeaseWatchingKV`, which notes the virtual time at which each
lease first disappears anywhere (applied on some node: from then on a client can see its keys
gone). The client notes, for every lease, when it asked for the grant and when it sent each
keep-alive that was acknowledged. The lessor's promise (node/lessor.py) is then checked exactly,
on the one virtual clock: a lease is never gone before its TTL has passed since the grant was
asked, nor since any acknowledged keep-alive was sent. The client never revokes, so every
disappearance is an expiry. Once the faults stop nobody keeps a lease alive, and every lease must
be gone from every node within the longest TTL plus the liveness window: expiry also happens.
That all replicas delete the same keys at the same revision is the equal-state-machines check.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from raftkv.kv import KVStateMachine, Put
from raftkv.node import NodeError, RaftGroup
from raftkv.node.lessor import CHECK_EVERY_S, Lessor

from .invariants import InvariantViolation
from .simulation import LivenessViolation

__all__ = ["TTLS_S", "LeaseClient", "LeaseLedger", "LeaseWatchingKV", "await_every_lease_gone"]

TTLS_S = (1, 2)
KEEPALIVE_EVERY_S = 0.3


@dataclass
class LeaseRecord:
    ttl_s: int
    asked_at: float  # when the grant was asked
    acknowledged_keepalives: list[float] = field(default_factory=list)  # when each was sent

    def earliest_expiry(self) -> float:
        return max([self.asked_at, *self.acknowledged_keepalives]) + self.ttl_s


class LeaseLedger:
    """What the lease client was promised, and when each lease was first seen gone."""

    def __init__(self) -> None:
        self.granted: dict[int, LeaseRecord] = {}
        self.gone_at: dict[int, float] = {}
        self.keepalives_acknowledged = 0

    def saw_gone(self, lease_id: int) -> None:
        self.gone_at.setdefault(lease_id, asyncio.get_running_loop().time())

    def check_no_early_expiry(self) -> None:
        for lease_id, record in self.granted.items():
            gone = self.gone_at.get(lease_id)
            if gone is not None and gone < record.earliest_expiry():
                raise InvariantViolation(
                    f"lease {lease_id} (TTL {record.ttl_s} s, grant asked at {record.asked_at:.3f} s, keep-alives "
                    f"acknowledged that were sent at {[round(t, 3) for t in record.acknowledged_keepalives]}) "
                    f"expired at {gone:.3f} s, before {record.earliest_expiry():.3f} s")


class LeaseWatchingKV(KVStateMachine):
    """The state machine, telling the ledger when a lease disappears from it."""

    def __init__(self, ledger: LeaseLedger) -> None:
        super().__init__()
        self._ledger = ledger

    def apply(self, index: int, data: bytes, *, answer: bool = True) -> dict | None:
        before = set(self.leases.leases)
        result = super().apply(index, data, answer=answer)
        for lease_id in before - set(self.leases.leases):
            self._ledger.saw_gone(lease_id)
        return result


class LeaseClient:
    """Grants leases through random nodes, attaches a key to each, and keeps about half of them
    alive through whichever node leads, until told to stop."""

    def __init__(self, ledger: LeaseLedger, rng: random.Random, lessors: Callable[[], dict[str, Lessor]],
                 note: Callable[[str], None]) -> None:
        self.ledger = ledger
        self.rng = rng
        self._lessors = lessors  # the running nodes' lessors, by node id
        self._note = note
        self._kept: list[int] = []
        self._late: set[asyncio.Task] = set()

    async def run(self, running: Callable[[], bool]) -> None:
        loop = asyncio.get_running_loop()
        next_keepalive = loop.time()
        try:
            while running():
                await asyncio.sleep(self.rng.uniform(0.02, 0.1))
                if not running():
                    return
                if loop.time() >= next_keepalive:
                    next_keepalive = loop.time() + KEEPALIVE_EVERY_S
                    await self._keep_alive()
                await self._grant()
        finally:
            for task in self._late:
                task.cancel()

    async def _grant(self) -> None:
        lessors = self._lessors()
        if not lessors:
            return
        node = self.rng.choice(sorted(lessors))
        lessor, ttl_s = lessors[node], self.rng.choice(TTLS_S)
        asked_at = asyncio.get_running_loop().time()
        try:
            answer = await asyncio.wait_for(lessor.grant(ttl_s), 1.0)
        except (NodeError, TimeoutError):
            return  # maybe granted: an unknown lease is only ever expired, never checked early
        if not answer.get("ok"):
            return
        lease_id = answer["lease"]
        self.ledger.granted[lease_id] = LeaseRecord(ttl_s, asked_at)
        if self.rng.random() < 0.5:
            self._kept.append(lease_id)
        elif self.rng.random() < 0.5:
            late = asyncio.ensure_future(self._keep_alive_late(lease_id, asked_at + ttl_s))
            self._late.add(late)
            late.add_done_callback(self._late.discard)  # only those still waiting are cancelled at the end
        self._note(f"lease {lease_id} granted through {node}, TTL {ttl_s} s")
        with contextlib.suppress(NodeError, TimeoutError):  # attached or not: the check is about the lease
            await asyncio.wait_for(lessor.group.propose(Put(f"lease-{lease_id}", node, lease=lease_id)), 1.0)

    async def _keep_alive(self) -> None:
        for lease_id in list(self._kept):
            if not await self._keep_alive_once(lease_id):
                return

    async def _keep_alive_late(self, lease_id: int, runs_out_at: float) -> None:
        """A client that wakes up late: one keep-alive just as the lease runs out, when the leader
        may be revoking it; it must then refuse, since the revocation would cut short the TTL an
        acknowledgement promises."""
        loop = asyncio.get_running_loop()
        # The leader times the TTL from when it applied the grant, and looks every CHECK_EVERY_S.
        await asyncio.sleep(max(0.0, runs_out_at + self.rng.uniform(0.0, 2.5 * CHECK_EVERY_S) - loop.time()))
        await self._keep_alive_once(lease_id)

    async def _keep_alive_once(self, lease_id: int) -> bool:
        """One keep-alive through a leader; False if no node leads."""
        leaders = [lessor for lessor in self._lessors().values() if lessor.group.leader_id == lessor.group.id]
        if not leaders:
            return False
        lessor = self.rng.choice(leaders)
        sent = asyncio.get_running_loop().time()
        try:
            await asyncio.wait_for(lessor.keepalive(lease_id), 1.0)
        except (NodeError, TimeoutError):
            return True  # not acknowledged: promises nothing
        self.ledger.granted[lease_id].acknowledged_keepalives.append(sent)
        self.ledger.keepalives_acknowledged += 1
        return True


async def await_every_lease_gone(groups: Callable[[], list[RaftGroup]], ledger: LeaseLedger, within_s: float) -> None:
    """Nobody keeps a lease alive any more: each must be gone from every node within `within_s`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    while any(g.kv.leases.leases for g in groups()):
        if loop.time() > deadline:
            left = {g.id: sorted(g.kv.leases.leases) for g in groups() if g.kv.leases.leases}
            raise LivenessViolation(f"leases nobody keeps alive still exist {within_s} s after the faults stopped: "
                                    f"{left}")
        await asyncio.sleep(0.05)
    ledger.check_no_early_expiry()
