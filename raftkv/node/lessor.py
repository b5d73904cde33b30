"""When leases expire: the leader's clock over the replicated lease table (etcd's lessor).

Theory of operation
-------------------
Which leases exist, their TTLs and their keys are replicated state (kv/leases.py); *when* one
expires is the leader's call alone, made on its own clock and carried out through the log (a
`LeaseRevoke` with expired=True), so every replica deletes the same keys at the same revision and
no follower's clock matters.

- A leader gives every lease it has not timed yet a full TTL from now: a new leader never expires
  a lease early, it extends what was left (as etcd does), and a lease granted a moment ago starts
  its TTL when the leader first sees it.
- A keep-alive is answered by the leader, after a ReadIndex round has confirmed it still leads:
  so a keep-alive acknowledged at time t was acknowledged by a node that led after t, and any later
  leader was elected after t and gives the lease a full TTL from its own start. Hence a lease
  cannot expire while an acknowledged keep-alive is within its TTL. A follower relays keep-alives
  and time-to-live questions to the leader.
- A keep-alive for a lease whose deadline has passed is refused (404, as etcd refuses to renew an
  expired lease), and so is one for a lease whose revocation this leader has proposed and not yet
  seen fail for certain: that entry may still commit, and acknowledging the keep-alive would
  promise a TTL the log is about to cut short. (A revocation proposed by an earlier leader
  commits, if ever, before a new leader's ReadIndex round completes, so the lease is gone by the
  time the keep-alive is checked.)
- Deadlines belong to one term of leadership: a node that lost leadership and won it back
  (maybe faster than one check) starts every TTL afresh too, since a keep-alive may have been
  acknowledged by the leader in between.
- Only the leader that timed a lease expires it, in that term: the revocation is proposed after
  a ReadIndex round confirms this node still leads in the term it timed the lease in. Without it,
  a leader paused past an election proposes on resuming, before reading the new term's messages,
  and the group forwards the proposal to the new leader, where it commits despite the keep-alives
  that leader acknowledged (`raftkv chaos --workload lease` found it).
- Expiry is checked every `CHECK_EVERY_S`; an expired lease's revocation is proposed once, and
  retried if it did not commit. Time is the event loop's clock (monotonic in a node process,
  virtual in the simulator).
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Any

from raftkv.core import Role
from raftkv.kv import LeaseGrant, LeaseRevoke

from .errors import NodeError, OutcomeUnknownError, RequestRefused
from .forwarding import LeaderAsker
from .group import RaftGroup

__all__ = ["CHECK_EVERY_S", "Lessor"]

log = logging.getLogger("raftkv.node")

CHECK_EVERY_S = 0.1


class Lessor:
    def __init__(self, group: RaftGroup, leader_asker: LeaderAsker | None, rng: random.Random | None = None) -> None:
        self.group = group
        self._leader_asker = leader_asker  # None: this node cannot relay to the leader (the simulator)
        self._rng = rng or random.Random()
        self._deadlines: dict[int, float] = {}  # lease id -> when it expires (leader only)
        self._timed_term = 0  # the term of the leadership those deadlines were set in
        self._revoking: dict[int, asyncio.Task] = {}
        self._revocation_unsettled: set[int] = set()  # proposed this term, outcome unknown: may commit

    # ---- what clients call ------------------------------------------------------------------

    async def grant(self, ttl_s: int, lease_id: int | None = None) -> dict[str, Any]:
        lease_id = lease_id or self._rng.randrange(1, 2**63)
        return await self.group.propose(LeaseGrant(lease_id, ttl_s))

    async def revoke(self, lease_id: int) -> dict[str, Any]:
        return await self.group.propose(LeaseRevoke(lease_id))

    async def keepalive(self, lease_id: int) -> dict[str, Any]:
        """Renew a lease for its whole TTL; on a follower, the leader does it."""
        leader = await self.group.await_leader()
        if leader != self.group.id:
            return await self._ask(leader, "POST", f"/leases/{lease_id}/keepalive")
        await self.group.read_barrier()  # still the leader after the keep-alive arrived (see above)
        lease, deadlines, now = self._lease(lease_id), self._leading_deadlines(), _now()
        if not self._renewable(lease_id, deadlines, now):
            raise RequestRefused(404, "expired", f"lease {lease_id} has expired (its revocation is under way)",
                                 lease=lease_id)
        deadlines[lease_id] = now + lease.ttl_s
        return {"id": lease_id, "ttl": lease.ttl_s}

    async def time_to_live(self, lease_id: int) -> dict[str, Any]:
        """A lease's TTL, what is left of it (the leader's clock) and its keys."""
        leader = await self.group.await_leader()
        if leader != self.group.id:
            return await self._ask(leader, "GET", f"/leases/{lease_id}")
        lease = self._lease(lease_id)
        now = _now()
        deadline = self._leading_deadlines().setdefault(lease_id, now + lease.ttl_s)
        return {"id": lease_id, "ttl": lease.ttl_s, "remaining": round(max(0.0, deadline - now), 3),
                "keys": sorted(lease.keys), "grantedRevision": lease.granted_revision}

    def _lease(self, lease_id: int) -> Any:
        lease = self.group.kv.leases.leases.get(lease_id)
        if lease is None:
            raise RequestRefused(404, "unknown", f"lease {lease_id} does not exist (expired, revoked or never "
                                                 "granted)", lease=lease_id)
        return lease

    async def _ask(self, leader: str, method: str, path: str) -> dict[str, Any]:
        if self._leader_asker is None:
            raise RequestRefused(503, "no_leader", f"{self.group.id} does not lead and cannot relay to {leader}")
        return await self._leader_asker.ask(leader, method, path)

    # ---- the leader's clock -----------------------------------------------------------------

    async def run(self) -> None:
        while True:
            await asyncio.sleep(CHECK_EVERY_S)
            self.check()

    def check(self) -> None:
        """Time every lease (a leader only), and propose the revocation of the expired ones."""
        if self.group.core.role is not Role.LEADER:
            self._forget_timing()  # the next leader, maybe this node again, starts every TTL afresh
            return
        deadlines, now, leases = self._leading_deadlines(), _now(), self.group.kv.leases.leases
        for lease_id in set(deadlines) - set(leases):
            del deadlines[lease_id]
        for lease_id, lease in leases.items():
            deadline = deadlines.setdefault(lease_id, now + lease.ttl_s)
            if now >= deadline and lease_id not in self._revoking:
                self._revoking[lease_id] = asyncio.get_running_loop().create_task(
                    self._expire(lease_id, self.group.core.term))

    def _leading_deadlines(self) -> dict[int, float]:
        """The deadlines of this node's current leadership (emptied when its term changed)."""
        core = self.group.core
        if core.role is not Role.LEADER:
            raise RequestRefused(503, "no_leader", f"{self.group.id} no longer leads", leader=core.leader_id)
        if core.term != self._timed_term:
            self._forget_timing()
            self._timed_term = core.term
        return self._deadlines

    def _forget_timing(self) -> None:
        self._deadlines.clear()
        self._revocation_unsettled.clear()

    def _renewable(self, lease_id: int, deadlines: dict[int, float], now: float) -> bool:
        """Neither past its deadline nor being revoked (see the theory of operation)."""
        return not (lease_id in self._revoking or lease_id in self._revocation_unsettled
                    or deadlines.get(lease_id, now) < now)

    async def _still_leading(self, term: int) -> bool:
        """Whether this node leads in `term`, confirmed by a ReadIndex round (see `_expire`)."""
        try:
            await self.group.read_barrier()
        except NodeError:
            return False
        core = self.group.core
        return core.role is Role.LEADER and core.term == term

    async def _expire(self, lease_id: int, term: int) -> None:
        try:
            # A check can run on a leader that was deposed without knowing it yet (paused past an
            # election, the new term's messages not read): its revocation would then be forwarded
            # to the new leader like any write and commit there, cutting short a TTL that leader
            # promised with a keep-alive. So the proposal is made only once a majority has confirmed
            # this node still leads in the term that timed the lease: those voters refuse other
            # candidates for an election timeout (check-quorum's leader stickiness), so the loop's
            # next turn takes the proposal as this leader's own, unless the node stalls that long
            # in between; and the proposal is bound to that term's leadership (leader_term), so the
            # group never forwards it: it fails instead, should the node have stalled that long.
            if not await self._still_leading(term):
                return
            await self.group.propose(LeaseRevoke(lease_id, expired=True), leader_term=term)
            log.info("lease expired node=%s lease=%d", self.group.id, lease_id)
        except OutcomeUnknownError as e:  # may yet commit in this term; the next check proposes again
            self._revocation_unsettled.add(lease_id)
            log.info("lease expiry outcome unknown node=%s lease=%d: %s", self.group.id, lease_id, e)
        except NodeError as e:  # not committed (a leader change, say): the next check proposes again
            log.info("lease expiry not committed node=%s lease=%d: %s", self.group.id, lease_id, e)
        finally:
            del self._revoking[lease_id]

    async def stop(self) -> None:
        for task in list(self._revoking.values()):
            task.cancel()
        await asyncio.gather(*self._revoking.values(), return_exceptions=True)


def _now() -> float:
    return asyncio.get_running_loop().time()
