"""Embedded (in-process API) clusters: raftkv's NodeHost and PySyncObj, one OS process per node.

PySyncObj has no network client, so it is compared with raftkv's embedded API, not its HTTP API:
each node is a separate process (its best layout: no shared GIL), and the node that is leader
generates the load itself through the library's own API, keeping exactly `inflight` writes
outstanding (a closed loop), for a fixed time. The figure is committed writes per second (for
raftkv: committed, applied and fsynced on a majority; for PySyncObj: committed and applied, its
journal, if any, is never fsynced).

The parent talks to every node process over a Pipe: `("leader?",)`, `("load", inflight,
duration_s, value_bytes)` (only the leader answers with figures), `("writer", duration_s)` (for
failover: keep writing, report when each write succeeded) and `("stop",)`. Every wait is bounded
and processes are stopped by PID.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import multiprocessing as mp
import os
import random
import signal
import threading
import time
from pathlib import Path
from typing import Any

from raftkv.node.config import Member  # raftkv is imported after bench.pin has pinned it
from raftkv.supervisor import loopback_members

REPLY_TIMEOUT_S = 60.0
KEYS = 10_000

# PySyncObj configurations tried at each in-flight count; the best one is reported.
# Batching (the default) sends AppendEntries only every appendEntriesPeriod (100 ms); without it every
# command is sent at once. Shorter periods trade CPU for latency.
PYSYNCOBJ_VARIANTS = {
    "nobatch": {"appendEntriesUseBatch": False},
    "batch-10ms": {"appendEntriesUseBatch": True, "appendEntriesPeriod": 0.01},
    "batch-2ms": {"appendEntriesUseBatch": True, "appendEntriesPeriod": 0.002},
    "batch-100ms": {},
}


# ================================================================ node processes (children) =====


def _raftkv_child(idx: int, members: list[Member], data_dir: str, conn: Any, variant: str) -> None:
    from raftkv.core import Role
    from raftkv.kv import Put
    from raftkv.node import NodeHost
    from raftkv.node.config import NodeConfig
    from raftkv.node.heap import tune_gc

    cfg = NodeConfig(node_id=members[idx].id, data_dir=Path(data_dir), members={m.id: m for m in members})

    async def load(node: NodeHost, inflight: int, duration_s: float, value_bytes: int) -> dict:
        value = "x" * value_bytes
        perf = time.perf_counter
        latencies: list[float] = []
        failed = 0
        errors: dict[str, int] = {}
        deadline = perf() + duration_s

        async def client(i: int) -> None:
            nonlocal failed
            rng = random.Random(i)
            while perf() < deadline:
                started = perf()
                try:
                    await node.propose(Put(f"k{rng.randrange(KEYS):05d}", value))
                    latencies.append(perf() - started)
                except Exception as e:
                    failed += 1
                    errors[f"{type(e).__name__}: {e}"[:120]] = errors.get(f"{type(e).__name__}: {e}"[:120], 0) + 1
                    await asyncio.sleep(0.01)

        t0 = perf()
        await asyncio.gather(*(client(i) for i in range(inflight)))
        return {
            "completed": len(latencies),
            "failed": failed,
            "errors": errors,
            "elapsed_s": perf() - t0,
            "latencies": latencies,
        }

    def quiet(loop: asyncio.AbstractEventLoop, context: dict) -> None:
        # node.stop() fails the futures of proposals nobody awaits any more; that is expected here.
        if "never retrieved" not in context.get("message", ""):
            loop.default_exception_handler(context)

    async def main() -> None:
        node = NodeHost(cfg)
        tune_gc()  # as the node process does (raftkv/node/heap.py)
        await node.start()
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(quiet)
        try:
            while True:
                msg = await loop.run_in_executor(None, conn.recv)
                if msg[0] == "leader?":
                    conn.send(node.group.core.role is Role.LEADER)
                elif msg[0] == "load":
                    conn.send(await load(node, *msg[1:]) if node.group.core.role is Role.LEADER else None)
                elif msg[0] == "stop":
                    break
        finally:
            await node.stop()
            conn.send("stopped")

    try:
        import uvloop

        uvloop.run(main())
    except ImportError:
        asyncio.run(main())


def _pysyncobj_child(idx: int, members: list[Member], data_dir: str, conn: Any, variant: str) -> None:
    from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf, replicated

    class KV(SyncObj):
        def __init__(self, me: str, others: list[str], conf: SyncObjConf) -> None:
            super().__init__(me, others, conf)
            self._data: dict[str, str] = {}

        @replicated
        def set(self, key: str, value: str) -> None:
            self._data[key] = value

    addrs = [f"{m.host}:{m.http_port}" for m in members]
    conf = SyncObjConf(**PYSYNCOBJ_VARIANTS[variant])
    obj = KV(addrs[idx], [a for i, a in enumerate(addrs) if i != idx], conf)
    manual = not conf.autoTick
    stop_ticking = threading.Event()
    if manual:
        # The variant without the library's tick thread: one thread drives the poller and callbacks.
        lock = threading.Lock()

        def ticker() -> None:
            while not stop_ticking.is_set():
                with lock:
                    obj.doTick(0.001)

        threading.Thread(target=ticker, daemon=True).start()

    def load(inflight: int, duration_s: float, value_bytes: int, writer: bool = False) -> dict:
        value = "x" * value_bytes
        perf = time.perf_counter
        latencies: list[float] = []
        successes: list[tuple[float, float]] = []  # (sent, acknowledged) in CLOCK_MONOTONIC, for failover
        failed = [0]
        outstanding = [0]
        deadline = perf() + duration_s
        rng = random.Random(idx)

        def submit() -> None:
            outstanding[0] += 1
            obj.set(f"k{rng.randrange(KEYS):05d}", value, callback=functools.partial(done, perf(), time.monotonic()))

        def done(started: float, sent_mono: float, result: Any, error: Any) -> None:
            outstanding[0] -= 1
            if error == FAIL_REASON.SUCCESS:
                latencies.append(perf() - started)
                if writer:
                    successes.append((sent_mono, time.monotonic()))
            else:
                failed[0] += 1
            if perf() < deadline:
                submit()

        t0 = perf()
        for _ in range(inflight):
            submit()
        time.sleep(max(0.0, deadline - perf()))
        elapsed = perf() - t0
        completed = len(latencies)
        # Let the writes still in flight finish (bounded) so the next measurement starts clean.
        grace = perf() + 10
        while outstanding[0] > 0 and perf() < grace:
            time.sleep(0.01)
        return {
            "completed": completed,
            "failed": failed[0],
            "elapsed_s": elapsed,
            "latencies": latencies[:completed],
            "successes": successes,
        }

    try:
        while True:
            msg = conn.recv()
            if msg[0] == "leader?":
                conn.send(bool(obj._isLeader()))
            elif msg[0] == "load":
                conn.send(load(*msg[1:]) if obj._isLeader() else None)
            elif msg[0] == "writer":
                conn.send(load(8, msg[1], 10, writer=True))
            elif msg[0] == "stop":
                break
    finally:
        stop_ticking.set()
        with contextlib.suppress(Exception):
            obj.destroy()
        conn.send("stopped")


CHILDREN = {"raftkv": _raftkv_child, "pysyncobj": _pysyncobj_child}


# ================================================================ the parent's view =============


class EmbeddedCluster:
    def __init__(self, kind: str, base_dir: Path, variant: str = "", nodes: int = 3) -> None:
        self.kind = kind
        self.variant = variant
        self.members = loopback_members(nodes)
        self.base_dir = base_dir
        self.procs: list[Any] = []
        self.conns: list[Any] = []

    def start(self, timeout_s: float = 30.0) -> EmbeddedCluster:
        ctx = mp.get_context("spawn")
        for i in range(len(self.members)):
            parent, child = ctx.Pipe()
            data = self.base_dir / f"{self.kind}-{self.variant or 'default'}-{i + 1}"
            data.mkdir(parents=True, exist_ok=True)
            p = ctx.Process(
                target=CHILDREN[self.kind], args=(i, self.members, str(data), child, self.variant), daemon=True
            )
            p.start()
            self.procs.append(p)
            self.conns.append(parent)
        self.leader(timeout_s)
        return self

    def _ask(self, i: int, msg: tuple, timeout_s: float = REPLY_TIMEOUT_S) -> Any:
        conn = self.conns[i]
        conn.send(msg)
        if not conn.poll(timeout_s):
            raise TimeoutError(f"{self.kind} node {i + 1} did not answer {msg[0]} within {timeout_s} s")
        return conn.recv()

    def alive(self, i: int) -> bool:
        return self.procs[i].is_alive()

    def leader(self, timeout_s: float = 20.0) -> int:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            leaders = [i for i in range(len(self.procs)) if self.alive(i) and self._ask(i, ("leader?",), 5)]
            if len(leaders) == 1:
                return leaders[0]
            time.sleep(0.05)
        raise TimeoutError(f"{self.kind}: no single leader within {timeout_s} s")

    def load(self, inflight: int, duration_s: float, value_bytes: int = 10) -> dict:
        i = self.leader()
        out = self._ask(i, ("load", inflight, duration_s, value_bytes), duration_s + REPLY_TIMEOUT_S)
        if out is None:
            raise RuntimeError(f"{self.kind}: node {i + 1} lost leadership during the load")
        return out

    def failover_trial(self, before_kill_s: float = 1.0, after_kill_s: float = 4.0) -> float | None:
        """kill -9 the leader while the others write; seconds to the first write sent after the kill
        that succeeds (None if none did)."""
        leader = self.leader()
        writers = [i for i in range(len(self.procs)) if i != leader and self.alive(i)]
        for i in writers:
            self.conns[i].send(("writer", before_kill_s + after_kill_s))
        time.sleep(before_kill_s)
        killed_at = time.monotonic()
        os.kill(self.procs[leader].pid, signal.SIGKILL)
        self.procs[leader].join(10)
        firsts = []
        for i in writers:
            if not self.conns[i].poll(after_kill_s + REPLY_TIMEOUT_S):
                raise TimeoutError(f"{self.kind} writer {i + 1} did not report")
            out = self.conns[i].recv()
            after = [acked for sent, acked in out["successes"] if sent >= killed_at]
            if after:
                firsts.append(min(after))
        return min(firsts) - killed_at if firsts else None

    def stop(self) -> None:
        for i, p in enumerate(self.procs):
            if p.is_alive():
                with contextlib.suppress(OSError, BrokenPipeError):
                    self.conns[i].send(("stop",))
        for i, p in enumerate(self.procs):
            if p.is_alive():
                with contextlib.suppress(OSError, EOFError):
                    if self.conns[i].poll(10):
                        self.conns[i].recv()
                p.join(5)
            if p.is_alive():
                os.kill(p.pid, signal.SIGKILL)
                p.join(5)
