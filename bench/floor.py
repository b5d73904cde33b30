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
