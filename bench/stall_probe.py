"""Diagnose spurious elections under write load: `python bench/stall_probe.py [inflight] [seconds]`.

Three embedded raftkv nodes, one process each; after 2 s the leader proposes with `inflight` writes
outstanding. In each process (and only there: raftkv itself is not changed) the driver's methods
are wrapped to record:

- per loop turn, how many ticks `_feed_core` consumed at once (a turn that eats more ticks than the
  election timeout lets a node time out on peers whose messages are already in its inbox);
- the longest gap between two loop turns, and how long each `_persist` (WAL write + fdatasync)
  kept the loop away (no ticks handled, no heartbeats sent, no messages stepped meanwhile);
- every campaign and step-down, with its time since start.

It prints one line per node. It is a diagnostic, not part of `run.py`: it wraps private methods of
`raftkv.node.driver.RaftNode` and will need updating when they change.
"""

from __future__ import annotations

import asyncio
import collections
import multiprocessing as mp
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _child(idx: int, ports: list[tuple[int, int]], data_dir: str, conn, inflight: int, duration_s: float) -> None:
    from raftkv.core import Role
    from raftkv.kv import Put
    from raftkv.node import driver
    from raftkv.node.config import Member, NodeConfig

    members = {f"node{i + 1}": Member(f"node{i + 1}", "127.0.0.1", h, r) for i, (h, r) in enumerate(ports)}
    cfg = NodeConfig(node_id=f"node{idx + 1}", data_dir=Path(data_dir), members=members)
    t0 = time.monotonic()
    stats: dict = {"ticks_per_turn": collections.Counter(), "max_turn_gap_s": 0.0, "persist_n": 0,
                   "persist_max_s": 0.0, "persist_over_100ms": 0, "events": [], "leader_at_load": False}
    last_turn = [time.monotonic()]
    feed, on_trace = driver.RaftNode._feed_core, driver.RaftNode._on_trace
    persist = getattr(driver.RaftNode, "_persist", None)  # the driver as of commit 32e44b1; absent later

    def feed_probe(self) -> None:
        stats["ticks_per_turn"][min(self._ticks, 20)] += 1
        now = time.monotonic()
        stats["max_turn_gap_s"] = max(stats["max_turn_gap_s"], now - last_turn[0])
        last_turn[0] = now
        return feed(self)

    def trace_probe(self, ev) -> None:
        if ev.kind in ("campaign", "step_down"):
            stats["events"].append(f"{time.monotonic() - t0:.3f}s {ev.describe()[:110]}")
        return on_trace(self, ev)

    async def persist_probe(self, rd, loop) -> None:
        started = time.monotonic()
        try:
            return await persist(self, rd, loop)
        finally:
            took = time.monotonic() - started
            stats["persist_n"] += 1
            stats["persist_max_s"] = max(stats["persist_max_s"], took)
            stats["persist_over_100ms"] += took > 0.1

    driver.RaftNode._feed_core = feed_probe
    driver.RaftNode._on_trace = trace_probe
    if persist is not None:
        driver.RaftNode._persist = persist_probe
    else:
        stats["events"].append("(this driver has no _persist: persist times not recorded)")

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda lp, ctx: None if "never retrieved" in ctx.get("message", "") else
                                   lp.default_exception_handler(ctx))
        node = driver.RaftNode(cfg)
        await node.start()
        await asyncio.sleep(2)
        stats["events"].append(f"{time.monotonic() - t0:.3f}s load starts")
        if node.core.role is Role.LEADER:
            stats["leader_at_load"] = True
            deadline = time.perf_counter() + duration_s

            async def client(i: int) -> None:
                rng = random.Random(i)
                while time.perf_counter() < deadline:
                    try:
                        await node.propose(Put(f"k{rng.randrange(10_000):05d}", "x" * 10))
                    except Exception:
                        await asyncio.sleep(0.05)

            await asyncio.gather(*(client(i) for i in range(inflight)))
        else:
            await asyncio.sleep(duration_s)
        await asyncio.sleep(0.5)
        await node.stop()

    try:
        import uvloop

        uvloop.run(main())
    except ImportError:
        asyncio.run(main())
    stats["ticks_per_turn"] = dict(sorted(stats["ticks_per_turn"].items()))
    conn.send(stats)


def main() -> None:
    from raftkv.supervisor import free_ports

    inflight = int(sys.argv[1]) if len(sys.argv) > 1 else 256
    duration_s = float(sys.argv[2]) if len(sys.argv) > 2 else 5.0
    ports_flat = free_ports(6)
    ports = [(ports_flat[2 * i], ports_flat[2 * i + 1]) for i in range(3)]
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="raftkv-stall-") as tmp:
        procs = []
        for i in range(3):
            parent, child = ctx.Pipe()
            p = ctx.Process(target=_child, args=(i, ports, f"{tmp}/n{i + 1}", child, inflight, duration_s), daemon=True)
            p.start()
            procs.append((p, parent))
        for i, (p, conn) in enumerate(procs):
            if conn.poll(duration_s + 60):
                s = conn.recv()
                print(f"node{i + 1}{' (leader when the load started)' if s['leader_at_load'] else ''}: "
                      f"ticks consumed per turn {s['ticks_per_turn']}; longest gap between turns "
                      f"{s['max_turn_gap_s'] * 1000:.0f} ms; persists {s['persist_n']}, longest "
                      f"{s['persist_max_s'] * 1000:.0f} ms, {s['persist_over_100ms']} over 100 ms")
                for e in s["events"]:
                    print("   ", e)
            else:
                print(f"node{i + 1}: no report")
            p.join(10)
            if p.is_alive():
                p.kill()
                p.join(5)


if __name__ == "__main__":
    main()
