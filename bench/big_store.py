"""A big store under write load: do its nodes' event loops stall long enough to cost elections?

    .venv/bin/python bench/big_store.py                          # a million keys, 60 s of writes
    .venv/bin/python bench/big_store.py --keys 200000 --seconds 20
    .venv/bin/python bench/big_store.py --keys 10000 --value-bytes 1024 --snapshot-every 100000
                                        # big snapshots of a small store: 1 KiB values, ~110 MB each
    .venv/bin/python bench/big_store.py --compact --seconds 10
                                        # all history kept, then one POST /compact of all of it

Theory of operation
-------------------
A 3-node cluster (fsync on, snapshots every `--snapshot-every` entries so that several fall due
during the run) is filled with `--keys` keys by transactions of 128 puts, then written at 64
clients spread over the nodes for `--seconds`, over the same keys (so history builds and the
leader compacts it). Whatever holds a node's loop (a collection of a big heap, a snapshot's image
being cut, a compaction of many changes) delays its ticks, heartbeats and answers alike; a leader
held for an election timeout (200-400 ms by default) loses its followers to an election. Printed:
writes per second and failed writes, the terms before and after the load (the same term: no
election), and per node its snapshots, its ticks late by more than 100 ms and more than 250 ms,
and the bound of the lowest bucket that holds them all (`raft_tick_lateness_seconds`, a
histogram): the worst tick was within it. Counted from the nodes' start, the fill included.

With `--compact` the nodes keep all history (`--history-revisions 0`), and after the load the
leader is asked to forget all of it in one `POST /compact`, as an operator would: printed are the
versions dropped, how long the answer took, the terms around it, and each node's late ticks
counted over the compaction alone.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import aiohttp
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script

from bench.load import Workload, run_load
from bench.procs import http_json
from bench.raftkv_http import RaftkvCluster
from raftkv import promtext

PUTS_PER_TXN = 128


async def fill(cluster: RaftkvCluster, keys: int, value_bytes: int) -> None:
    gate = asyncio.Semaphore(16)
    async with aiohttp.ClientSession() as session:
        with tqdm(total=keys, unit="key", desc="filling", file=sys.stderr) as progress:
            async def one(lo: int) -> None:
                ops = [{"op": "put", "key": f"k{i:07d}", "value": "x" * value_bytes}
                       for i in range(lo, min(lo + PUTS_PER_TXN, keys))]
                async with gate, session.post(cluster.leader_url() + "/txn", json={"success": ops}) as answer:
                    if answer.status != 200:
                        raise SystemExit(f"filling failed: {answer.status} {await answer.text()}")
                    await answer.read()
                progress.update(len(ops))

            await asyncio.gather(*(one(lo) for lo in range(0, keys, PUTS_PER_TXN)))


def node_figures(url: str) -> tuple[float, list[tuple[float, float]]]:
    """A node's snapshots taken and its tick-lateness histogram's cumulative buckets (none for a
    node from before the metric)."""
    sample = promtext.parse(urllib.request.urlopen(url + "/metrics", timeout=5).read().decode())
    return (promtext.value(sample, "raft_snapshots_total", kind="taken"),
            promtext.buckets(sample, "raft_tick_lateness_seconds"))


def lateness_line(buckets: list[tuple[float, float]]) -> str:
    if not buckets:
        return "ticks late: n/a"
    total = buckets[-1][1]
    worst = min(bound for bound, count in buckets if count == total)
    return (f"ticks late by over 100 ms: {promtext.count_above(buckets, 0.1) or 0:.0f}, "
            f"over 250 ms: {promtext.count_above(buckets, 0.25) or 0:.0f}; "
            f"the worst within {f'{worst * 1000:.0f} ms' if worst != math.inf else 'over 5 s'}")


def terms(cluster: RaftkvCluster) -> dict[str, int | None]:
    return {n: (cluster.state(n) or {}).get("term") for n in cluster.supervisor.nodes}


def compact_all(cluster: RaftkvCluster) -> None:
    """Ask the leader to forget all history (`POST /compact` to the current revision) and print
    what it took and what the nodes' ticks did meanwhile."""
    before = {n: node_figures(cluster.url(n))[1] for n in cluster.supervisor.nodes}
    terms_before = terms(cluster)
    leader = cluster.leader()
    revision = cluster.state(leader)["revision"]
    started = time.monotonic()
    status, answer = http_json("POST", cluster.url(leader) + "/compact", {"revision": revision}, timeout_s=120)
    took = time.monotonic() - started
    if status != 200:
        raise SystemExit(f"compaction failed: {status} {answer}")
    print(f"compaction to revision {revision:,}: {answer['dropped']:,} versions dropped, answered in {took:.2f} s; "
          f"terms {terms_before} -> {terms(cluster)}")
    for node_id, earlier in before.items():
        now = node_figures(cluster.url(node_id))[1]
        print(f"{node_id} during the compaction: {lateness_line(promtext.delta_buckets(now, earlier))}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--snapshot-every", type=int, default=20_000)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--value-bytes", type=int, default=10)
    parser.add_argument("--compact", action="store_true",
                        help="keep all history (no automatic compaction), then ask for one compaction of all of it")
    args = parser.parse_args()
    node_args = ["--snapshot-every", str(args.snapshot_every)] + (["--history-revisions", "0"] if args.compact else [])
    cluster = RaftkvCluster(Path(tempfile.mkdtemp(prefix="big-store-")), node_args=node_args).start()
    try:
        asyncio.run(fill(cluster, args.keys, args.value_bytes))
        terms_before = terms(cluster)
        load = Workload(op="write", concurrency=args.clients, value_bytes=args.value_bytes, target="spread",
                        duration_s=args.seconds)
        print(f"{args.keys:,} keys; writes at {args.clients} clients spread for {args.seconds:.0f} s", flush=True)
        result = asyncio.run(run_load(cluster, load, key_space=args.keys))
        print(f"writes: {result.throughput:,.0f}/s, p99 {result.percentile(99) * 1000:.1f} ms, slowest "
              f"{max(result.latencies_s, default=0.0) * 1000:.0f} ms, {result.failed} failed; "
              f"terms {terms_before} -> {terms(cluster)}")
        for node_id in cluster.supervisor.nodes:
            snapshots, buckets = node_figures(cluster.url(node_id))
            print(f"{node_id}: {snapshots:.0f} snapshots; {lateness_line(buckets)}")
        if args.compact:
            compact_all(cluster)
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()
