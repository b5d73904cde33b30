"""Restart time of a raftkv node holding many keys, and its resident memory per key.

1. An embedded single-node raftkv (NodeHost in this process, fsync on, frequent snapshots) is filled
   with `keys` keys through transactions of MAX_TXN_OPS puts each, then stopped cleanly. Its data
   dir now holds a snapshot plus a WAL tail written after it.
2. The same data dir is started as a real node process (`python -m raftkv node`); the restart time
   is from spawning the process to `/raft-state` answering with every key applied (loading the
   snapshot, replaying the WAL tail, electing itself, committing and applying the tail).
3. Memory per key = (RSS of that process - RSS of an empty node process) / keys.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path

from raftkv.kv import Txn, TxnPut
from raftkv.kv.commands import MAX_TXN_OPS
from raftkv.node import NodeHost
from raftkv.node.config import Member, NodeConfig
from raftkv.supervisor import Supervisor, free_ports

from .procs import http_json, rss_bytes, wait_until

FILL_CONCURRENCY = 32


@dataclass
class RestartResult:
    keys: int
    fill_s: float
    restart_s: float
    rss_bytes: int
    empty_rss_bytes: int
    snapshot_index: int
    last_index: int

    @property
    def bytes_per_key(self) -> float:
        return (self.rss_bytes - self.empty_rss_bytes) / self.keys if self.keys else float("nan")


async def _fill(cfg: NodeConfig, keys: int, value_bytes: int, progress: object = None) -> int:
    node = NodeHost(cfg)
    await node.start()
    try:
        deadline = time.monotonic() + 20
        while node.leader_id() != cfg.node_id:
            if time.monotonic() > deadline:
                raise TimeoutError("single-node raftkv did not elect itself in 20 s")
            await asyncio.sleep(0.02)
        value = "v" * value_bytes
        batches = [range(start, min(keys, start + MAX_TXN_OPS)) for start in range(0, keys, MAX_TXN_OPS)]
        queue = iter(batches)

        async def worker() -> None:
            for batch in queue:
                await node.propose(Txn(success=tuple(TxnPut(f"key{i:08d}", value) for i in batch)))
                if progress is not None:
                    progress.update(len(batch))  # type: ignore[attr-defined]

        await asyncio.gather(*(worker() for _ in range(FILL_CONCURRENCY)))
        return node.kv.applied_index
    finally:
        await node.stop()


def measure_restart(base_dir: Path, keys: int, value_bytes: int = 10, progress: object = None) -> RestartResult:
    http_port, raft_port = free_ports(2)
    member = Member("node1", "127.0.0.1", http_port, raft_port)
    data = base_dir / "restart"
    # Snapshots every ~1/4 of the entries, so a restart loads a snapshot and replays a WAL tail.
    entries = max(1, keys // MAX_TXN_OPS)
    cfg = NodeConfig("node1", data / "node1", {"node1": member}, snapshot_every=max(4, entries // 4 + 1))
    started = time.perf_counter()
    _run(_fill(cfg, keys, value_bytes, progress))
    fill_s = time.perf_counter() - started

    empty = Supervisor([Member("node1", "127.0.0.1", *free_ports(2))], base_dir / "empty")
    sup = Supervisor([member], data)
    try:
        empty.start_all()
        empty_url = empty.nodes["node1"].member.url
        wait_until("empty node up", lambda: http_json("GET", empty_url + "/raft-state")[0] == 200, 30)
        empty_rss = rss_bytes(empty.nodes["node1"].proc.pid)  # type: ignore[union-attr]

        spawned = time.perf_counter()
        sup.start_all()

        def all_applied() -> dict | None:
            status, body = http_json("GET", member.url + "/raft-state", timeout_s=1.0)
            if status != 200:
                return None
            if body.get("keys", 0) >= keys and body.get("lastApplied", 0) >= body.get("commitIndex", 1):
                return body
            return None

        state = wait_until("restarted node serving every key", all_applied, 120, every_s=0.01)
        restart_s = time.perf_counter() - spawned
        rss = rss_bytes(sup.nodes["node1"].proc.pid)  # type: ignore[union-attr]
    finally:
        sup.stop_all()
        empty.stop_all()
    return RestartResult(
        keys=keys,
        fill_s=fill_s,
        restart_s=restart_s,
        rss_bytes=rss,
        empty_rss_bytes=empty_rss,
        snapshot_index=int(state.get("snapshotIndex", 0) or 0),
        last_index=int(state.get("lastApplied", 0)),
    )


def _run(coro: object) -> object:
    try:
        import uvloop

        return uvloop.run(coro)  # type: ignore[arg-type]
    except ImportError:
        return asyncio.run(coro)  # type: ignore[arg-type]
