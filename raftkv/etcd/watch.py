"""etcd's Watch service: many watches on one bidirectional stream, over the node's watch hub.

Theory of operation
-------------------
One `Watch` call is one stream. Requests (create, cancel, progress) are read by one task; each
watch has a pump task that turns the hub's batches (one per revision, node/watch.py) into
`WatchResponse`s; every response leaves through one bounded queue, in the order it was made, so
a watch's "created" always precedes its events. A watch's events are those of one revision per
response, so a client that resumes from the last revision it saw plus one misses nothing.

Ranges: a single key is a key watch; any other [key, range_end) range watches the longest prefix
the range's keys share and drops the keys outside it here. As in etcd, no key is the first key
("\\0"), a range that holds no key (range_end at or before the key) and an id the stream already
uses are refused as a refused permission is (below), and the ids the stream picks count up, never
reused. Filters (NOPUT, NODELETE) drop events here too; a response left with no event is not
sent. A watch that asked for fragments gets a large revision in parts of at most
MAX_FRAGMENT_BYTES, all but the last marked `fragment`. Progress notices (every
PROGRESS_EVERY_S, node/watch.py, busy or idle) reach a watch only if it asked (progress_notify);
a progress request is answered with the revision every watch of the stream has been sent up to
(etcd's watch id -1: it concerns all of them).

A watch from a compacted revision, or one the hub cancels (too slow, or its history was
compacted under it), ends with `canceled` and, if compacted, the compacted revision, from which
clients report "required revision has been compacted".

While auth is on, a watch needs read access to its key or range when it is created (admission.py);
one refused is answered as etcd answers it: created and cancelled at once, watch id -1, with
"etcdserver: permission denied" as the reason. As raftkv's own watches, one that is open is checked
again whenever users or roles change, and cancelled with that reason if its user lost the
permission (or with why, if auth was turned on after it began).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc

from raftkv.byte_text import ESCAPED_BYTES, as_bytes
from raftkv.etcd.admission import Admission, range_need
from raftkv.etcd.convert import ALL_FROM, Bounds, kv_message
from raftkv.etcd.errors import EtcdError
from raftkv.etcd.identity import Identity
from raftkv.etcd.pb import kv_pb2, rpc_pb2, rpc_pb2_grpc
from raftkv.etcd.streams import OpenStreams, unless_ending
from raftkv.kv import Access, Change, CompactedError
from raftkv.node import NodeHost
from raftkv.node.watch import Watcher

__all__ = ["WatchService"]

MAX_QUEUED_RESPONSES = 1024  # per stream; a pump waits while the client reads slowly
PROGRESS_ID = -1  # a progress answer to a progress request concerns every watch of the stream
REFUSED_ID = -1  # etcd's InvalidWatchID: the id of a watch refused as it was created (permission, range, id)
MAX_FRAGMENT_BYTES = int(1.5 * 1024 * 1024)  # etcd's default --max-request-bytes, which bounds its fragments


@dataclass(eq=False)
class _Watch:
    watch_id: int
    bounds: Bounds
    watcher: Watcher
    request: rpc_pb2.WatchCreateRequest
    sent_to: int  # the revision this watch's client has been sent everything up to
    checked_at: int  # the auth revision its permission was last checked at
    pump: asyncio.Task | None = None

    def wants(self, change: Change) -> bool:
        if not self.bounds.contains(change.key):
            return False
        filtered = rpc_pb2.WatchCreateRequest.NOPUT if change.kv is not None else rpc_pb2.WatchCreateRequest.NODELETE
        return filtered not in self.request.filters


class _Stream:
    """The watches of one Watch call."""

    def __init__(self, node: NodeHost, identity: Identity, admission: Admission) -> None:
        self.node = node
        self.identity = identity
        self.admission = admission
        self.out: asyncio.Queue[rpc_pb2.WatchResponse] = asyncio.Queue(MAX_QUEUED_RESPONSES)
        self.watches: dict[int, _Watch] = {}
        self._next_id = 0

    async def serve(self, requests: AsyncIterator[rpc_pb2.WatchRequest]) -> None:
        async for request in requests:
            kind = request.WhichOneof("request_union")
            if kind == "create_request":
                await self.create(request.create_request)
            elif kind == "cancel_request":
                await self.cancel(request.cancel_request.watch_id, reason="")
            elif kind == "progress_request":
                sent = min((w.sent_to for w in self.watches.values()), default=self.node.kv.revision)
                await self.out.put(rpc_pb2.WatchResponse(header=self.identity.header(sent), watch_id=PROGRESS_ID))

    async def create(self, create: rpc_pb2.WatchCreateRequest) -> None:
        key = create.key or ALL_FROM  # as etcd: a watch of no key watches the first key, "\0"
        bounds = Bounds(key, create.range_end)
        try:
            self.admission.require(*range_need(Access.READ, bounds))
        except EtcdError as e:
            await self._refuse(e.message)
            return
        if create.range_end not in (b"", ALL_FROM) and key >= create.range_end:
            await self._refuse("mvcc: watcher range is empty")
            return
        if create.watch_id and create.watch_id in self.watches:  # (0 asks for the next free id)
            await self._refuse("mvcc: duplicate watch ID provided on the WatchStream")
            return
        watch_id = create.watch_id or self._next_free_id()
        kv = self.node.kv
        try:
            if bounds.single:
                watcher = self.node.watch(key=bounds.start, start_revision=create.start_revision or None,
                                          prev_kv=create.prev_kv)
            else:
                shared = _shared_prefix(bounds.start, bounds.end) if bounds.end is not None else ""
                watcher = self.node.watch(prefix=shared, start_revision=create.start_revision or None,
                                          prev_kv=create.prev_kv)
        except CompactedError as e:
            await self.out.put(rpc_pb2.WatchResponse(header=self.identity.header(), watch_id=watch_id, created=True))
            await self.out.put(rpc_pb2.WatchResponse(
                header=self.identity.header(), watch_id=watch_id, canceled=True, compact_revision=e.compacted,
                cancel_reason="mvcc: required revision has been compacted"))
            return
        start = (create.start_revision or kv.revision + 1) - 1
        watch = self.watches[watch_id] = _Watch(watch_id, bounds, watcher, create, sent_to=start,
                                                checked_at=self.admission.state.revision)
        await self.out.put(rpc_pb2.WatchResponse(header=self.identity.header(), watch_id=watch_id, created=True))
        watch.pump = asyncio.get_running_loop().create_task(self._pump(watch))

    def _next_free_id(self) -> int:
        """As etcd: ids count up, never reused by a later watch of the stream (a response still on
        its way for a cancelled watch must not be taken for the next one's), skipping those taken."""
        while self._next_id in self.watches:
            self._next_id += 1
        self._next_id += 1
        return self._next_id - 1

    async def _refuse(self, reason: str) -> None:
        """etcd's answer to a watch it does not create: created and cancelled at once, under no id."""
        await self.out.put(rpc_pb2.WatchResponse(header=self.identity.header(), watch_id=REFUSED_ID, created=True,
                                                 canceled=True, cancel_reason=reason))

    async def cancel(self, watch_id: int, reason: str, compact_revision: int = 0) -> None:
        watch = self.watches.pop(watch_id, None)
        if watch is None:
            return
        self.node.unwatch(watch.watcher)
        if watch.pump is not None and watch.pump is not asyncio.current_task():
            watch.pump.cancel()
        await self.out.put(rpc_pb2.WatchResponse(header=self.identity.header(), watch_id=watch_id, canceled=True,
                                                 cancel_reason=reason, compact_revision=compact_revision))

    async def _pump(self, watch: _Watch) -> None:
        """The hub's batches for one watch, as responses."""
        while True:
            batch = await watch.watcher.queue.get()
            if watch.checked_at != self.admission.state.revision:  # users or roles changed: may it go on?
                watch.checked_at = self.admission.state.revision
                if why := self.admission.refusal(*range_need(Access.READ, watch.bounds)):
                    await self.cancel(watch.watch_id, why)
                    return
            if batch.cancelled is not None:
                compacted = self.node.kv.store.compacted if batch.cancelled.startswith("compacted") else 0
                await self.cancel(watch.watch_id, batch.cancelled, compacted)
                return
            events = [] if batch.progress else [_event(c, watch.request.prev_kv) for c in batch.changes
                                                 if watch.wants(c)]
            watch.sent_to = batch.revision
            if not events and not (batch.progress and watch.request.progress_notify):
                continue
            parts = _fragments(events) if watch.request.fragment else [events]
            for i, part in enumerate(parts):
                await self.out.put(rpc_pb2.WatchResponse(header=self.identity.header(batch.revision),
                                                         watch_id=watch.watch_id, events=part,
                                                         fragment=i < len(parts) - 1))

    async def close(self) -> None:
        for watch in list(self.watches.values()):
            self.node.unwatch(watch.watcher)
            if watch.pump is not None:
                watch.pump.cancel()
        await asyncio.gather(*(w.pump for w in self.watches.values() if w.pump), return_exceptions=True)
        self.watches.clear()


def _fragments(events: list[kv_pb2.Event]) -> list[list[kv_pb2.Event]]:
    """A revision's events in parts of at most MAX_FRAGMENT_BYTES (an event larger than that alone),
    for a watch that asked for fragments; clients join the parts marked `fragment` to the next."""
    parts: list[list[kv_pb2.Event]] = [[]]
    size = 0
    for event in events:
        if parts[-1] and size + event.ByteSize() > MAX_FRAGMENT_BYTES:
            parts.append([])
            size = 0
        parts[-1].append(event)
        size += event.ByteSize()
    return parts


def _shared_prefix(a: str, b: str) -> str:
    """A text prefix of every key from `a` to `b` in byte order: their common prefix, without the
    escaped bytes it ends with (one may begin a character in a key between them)."""
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return a[:n].rstrip(ESCAPED_BYTES)


def _event(change: Change, prev_kv: bool) -> kv_pb2.Event:
    if change.kv is not None:
        event = kv_pb2.Event(type=kv_pb2.Event.PUT, kv=kv_message(change.key, change.kv))
    else:  # etcd's delete event: the key and the revision that deleted it
        event = kv_pb2.Event(type=kv_pb2.Event.DELETE, kv=kv_pb2.KeyValue(key=as_bytes(change.key),
                                                                           mod_revision=change.revision))
    if prev_kv and change.prev is not None:
        event.prev_kv.CopyFrom(kv_message(change.key, change.prev))
    return event


class WatchService(rpc_pb2_grpc.WatchServicer):
    def __init__(self, node: NodeHost, identity: Identity, streams: OpenStreams, admission: Admission) -> None:
        self.node = node
        self.identity = identity
        self.streams = streams
        self.admission = admission

    async def Watch(self, requests: AsyncIterator[rpc_pb2.WatchRequest],
                    context: grpc.aio.ServicerContext) -> AsyncIterator[rpc_pb2.WatchResponse]:
        stream = _Stream(self.node, self.identity, self.admission)
        reader = asyncio.get_running_loop().create_task(stream.serve(requests))
        with self.streams.held() as ending:
            try:
                while True:
                    # A client that closed its side of the stream still gets its watches' events,
                    # as from etcd: the stream ends when the client cancels it (or the node stops).
                    yield await unless_ending(_next_response(stream, reader), ending, context)
            finally:
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reader
                await stream.close()


async def _next_response(stream: _Stream, reader: asyncio.Task) -> rpc_pb2.WatchResponse:
    """The stream's next response, or the reader's error if reading the requests fails first."""
    getter = asyncio.ensure_future(stream.out.get())
    try:
        await asyncio.wait({getter} if reader.done() else {getter, reader}, return_when=asyncio.FIRST_COMPLETED)
        if not getter.done():
            reader.result()  # it raises, or it ended because the client closed its side: wait on
        return await getter
    finally:
        getter.cancel()
