"""The coordination routes: key history and compaction, watches (Server-Sent Events) and leases.

Theory of operation
-------------------
- `GET /kv/{key}/history` lists a key's retained versions; `GET /kv/{key}?revision=N` and
  `GET /kv?...&revision=N` (in http.py) read as of a past revision; `POST /compact {"revision"}`
  forgets history at or below it. A read below the compacted revision is 410 naming it.
- `GET /watch?key=K` or `?prefix=P`, with `start_revision=N` and `prev_kv=true`, is an SSE
  stream (`text/event-stream`): one message per revision (`id:` the revision, `data:` the JSON of
  its events), so a browser's EventSource resumes by itself from `Last-Event-ID` with no gap and
  no duplicate; `event: progress` tells an idle watcher how current it is; `event: cancelled`
  ends a slow or compacted watch with the revision to resume from. Starting below the compacted
  revision is a 410 before the stream begins.
- `POST /leases {"ttl", "id"?}`, `GET /leases`, `GET /leases/{id}`, `POST /leases/{id}/keepalive`,
  `DELETE /leases/{id}`; `PUT /kv/{key}` with `"lease": id` attaches a key (http.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from typing import Any, TypeVar

from aiohttp import web

from raftkv.api.auth import Gate
from raftkv.api.errors import ApiError, check_query, json_response, query_flag, query_integer
from raftkv.api.node import Node
from raftkv.api.requests import RequestReader
from raftkv.kv import MAX_LEASE_TTL_S, Access, CompactedError, kv_to_dict
from raftkv.node.watch import WatchBatch

__all__ = ["Coordination", "at_revision"]

T = TypeVar("T")
_MAX_LEASE_ID = 2**63 - 1
_MAX_REVISION = 2**63 - 1  # a log entry holds a 64-bit integer at most
MAX_BATCHES_PER_WRITE = 256  # bounds one write of a watch stream (each batch is one revision's changes)
# ...and so do its bytes (a batch may hold megabytes): a watcher that stops reading holds its
# transport's buffer and one such write until it is cut off (api/connections.py).
MAX_BYTES_PER_WRITE = 1024 * 1024


def at_revision(read: Callable[[], T]) -> T:
    """`read()`, with a compacted revision answered 410 naming where history begins."""
    try:
        return read()
    except CompactedError as e:
        raise ApiError(410, str(e), compactRevision=e.compacted) from None


class Coordination:
    def __init__(self, node: Node, read: RequestReader, gate: Gate) -> None:
        self.node = node
        self.read = read
        self.gate = gate

    def routes(self, app: web.Application) -> None:
        add = app.router.add_route
        add("POST", "/compact", self.compact)
        app.router.add_get("/watch", self.watch, allow_head=False)  # a stream
        app.router.add_get("/leases", self.leases)
        add("POST", "/leases", self.grant)
        app.router.add_get("/leases/{id}", self.lease)
        add("POST", "/leases/{id}/keepalive", self.keepalive)
        add("DELETE", "/leases/{id}", self.revoke)

    # ---- history ------------------------------------------------------------------------------

    async def history(self, request: web.Request) -> web.StreamResponse:
        """GET /kv/{key}/history: every retained version, oldest first (a delete is a null kv)."""
        key = self.read.key(request).removesuffix("/history")
        query = check_query(request, {"stale"})
        if not key:
            raise ApiError(400, "key: must not be empty")
        if not query_flag(query.get("stale"), "stale"):
            await self.node.read_barrier()
        self.gate.require(request, Access.READ, key=key)
        kv = self.node.kv
        versions = [{"revision": rev, "kv": None if found is None else kv_to_dict(key, found)}
                    for rev, found in kv.store.history(key)]
        return json_response(self.node.id, {"key": key, "versions": versions, "compactRevision": kv.store.compacted,
                                            "revision": kv.revision})

    async def compact(self, request: web.Request) -> web.StreamResponse:
        check_query(request, set())
        body = await self.read.object(request, ("revision",), '{"revision": 1000}')
        revision = body.get("revision")
        if type(revision) is not int or not 1 <= revision <= _MAX_REVISION:
            raise ApiError(400, f"revision: must be an integer from 1 to {_MAX_REVISION}")
        result = await self.node.compact(revision)
        if not result.get("ok"):
            raise ApiError(400, str(result.get("message")), revision=result.get("revision"))
        return json_response(self.node.id, {k: v for k, v in result.items() if k != "ok"})

    # ---- watch --------------------------------------------------------------------------------

    async def watch(self, request: web.Request) -> web.StreamResponse:
        query = check_query(request, {"key", "prefix", "start_revision", "prev_kv"})
        key, prefix = query.get("key"), query.get("prefix")
        if (key is None) == (prefix is None):
            raise ApiError(400, "give key=K or prefix=P (exactly one)")
        self.read.check_key_size(key if key is not None else prefix, "key" if key is not None else "prefix")
        self.gate.require(request, Access.READ, key=key, prefix=prefix)
        start = self._start_revision(request, query)
        prev_kv = query_flag(query.get("prev_kv"), "prev_kv")
        watcher = at_revision(lambda: self.node.watch(key=key, prefix=prefix, start_revision=start, prev_kv=prev_kv))
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                               "X-Accel-Buffering": "no"})
        try:
            await response.prepare(request)
            await response.write(b": watching " + json.dumps({"key": key, "prefix": prefix}).encode() + b"\n\n")
            checked_at = self.gate.state.revision
            while True:
                batch = await watcher.queue.get()
                data, ended = _sse_queued(batch, watcher.queue, prev_kv)
                if self.gate.state.revision != checked_at:  # users or roles changed: may it go on?
                    checked_at = self.gate.state.revision
                    if why := self.gate.stream_refusal(request, Access.READ, key=key, prefix=prefix):
                        # Ended as any cancelled watch ends: where to resume (this batch was not
                        # sent), for a client that may open it again (with credentials, say).
                        end = WatchBatch(batch.revision + 1 if batch.progress else batch.revision, cancelled=why)
                        await response.write(_sse(end.to_json(prev_kv), end))
                        break
                await response.write(data)
                if ended:
                    break
        except (ConnectionError, asyncio.CancelledError):
            pass  # the watcher went away (a write waiting for it to read ends with a bare ConnectionError)
        finally:
            self.node.unwatch(watcher)
        with contextlib.suppress(ConnectionResetError):
            await response.write_eof()
        return response

    def _start_revision(self, request: web.Request, query: Any) -> int | None:
        """From `start_revision`, or just after a resumed EventSource's Last-Event-ID."""
        if "start_revision" in query:
            return query_integer(query["start_revision"], "start_revision", 1)
        last_seen = request.headers.get("Last-Event-ID")
        if last_seen:
            return query_integer(last_seen, "Last-Event-ID", 0) + 1
        return None

    # ---- leases -------------------------------------------------------------------------------

    async def leases(self, request: web.Request) -> web.StreamResponse:
        check_query(request, set())
        table = self.node.kv.leases.leases
        rows = [{"id": lease.lease_id, "ttl": lease.ttl_s, "keys": len(lease.keys),
                 "grantedRevision": lease.granted_revision} for lease in sorted(table.values(), key=_lease_id)]
        return json_response(self.node.id, {"leases": rows, "revision": self.node.kv.revision})

    async def grant(self, request: web.Request) -> web.StreamResponse:
        check_query(request, set())
        body = await self.read.object(request, ("ttl", "id"), '{"ttl": 10}')
        ttl = body.get("ttl")
        if type(ttl) is not int or not 1 <= ttl <= MAX_LEASE_TTL_S:
            raise ApiError(400, f"ttl: must be an integer number of seconds from 1 to {MAX_LEASE_TTL_S}")
        lease_id = body.get("id")  # when given (null too), a valid id; left out, the leader picks one
        if "id" in body and (type(lease_id) is not int or not 1 <= lease_id <= _MAX_LEASE_ID):
            raise ApiError(400, f"id: must be an integer from 1 to {_MAX_LEASE_ID}, or omitted")
        result = await self.node.grant_lease(ttl, lease_id)
        if not result.get("ok"):
            raise ApiError(409, str(result.get("message")), lease=lease_id)
        return json_response(self.node.id, {"id": result["lease"], "ttl": result["ttl"],
                                            "revision": result["revision"]})

    async def lease(self, request: web.Request) -> web.StreamResponse:
        check_query(request, set())
        return json_response(self.node.id, dict(await self.node.lease_info(self._lease_id(request))))

    async def keepalive(self, request: web.Request) -> web.StreamResponse:
        check_query(request, set())
        await self.read.no_body(request)
        return json_response(self.node.id, dict(await self.node.keepalive_lease(self._lease_id(request))))

    async def revoke(self, request: web.Request) -> web.StreamResponse:
        """Revoking deletes the lease's keys: it needs write access to each."""
        check_query(request, set())
        await self.read.no_body(request)
        lease_id = self._lease_id(request)
        lease = self.node.kv.leases.leases.get(lease_id)
        for key in sorted(lease.keys) if lease is not None else ():
            self.gate.require(request, Access.WRITE, key=key)
        result = await self.node.revoke_lease(lease_id)
        if not result.get("ok"):
            raise ApiError(404, str(result.get("message")), lease=result.get("lease"))
        return json_response(self.node.id, {"id": result["lease"], "deleted": result["deleted"],
                                            "revision": result["revision"]})

    @staticmethod
    def _lease_id(request: web.Request) -> int:
        return query_integer(request.match_info["id"], "lease id", 1, _MAX_LEASE_ID)


def _sse_queued(first: WatchBatch, queue: asyncio.Queue[WatchBatch], prev_kv: bool) -> tuple[bytes, bool]:
    """`first` and the batches already queued behind it (at most MAX_BATCHES_PER_WRITE, and none
    more once MAX_BYTES_PER_WRITE are reached), as the bytes of one write, and whether the stream
    ends with them (cancelled). A watcher that fell
    behind catches up in a few large socket writes: one write per revision per watcher had been
    over half of a node's time with 1,000 watchers. Each batch is encoded once, whoever shares it."""
    parts: list[bytes] = []
    size = 0
    batch = first
    while True:
        encoded = batch.encoded.get(prev_kv)
        if encoded is None:
            encoded = batch.encoded[prev_kv] = _sse(batch.to_json(prev_kv), batch)
        parts.append(encoded)
        size += len(encoded)
        if batch.cancelled is not None:
            return b"".join(parts), True
        if queue.empty() or len(parts) >= MAX_BATCHES_PER_WRITE or size >= MAX_BYTES_PER_WRITE:
            return b"".join(parts), False
        batch = queue.get_nowait()


def _sse(payload: dict[str, Any], batch: Any) -> bytes:
    """One Server-Sent Event: the revision's events under its id, or a progress or cancel notice."""
    if batch.cancelled is not None:
        return b"event: cancelled\ndata: " + json.dumps(payload).encode() + b"\n\n"
    if batch.progress:
        return f"event: progress\nid: {batch.revision}\ndata: ".encode() + json.dumps(payload).encode() + b"\n\n"
    return f"id: {batch.revision}\ndata: ".encode() + json.dumps(payload).encode() + b"\n\n"


def _lease_id(lease: Any) -> int:
    return lease.lease_id
