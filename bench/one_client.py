"""Why one client waits: a single client's writes, one at a time, and what each costs the nodes.

    .venv/bin/python bench/one_client.py                  # 2,000 writes to a follower, then to the leader
    .venv/bin/python bench/one_client.py --writes 5000

Theory of operation
-------------------
At one client a write is a chain of wake-ups, not of work: the node that takes the request wakes,
a follower forwards it, the leader appends and hands its fsync to its disk thread, each follower
wakes for the append and again for its own fsync, the commit comes back. A fresh 3-node cluster is
written to by one blocking keep-alive HTTP client (the standard library's, so the client's own
cost is small), first on a follower and then on the leader. For each target it prints the latency
percentiles and, per node, the CPU time (user + system, every thread) and the voluntary context
switches per write. Beside them: what each node costs per second while idle (its ticker and the
heartbeats), and what one wake-up costs on this machine, timed on a bare asyncio loop that sleeps
in steps of 10 ms and does nothing else (80-230 us of CPU on the 2-core VM of bench/PROFILE.md's
ninth round): it multiplies by the wake-ups a write needs.
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script: `python bench/one_client.py`

from bench.pin import pin_raftkv  # noqa: E402 - must run before anything imports raftkv

PINNED = pin_raftkv(ROOT)

from bench.procs import context_switches, cpu_seconds  # noqa: E402
from bench.raftkv_http import RaftkvCluster  # noqa: E402

WARM_WRITES = 300
IDLE_S = 3.0
BARE_TICKER = """
import asyncio, resource, time
async def main():
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
    wakes = 0
    while time.monotonic() - t0 < {seconds}:
        await asyncio.sleep(0.01)
        wakes += 1
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    print((r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime) / wakes)
asyncio.run(main())
"""


def write_one_at_a_time(url: str, writes: int) -> list[float]:
    """Seconds each write took, over one keep-alive connection."""
    host, _, port = url.removeprefix("http://").partition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    body = json.dumps({"value": "x" * 10}).encode()
    took = []
    try:
        for i in range(writes):
            t0 = time.perf_counter()
            conn.request("PUT", f"/kv/one-client-{i % 100}", body=body, headers={"Content-Type": "application/json"})
            answer = conn.getresponse()
            answer.read()
            if answer.status != 200:
                raise RuntimeError(f"write {i}: HTTP {answer.status}")
            took.append(time.perf_counter() - t0)
    finally:
        conn.close()
    return took


def node_costs(pids: dict[str, int]) -> dict[str, tuple[float, int]]:
    return {node: (cpu_seconds(pid), context_switches(pid)) for node, pid in pids.items()}


def per_node(before: dict[str, tuple[float, int]], after: dict[str, tuple[float, int]], per: float,
             leader: str, unit: str, scale: float) -> str:
    return "  ".join(f"{node}{' (leader)' if node == leader else ''} "
                     f"{(after[node][0] - before[node][0]) * scale / per:,.0f} {unit} CPU, "
                     f"{(after[node][1] - before[node][1]) / per:.1f} switches" for node in before)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--writes", type=int, default=2000, help="writes per target (default 2000)")
    args = ap.parse_args()
    wake = float(subprocess.run([sys.executable, "-c", BARE_TICKER.format(seconds=IDLE_S)], check=True,
                                capture_output=True, text=True).stdout)
    print(f"one wake-up of a bare asyncio loop on this machine: {wake * 1e6:.0f} us of CPU")
    with tempfile.TemporaryDirectory() as base:
        cluster = RaftkvCluster(Path(base)).start()
        try:
            leader = cluster.leader()
            follower = next(m.id for m in cluster.members if m.id != leader)
            pids = {m.id: cluster.pid(m.id) for m in cluster.members}
            before = node_costs(pids)
            time.sleep(IDLE_S)
            print(f"idle, per second: {per_node(before, node_costs(pids), IDLE_S, leader, 'ms', 1e3)}")
            for name, node in (("a follower", follower), ("the leader", leader)):
                write_one_at_a_time(cluster.url(node), WARM_WRITES)
                before = node_costs(pids)
                took = sorted(write_one_at_a_time(cluster.url(node), args.writes))
                after = node_costs(pids)
                print(f"to {name} ({node}): p50 {took[len(took) // 2] * 1e3:.2f} ms, "
                      f"p90 {took[int(len(took) * 0.9)] * 1e3:.2f} ms, mean {statistics.mean(took) * 1e3:.2f} ms; "
                      f"per write: {per_node(before, after, args.writes, leader, 'us', 1e6)}")
        finally:
            cluster.stop()


if __name__ == "__main__":
    main()
