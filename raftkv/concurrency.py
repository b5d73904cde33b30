"""Locks and leader elections for clients, built on leases, revisions and watches (as etcd's
`concurrency` package builds them on etcd's).

Theory of operation
-------------------
- A `Session` is a lease kept alive in the background. It is *lost* when the cluster says the
  lease is gone, or when no keep-alive was acknowledged for a whole TTL (counted from when the last
  acknowledged one was sent): from then on the cluster may have expired it, so nothing held
  through it may be trusted. It is lost at that moment, even while a keep-alive is still waiting
  for an answer.
- A contender for NAME puts the key `NAME/<lease id>` attached to its lease. That key's
  create revision is its place in the queue: it holds the lock (or leads the election) when no
  key under `NAME/` has a smaller one; otherwise it watches the key just ahead of it until that
  key is deleted, and looks again (the one ahead may have left without ever holding it). Its key
  goes away when it releases (the lease is revoked) or when its lease expires: a crashed holder
  cannot keep the lock for more than one TTL.
- The create revision is also the holder's **fencing token**: a holder acquires only once every
  key created before its own is gone, and revisions only grow, so each holder's token is larger
  than every earlier holder's. A lock alone cannot stop a holder that was paused past its TTL
  from acting after another took over; a resource that remembers the largest token it has seen
  and refuses smaller ones can (see the README).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from raftkv.byte_text import ESCAPES
from raftkv.client import Client, ClusterUnreachableError, key_path

__all__ = ["Contender", "Holding", "RecipeFailed", "Session", "SessionLost", "leaders"]


RETRY_S = 30.0  # how long a recipe's request is retried while the cluster elects a leader


class RecipeFailed(Exception):
    """The cluster refused a request of the recipe, or did not answer it in time."""


class SessionLost(Exception):
    """The session's lease is gone, or may be: what was held through it is no longer held."""


class Session:
    """A lease kept alive every TTL/3 until closed (then revoked, so waiters need not wait out
    the TTL)."""

    def __init__(self, client: Client, ttl_s: int) -> None:
        self.client = client
        self.ttl_s = ttl_s
        self.lease_id = 0
        self.lost = asyncio.Event()
        self.why = ""
        self._task: asyncio.Task | None = None

    async def __aenter__(self) -> Session:
        sent = time.monotonic()
        answer = await _ok(self.client, "POST", "/leases", {"ttl": self.ttl_s})
        self.lease_id = answer["id"]
        self._task = asyncio.get_running_loop().create_task(self._keep_alive(sent))
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        if not self.lost.is_set():
            with contextlib.suppress(ClusterUnreachableError, SessionLost):
                await _ok(self.client, "DELETE", f"/leases/{self.lease_id}")

    def check(self) -> None:
        if self.lost.is_set():
            raise SessionLost(self.why)

    async def _keep_alive(self, acknowledged_since: float) -> None:
        while True:
            # From `horizon` on the lease may be gone, so the session is lost then: not later, when
            # a keep-alive stuck on a paused or cut-off node finally times out.
            horizon = acknowledged_since + self.ttl_s
            await asyncio.sleep(max(0.0, min(self.ttl_s / 3, horizon - time.monotonic())))
            sent = time.monotonic()
            status, answer = 0, None
            if sent < horizon:
                try:
                    status, answer = await asyncio.wait_for(
                        self.client.request("POST", f"/leases/{self.lease_id}/keepalive"), horizon - sent)
                except ClusterUnreachableError:
                    pass
                except TimeoutError:
                    answer = "none before the TTL ran out"
            if status == 200:
                acknowledged_since = sent
            elif status == 404:
                return self._lose(f"lease {self.lease_id} expired or was revoked")
            if time.monotonic() - acknowledged_since >= self.ttl_s:
                return self._lose(f"no keep-alive of lease {self.lease_id} acknowledged for its TTL of "
                                  f"{self.ttl_s} s (last answer: {status or 'unreachable'} {answer or ''}): "
                                  "it may have expired")

    def _lose(self, why: str) -> None:
        self.why = why
        self.lost.set()


@dataclass(frozen=True, slots=True)
class Holding:
    key: str
    token: int  # the key's create revision: larger than every earlier holder's


class Contender:
    """One place in the queue of NAME, held through `session`."""

    def __init__(self, session: Session, name: str, value: Any) -> None:
        assert name, "a queue's name is the prefix of its keys"
        self.session = session
        self.client = session.client
        self.prefix = name + "/"
        self.key = f"{self.prefix}{session.lease_id:x}"
        self.value = value

    async def acquire(self) -> Holding:
        """Wait until first in the queue (SessionLost if the lease goes first)."""
        body = {"value": self.value, "lease": self.session.lease_id}
        answer = await _ok(self.client, "PUT", key_path(self.key), body)
        prev = answer.get("prev")  # a retried put keeps the first one's place
        mine = answer["revision"] if prev is None else prev["create_revision"]
        while True:
            self.session.check()
            queue, revision = await _queue(self.client, self.prefix)
            if not any(kv["key"] == self.key for kv in queue):
                raise SessionLost(f"{self.key} is gone: its lease {self.session.lease_id} expired or was revoked")
            ahead = [kv for kv in queue if kv["create_revision"] < mine]
            if not ahead:
                return Holding(self.key, mine)
            just_ahead = max(ahead, key=lambda kv: kv["create_revision"])
            await self._until_deleted(just_ahead["key"], revision + 1)

    async def _until_deleted(self, key: str, start_revision: int) -> None:
        async def deleted() -> None:
            async for batch in self.client.watch(key=key, start_revision=start_revision):
                if any(e["type"] == "delete" for e in batch["events"]):
                    return

        gone, lost = asyncio.ensure_future(deleted()), asyncio.ensure_future(self.session.lost.wait())
        try:
            await asyncio.wait({gone, lost}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (gone, lost):
                task.cancel()
        if gone.done() and not gone.cancelled() and gone.exception() is not None:
            raise gone.exception()  # type: ignore[misc]
        self.session.check()


async def leaders(client: Client, name: str) -> AsyncIterator[dict[str, Any] | None]:
    """The leader of election NAME (its key, value and create revision; None: nobody campaigns)
    now and each time it changes."""
    prefix = name + "/"
    shown: object = object()
    queue, revision = await _queue(client, prefix)
    while True:
        first = min(queue, key=lambda kv: kv["create_revision"], default=None)
        if first != shown:
            yield first
            shown = first
        async with contextlib.aclosing(client.watch(prefix=prefix, start_revision=revision + 1)) as changes:
            await anext(changes)  # something under the prefix changed: look again
        queue, revision = await _queue(client, prefix)


async def _queue(client: Client, prefix: str) -> tuple[list[dict[str, Any]], int]:
    """Every key under `prefix` (a linearizable read, page after page) and the revision it saw."""
    keys: list[dict[str, Any]] = []
    start = ""
    while True:
        query = urlencode({"prefix": prefix, "start": start, "limit": 1000}, errors=ESCAPES)
        page = await _ok(client, "GET", f"/kv?{query}")
        keys += page["items"]
        if not page["more"]:
            return keys, page["revision"]
        start = page["next"]


async def _ok(client: Client, method: str, path: str, body: Any = None) -> dict[str, Any]:
    """The answer, retried while the cluster has no leader or the outcome is unknown (every
    request here may be repeated: a put of the same key and lease keeps its first create
    revision) for up to RETRY_S; a lease the cluster does not know is SessionLost."""
    deadline = time.monotonic() + RETRY_S
    while True:
        try:
            status, answer = await client.request(method, path, body)
        except ClusterUnreachableError as e:
            status, answer = 0, str(e)
        if status == 200:
            return answer
        message = answer.get("error", answer) if isinstance(answer, dict) else answer
        if status == 404 and "lease" in str(message):
            raise SessionLost(str(message))
        if status not in (0, 503, 504) or time.monotonic() > deadline:
            raise RecipeFailed(f"{method} {path}: {status or 'unreachable'} {message}")
        await asyncio.sleep(0.2)
