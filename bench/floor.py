"""The physical floor of one replicated write on this machine, measured in the same run as
raftkv's embedded API: what a write at 1 in flight cannot avoid, and nothing else.

A write to a 3-node Raft cluster commits once the leader and one follower hold it on disk: the
leader appends it to its log and fdatasyncs while the entry travels to a follower, which appends
it, fdatasyncs and answers. `FloorPair` does exactly that with two processes over loopback TCP:
the leader sends a record the size of a small raftkv Put entry, appends it to its own file and
fdatasyncs, then waits for the follower's one-byte answer, sent once the follower's append is
fdatasynced. No consensus, no encoding, no event loop: blocking calls in a tight loop, the
cheapest way to do the same I/O. Both files are in the benchmark's directory, on the disk
raftkv's nodes use. The result has the shape of `EmbeddedCluster.load`'s, so the report treats
it as one more system (at 1 in flight only: the floor of a pipeline is another question).
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import socket
import time
from multiprocessing.connection import Connection
from pathlib import Path

RECORD_BYTES = 64  # a Put of a 10-byte value under a short key, with its entry header
START_TIMEOUT_S = 10.0


def _append_and_sync(fd: int, record: bytes) -> None:
    os.write(fd, record)
    os.fdatasync(fd)


def _follower(path: str, ready: Connection) -> None:
    """Accept one leader; for each record: append, fdatasync, answer one byte."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        ready.send(server.getsockname()[1])
        conn, _ = server.accept()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    with conn:
        while record := conn.recv(RECORD_BYTES, socket.MSG_WAITALL):
            _append_and_sync(fd, record)
            conn.sendall(b"k")
    os.close(fd)


class FloorPair:
    kind = "floor"

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self._proc: mp.Process | None = None
        self._conn: socket.socket | None = None
        self._fd: int | None = None

    def start(self) -> FloorPair:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        ready, ready_child = mp.Pipe(duplex=False)
        self._proc = mp.Process(target=_follower, args=(str(self.data_dir / "follower.log"), ready_child),
                                daemon=True)
        self._proc.start()
        if not ready.poll(START_TIMEOUT_S):
            raise TimeoutError("the floor's follower did not start")
        self._conn = socket.create_connection(("127.0.0.1", ready.recv()), timeout=START_TIMEOUT_S)
        self._conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._fd = os.open(self.data_dir / "leader.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        return self

    def load(self, inflight: int, duration_s: float, value_bytes: int = 10) -> dict:
        """Writes one after the other for `duration_s`; figures as EmbeddedCluster.load gives them."""
        assert inflight == 1, "the floor is measured at 1 write in flight"
        assert self._conn is not None and self._fd is not None, "start() first"
        record = b"r" * RECORD_BYTES
        latencies = []
        started = time.perf_counter()
        deadline = started + duration_s
        while (now := time.perf_counter()) < deadline:
            self._conn.sendall(record)  # on its way while the leader writes its own copy
            _append_and_sync(self._fd, record)
            if self._conn.recv(1, socket.MSG_WAITALL) != b"k":
                raise RuntimeError("the floor's follower closed its connection")
            latencies.append(time.perf_counter() - now)
        return {"completed": len(latencies), "failed": 0, "elapsed_s": time.perf_counter() - started,
                "latencies": latencies}

    def stop(self) -> None:
        if self._conn is not None:
            self._conn.close()
        if self._fd is not None:
            os.close(self._fd)
        if self._proc is not None:
            self._proc.join(5)
            if self._proc.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    self._proc.kill()
                self._proc.join(5)


# ============================================================ the same I/O on the nodes' runtime =====


def _serve_runtime_follower(path: str, ready: Connection) -> None:
    """A follower on the nodes' runtime: an asyncio protocol on uvloop that appends each record,
    fdatasyncs on its loop (as a raftkv follower does) and answers one byte."""
    import asyncio

    import uvloop

    class Follower(asyncio.Protocol):
        def __init__(self, fd: int, closed: asyncio.Future) -> None:
            self.fd, self.closed, self.pending = fd, closed, b""

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport

        def data_received(self, data: bytes) -> None:
            self.pending += data
            whole = len(self.pending) - len(self.pending) % RECORD_BYTES
            if whole:
                _append_and_sync(self.fd, self.pending[:whole])
                self.pending = self.pending[whole:]
                self.transport.write(b"k" * (whole // RECORD_BYTES))

        def connection_lost(self, exc: Exception | None) -> None:
            self.closed.set_result(None)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        closed = loop.create_future()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        server = await loop.create_server(lambda: Follower(fd, closed), "127.0.0.1", 0)
        ready.send(server.sockets[0].getsockname()[1])
        await closed
        server.close()
        os.close(fd)

    uvloop.run(main())


def _serve_runtime_leader(data_dir: str, follower_ports: list[int], conn: Connection) -> None:
    """The leader on the nodes' runtime: sends each record to both followers, appends and
    fdatasyncs its own copy on a thread (as a raftkv leader does) and counts the write done once
    two of the three copies are durable. Generates the writes itself, as raftkv's embedded leader."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    import uvloop

    class Majority:
        """How many durable copies the write in flight has (a follower's answer counts only for it)."""

        def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
            self.loop, self.seq, self.copies = loop, 0, 0
            self.done: asyncio.Future = loop.create_future()

        def next_write(self) -> asyncio.Future:
            self.seq, self.copies, self.done = self.seq + 1, 0, self.loop.create_future()
            return self.done

        def durable(self, seq: int) -> None:
            if seq == self.seq:
                self.copies += 1
                if self.copies == 2:
                    self.done.set_result(None)

    class ToFollower(asyncio.Protocol):
        def __init__(self, majority: Majority) -> None:
            self.majority, self.answered = majority, 0

        def data_received(self, data: bytes) -> None:
            for _ in data:
                self.answered += 1
                self.majority.durable(self.answered)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        majority = Majority(loop)
        links = [(await loop.create_connection(lambda: ToFollower(majority), "127.0.0.1", port))[0]
                 for port in follower_ports]
        fd = os.open(Path(data_dir) / "leader.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        disk = ThreadPoolExecutor(1)
        record = b"r" * RECORD_BYTES
        while (msg := await loop.run_in_executor(None, conn.recv))[0] == "load":
            latencies: list[float] = []
            started = time.perf_counter()
            deadline = started + msg[1]
            while (now := time.perf_counter()) < deadline:
                done, seq = majority.next_write(), majority.seq
                for link in links:
                    link.write(record)
                loop.run_in_executor(disk, _append_and_sync, fd, record).add_done_callback(
                    lambda _, seq=seq: majority.durable(seq))
                await done
                latencies.append(time.perf_counter() - now)
            conn.send({"completed": len(latencies), "failed": 0, "elapsed_s": time.perf_counter() - started,
                       "latencies": latencies})
        for link in links:
            link.close()
        disk.shutdown()
        os.close(fd)

    uvloop.run(main())


class RuntimeFloor:
    """`FloorPair`'s I/O done the way raftkv's nodes must do it: three processes (a leader and two
    followers, as a 3-node cluster has), each on an asyncio loop on uvloop, the followers fsyncing
    on their loop and the leader on a thread, a write done at two durable copies of three. No
    consensus, no encoding, no log: what separates it from `FloorPair` is the runtime and the
    third process (each hop wakes a loop; three processes share the cores); what separates raftkv
    from it is raftkv's own work."""

    kind = "runtime-floor"

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self._procs: list[mp.Process] = []
        self._conn: Connection | None = None

    def start(self) -> RuntimeFloor:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        ctx = mp.get_context("spawn")
        ports = []
        for i in (1, 2):
            ready, ready_child = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=_serve_runtime_follower,
                               args=(str(self.data_dir / f"follower{i}.log"), ready_child), daemon=True)
            proc.start()
            self._procs.append(proc)
            if not ready.poll(START_TIMEOUT_S):
                raise TimeoutError("the runtime floor's follower did not start")
            ports.append(ready.recv())
        self._conn, child = ctx.Pipe()
        leader = ctx.Process(target=_serve_runtime_leader, args=(str(self.data_dir), ports, child), daemon=True)
        leader.start()
        self._procs.append(leader)
        return self

    def load(self, inflight: int, duration_s: float, value_bytes: int = 10) -> dict:
        assert inflight == 1, "the floor is measured at 1 write in flight"
        assert self._conn is not None, "start() first"
        self._conn.send(("load", duration_s))
        if not self._conn.poll(duration_s + START_TIMEOUT_S):
            raise TimeoutError("the runtime floor's leader did not report")
        return self._conn.recv()

    def stop(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(OSError):
                self._conn.send(("stop",))
        for proc in reversed(self._procs):  # the leader first: its links' closing ends the followers
            proc.join(5)
            if proc.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.join(5)
