"""A lease client under faults, and the judge of how its leases ended.

Theory of operation
-------------------
The client grants a lease every `NEW_LEASE_EVERY_S` (at most `MAX_LEASES_AT_ONCE` alive), with a
short TTL and an id of its own choosing (seeded), so even a grant whose answer was lost names a
lease the judge knows. It attaches one or two fresh keys (`<prefix>lease/<n>/<j>`, written once
and never again) and follows one of four plans, drawn from the seed:

    keep    keep-alive every TTL/3 for a while, then stop: the lease lapses
    revoke  keep-alive for a while, then DELETE /leases/{id}
    lapse   never renewed
    late    one keep-alive sent about one TTL after the grant: it races the expiry on purpose

Each request goes to a random member and is recorded with the time it was sent, the time it was
answered and the HTTP status. The leader may be killed, paused or cut off meanwhile.

At the end the run waits (bounded) until none of these leases exists any more, then reads every
key's history on every final member (histories.py), and the judge checks:

* **gone on every node at the same revision**: every key that was put with the lease is deleted,
  all the lease's keys in one revision, and that revision is the same on every final member;
* **no early expiry**: an acknowledged grant or keep-alive sent at time s promises the lease
  until s + TTL (the leader starts the TTL only after the request arrived, and acknowledges only
  after a ReadIndex round: node/lessor.py). The deletion's revision cannot have committed after
  a watcher received it (watchers.py), so a deletion some watcher received before s + TTL,
  of a lease this client had not asked to revoke by then, is an early expiry. The client and the
  nodes read the same monotonic clock on this machine; `CLOCK_SLACK_S` only absorbs rounding
  and, on an attached cluster, a leader clock that runs a little fast;
* liveness: every lease nobody renews is gone within the bound (else inconclusive).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from bisect import bisect_left
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from raftkv.chaos.connect import run_session
from raftkv.chaos.histories import NodeHistories
from raftkv.chaos.judge import SideCheck
from raftkv.chaos.recorder import Recorder
from raftkv.chaos.workload import call

__all__ = ["CLOCK_SLACK_S", "LEASE_TTL_S", "LeaseClient", "LeaseRecord", "judge_leases", "leases_alive"]

LEASE_TTL_S = 2
NEW_LEASE_EVERY_S = 0.5
MAX_LEASES_AT_ONCE = 4
PLANS = ("keep", "revoke", "lapse", "late")
CLOCK_SLACK_S = 0.05
MAX_REPORTED = 10


@dataclass
class LeaseRecord:
    id: int
    ttl: int
    plan: str
    # Each request: [sent, answered, HTTP status or None, the node that answered or None]
    grant: list[Any] = field(default_factory=list)
    keys: list[list[Any]] = field(default_factory=list)  # [key, *request]
    keepalives: list[list[Any]] = field(default_factory=list)
    revoke: list[Any] | None = None


class LeaseClient:
    def __init__(self, prefix: str, members: Callable[[], Mapping[str, str]], recorder: Recorder, seed: int,
                 op_timeout_s: float) -> None:
        self.prefix = prefix
        self.members = members
        self.recorder = recorder
        self.rng = random.Random(f"{seed}/leases")
        self.op_timeout_s = op_timeout_s
        self.records: list[LeaseRecord] = []

    async def run(self, stop: asyncio.Event) -> None:
        """Grant and follow leases until `stop`; each lease's requests in flight then finish."""
        async with run_session() as session:
            tasks: set[asyncio.Task] = set()
            while not stop.is_set():
                if len(tasks) < MAX_LEASES_AT_ONCE:
                    record = LeaseRecord(self.rng.randrange(1, 2**62), LEASE_TTL_S, self.rng.choice(PLANS))
                    self.records.append(record)
                    task = asyncio.create_task(self._follow(session, record, random.Random(self.rng.random()), stop))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), NEW_LEASE_EVERY_S)
            await asyncio.gather(*tasks)

    async def _send(self, session: Any, rng: random.Random, method: str, path: str, body: Any = None) -> list[Any]:
        urls = self.members()
        sent = self.recorder.now()
        status, data, _, _ = await call(session, method, urls[rng.choice(sorted(urls))] + path, body,
                                        self.op_timeout_s)
        return [sent, self.recorder.now(), status, data.get("node") if isinstance(data, dict) else None]

    async def _follow(self, session: Any, lease: LeaseRecord, rng: random.Random, stop: asyncio.Event) -> None:
        lease.grant = await self._send(session, rng, "POST", "/leases", {"ttl": lease.ttl, "id": lease.id})
        if lease.grant[2] != 200:
            return  # an unknown grant may have made the lease: the judge still waits for it to go
        for j in range(rng.choice((1, 2))):
            key = f"{self.prefix}lease/{lease.id:x}/{j}"
            lease.keys.append([key, *await self._send(session, rng, "PUT", f"/kv/{key}",
                                                      {"value": lease.id, "lease": lease.id})])
        if lease.plan == "late":
            await _pause(stop, lease.grant[1] + lease.ttl + rng.uniform(-0.3, 0.1) - self.recorder.now())
            lease.keepalives.append(await self._send(session, rng, "POST", f"/leases/{lease.id}/keepalive"))
            return
        if lease.plan == "lapse":
            return
        until = self.recorder.now() + rng.uniform(0.5, 3.0) * lease.ttl
        while self.recorder.now() < until and not stop.is_set():
            await _pause(stop, lease.ttl / 3)
            answer = await self._send(session, rng, "POST", f"/leases/{lease.id}/keepalive")
            lease.keepalives.append(answer)
            if answer[2] == 404:
                return  # gone: the judge decides whether that was allowed
        if lease.plan == "revoke":
            lease.revoke = await self._send(session, rng, "DELETE", f"/leases/{lease.id}")

    def to_json(self) -> list[dict[str, Any]]:
        return [asdict(r) for r in self.records]


async def _pause(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), max(0.0, seconds))


async def leases_alive(url: str, ids: set[int], timeout_s: float = 3.0) -> set[int] | None:
    """Which of `ids` the node's lease table still holds (None: it did not answer)."""
    async with run_session() as session:
        status, data, _, _ = await call(session, "GET", f"{url}/leases", None, timeout_s)
    if status != 200 or not isinstance(data, dict):
        return None
    return {row["id"] for row in data["leases"]} & ids


def judge_leases(records: list[dict[str, Any]], histories: NodeHistories, first_seen: list[tuple[int, float]],
                 still_alive: list[int] | None) -> SideCheck:
    """`first_seen`: watchers.first_seen of the watch streams; `still_alive`: our leases the
    cluster still held when the run stopped waiting (None: it could not be asked)."""
    check = SideCheck("lease")
    if still_alive is None:
        check.inconclusive.append("the lease table could not be read at the end")
    elif still_alive:
        check.inconclusive.append(f"{len(still_alive)} lease(s) still exist after the wait: "
                                  + ", ".join(map(str, still_alive[:MAX_REPORTED])))
    alive = set(still_alive or [])
    acked = expired_or_revoked = 0
    for lease in records:
        acked += sum(1 for k in lease["keepalives"] if k[2] == 200)
        if lease["id"] in alive:
            continue
        deleted_at = _deletion_revision(lease, histories, check)
        if deleted_at is None:
            continue
        expired_or_revoked += 1
        _judge_timing(lease, deleted_at, first_seen, check)
    check.stats = {"leases": len(records), "keep-alives acknowledged": acked,
                   "ended with their keys": expired_or_revoked,
                   "revoked": sum(1 for r in records if r["revoke"] and r["revoke"][2] == 200),
                   "late keep-alives acknowledged": sum(1 for r in records if r["plan"] == "late"
                                                        for k in r["keepalives"] if k[2] == 200)}
    return check


def _deletion_revision(lease: dict[str, Any], histories: NodeHistories, check: SideCheck) -> int | None:
    """The one revision at which every node deleted every key the lease held (None when it held
    none, or when that is not so: then the finding is in `check`)."""
    where: dict[str, set[int | None]] = {}
    for node, history in sorted(histories.items()):
        for key, *_ in lease["keys"]:
            versions = history["keys"].get(key)
            if isinstance(versions, str):
                check.inconclusive.append(f"history of {key} unreadable on {node}: {versions}")
                return None
            attached = [i for i, v in enumerate(versions) if v["kv"] and v["kv"].get("lease") == lease["id"]]
            if not attached:
                continue  # the put did not land (refused, or after the lease was gone)
            after = versions[attached[-1] + 1:]
            where.setdefault(node, set()).add(after[0]["revision"] if after and after[0]["kv"] is None else None)
    if not where:
        return None
    revisions = {r for per_node in where.values() for r in per_node}
    if len(revisions) == 1 and None not in revisions and len(where) == len(histories):
        return revisions.pop()
    check.violations.append(
        f"lease {lease['id']} ({lease['plan']}) is gone but its keys were not all deleted in one revision on "
        "every node: " + "; ".join(f"{n}: deleted at {sorted(map(str, rs))}" for n, rs in sorted(where.items()))
        + ("" if len(where) == len(histories) else f"; no trace on {sorted(set(histories) - set(where))}"))
    return None


def _judge_timing(lease: dict[str, Any], deleted_at: int, first_seen: list[tuple[int, float]],
                  check: SideCheck) -> None:
    """An early expiry: the deletion was seen while an acknowledged grant or keep-alive covered
    the lease, and before this client asked for a revocation."""
    i = bisect_left(first_seen, (deleted_at, float("-inf")))
    if i == len(first_seen):
        return  # no watcher saw it: nothing bounds when it happened
    seen_at = first_seen[i][1]
    revoke_sent = lease["revoke"][0] if lease["revoke"] else float("inf")
    covers = [lease["grant"]] + lease["keepalives"]
    for request in covers:
        sent, answered, status = request[:3]
        promised = min(sent + lease["ttl"] - CLOCK_SLACK_S, revoke_sent)
        if status == 200 and seen_at < promised:
            what = "granted" if request is lease["grant"] else "renewed"
            by = f" by {request[3]}" if len(request) > 3 and request[3] else ""
            check.violations.append(
                f"lease {lease['id']} ({lease['plan']}) {what} by a request sent at {sent:.3f}s and acknowledged at "
                f"{answered:.3f}s{by} (TTL {lease['ttl']} s: promised until {sent + lease['ttl']:.3f}s), but its "
                f"keys' deletion at revision {deleted_at} had been received by a watcher at {seen_at:.3f}s")
            return
