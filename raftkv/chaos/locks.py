"""Lock clients under faults, a fenced resource, and the judge of both.

Theory of operation
-------------------
`LOCK_CLIENTS` clients take the lock `<prefix>lock` over and over with raftkv.concurrency's
recipe, as `raftkv lock` does: a `Session` (a lease kept alive every TTL/3), a `Contender` that
puts `<prefix>lock/<lease>` and waits until its key has the smallest create revision; that
revision is the fencing token. While holding, a client writes its token to the protected
resource, the key `<prefix>fence`, with the README's fenced write: a transaction that puts the
token only if the value there is smaller. It holds for a moment, then releases (the session's
lease is revoked); it stops holding earlier if the session is lost (the lease is gone, or no
keep-alive was acknowledged for a whole TTL). Each holding is recorded: its token, when
`acquire()` returned, when it ended and why, and the fenced write's answer.

What the judge claims, and only that (a lock alone cannot promise more; see the README):

* **tokens strictly increase in acquisition order**, and no token is handed out twice;
* **no two holdings overlap in time**, where a holding lasts from the moment `acquire()`
  returned until the holder released it *or learned that its session was lost*, whichever came
  first (a holder acts on what it knows; the runs here never pause a lock client, so what it
  knows is what a careful holder would know). A holding whose session was already lost when
  `acquire()` returned is void: the client never acts on it;
* **the fenced resource only moves forward**: the fence key's values, in the order the cluster
  committed them (its final history), strictly increase, and every fenced write answered
  "succeeded" is among them. A stale holder's write is refused by its compare, never applied
  over a newer holder's.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Mapping
from dataclasses import asdict, dataclass
from itertools import pairwise
from typing import Any, TypeVar

from raftkv.chaos.connect import run_client
from raftkv.chaos.histories import NodeHistories
from raftkv.chaos.judge import SideCheck
from raftkv.chaos.leases import CLOCK_SLACK_S
from raftkv.chaos.recorder import Recorder
from raftkv.client import Client, ClusterUnreachableError, StreamRefused, WatchCompacted
from raftkv.concurrency import Contender, RecipeFailed, Session, SessionLost

__all__ = ["LOCK_CLIENTS", "LOCK_TTL_S", "HoldingRecord", "LockClients", "judge_locks"]

LOCK_CLIENTS = 3
LOCK_TTL_S = 2
HOLD_S = (0.1, 0.6)
MAX_REPORTED = 10
T = TypeVar("T")


@dataclass
class HoldingRecord:
    client: int
    asked_at: float
    lease: int = 0
    key: str = ""
    token: int | None = None  # None: never acquired
    acquired_at: float | None = None
    ended_at: float | None = None
    end: str = ""  # "released", "lost: <why>", "void: <why>", "gave up: <why>", "stopped"
    fenced: list[Any] | None = None  # [sent, answered, HTTP status or None, succeeded or None]


class LockClients:
    def __init__(self, prefix: str, urls: Mapping[str, str], recorder: Recorder, seed: int, op_timeout_s: float,
                 count: int = LOCK_CLIENTS) -> None:
        self.name = f"{prefix}lock"
        self.fence = f"{prefix}fence"
        self.recorder = recorder
        self.seed = seed
        self.op_timeout_s = op_timeout_s
        self.count = count
        self.urls = [urls[n] for n in sorted(urls)]
        self.holdings: list[HoldingRecord] = []

    async def run(self, stop: asyncio.Event) -> None:
        async with run_client(self.urls, timeout_s=self.op_timeout_s) as client:
            # The resource starts at 0: a compare on an absent key fails (as in etcd's txn). No node
            # answering is not fatal: the clients' own rounds retry and record what they could do.
            with contextlib.suppress(ClusterUnreachableError):
                await client.request("PUT", f"/kv/{self.fence}", {"value": 0, "prev_exist": False})
        await asyncio.gather(*(self._client(i, stop) for i in range(self.count)))

    async def _client(self, index: int, stop: asyncio.Event) -> None:
        rng = random.Random(f"{self.seed}/lock/{index}")
        while not stop.is_set():
            # Each round starts on another node: a client moves to the next endpoint only when one
            # does not answer at all, and a node that answers 503 (no leader it can reach) would
            # otherwise hold every later round of this client too.
            first = rng.randrange(len(self.urls))
            holding = HoldingRecord(index, self.recorder.now())
            self.holdings.append(holding)
            try:
                async with run_client(self.urls[first:] + self.urls[:first], timeout_s=self.op_timeout_s) as client:
                    await self._round(client, holding, rng, stop)
            except SessionLost as e:
                self._end(holding, f"lost: {e}")
            except (RecipeFailed, ClusterUnreachableError, StreamRefused, WatchCompacted) as e:
                self._end(holding, f"gave up: {e}")
                await _until(stop, asyncio.sleep(0.2))

    async def _round(self, client: Client, holding: HoldingRecord, rng: random.Random, stop: asyncio.Event) -> None:
        async with Session(client, LOCK_TTL_S) as session:
            contender = Contender(session, self.name, holding.client)
            holding.lease, holding.key = session.lease_id, contender.key
            got = await _until(stop, contender.acquire())
            if got is None:
                return self._end(holding, "stopped")
            holding.token, holding.acquired_at = got.token, self.recorder.now()
            if session.lost.is_set():
                return self._end(holding, f"void: {session.why}")
            holding.fenced = await self._fenced_write(client, got.token)
            await _until(session.lost, asyncio.sleep(rng.uniform(*HOLD_S)))
            self._end(holding, f"lost: {session.why}" if session.lost.is_set() else "released")

    async def _fenced_write(self, client: Client, token: int) -> list[Any]:
        """The README's fenced write: put the token only over a smaller one."""
        txn = {"compare": [{"key": self.fence, "target": "value", "op": "<", "value": token}],
               "success": [{"op": "put", "key": self.fence, "value": token}], "failure": []}
        sent = self.recorder.now()
        try:
            status, answer = await client.request("POST", "/txn", txn)
        except ClusterUnreachableError:
            status, answer = None, None
        succeeded = answer.get("succeeded") if status == 200 and isinstance(answer, dict) else None
        return [sent, self.recorder.now(), status, succeeded]

    def _end(self, holding: HoldingRecord, why: str) -> None:
        if holding.ended_at is None:
            holding.ended_at, holding.end = self.recorder.now(), why

    def lease_ids(self) -> set[int]:
        return {h.lease for h in self.holdings if h.lease}

    def to_json(self) -> list[dict[str, Any]]:
        return [asdict(h) for h in self.holdings]


async def _until(event: asyncio.Event, work: Awaitable[T]) -> T | None:
    """`work`'s result, or None (and `work` cancelled) if `event` is set first."""
    task, waiting = asyncio.ensure_future(work), asyncio.ensure_future(event.wait())
    try:
        await asyncio.wait({task, waiting}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiting.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    return None if task.cancelled() else task.result()


def judge_locks(holdings: list[dict[str, Any]], fence: str, histories: NodeHistories) -> SideCheck:
    check = SideCheck("lock")
    acquired = [h for h in holdings if h["token"] is not None]
    tokens = [h["token"] for h in acquired]
    for token in sorted({t for t in tokens if tokens.count(t) > 1}):
        check.violations.append(f"token {token} handed to more than one holding: "
                                + "; ".join(_holding(h) for h in acquired if h["token"] == token))
    held = sorted((h for h in acquired if not h["end"].startswith("void")), key=lambda h: h["acquired_at"])
    for a, b in pairwise(held):
        if b["token"] <= a["token"]:
            check.violations.append(f"tokens not increasing in acquisition order: {_holding(a)}, then {_holding(b)}")
        if a["ended_at"] > b["acquired_at"] + CLOCK_SLACK_S:
            check.violations.append(f"two holders at once for {a['ended_at'] - b['acquired_at']:.3f}s: "
                                    f"{_holding(a)} and {_holding(b)}")
    landed = _judge_fence(acquired, fence, histories, check)
    check.stats = {"holdings": len(held), "lost while holding": sum(1 for h in held if h["end"].startswith("lost")),
                   "void": len(acquired) - len(held), "fenced writes landed": landed,
                   "stale fenced writes refused": sum(1 for h in acquired if h["fenced"] and h["fenced"][3] is False)}
    return check


def _judge_fence(acquired: list[dict[str, Any]], fence: str, histories: NodeHistories, check: SideCheck) -> int:
    """How many fenced writes landed; each problem with the fence's history goes into `check`."""
    if not histories:
        check.inconclusive.append("no node's history could be read")
        return 0
    node = sorted(histories)[0]
    versions = histories[node]["keys"].get(fence)
    if not isinstance(versions, list):
        check.inconclusive.append(f"history of {fence} unreadable on {node}: {versions}")
        return 0
    values = [v["kv"]["value"] for v in versions if v["kv"] is not None]
    for before, after in pairwise(values):
        if not after > before:
            check.violations.append(f"{fence}: fenced write of token {after} landed after token {before}")
    if histories[node]["compactRevision"] == 0:  # with history compacted, an early write may be forgotten
        for h in acquired:
            if h["fenced"] and h["fenced"][3] is True and h["token"] not in values:
                check.violations.append(f"fenced write acknowledged as succeeded but not in {fence}'s history: "
                                        f"{_holding(h)}")
    return len(set(values) & {h["token"] for h in acquired})


def _holding(h: dict[str, Any]) -> str:
    return (f"client {h['client']} token {h['token']} from {h['acquired_at']:.3f}s to {h['ended_at']:.3f}s "
            f"({h['end']})")
