"""`./dev bench`: raftkv side by side with etcd and PySyncObj, in one run on this machine.

Theory of operation
-------------------
Phases, each bounded, each stopping every process it started (by PID) before the next:

1. HTTP (`load.py`, `raftkv_http.py`, `etcd.py`): for each repetition, for each system, start a
   fresh 3-node cluster, run every workload (writes before reads, so reads mostly hit), stop it.
   Repetitions alternate between systems (interleaved), so drift on the machine hits both.
2. Embedded (`embedded.py`): raftkv's in-process API vs PySyncObj, one process per node, N writes
   in flight; PySyncObj in each of its configurations, the best one reported per N. At 1 in
   flight also the physical floor (`floor.py`: two appends with fdatasync at once and a loopback
   round trip, what one write cannot avoid) and the same I/O on the nodes' runtime (three asyncio
   processes), interleaved with the others.
3. Failover (`failover.py`): kill -9 the leader under steady writes, several trials per system.
4. Restart (`restart.py`): a node with 1M keys restarts from snapshot + WAL; RSS per key.
5. Watch (`watch.py`, `watch_client.py`, `watch_wire.py`): 1, 100 and 1,000 watchers of one
   prefix under the same steady write rate on raftkv and etcd, repetitions interleaved as in 1;
   events delivered per second and the latency from a write's acknowledgement to its delivery.
6. Keep-alive: lease renewals per second, closed loop at a fixed concurrency (`load.py`), raftkv
   and etcd interleaved as in 1.
7. gRPC (`grpc_load.py`): the writes and reads of 1 (small values) over etcd's own v3 gRPC API,
   raftkv's etcd API against etcd, the same grpc.aio client for both, interleaved as in 1.
8. Check perf (`check_perf.py`): etcd's own `etcdctl check perf` at each of `--check-perf-loads`,
   60 s each, on raftkv's etcd API and on etcd, once per system and load (not in --smoke).

Then `report.py` prints one table with ratios, writes it to `<out>/RESULTS.md` and a PNG.
`--smoke` runs everything tiny (seconds) with raftkv and whichever peers are installed; the test
suite runs it so the benchmark cannot rot. `--only watch,keepalive` (or `--skip ...`) picks phases.
`--tls` has raftkv's clusters serve their client API over HTTPS (what TLS costs).
`--trace-ratio R` has raftkv's node processes (every phase but embedded and restart) export the
traces of R of their requests over OTLP to a local receiver (trace_sink.py: what tracing costs);
`bench/trace_ab.py` measures that cost in interleaved pairs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script: `python bench/run.py`

from bench.pin import pin_raftkv  # noqa: E402 - must run before anything imports raftkv

PINNED = pin_raftkv(ROOT)

from tqdm import tqdm  # noqa: E402

from bench import etcd, report  # noqa: E402
from bench.check_perf import ETCDCTL_BIN, run_check_perf  # noqa: E402
from bench.embedded import PYSYNCOBJ_VARIANTS, EmbeddedCluster  # noqa: E402
from bench.failover import FailoverTrial, run_failover  # noqa: E402
from bench.floor import FloorPair, RuntimeFloor  # noqa: E402
from bench.grpc_load import run_grpc_load  # noqa: E402
from bench.load import KEEPALIVE_LEASES, KEEPALIVE_TTL_S, Workload, run_load  # noqa: E402
from bench.raftkv_http import RaftkvCluster  # noqa: E402
from bench.restart import measure_restart  # noqa: E402
from bench.trace_sink import TraceSink  # noqa: E402
from bench.watch import WatchWorkload, run_watch  # noqa: E402

FLOORS = {floor.kind: floor for floor in (FloorPair, RuntimeFloor)}
PHASES = ("http", "embedded", "failover", "restart", "watch", "keepalive", "grpc", "checkperf")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="everything tiny (seconds): for the test suite")
    p.add_argument("--tls", action="store_true", help="raftkv's clusters serve their client API over HTTPS (a "
                   "throwaway CA, as `raftkv up --tls`;\nthe http, watch, keepalive and failover phases; etcd stays "
                   "plain HTTP)")
    p.add_argument("--trace-ratio", type=float, metavar="R", help="raftkv's nodes export the traces of this share "
                   "of their requests (0..1)\nto a local OTLP receiver, as `raftkv up --trace --trace-ratio R` "
                   "(default: tracing off)")
    p.add_argument("--duration", type=float, help="seconds per measurement (default 4; smoke 0.4)")
    p.add_argument("--reps", type=int, help="interleaved repetitions (default 3; smoke 1)")
    p.add_argument("--concurrency", help="HTTP client counts, comma-separated (default 1,16,64,256)")
    p.add_argument("--values", help="value sizes in bytes (default 10,1024)")
    p.add_argument("--targets", help="spread,leader (default both)")
    p.add_argument("--inflight", help="embedded writes in flight (default 1,64,256,4096)")
    p.add_argument("--failover-trials", type=int, help="kill -9 trials per system (default 5; smoke 1)")
    p.add_argument("--restart-keys", type=int, help="keys for the restart test (default 1000000; smoke 2000)")
    p.add_argument("--watchers", help="watch: watcher counts (default 1,100,1000; smoke 1,20)")
    p.add_argument("--watch-rate", type=float, help="watch: writes per second offered (default 50; smoke 40)")
    p.add_argument("--keepalive-concurrency", help="keep-alive: clients, comma-separated (default 16)")
    p.add_argument("--check-perf-loads", help="checkperf: etcdctl check perf loads (default s,m; smoke: the phase "
                   "does not run)")
    p.add_argument("--systems", default="raftkv,etcd,pysyncobj", help="which systems to run")
    p.add_argument("--only", default="", help=f"phases to run (default all), comma-separated: {','.join(PHASES)}")
    p.add_argument("--skip", default="", help="phases to skip, comma-separated")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results", help="output directory")
    a = p.parse_args(argv)
    a.out = Path(PINNED["cwd"], a.out)  # the run works from the pinned copy's directory
    smoke = a.smoke

    def ints(text: str | None, full: str, tiny: str) -> list[int]:
        return [int(x) for x in (text or (tiny if smoke else full)).split(",") if x]

    a.duration = a.duration or (0.4 if smoke else 4.0)
    a.reps = a.reps or (1 if smoke else 3)
    a.concurrency = ints(a.concurrency, "1,16,64,256", "1,16")
    a.values = ints(a.values, "10,1024", "10")
    a.targets = (a.targets or ("spread" if smoke else "spread,leader")).split(",")
    a.inflight = ints(a.inflight, "1,64,256,4096", "1,64")
    a.failover_trials = a.failover_trials if a.failover_trials is not None else (1 if smoke else 5)
    a.restart_keys = a.restart_keys if a.restart_keys is not None else (2000 if smoke else 1_000_000)
    a.watchers = ints(a.watchers, "1,100,1000", "1,20")
    a.watch_rate = a.watch_rate or (40.0 if smoke else 50.0)
    a.keepalive_concurrency = ints(a.keepalive_concurrency, "16", "4")
    a.check_perf_loads = [x for x in (a.check_perf_loads or ("" if smoke else "s,m")).split(",") if x]
    a.systems = set(a.systems.split(","))
    only, skip = (set(filter(None, x.split(","))) for x in (a.only, a.skip))
    if a.trace_ratio is not None and not 0 <= a.trace_ratio <= 1:
        p.error("--trace-ratio: a share from 0 to 1")
    if unknown := (only | skip) - set(PHASES):
        p.error(f"unknown phase(s) {', '.join(sorted(unknown))}; the phases are {', '.join(PHASES)}")
    a.phases = (only or set(PHASES)) - skip
    if not a.check_perf_loads:
        a.phases.discard("checkperf")  # smoke: a check lasts 60 s, too long for it
    return a


def pysyncobj_missing() -> str | None:
    try:
        import pysyncobj  # noqa: F401
    except ImportError:
        return "PySyncObj not installed (pip install pysyncobj, or `./dev bench`)"
    return None


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    res = report.Results()
    if a.tls:
        res.notes.append("raftkv's client API over HTTPS (--tls); etcd's over plain HTTP")
    http_systems = ["raftkv"]
    if "etcd" in a.systems:
        why = etcd.available()
        if why:
            res.notes.append(f"etcd skipped: {why}")
        else:
            http_systems.append("etcd")
    pso_variants = list(PYSYNCOBJ_VARIANTS) if not a.smoke else ["nobatch"]
    use_pso = "pysyncobj" in a.systems and not (why := pysyncobj_missing())
    if "pysyncobj" in a.systems and not use_pso:
        res.notes.append(f"PySyncObj skipped: {why}")
    peers = [("etcd " + etcd.version()) if "etcd" in http_systems else None, "PySyncObj" if use_pso else None]
    res.meta = {
        "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "host": socket.gethostname(),
        "cpus": os.cpu_count(),
        "mode": "smoke" if a.smoke else "full",
        "reps": a.reps,
        "duration_s": a.duration,
        "peers": ", ".join(p for p in peers if p) or "none",
        "pysyncobj_variants": pso_variants,
        "python": platform.python_version(),
        "load_before": _loadavg(),
        "raftkv_code": _describe_pinned(),
    }
    for note in res.notes:
        print("note:", note)

    workloads = [
        Workload(op, c, v, t, a.duration)
        for op in ("write", "read")
        for v in a.values
        for t in a.targets
        for c in a.concurrency
    ]
    emb_systems = ([("raftkv", "")] + ([(kind, "") for kind in FLOORS] if 1 in a.inflight else [])
                   + ([("pysyncobj", v) for v in pso_variants] if use_pso else []))
    # Smoke: raftkv's failover only (the peers' failover code runs in full mode).
    fo_systems = ["raftkv"] if a.smoke else http_systems + (["pysyncobj"] if use_pso else [])
    steps = 0
    if "http" in a.phases:
        steps += a.reps * len(http_systems) * len(workloads)
    if "embedded" in a.phases:
        steps += a.reps * sum(len(_inflight(a, kind)) for kind, _ in emb_systems)
    if "failover" in a.phases:
        steps += a.failover_trials * len(fo_systems)
    keepalives = [Workload("keepalive", c, 0, t, a.duration) for t in a.targets for c in a.keepalive_concurrency]
    grpc_workloads = [w for w in workloads if w.value_bytes == min(a.values)]
    if "watch" in a.phases:
        steps += a.reps * len(http_systems) * len(a.watchers)
    if "keepalive" in a.phases:
        steps += a.reps * len(http_systems) * len(keepalives)
    if "grpc" in a.phases:
        steps += a.reps * len(http_systems) * len(grpc_workloads)
    if "checkperf" in a.phases:
        steps += len(http_systems) * len(a.check_perf_loads)

    with tempfile.TemporaryDirectory(prefix="raftkv-bench-") as tmp, tqdm(total=steps, unit="run") as bar:
        base = Path(tmp)
        failed: BaseException | None = None
        sink = None
        a.raftkv_env = None
        try:
            if a.trace_ratio is not None:
                sink = TraceSink(base).start()
                a.raftkv_env = sink.node_env(a.trace_ratio)
            if "http" in a.phases:
                run_http(a, res, base, http_systems, workloads, bar)
            if "embedded" in a.phases:
                run_embedded(a, res, base, emb_systems, bar)
            if "failover" in a.phases:
                run_failovers(a, res, base, fo_systems, bar)
            if "watch" in a.phases:
                run_watches(a, res, base, http_systems, bar)
            if "keepalive" in a.phases:
                run_keepalives(a, res, base, http_systems, keepalives, bar)
            if "grpc" in a.phases:
                run_grpc(a, res, base, http_systems, grpc_workloads, bar)
            if "checkperf" in a.phases:
                run_check_perfs(a, res, base, http_systems, bar)
            if "restart" in a.phases and a.restart_keys > 0:
                bar.set_description("restart")
                with tqdm(total=a.restart_keys, unit="key", desc=f"fill {a.restart_keys:,} keys", leave=False) as kb:
                    res.restart = measure_restart(base, a.restart_keys, progress=kb)
        except (Exception, KeyboardInterrupt) as e:  # still write what was measured (every phase stops its processes)
            failed = e
            res.notes.insert(0, f"**the run stopped early**: {type(e).__name__}: {e}; the table has what was measured")
        finally:
            if sink is not None:
                received = sink.received()
                sink.stop()
                res.notes.append(f"raftkv's nodes exported the traces of {a.trace_ratio:g} of their requests "
                                 f"(OTLP/HTTP to a local receiver, bench/trace_sink.py): {received:,} spans received; "
                                 "the embedded and restart phases are not traced")

    res.meta["load_after"] = _loadavg()
    text = report.markdown(res)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "RESULTS.md").write_text(text)
    png = report.plot(res, a.out / "results.png")
    print()
    print(text)
    print(f"written: {a.out / 'RESULTS.md'}" + (f", {png}" if png else " (no PNG: matplotlib missing)"))
    if failed is not None:
        raise failed
    return 0


def _describe_pinned() -> str:
    dirty = PINNED["dirty_files"]
    text = f"git {PINNED['commit']}"
    if dirty != "0":
        text += f" + uncommitted changes in {dirty} file(s) of raftkv/"
    return text + f", pinned for the whole run (sha256 of raftkv/*.py {PINNED['digest']})"


def _loadavg() -> str:
    try:
        return " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "?"


def _start_http(name: str, base: Path, run: str, tls: bool, env: dict[str, str] | None = None,
                etcd_api: bool = False) -> RaftkvCluster | etcd.EtcdCluster:
    """`tls`: raftkv's client API over HTTPS (--tls); etcd's stays plain HTTP. `env`: raftkv's
    nodes' variables (the OTEL_* ones of --trace-ratio). `etcd_api`: raftkv's nodes serve etcd's
    gRPC API too (etcd always does)."""
    d = base / f"{name}-{run}"  # a fresh data directory per cluster started
    return (RaftkvCluster(d, tls=tls, env=env, etcd_api=etcd_api) if name == "raftkv"
            else etcd.EtcdCluster(d)).start()


def _term(cluster: RaftkvCluster) -> int:
    terms = []
    for m in cluster.members:
        with contextlib.suppress(OSError):
            st = cluster.state(m.id)
            if st:
                terms.append(int(st.get("term", 0)))
    return max(terms, default=0)


def run_http(a, res: report.Results, base: Path, systems: list[str], workloads: list[Workload], bar: tqdm) -> None:
    for rep in range(a.reps):
        order = systems if rep % 2 == 0 else list(reversed(systems))
        for name in order:
            bar.set_description(f"http {name} rep {rep + 1}")
            cluster = _start_http(name, base, f"http-{rep}", a.tls, a.raftkv_env)
            try:
                for w in workloads:
                    bar.set_postfix_str(w.label)
                    term_before = _term(cluster) if name == "raftkv" else 0
                    r = asyncio.run(run_load(cluster, w, seed=rep))
                    res.http.setdefault(name, {}).setdefault(w, []).append(r)
                    if name == "raftkv":
                        changed = _term(cluster) - term_before
                        res.elections_during_load["raftkv"] = res.elections_during_load.get("raftkv", 0) + changed
                        if changed:
                            res.notes.append(f"raftkv term moved by {changed} during `{w.label}` (rep {rep + 1})")
                    if r.failed:
                        res.notes.append(f"{name} `{w.label}` rep {rep + 1}: {r.failed} failed requests")
                    bar.update(1)
            finally:
                cluster.stop()


def run_grpc(a, res: report.Results, base: Path, systems: list[str], workloads: list[Workload], bar: tqdm) -> None:
    for rep in range(a.reps):
        for name in systems if rep % 2 == 0 else list(reversed(systems)):
            bar.set_description(f"grpc {name} rep {rep + 1}")
            cluster = _start_http(name, base, f"grpc-{rep}", False, a.raftkv_env, etcd_api=True)
            try:
                for w in workloads:
                    bar.set_postfix_str(w.label)
                    r = asyncio.run(run_grpc_load(cluster, w, seed=rep))
                    res.grpc.setdefault(name, {}).setdefault(w, []).append(r)
                    if r.failed:
                        res.notes.append(f"{name} gRPC `{w.label}` rep {rep + 1}: {r.failed} failed requests")
                    bar.update(1)
            finally:
                cluster.stop()


def run_check_perfs(a, res: report.Results, base: Path, systems: list[str], bar: tqdm) -> None:
    if shutil.which(ETCDCTL_BIN) is None:
        res.notes.append("check perf skipped: etcdctl not installed (apt-get install etcd-client)")
        return
    for i, load in enumerate(a.check_perf_loads):
        for name in systems if i % 2 == 0 else list(reversed(systems)):
            bar.set_description(f"check perf {name} load {load}")
            cluster = _start_http(name, base, f"checkperf-{load}", False, a.raftkv_env, etcd_api=True)
            try:
                result = run_check_perf(cluster, load)
                res.check_perf.setdefault(name, {})[load] = result
                if result.throughput is None:
                    res.notes.append(f"{name} check perf --load {load} printed no verdict: {result.tail!r}")
                bar.update(1)
            finally:
                cluster.stop()


def run_watches(a, res: report.Results, base: Path, systems: list[str], bar: tqdm) -> None:
    for rep in range(a.reps):
        for name in systems if rep % 2 == 0 else list(reversed(systems)):
            bar.set_description(f"watch {name} rep {rep + 1}")
            cluster = _start_http(name, base, f"watch-{rep}", a.tls, a.raftkv_env)
            try:
                for n in a.watchers:
                    w = WatchWorkload(n, a.watch_rate, a.duration)
                    bar.set_postfix_str(w.label)
                    r = asyncio.run(run_watch(cluster, w, base / "watch-logs", tag=f"{name}-{rep}",
                                              warmup_s=0.2 if a.smoke else 0.5, drain_s=0.5 if a.smoke else 2.0))
                    res.watch.setdefault(name, {}).setdefault(n, []).append(r)
                    trouble = [f"{what} x{k}" for what, k in r.watch_errors.items()]
                    if r.writes_unacknowledged:
                        trouble.append(f"{r.writes_unacknowledged} writes not acknowledged")
                    if r.undelivered:
                        trouble.append(f"{r.undelivered} probe deliveries missing {a.duration:g} s + drain later")
                    if r.resumed:
                        trouble.append(f"{r.resumed} watches ended as too slow and resumed")
                    if trouble:
                        res.notes.append(f"{name} watch, {w.label}, rep {rep + 1}: {'; '.join(trouble)}")
                    bar.update(1)
            finally:
                cluster.stop()


def run_keepalives(a, res: report.Results, base: Path, systems: list[str], workloads: list[Workload],
                   bar: tqdm) -> None:
    for rep in range(a.reps):
        for name in systems if rep % 2 == 0 else list(reversed(systems)):
            bar.set_description(f"keepalive {name} rep {rep + 1}")
            cluster = _start_http(name, base, f"keepalive-{rep}", a.tls, a.raftkv_env)
            try:
                leases = cluster.grant_leases(KEEPALIVE_LEASES, KEEPALIVE_TTL_S)
                for w in workloads:
                    bar.set_postfix_str(w.label)
                    r = asyncio.run(run_load(cluster, w, seed=rep, keys=leases))
                    res.keepalive.setdefault(name, {}).setdefault(w, []).append(r)
                    if r.failed:
                        res.notes.append(f"{name} `{w.label}` rep {rep + 1}: {r.failed} failed keep-alives")
                    bar.update(1)
            finally:
                cluster.stop()


def run_embedded(a, res: report.Results, base: Path, systems: list[tuple[str, str]], bar: tqdm) -> None:
    for rep in range(a.reps):
        for kind, variant in systems if rep % 2 == 0 else list(reversed(systems)):
            key = kind if not variant else f"{kind}:{variant}"
            bar.set_description(f"embedded {key} rep {rep + 1}")
            cluster = (FLOORS[kind](base / f"{kind}-{rep}") if kind in FLOORS
                       else EmbeddedCluster(kind, base / f"emb-{rep}", variant)).start()
            try:
                for n in _inflight(a, kind):
                    bar.set_postfix_str(f"{n} in flight")
                    try:
                        out = cluster.load(n, a.duration)
                    except (RuntimeError, TimeoutError) as e:
                        res.notes.append(f"{key} {n} in flight rep {rep + 1}: {e}")
                        out = {"completed": 0, "failed": 0, "elapsed_s": a.duration, "latencies": []}
                    if out.get("failed"):
                        errs = "; ".join(f"{k} x{v}" for k, v in list(out.get("errors", {}).items())[:3])
                        res.notes.append(
                            f"{key} {n} in flight rep {rep + 1}: {out['failed']} failed proposals"
                            + (f" ({errs})" if errs else "")
                        )
                    res.embedded.setdefault(key, {}).setdefault(n, []).append(out)
                    bar.update(1)
            finally:
                cluster.stop()


def _inflight(a, kind: str) -> list[int]:
    """The in-flight counts a system of the embedded phase is measured at (the floors: 1 alone)."""
    return [1] if kind in FLOORS else a.inflight


def run_failovers(a, res: report.Results, base: Path, systems: list[str], bar: tqdm) -> None:
    for name in systems:
        bar.set_description(f"failover {name}")
        if name == "pysyncobj":
            cluster = EmbeddedCluster("pysyncobj", base / "fo-pso", "batch-100ms").start()
            try:
                trials = []
                for _ in range(a.failover_trials):
                    trials.append(FailoverTrial(cluster.failover_trial()))
                    bar.update(1)
                    cluster.stop()
                    cluster = EmbeddedCluster("pysyncobj", base / "fo-pso", "batch-100ms").start()
                res.failover["PySyncObj (embedded, default timeouts)"] = trials
            finally:
                cluster.stop()
            continue
        cluster = _start_http(name, base, "failover", a.tls, a.raftkv_env)
        try:
            res.failover[name] = run_failover(
                cluster, a.failover_trials, before_s=0.5 if a.smoke else 1.0, progress=bar
            )
        finally:
            cluster.stop()


if __name__ == "__main__":
    sys.exit(main())
