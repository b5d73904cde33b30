"""What tracing costs raftkv's writes, measured in interleaved A/B pairs.

    .venv/bin/python bench/trace_ab.py                    # 5 pairs at the default ratio, write c=64 v=10B spread, 4 s
    .venv/bin/python bench/trace_ab.py --pairs 8 --ratio 1 --duration 6

Theory of operation
-------------------
The row is the benchmark's HTTP write at 64 clients (`write c=64 v=10B spread`, bench/load.py), the
row the tracing issue bounds: tracing at the default ratio may not cost it more than 3% of its
throughput. A pair is one run with tracing off (A: the nodes get no OTEL_* variable that asks for
tracing, and OTEL_SDK_DISABLED=true so that none from the shell does) and one with the nodes
exporting the traces of `--ratio` of their requests over OTLP/HTTP to a local receiver (B:
trace_sink.py, which keeps them as the dashboard would), each on a fresh 3-node cluster, in
alternating order (AB, BA, AB, ...) so that a machine that drifts (others' work, a warming disk)
weighs on both. The receiver runs through the whole measurement, for A too.

For each run: throughput, p50/p99 latency, and the CPU time the three node processes spent per
completed write (from /proc, which a busy machine disturbs less than throughput). Printed per pair
with the ratio B/A, then the median and range of the pairs' ratios. The default `--ratio` is
raftkv's default: a node given an OTLP endpoint and no OTEL_TRACES_SAMPLER samples
`parentbased_traceidratio` at DEFAULT_RATIO (node/tracing.py; the SDK's own default, every
request, is `--ratio 1`).

On a shared 2-core machine single pairs scatter by +-15%, too much to show a cost of a few percent
directly. So the run also measures what one traced write costs (`--cost-pairs`, 3 by default):
pairs at one client, B tracing every request, where each write is traced alone as at a low ratio
(no batch shares its disk spans with another traced write). The extra node CPU per write of B,
times the ratio, over the c=64 row's CPU per write with tracing off, is the expected cost of the
ratio on that row. It is an upper bound: at one client every step runs cold, after a context
switch, and costs more than amid a busy loop.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script: `python bench/trace_ab.py`

from bench.pin import pin_raftkv  # noqa: E402 - must run before anything imports raftkv

PINNED = pin_raftkv(ROOT)

from bench.load import LoadResult, Workload, run_load  # noqa: E402
from bench.procs import cpu_seconds  # noqa: E402
from bench.raftkv_http import RaftkvCluster  # noqa: E402
from bench.trace_sink import TraceSink  # noqa: E402
from raftkv.node.tracing import DEFAULT_RATIO  # noqa: E402

OFF = {"OTEL_SDK_DISABLED": "true"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--pairs", type=int, default=5, help="A/B pairs (default 5)")
    p.add_argument("--ratio", type=float, default=DEFAULT_RATIO,
                   help=f"B's sampling ratio, 0..1 (default {DEFAULT_RATIO:g}, raftkv's default)")
    p.add_argument("--duration", type=float, default=4.0, help="seconds per measurement (default 4, as bench/run.py)")
    p.add_argument("--concurrency", type=int, default=64, help="clients (default 64)")
    p.add_argument("--target", default="spread", choices=("spread", "leader"))
    p.add_argument("--together", action="store_true",
                   help="run each pair's A and B clusters at the same time, so that the machine's drift falls on both")
    p.add_argument("--cost-pairs", type=int, default=3,
                   help="pairs at one client, B tracing every write: the cost of one traced write (default 3; 0: skip)")
    a = p.parse_args(argv)
    if not 0 <= a.ratio <= 1 or a.pairs < 1 or a.cost_pairs < 0:
        p.error("--ratio: 0..1; --pairs: at least 1; --cost-pairs: 0 or more")
    return a


def measure(base: Path, name: str, envs: list[dict[str, str]], w: Workload,
            seed: int) -> list[tuple[LoadResult, float]]:
    """Runs at once, one fresh cluster per env (in their order), one load driver for all: each
    load's result and its nodes' CPU seconds per completed write."""
    clusters = [RaftkvCluster(base / f"{name}-{i}", env=env).start() for i, env in enumerate(envs)]
    try:
        pids = [c.pids() for c in clusters]
        before = [sum(cpu_seconds(pid) for pid in ps) for ps in pids]

        async def all_loads() -> list[LoadResult]:
            return list(await asyncio.gather(*(run_load(c, w, seed=seed) for c in clusters)))

        results = asyncio.run(all_loads())
        # The warm-up's share too, for A and B alike.
        cpu = [sum(cpu_seconds(pid) for pid in ps) - b for ps, b in zip(pids, before, strict=True)]
    finally:
        for c in clusters:
            c.stop()
    return [(r, c / max(1, r.completed)) for r, c in zip(results, cpu, strict=True)]


def line(tag: str, r: LoadResult, cpu: float) -> str:
    return (f"{tag} {r.throughput:8,.0f} writes/s  p50 {r.percentile(50) * 1000:5.1f} ms  "
            f"p99 {r.percentile(99) * 1000:5.1f} ms  node CPU {cpu * 1e6:4.0f} us/write"
            + (f"  ({r.failed} failed)" if r.failed else ""))


class Pairs:
    """Interleaved pairs, A tracing off and B at a ratio: per pair, throughput B/A, node CPU per
    write B/A, A's node CPU per write and B's extra (seconds)."""

    def __init__(self) -> None:
        self.throughput: list[float] = []
        self.cpu: list[float] = []
        self.cpu_off: list[float] = []
        self.extra: list[float] = []

    def run(self, base: Path, name: str, traced: dict[str, str], w: Workload, count: int,
            together: bool = False) -> Pairs:
        for pair in range(count):
            order = [("A", OFF), ("B", traced)] if pair % 2 == 0 else [("B", traced), ("A", OFF)]
            if together:  # the cluster started first, and driven first, alternates too
                runs = measure(base, f"{name}{pair}", [env for _, env in order], w, seed=pair)
            else:
                runs = [measure(base, f"{name}{pair}-{tag}", [env], w, seed=pair)[0] for tag, env in order]
            got = {tag: run for (tag, _), run in zip(order, runs, strict=True)}
            (ra, ca), (rb, cb) = got["A"], got["B"]
            self.throughput.append(rb.throughput / ra.throughput)
            self.cpu.append(cb / ca)
            self.cpu_off.append(ca)
            self.extra.append(cb - ca)
            how = "".join(t for t, _ in order) + (", at once" if together else "")
            print(f"pair {pair + 1} ({how}):\n  {line('A', ra, ca)}\n  {line('B', rb, cb)}"
                  f"\n  B/A throughput {self.throughput[-1]:.3f}, node CPU per write {self.cpu[-1]:.3f}", flush=True)
        return self


def spread(values: list[float]) -> str:
    return f"median {statistics.median(values):.3f} (min {min(values):.3f}, max {max(values):.3f})"


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    w = Workload("write", a.concurrency, 10, a.target, a.duration)
    print(f"{w.label}, {a.duration:g} s per run, {a.pairs} interleaved pairs: A tracing off, B ratio {a.ratio:g}; "
          f"raftkv git {PINNED['commit']}" + (f" + {PINNED['dirty_files']} changed file(s)"
                                              if PINNED["dirty_files"] != "0" else ""), flush=True)
    with tempfile.TemporaryDirectory(prefix="raftkv-trace-ab-") as tmp:
        base = Path(tmp)
        sink = TraceSink(base).start()
        try:
            row = Pairs().run(base, "row", sink.node_env(a.ratio), w, a.pairs, a.together)
            spans = sink.received()
            print(f"B/A throughput: {spread(row.throughput)}; node CPU per write: {spread(row.cpu)}; "
                  f"{spans:,} spans received", flush=True)
            if a.cost_pairs:
                one = Workload("write", 1, 10, a.target, a.duration)
                print(f"what one traced write costs: {one.label}, {a.cost_pairs} pairs, B tracing every write",
                      flush=True)
                alone = Pairs().run(base, "one", sink.node_env(1.0), one, a.cost_pairs, a.together)
                per_trace, off = statistics.median(alone.extra), statistics.median(row.cpu_off)
                print(f"one traced write: {per_trace * 1e6:,.0f} us more node CPU (median); the row's writes with "
                      f"tracing off: {off * 1e6:,.0f} us each; expected cost of ratio {a.ratio:g} on the row: "
                      f"at most {a.ratio * per_trace / off:+.1%} node CPU per write", flush=True)
        finally:
            sink.stop()
    print(time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    if a.ratio > 0 and spans == 0:
        print("no span reached the receiver: B did not trace, and this measured nothing", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
