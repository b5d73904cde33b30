"""Raft peer transport over persistent TCP connections, optionally mutual TLS.

Theory of operation
-------------------
The peer table, ``send()`` and the delivery of each received message are shared with the
in-memory twin (links.py: ``PeerLinks``); what follows is this transport's own.

Outbound. Each peer has a ``_Link``: a LinkQueue (faults.py: outbound fault rules, bounded, delay
line) and one writer task owning one TCP connection to the peer. ``send()`` never awaits the
network: it offers each message to its peer's queue and wakes the writer, which encodes every due
message and writes them with one ``writelines`` + ``drain``, never waiting for answers (pipelining;
answers come back on the peer's own connection to us). While the writer is idle on a connection
whose buffer is empty, the wake-up writes what is due itself, on the sender's turn (no drain is
needed with nothing buffered): a hop of a write's critical path then costs no task switch.
Outbound connections are write-only, so the writer watches them for EOF to notice a restarted peer
at once. Redials back off exponentially (50 ms to 1 s, jittered so a cluster restarting together
does not redial in lockstep); messages keep queueing meanwhile. A message from the peer, on its
own connection to us, proves it is up: it ends the wait and the backoff at once (a restarted
leader's first heartbeat, not the backoff, decides when its followers can forward to it again).

Queue policy: a full queue drops the *newest* message (counted). The queue holds a contiguous run
of the leader's pipelined appends; dropping its head would leave a gap that makes the follower
reject everything behind it, while dropping the tail keeps what is queued useful, and the leader's
next heartbeat/append retry re-sends from the follower's match index.

Snapshots go as 1 MiB CHUNK frames (frame format: codec.py). Each writer round sends the due
messages and then one chunk, so heartbeats keep flowing while a snapshot streams (a message sent
after a snapshot may overtake it; Raft tolerates reordering). Only the newest waiting snapshot is
kept; a broken connection restarts the stream from offset 0 on the next one.

Inbound. A Protocol per accepted connection feeds a codec.FrameDecoder (no await per frame), which
hands each message to the shared delivery: the inbound fault rules apply and ``on_message`` is
called. A protocol violation (bad hello,
oversized frame, undecodable body) closes only that connection, with a logged error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import raftkv.transport.codec as codec
from raftkv.core.messages import Message, SnapshotRequest
from raftkv.transport.faults import LinkFaults, LinkQueue
from raftkv.transport.links import Link, PeerLinks

__all__ = ["TcpOptions", "TcpTransport", "make_mtls_contexts"]

logger = logging.getLogger("raftkv.transport")
Address = tuple[str, int]


def make_mtls_contexts(ca_file: str, cert_file: str, key_file: str) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server, client) contexts where both ends must present a certificate signed by the CA.

    Hostnames are not checked: peers are addressed by IP and authenticated by holding a
    certificate from the cluster CA, which is what makes a node a member.
    """
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=ca_file)
    client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file)
    client.check_hostname = False
    for ctx in (server, client):
        ctx.load_cert_chain(cert_file, key_file)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return server, client


class _Link(Link):
    """Outbound state for one peer; touched only by send() and the peer's writer task."""

    def __init__(self, addr: Address, queue: LinkQueue) -> None:
        super().__init__(queue)
        self.addr = (addr[0], addr[1])
        self.waiter: asyncio.Future[None] | None = None
        self.task: asyncio.Task[None] | None = None
        self.watch: asyncio.Task[None] | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.stopped = False
        self.snapshot: codec.ChunkStream | None = None  # streaming now
        self.next_snapshot: SnapshotRequest | None = None  # newest one waiting its turn
        self.stream_id, self.up_since, self.last_uptime_s = 0, 0.0, 0.0
        self.heard = asyncio.Event()  # set when a message arrives from the peer while we redial
        self.connects = self.connect_failures = self.dropped_oversize = 0
        self.write_now: Callable[[_Link], object] | None = None  # the transport's _write_due

    def wake(self) -> None:
        w = self.waiter
        if w is None or w.done():
            return  # the writer is busy: it takes the queue when it is done
        writer = self.writer
        if writer is not None and self.write_now is not None and not writer.transport.get_write_buffer_size():
            try:
                self.write_now(self)
            except Exception:  # never into the sender's turn: the writer task finds it again
                logger.exception("direct write failed peer=%s", self.peer_id)
            if not self.queue and self.next_snapshot is None:
                return
        w.set_result(None)

    @property
    def connected(self) -> bool:
        """Whether our connection to the peer is up now: a message sent while it is down waits in
        the queue, and reaches the peer only if it comes back."""
        return self.writer is not None

    @property
    def address(self) -> str:
        return f"{self.addr[0]}:{self.addr[1]}"

    @property
    def reconnects(self) -> int:
        return max(0, self.connects - 1)

    def own_stats(self) -> dict[str, Any]:
        return {
            "snapshot_streaming": self.snapshot is not None,
            "connect_failures": self.connect_failures,
            "dropped_oversize": self.dropped_oversize,
        }


@dataclass(frozen=True, slots=True)
class TcpOptions:
    """Bounds and timings; the defaults suit a LAN cluster."""

    max_queue_messages: int = 4096  # per peer; beyond it the newest message is dropped
    max_batch_bytes: int = 4 << 20  # per write
    max_frame_bytes: int = 64 << 20  # larger inbound frames close the connection
    max_snapshot_bytes: int = 1 << 30  # larger inbound snapshot streams close the connection
    snapshot_chunk_bytes: int = 1 << 20
    connect_timeout_s: float = 2.0
    backoff_min_s: float = 0.05
    backoff_max_s: float = 1.0

    def __post_init__(self) -> None:
        assert self.snapshot_chunk_bytes + 64 <= self.max_frame_bytes, "a chunk must fit in a frame"


class TcpTransport(PeerLinks[_Link]):
    """Sends Raft messages to peers over TCP and hands received ones to ``on_message``."""

    def __init__(
        self,
        node_id: str,
        listen_host: str,
        listen_port: int,
        peers: dict[str, Address],
        faults: LinkFaults,
        ssl_server: ssl.SSLContext | None = None,
        ssl_client: ssl.SSLContext | None = None,
        options: TcpOptions | None = None,
    ) -> None:
        self.opt = options or TcpOptions()
        super().__init__(node_id, faults, self.opt.max_queue_messages)
        self.listen_host, self.listen_port = listen_host, listen_port
        self.ssl_server, self.ssl_client = ssl_server, ssl_client
        self._inbound: set[_Inbound] = set()
        self._server: asyncio.Server | None = None
        self._jitter = random.Random()  # not faults.rng: fault decisions must stay reproducible
        for pid, addr in peers.items():
            self.add_peer(pid, addr)

    # ---- lifecycle ----------------------------------------------------------------------------

    async def start(self, on_message: Callable[[Message], None]) -> None:
        self._on_message = on_message
        self._server = await asyncio.get_running_loop().create_server(
            lambda: _Inbound(self), self.listen_host, self.listen_port, ssl=self.ssl_server
        )
        self.listen_port = self._server.sockets[0].getsockname()[1]  # resolves port 0
        for link in self._links.values():
            self._start_link(link)
        logger.info("listening node=%s port=%d tls=%s", self.node_id, self.listen_port, bool(self.ssl_server))

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for conn in list(self._inbound):
            conn.transport.abort()
        tasks = [t for link in self._links.values() for t in (link.task, link.watch) if t is not None]
        for link in self._links.values():
            self._stop_link(link)
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        self._on_message = None

    def add_peer(self, peer_id: str, addr: Address) -> None:
        old = self._links.get(peer_id)
        if old is not None:
            if old.addr == (addr[0], addr[1]):
                return
            self._stop_link(old)  # address changed: start over with a fresh connection
        link = self._links[peer_id] = _Link(addr, self._new_queue(peer_id))
        if self._server is not None:
            self._start_link(link)

    def _start_link(self, link: _Link) -> None:
        link.write_now = self._write_due
        link.task = asyncio.get_running_loop().create_task(self._run_link(link))

    def _stop_link(self, link: _Link) -> None:
        link.stopped = True
        if link.task is not None:
            link.task.cancel()
        self._disconnect(link, None)
        link.queue.clear()

    # ---- sending (send() itself: links.py) ----------------------------------------------------

    async def _run_link(self, link: _Link) -> None:
        backoff = self.opt.backoff_min_s
        try:
            while not link.stopped:
                if link.writer is None:
                    if link.connects or link.connect_failures:  # redialling: back off, with jitter
                        # Only a connection that stayed up resets the backoff: one the peer drops
                        # at once (TLS or protocol mismatch) must not make us redial in a hot loop.
                        if link.last_uptime_s >= self.opt.backoff_max_s:
                            backoff = self.opt.backoff_min_s
                        link.last_uptime_s = 0.0
                        link.heard.clear()
                        try:
                            async with asyncio.timeout(backoff * (0.5 + self._jitter.random() / 2)):
                                await link.heard.wait()
                            backoff = self.opt.backoff_min_s  # the peer spoke to us: it is up
                        except TimeoutError:
                            backoff = min(backoff * 2, self.opt.backoff_max_s)
                    try:
                        await self._connect(link)
                    except OSError as exc:  # TimeoutError and ssl.SSLError are OSErrors too
                        link.connect_failures += 1
                        link.last_error = f"connect: {exc!r}"
                        logger.debug("connect failed peer=%s error=%r", link.peer_id, exc)
                        continue
                try:
                    wrote = await self._write_batch(link)
                except (OSError, RuntimeError) as exc:  # RuntimeError: write on a closed transport
                    logger.info("connection lost peer=%s error=%r", link.peer_id, exc)
                    self._disconnect(link, f"write: {exc!r}")
                    continue
                except Exception:  # a bug, e.g. an unencodable message: lose this batch, keep the link
                    logger.exception("writer failed peer=%s; batch dropped", link.peer_id)
                    continue
                if not wrote:
                    await self._wait(link)
        finally:  # a connect that completed as the link was being stopped must not leak
            self._disconnect(link, None)

    async def _connect(self, link: _Link) -> None:
        # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancel that races with a
        # failed connect (gh-86296), which would leave this task reconnecting after close().
        async with asyncio.timeout(self.opt.connect_timeout_s):
            reader, writer = await asyncio.open_connection(*link.addr, ssl=self.ssl_client)
        sock = writer.get_extra_info("socket")
        if sock is not None:  # latency over throughput: a heartbeat must not wait for Nagle
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        writer.write(codec.hello_frame(self.node_id))
        link.writer, link.up_since = writer, time.monotonic()
        link.connects += 1
        link.stream_id += 1
        if link.snapshot is not None:  # a half-sent snapshot starts over on the new connection
            link.snapshot.restart(link.stream_id)
        link.watch = asyncio.get_running_loop().create_task(self._watch(link, reader, writer))
        logger.info("connected peer=%s addr=%s:%d reconnects=%d", link.peer_id, *link.addr, link.connects - 1)

    async def _watch(self, link: _Link, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Peers never write on our outbound connection: any read result means it is over."""
        with contextlib.suppress(Exception):
            await reader.read(1)
        if link.writer is writer:
            logger.info("connection closed by peer peer=%s", link.peer_id)
            self._disconnect(link, "closed by peer")
            link.wake()

    def _disconnect(self, link: _Link, error: str | None) -> None:
        link.last_error = error or link.last_error
        if link.writer is not None:
            link.writer.close()
            link.writer, link.last_uptime_s = None, time.monotonic() - link.up_since

    async def _wait(self, link: _Link) -> None:
        loop = asyncio.get_running_loop()
        fut = link.waiter = loop.create_future()
        wait_s = link.queue.seconds_until_due()  # the head is delayed: sleep until it is due
        timer = loop.call_later(wait_s, link.wake) if wait_s is not None else None
        try:
            await fut
        finally:
            link.waiter = None
            if timer is not None:
                timer.cancel()

    async def _write_batch(self, link: _Link) -> bool:
        """Write every due message (and at most one snapshot chunk) and wait until the connection
        takes them; False if nothing was due."""
        sent, chunk_bytes = self._write_due(link)
        if not sent:
            return False
        await cast(asyncio.StreamWriter, link.writer).drain()
        if chunk_bytes:
            await asyncio.sleep(0)  # let send() enqueue heartbeats between chunks
        return True

    def _write_due(self, link: _Link) -> tuple[bool, int]:
        """Hand every due message (and at most one snapshot chunk) to the connection, without
        waiting for it to drain: whether anything was due, and the chunk's bytes."""
        writer = link.writer
        assert writer is not None
        queue, peer = link.queue, link.peer_id
        frames: list[bytes] = []
        nbytes = 0
        while nbytes < self.opt.max_batch_bytes and (m := queue.pop_due()) is not None:
            if type(m) is SnapshotRequest:
                link.next_snapshot = m  # supersedes any older one that has not started
            else:
                body = codec.encode(m)
                if len(body) + 1 > self.opt.max_frame_bytes:
                    link.dropped_oversize += 1
                    logger.error("message too large peer=%s type=%s bytes=%d", peer, type(m).__name__, len(body))
                    continue
                frames += (codec.message_frame(body), body)
                nbytes += len(body) + codec.FRAME_HEADER.size
        chunk_bytes = self._next_chunk(link, frames)
        if not frames:
            return False, 0
        writer.writelines(frames)
        link.frames_sent += len(frames) // 2  # every frame is a (header, body) pair
        link.bytes_sent += nbytes + chunk_bytes
        return True, chunk_bytes

    def _next_chunk(self, link: _Link, frames: list[bytes]) -> int:
        """Append the next chunk of the streaming snapshot (starting the waiting one if idle);
        return the bytes added."""
        if link.snapshot is None and link.next_snapshot is not None:
            link.stream_id += 1
            snap, link.next_snapshot = link.next_snapshot, None
            link.snapshot = codec.ChunkStream(snap, link.stream_id, self.opt.snapshot_chunk_bytes)
            logger.info("streaming snapshot peer=%s bytes=%d", link.peer_id, len(link.snapshot.data))
            if len(link.snapshot.data) > self.opt.max_snapshot_bytes:  # the peer would refuse it
                logger.error("snapshot too large peer=%s bytes=%d", link.peer_id, len(link.snapshot.data))
                link.snapshot = None
        stream = link.snapshot
        if stream is None:
            return 0
        if self.faults.is_blocked_outbound(link.peer_id):
            self.faults.record_drop(stream.message, "outbound")
            link.snapshot = None
            return 0
        head, piece = stream.next_frame()
        frames += (head, piece)
        if stream.done:
            link.snapshot = None
        return len(head) + len(piece)

    # ---- receiving (delivery of each decoded message: links.py) --------------------------------

    def _deliver(self, peer: str, m: Message, nbytes: int) -> None:
        link = self._links.get(peer)
        if link is not None and link.writer is None:
            link.heard.set()  # our connection to it is down: redial now
        super()._deliver(peer, m, nbytes)

    def _describe(self) -> dict[str, Any]:
        return {
            "listen": f"{self.listen_host}:{self.listen_port}",
            "tls": self.ssl_server is not None,
            "inbound_connections": len(self._inbound),
        }


class _Inbound(asyncio.Protocol):
    """One accepted connection: bytes in, messages out through a FrameDecoder."""

    transport: asyncio.Transport  # set by connection_made, before the connection is listed

    def __init__(self, owner: TcpTransport) -> None:
        self.owner = owner
        self.decoder = codec.FrameDecoder(owner._deliver, owner.opt.max_frame_bytes, owner.opt.max_snapshot_bytes)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not asyncio.Transport subclasses
        self.owner._inbound.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner._inbound.discard(self)  # a partial snapshot dies with the connection's decoder
        logger.info("inbound connection closed peer=%s error=%r", self.decoder.peer, exc)

    def data_received(self, data: bytes) -> None:
        try:
            self.decoder.feed(data)
        except codec.CodecError as exc:
            peername = self.transport.get_extra_info("peername")
            logger.error("closing inbound connection peer=%s from=%s: %s", self.decoder.peer, peername, exc)
            self.transport.abort()  # no more data_received calls after this
