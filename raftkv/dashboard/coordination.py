"""What the cluster's clients coordinate with, as the dashboard shows it: leases counting down and
the keys they hold, lock (and election) holders with their fencing tokens, and a live watch feed.

Theory of operation
-------------------
Leases and locks are read from the cluster, never inferred. Every `POLL_EVERY_S` the dashboard asks
the leader, whose clock decides expiry, for `GET /leases` and then each lease's `GET /leases/{id}`
(TTL, what is left of it by the leader's clock, its keys). Locks and elections are recognised by
etcd's recipe (raftkv/concurrency.py): a key `NAME/<lease id in hex>` attached to that lease is a
contender for NAME; the queue is every key under `NAME/`, the holder is the key with the smallest
create revision, and that revision is its fencing token. Every read here needs no Raft message
(the lease routes are the leader's own tables, the ranges are stale reads of the leader's store):
the dashboard must not add ReadIndex rounds of its own, which the lab would hold and list.

The picture goes to the pages as a `coordination` event when it changed: a lease, key, holder or
leader came or went, or a remaining TTL moved other than by the clock (a keep-alive, a new leader
giving every lease a full TTL). Between events the page counts down from `remaining` as of the
event's time. It is sent again every `RESEND_S` anyway, so a newly opened page's hello carries one.

The watch feed is a real watch, `raftkv.client.Client.watch`: Server-Sent Events that resume on the
next member from the revision after the last one seen, so no gap and no duplicate. It follows every
key, or the prefix chosen on the page or by a tour. Revisions are relayed in order as `watch` events
every `RELAY_EVERY_S`; under a load one event carries at most `MAX_REVISIONS_PER_EVENT` of them (the
newest) and says how many before them it left out, a revision at most `MAX_EVENTS_PER_REVISION`
changes, and values are cut to `VALUE_PREVIEW_CHARS`: a busy cluster cannot flood the recorder.
Every revision, even one left out of the events, is kept in `recent` (bounded) for the tour.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from typing import Any
from urllib.parse import quote

import aiohttp

from raftkv.client import Client, StreamRefused, WatchCompacted

from .hub import Hub, NodeLink

log = logging.getLogger("raftkv.dashboard")

POLL_EVERY_S = 1.0
RESEND_S = 10.0  # an unchanged picture is sent again this often
READ_TIMEOUT_S = 1.0
DRIFT_S = 0.5  # a remaining TTL further than this from the clock's countdown was renewed (or reset)
MAX_LEASES = 20  # leases shown (the oldest granted first); the event says how many more there are
MAX_KEYS_PER_LEASE = 20
MAX_LOCKS = 10
MAX_QUEUE = 20  # contenders of one lock shown, in queue order
RELAY_EVERY_S = 0.25
MAX_REVISIONS_PER_EVENT = 20
MAX_EVENTS_PER_REVISION = 10
VALUE_PREVIEW_CHARS = 60
RECENT_REVISIONS = 500
WATCH_RETRY_S = 1.0


def lease_hex(lease_id: int | str) -> str:
    """A lease id as etcd and lock keys write it. Ids go to the page as text: they exceed 2**53."""
    return f"{int(lease_id):x}"


def preview(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return text if len(text) <= VALUE_PREVIEW_CHARS else text[:VALUE_PREVIEW_CHARS - 1] + "…"


def lock_names(leases: list[dict]) -> list[str]:
    """Lock and election names: each key `NAME/<its lease id in hex>` is a contender for NAME."""
    names = {key.rsplit("/", 1)[0] for lease in leases for key in lease["keys"]
             if "/" in key and key.rsplit("/", 1)[1] == lease["hex"]}
    return sorted(names)[:MAX_LOCKS]


def lock_queue(name: str, items: list[dict]) -> dict:
    """A lock's queue from every key under `NAME/`: the holder first (smallest create revision,
    which is its fencing token), then the waiting contenders in the order they will hold it."""
    queue = sorted(items, key=lambda kv: kv["create_revision"])
    shown = [{"key": kv["key"], "token": kv["create_revision"], "value": preview(kv["value"]),
              "lease": lease_hex(kv["lease"]) if kv.get("lease") else None} for kv in queue[:MAX_QUEUE]]
    return {"name": name, "holder": shown[0] if shown else None, "waiting": shown[1:],
            "moreWaiting": max(0, len(queue) - MAX_QUEUE)}


def relayed_revision(batch: dict) -> dict:
    """One revision of a watch stream as the page draws it: bounded, values cut, lease ids in hex."""
    events = []
    for e in batch["events"][:MAX_EVENTS_PER_REVISION]:
        kv = e.get("kv") if e["type"] == "put" else e.get("prev")  # a delete shows what it removed
        shown: dict[str, Any] = {"type": e["type"], "key": e["key"]}
        if kv:
            shown["value"] = preview(kv["value"])
            if kv.get("lease"):
                shown["lease"] = lease_hex(kv["lease"])
        events.append(shown)
    return {"revision": batch["revision"], "events": events,
            "more": max(0, len(batch["events"]) - MAX_EVENTS_PER_REVISION)}


def renewed(before: dict, after: dict, elapsed_s: float) -> bool:
    """Whether `after` differs from `before` other than by the leader's clock running `elapsed_s`."""
    if {k: v for k, v in before.items() if k != "leases"} != {k: v for k, v in after.items() if k != "leases"}:
        return True
    if [(x["id"], x["ttl"], x["keys"]) for x in before["leases"]] != [(x["id"], x["ttl"], x["keys"])
                                                                      for x in after["leases"]]:
        return True
    return any(abs(max(0.0, b["remaining"] - elapsed_s) - a["remaining"]) > DRIFT_S
               for b, a in zip(before["leases"], after["leases"], strict=True))


class CoordinationView:
    """Follows the cluster's leases, locks and a watch, and tells the pages through the hub."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.prefix = ""
        self.watching_from: int | None = None
        self.recent: deque[tuple[float, dict]] = deque(maxlen=RECENT_REVISIONS)  # (monotonic, revision)
        self.picture: dict | None = None  # the last coordination picture sent
        self._sent_at = 0.0
        self._pending: list[dict] = []
        self._watch_task: asyncio.Task | None = None
        self._tasks: list[asyncio.Task] = []

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._poll_loop()), loop.create_task(self._relay_loop())]
        self._restart_watch(None)

    async def stop(self) -> None:
        tasks = [*self._tasks, *([self._watch_task] if self._watch_task else [])]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    # ------------------------------------------------------------------ the watch ---------------

    async def watch(self, prefix: str, start_revision: int | None = None) -> dict:
        """Watch `prefix` ("" for every key) from `start_revision` (None: from now) instead."""
        if not isinstance(prefix, str):
            raise ValueError("prefix: a string (empty for every key)")
        if start_revision is not None and (type(start_revision) is not int or start_revision < 1):
            raise ValueError("start_revision: an integer from 1, or leave it out for from now")
        self.prefix = prefix
        self.hub.action(f"the dashboard now watches {_what(prefix)}"
                        + (f" from revision {start_revision}" if start_revision else ""), kind="watch", icon="live")
        self._restart_watch(start_revision)
        return {"prefix": prefix, "from": start_revision}

    def seen(self, key: str, kind: str, after: int = 0) -> tuple[float, int] | None:
        """(when, revision) of the first `kind` ("put" or "delete") of `key` relayed after revision `after`."""
        return next(((at, rev["revision"]) for at, rev in self.recent if rev["revision"] > after
                     and any(e["type"] == kind and e["key"] == key for e in rev["events"])), None)

    def _restart_watch(self, start_revision: int | None) -> None:
        if self._watch_task is not None:
            self._watch_task.cancel()
        self._pending.clear()
        self.watching_from = start_revision
        self._watch_task = asyncio.get_running_loop().create_task(self._watch_loop(self.prefix, start_revision))
        self.hub.emit({"type": "watch", "prefix": self.prefix, "from": start_revision, "started": True,
                       "revisions": [], "skipped": 0})

    async def _watch_loop(self, prefix: str, start_revision: int | None) -> None:
        next_revision = start_revision
        while True:
            urls = [link.url for link in self.hub.members()]  # read again at each start: members change
            if not urls:
                await asyncio.sleep(WATCH_RETRY_S)
                continue
            try:
                async with Client(urls, timeout_s=READ_TIMEOUT_S * 2, access=self.hub.access) as client:
                    async for batch in client.watch(prefix=prefix, start_revision=next_revision, prev_kv=True):
                        revision = relayed_revision(batch)
                        self.recent.append((time.monotonic(), revision))
                        self._pending.append(revision)
                        next_revision = batch["revision"] + 1
            except WatchCompacted as e:  # history is gone below where it would resume: go on from now
                self._note(f"the dashboard's watch resumes from now: {e}")
                next_revision = None
            except StreamRefused as e:
                self._note(f"the dashboard's watch of {_what(prefix)} was refused: {e}")
            await asyncio.sleep(WATCH_RETRY_S)

    def _note(self, text: str) -> None:
        self.hub.emit({"type": "watch", "prefix": self.prefix, "revisions": [], "skipped": 0, "note": text})

    async def _relay_loop(self) -> None:
        while True:
            await asyncio.sleep(RELAY_EVERY_S)
            if not self._pending:
                continue
            batch, self._pending = self._pending, []
            shown = batch[-MAX_REVISIONS_PER_EVENT:]
            self.hub.emit({"type": "watch", "prefix": self.prefix, "revisions": shown,
                           "skipped": len(batch) - len(shown)})

    # ------------------------------------------------------------------ leases and locks --------

    async def _poll_loop(self) -> None:
        while True:
            await asyncio.sleep(POLL_EVERY_S)
            try:
                picture = await self.read()
            except (aiohttp.ClientError, OSError, TimeoutError, ValueError, KeyError, TypeError) as e:
                log.debug("reading the leases failed: %s", e)
                continue  # the leader changed or went away mid-read: the next poll reads again
            self._offer(picture)

    def _offer(self, picture: dict) -> None:
        now = time.monotonic()
        if self.picture is None or now - self._sent_at >= RESEND_S or renewed(self.picture, picture,
                                                                             now - self._sent_at):
            self.picture, self._sent_at = picture, now
            self.hub.emit({"type": "coordination", **picture})

    def _leader(self) -> NodeLink | None:
        now = time.time()
        return next((n for n in self.hub.members() if (n.status or {}).get("state") == "leader"
                     and n.reach(now) == "ok"), None)

    async def read(self) -> dict:
        """The leases (with their keys and what is left of their TTL) and the locks, from the leader."""
        leader = self._leader()
        if leader is None:
            return {"leader": None, "leases": [], "more": 0, "locks": [], "revision": None}
        table = await self._get(leader, "/leases")
        rows = sorted(table["leases"], key=lambda r: r["grantedRevision"])
        infos = await asyncio.gather(*(self._get(leader, f"/leases/{r['id']}") for r in rows[:MAX_LEASES]),
                                     return_exceptions=True)
        leases = [{"id": str(i["id"]), "hex": lease_hex(i["id"]), "ttl": i["ttl"], "remaining": i["remaining"],
                   "keys": i["keys"][:MAX_KEYS_PER_LEASE], "keyCount": len(i["keys"]),
                   "grantedRevision": i["grantedRevision"]}
                  for i in infos if isinstance(i, dict)]  # a lease that expired meanwhile is not shown
        names = lock_names(leases)
        ranges = await asyncio.gather(*(self._get(leader, f"/kv?prefix={quote(n + '/', safe='')}&stale=true"
                                                  f"&limit=1000") for n in names))
        locks = [lock_queue(n, r["items"]) for n, r in zip(names, ranges, strict=True)]
        return {"leader": leader.id, "leases": leases, "more": max(0, len(rows) - MAX_LEASES),
                "locks": [lock for lock in locks if lock["holder"]],  # a queue emptied since the leases were read
                "revision": table["revision"]}

    async def current_revision(self) -> int:
        """The store's revision as the leader has applied it (no Raft round: see the module's words)."""
        leader = self._leader()
        if leader is None:
            raise ValueError("no leader to ask for the current revision")
        return int((await self._get(leader, "/leases"))["revision"])

    async def _get(self, link: NodeLink, path: str) -> dict:
        async with self.hub.session.get(link.url.rstrip("/") + path,
                                        timeout=aiohttp.ClientTimeout(total=READ_TIMEOUT_S)) as resp:
            body = await resp.json()
            if resp.status != 200 or not isinstance(body, dict):
                raise ValueError(f"{link.id} answered {resp.status} to GET {path}: {body}")
            return body


def _what(prefix: str) -> str:
    return f"the keys under {prefix}" if prefix else "every key"
