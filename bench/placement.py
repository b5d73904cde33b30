"""What a write costs each node, by where the clients are: all on the leader, spread, all on one follower.

    .venv/bin/python bench/placement.py                     # HTTP writes at 64 clients, 8 s, three rounds
    .venv/bin/python bench/placement.py --seconds 5 --reps 1 --op read

Theory of operation
-------------------
The full run's HTTP rows put clients either all on the leader or spread over every node, and the
spread rows are the lower ones. A follower that takes a write forwards it to the leader and
answers once it has applied it; a spread run mixes that with the leader's own requests. This
runs the same closed loop (`bench/load.py`) against a fresh 3-node cluster three ways, in turn
within each round, and prints per way: writes (or reads) a second, each node's CPU time and
voluntary context switches per operation (`/proc`, every thread), and from each node's
`/metrics` the messages it sent and the fsyncs it made per operation, which say how many writes
share a forward, an append and an fsync. Comparing the three says what serving a request costs a
follower and the leader, and what mixing them costs beyond that.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script: `python bench/placement.py`

from bench.pin import pin_raftkv  # noqa: E402 - must run before anything imports raftkv

PINNED = pin_raftkv(ROOT)

from bench.load import Workload, run_load  # noqa: E402
from bench.procs import context_switches, cpu_seconds  # noqa: E402
from bench.raftkv_http import RaftkvCluster  # noqa: E402
from raftkv import promtext  # noqa: E402

PLACEMENTS = ("leader", "spread", "follower")
MESSAGES = ("AppendRequest", "ProposeForward", "ProposeAnswer", "HeartbeatRequest", "ReadIndexRequest",
            "ReadIndexResponse")


@dataclass
class OneFollower:
    """The cluster, with every client of a "leader" workload sent to one follower instead."""

    cluster: RaftkvCluster
    follower: str

    def __getattr__(self, name: str) -> object:
        return getattr(self.cluster, name)

    def leader_url(self) -> str:
        return self.cluster.url(self.follower)


def node_counters(url: str) -> dict[str, float]:
    sample = promtext.parse(urllib.request.urlopen(url + "/metrics", timeout=5).read().decode())
    counters = {kind: promtext.value(sample, "raft_messages_sent_total", type=kind) for kind in MESSAGES}
    counters["fsync"] = promtext.value(sample, "raft_wal_fsync_seconds_count")
    return counters


def run(placement: str, op: str, concurrency: int, seconds: float, base: Path) -> str:
    cluster = RaftkvCluster(base).start()
    try:
        leader = cluster.leader()
        nodes = [leader, *sorted(m.id for m in cluster.members if m.id != leader)]
        system = OneFollower(cluster, nodes[1]) if placement == "follower" else cluster
        w = Workload(op, concurrency, 10, "spread" if placement == "spread" else "leader", seconds)
        asyncio.run(run_load(system, Workload(op, concurrency, 10, w.target, 1.0)))  # warm: connections, caches
        pids = {n: cluster.pid(n) for n in nodes}
        counters = {n: node_counters(cluster.url(n)) for n in nodes}  # before the CPU: serving /metrics costs some
        cpu, switches = {n: cpu_seconds(p) for n, p in pids.items()}, {n: context_switches(p) for n, p in pids.items()}
        r = asyncio.run(run_load(system, w))
        cpu = {n: cpu_seconds(p) - cpu[n] for n, p in pids.items()}
        switches = {n: context_switches(p) - switches[n] for n, p in pids.items()}
        ops = max(r.completed, 1)
        lines = [f"{placement:>8}: {r.throughput:,.0f} {op}s/s, p50 {r.percentile(50) * 1e3:.1f} ms, "
                 f"{r.failed} failed"]
        for n in nodes:
            after = node_counters(cluster.url(n))
            sent = "  ".join(f"{kind} {(after[kind] - counters[n][kind]) / ops:.3f}" for kind in MESSAGES
                             if after[kind] > counters[n][kind])
            if n == leader:
                role = "leader"
            else:
                role = "serving follower" if system is not cluster and n == nodes[1] else "follower"
            lines.append(f"          {n} ({role}): {cpu[n] / ops * 1e6:,.0f} us CPU, {switches[n] / ops:.2f} switches, "
                         f"fsyncs {(after['fsync'] - counters[n]['fsync']) / ops:.3f}, sent per {op}: {sent or '-'}")
    finally:
        cluster.stop()
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--op", choices=("write", "read"), default="write", help="PUT or linearizable GET /kv/{key}")
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=8.0, help="measured window of each run (default 8)")
    ap.add_argument("--reps", type=int, default=3, help="rounds of the placements (default 3)")
    ap.add_argument("--placements", default=",".join(PLACEMENTS),
                    help=f"which, comma-separated (default {','.join(PLACEMENTS)})")
    args = ap.parse_args()
    placements = tuple(p for p in args.placements.split(",") if p)
    if not placements or any(p not in PLACEMENTS for p in placements):
        ap.error(f"--placements: a comma-separated list of {', '.join(PLACEMENTS)}")
    print(f"HTTP {args.op}s at {args.concurrency} clients, {args.seconds:g} s each; raftkv code git {PINNED['commit']}")
    with tempfile.TemporaryDirectory() as base:
        for rep in range(args.reps):
            order = placements[rep % len(placements):] + placements[:rep % len(placements)]  # each goes first in turn
            for placement in order:
                report = run(placement, args.op, args.concurrency, args.seconds, Path(base) / f"{placement}-{rep}")
                print(f"round {rep + 1} {report}", flush=True)


if __name__ == "__main__":
    main()
