"""Where a write's time goes at one client, from the nodes' own trace spans.

    .venv/bin/python bench/write_path.py                  # 3 s of writes to the leader, one at a time
    .venv/bin/python bench/write_path.py --target spread --duration 5

Theory of operation
-------------------
A fresh 3-node cluster traces every request (`--trace-ratio 1`'s variables, trace_sink.py) while
one closed-loop client writes (bench/load.py). Each write's trace is turned into its critical path
by the dashboard's own waterfall (raftkv/dashboard/waterfall.py: the request, the hops, the fsyncs
and the waits that decided when the write was answered), and the steps of the newest traces are
summed up by label: the median time of each, and how many of the traces it was on the path of.
Tracing every request costs time of its own (spans made and exported), so the figures are an
upper bound on each step and the total is longer than an untraced write's; what they give is the
shape: which steps a write waits for, and which are large.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script: `python bench/write_path.py`

from bench.pin import pin_raftkv  # noqa: E402 - must run before anything imports raftkv

PINNED = pin_raftkv(ROOT)

from bench.load import Workload, run_load  # noqa: E402
from bench.raftkv_http import RaftkvCluster  # noqa: E402
from bench.trace_sink import TraceSink  # noqa: E402

EXPORT_WAIT_S = 1.5  # the nodes export every half second (trace_sink.BSP_SCHEDULE_DELAY_MS)
TRACES = 150  # the newest ones, of the sink's MAX_TRACES


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--target", default="leader", choices=("leader", "spread"))
    p.add_argument("--duration", type=float, default=3.0, help="seconds of writes (default 3)")
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="raftkv-write-path-") as tmp:
        base = Path(tmp)
        sink = TraceSink(base).start()
        try:
            cluster = RaftkvCluster(base / "cluster", env=sink.node_env(1.0)).start()
            try:
                result = asyncio.run(run_load(cluster, Workload("write", 1, 10, a.target, a.duration)))
                time.sleep(EXPORT_WAIT_S)
                steps, totals = critical_paths(sink)
            finally:
                cluster.stop()
        finally:
            sink.stop()
    print(f"{result.completed} writes at 1 client ({a.target}), every one traced; {len(totals)} traces read")
    if not totals:
        print("no write's trace arrived")
        return 1
    print(f"median write, as traced: {statistics.median(totals):.3f} ms")
    for (label, ds) in sorted(steps.items(), key=lambda kv: -statistics.median(kv[1]) * len(kv[1])):
        print(f"{statistics.median(ds):7.3f} ms  on {len(ds):3d} of {len(totals)} paths  {label}")
    return 0


def critical_paths(sink: TraceSink) -> tuple[dict[str, list[float]], list[float]]:
    """Each critical-path step's durations (ms) by label, and each write's total, from the sink."""
    steps: dict[str, list[float]] = defaultdict(list)
    totals = []
    listing = sink.get("/api/traces") or {"traces": []}
    for summary in listing["traces"][:TRACES]:
        got = sink.get("/api/traces/" + summary["traceId"])
        path = got["waterfall"]["path"] if got else []
        if not path:
            continue  # not a write, or its spans did not all arrive
        totals.append(got["waterfall"]["totalMs"])
        for step in path:
            steps[step["label"]].append(step["endMs"] - step["startMs"])
    return steps, totals


if __name__ == "__main__":
    sys.exit(main())
