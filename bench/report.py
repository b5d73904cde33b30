"""Turns measurements into the one table (Markdown, also printed), the targets and a PNG.

Every figure is the median of the repetitions with (min-max) beside it; ratios are raftkv's
median over the peer's median (>1 means raftkv is faster; for latency, <1 means raftkv is faster).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .check_perf import RATES, CheckPerf
from .load import KEEPALIVE_LEASES, KEEPALIVE_TTL_S, LoadResult, Summary, Workload, percentile
from .watch import MAX_PROCESSES, PROBES, WATCHERS_PER_PROCESS, WatchResult


@dataclass
class Results:
    meta: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    http: dict[str, dict[Workload, list[LoadResult]]] = field(default_factory=dict)  # system -> workload -> reps
    embedded: dict[str, dict[int, list[dict]]] = field(default_factory=dict)  # system/variant -> inflight -> reps
    failover: dict[str, list[Any]] = field(default_factory=dict)
    restart: Any = None
    watch: dict[str, dict[int, list[WatchResult]]] = field(default_factory=dict)  # system -> watchers -> reps
    keepalive: dict[str, dict[Workload, list[LoadResult]]] = field(default_factory=dict)  # system -> workload -> reps
    grpc: dict[str, dict[Workload, list[LoadResult]]] = field(default_factory=dict)  # system -> workload -> reps
    check_perf: dict[str, dict[str, CheckPerf]] = field(default_factory=dict)  # system -> load -> result
    elections_during_load: dict[str, int] = field(default_factory=dict)


def _ratio(a: float, b: float) -> str:
    if not b or math.isnan(a) or math.isnan(b):
        return "-"
    return f"{a / b:.2f}x"


def _thr(reps: list[LoadResult]) -> Summary:
    return Summary([r.throughput for r in reps])


def _pct(reps: list[LoadResult], p: float) -> Summary:
    return Summary([r.percentile(p) for r in reps if r.latencies_s])


def _emb_thr(reps: list[dict]) -> Summary:
    return Summary([r["completed"] / r["elapsed_s"] if r["elapsed_s"] else 0.0 for r in reps])


def best_pysyncobj(res: Results, inflight: int) -> tuple[str, Summary] | None:
    best = None
    for name, by_n in res.embedded.items():
        if not name.startswith("pysyncobj") or inflight not in by_n:
            continue
        s = _emb_thr(by_n[inflight])
        if best is None or s.median > best[1].median:
            best = (name.split(":", 1)[1], s)
    return best


def http_table(res: Results) -> list[str]:
    return load_table(res.http)


def load_table(by_system: dict[str, dict[Workload, list[LoadResult]]]) -> list[str]:
    """One row per workload: raftkv's ops/s and latency beside the peer's, and their ratios."""
    systems = list(by_system)
    if not systems:
        return []
    peer = next((s for s in systems if s != "raftkv"), None)
    head = "| workload | raftkv ops/s | p50 / p99 ms |"
    sep = "|---|---:|---:|"
    if peer:
        head += f" {peer} ops/s | p50 / p99 ms | raftkv/{peer} throughput | raftkv/{peer} p99 |"
        sep += "---:|---:|---:|---:|"
    lines = [head, sep]
    workloads = list(by_system.get("raftkv", by_system[systems[0]]))
    for w in workloads:
        row = [w.label]
        figures = {}
        for s in ["raftkv", *([peer] if peer else [])]:
            reps = by_system.get(s, {}).get(w, [])
            thr, p50, p99 = _thr(reps), _pct(reps, 50), _pct(reps, 99)
            figures[s] = (thr, p99)
            row.append(thr.fmt())
            row.append(f"{p50.fmt(scale=1000, digits=1)} / {p99.fmt(scale=1000, digits=1)}" if reps else "-")
        if peer:
            row.append(_ratio(figures["raftkv"][0].median, figures[peer][0].median))
            row.append(_ratio(figures["raftkv"][1].median, figures[peer][1].median))
        lines.append("| " + " | ".join(row) + " |")
    return lines


def embedded_table(res: Results) -> list[str]:
    if "raftkv" not in res.embedded:
        return []
    lines = [
        "| writes in flight | raftkv embedded commits/s | p50 / p99 ms | floor commits/s | p50 ms | raftkv/floor |"
        " PySyncObj commits/s (best config) | raftkv/PySyncObj |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    floor = res.embedded.get("floor", {})
    for n, reps in sorted(res.embedded["raftkv"].items()):
        rk = _emb_thr(reps)
        fl = floor.get(n, [])
        floor_cells = (f"{_emb_thr(fl).fmt()} | {_emb_pct(fl, 50).fmt(scale=1000, digits=2)} | "
                       f"{_ratio(rk.median, _emb_thr(fl).median)}") if fl else "- | - | -"
        best = best_pysyncobj(res, n)
        ps = f"{best[1].fmt()} ({best[0]})" if best else "not run"
        lines.append(
            f"| {n} | {rk.fmt()} | {_emb_pct(reps, 50).fmt(scale=1000, digits=2)} / "
            f"{_emb_pct(reps, 99).fmt(scale=1000, digits=1)} | {floor_cells} | {ps} | "
            f"{_ratio(rk.median, best[1].median) if best else '-'} |"
        )
    return lines


def one_in_flight_table(res: Results) -> list[str]:
    """raftkv at 1 write in flight beside the two floors: where the distance to the floor lies."""
    floor = res.embedded.get("floor", {}).get(1)
    rows = [(label, res.embedded.get(kind, {}).get(1)) for kind, label in (
        ("floor", "the floor: its I/O by blocking calls, 2 processes"),
        ("runtime-floor", "the same I/O on asyncio + uvloop, 3 processes"),
        ("raftkv", "raftkv embedded"),
    )]
    if not floor or not all(reps for _, reps in rows):
        return []
    lines = ["| 1 write in flight | commits/s | p50 ms | floor/this |", "|---|---:|---:|---:|"]
    for label, reps in rows:
        thr = _emb_thr(reps)
        lines.append(f"| {label} | {thr.fmt()} | {_emb_pct(reps, 50).fmt(scale=1000, digits=2)} | "
                     f"{_ratio(_emb_thr(floor).median, thr.median)} |")
    return lines


def _emb_pct(reps: list[dict], p: float) -> Summary:
    return Summary([percentile(r["latencies"], p) for r in reps if r["latencies"]])


def failover_table(res: Results) -> list[str]:
    if not res.failover:
        return []
    lines = ["| system | kill -9 leader → first write (median, min-max) | trials | failed requests meanwhile |",
             "|---|---:|---:|---|"]
    for s, trials in res.failover.items():
        secs = [t.seconds for t in trials if t.seconds is not None]
        missing = len(trials) - len(secs)
        errors: dict[str, int] = {}
        for t in trials:
            for k, v in t.errors.items():
                errors[k] = errors.get(k, 0) + v
        err = ", ".join(f"{k} x{v}" for k, v in sorted(errors.items(), key=lambda kv: -kv[1])) or "-"
        cell = Summary(secs).fmt(" s", digits=3) + (f"; {missing} trial(s) without success" if missing else "")
        lines.append(f"| {s} | {cell} | {len(trials)} | {err} |")
    return lines


def _watch_cells(reps: list[WatchResult]) -> list[str]:
    if not reps:
        return ["-", "-", "-"]
    thr = Summary([r.events_per_s for r in reps])
    share = Summary([r.events_per_s / r.offered_per_s * 100 for r in reps if r.offered_per_s])
    p50 = Summary([r.percentile(50) for r in reps if r.latencies_s])
    p99 = Summary([r.percentile(99) for r in reps if r.latencies_s])
    sent_p99 = Summary([percentile(r.sent_latencies_s, 99) for r in reps if r.sent_latencies_s])
    return [f"{thr.fmt()} ({share.median:.0f}%)", f"{p50.fmt(scale=1000, digits=1)} / {p99.fmt(scale=1000, digits=1)}",
            sent_p99.fmt(scale=1000, digits=1)]


def watch_table(res: Results) -> list[str]:
    """Medians (min-max) per watcher count, raftkv beside the peer, with ratios."""
    if "raftkv" not in res.watch:
        return []
    peer = next((s for s in res.watch if s != "raftkv"), None)
    head = (f"| watchers | writes/s acknowledged (raftkv{f' / {peer}' if peer else ''}) |"
            " raftkv events/s (% of offered) | ack→delivery p50 / p99 ms | sent→delivery p99 ms |")
    sep = "|---:|---:|---:|---:|---:|"
    if peer:
        head += (f" {peer} events/s (% of offered) | ack→delivery p50 / p99 ms | sent→delivery p99 ms |"
                 f" raftkv/{peer} events/s | raftkv/{peer} p99 |")
        sep += "---:|---:|---:|---:|---:|"
    lines = [head, sep]
    for n, reps in sorted(res.watch["raftkv"].items()):
        peer_reps = res.watch.get(peer, {}).get(n, []) if peer else []
        writes = " / ".join(Summary([r.writes / r.elapsed_s for r in x]).fmt() for x in (reps, peer_reps) if x)
        row = [f"{n:,}", writes, *_watch_cells(reps)]
        if peer:
            row += _watch_cells(peer_reps)
            row.append(_ratio(Summary([r.events_per_s for r in reps]).median,
                              Summary([r.events_per_s for r in peer_reps]).median))
            row.append(_ratio(Summary([r.percentile(99) for r in reps]).median,
                              Summary([r.percentile(99) for r in peer_reps]).median))
        lines.append("| " + " | ".join(row) + " |")
    return lines


def watch_runs_table(res: Results) -> list[str]:
    """Every repetition on its own row (raftkv's and the peer's of the same repetition side by side),
    with what each cost: servers' and watcher processes' CPU per delivered event."""
    if "raftkv" not in res.watch:
        return []
    lines = ["| watchers | rep | system | writes acked/s | events/s | ack→delivery p50 / p99 ms |"
             " undelivered (probes) | watches resumed | server CPU µs/event | watcher-process CPU µs/event |",
             "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for n in sorted(res.watch["raftkv"]):
        for rep in range(max(len(by_n.get(n, [])) for by_n in res.watch.values())):
            for system, by_n in res.watch.items():
                if rep >= len(by_n.get(n, [])):
                    continue
                r = by_n[n][rep]
                lines.append(f"| {n:,} | {rep + 1} | {system} | {r.writes / r.elapsed_s:,.0f} | {r.events_per_s:,.0f} |"
                             f" {r.percentile(50) * 1000:.1f} / {r.percentile(99) * 1000:.1f} | {r.undelivered} |"
                             f" {r.resumed} | {r.cpu_us_per_event('server'):.0f} |"
                             f" {r.cpu_us_per_event('client'):.0f} |")
    return lines


def check_perf_table(res: Results) -> list[str]:
    if not res.check_perf:
        return []
    lines = ["| system | load (rate offered) | writes/s | slowest s | stddev s | failed writes | verdict |",
             "|---|---|---:|---:|---:|---:|---|"]
    loads = list(dict.fromkeys(load for by_load in res.check_perf.values() for load in by_load))
    for load in loads:
        for system, by_load in res.check_perf.items():
            r = by_load.get(load)
            if r is None:
                continue
            cells = [system, f"{load} ({RATES[load]:,}/s)", "-" if r.throughput is None else f"{r.throughput:,}",
                     "-" if r.slowest_s is None else f"{r.slowest_s:.3f}",
                     "-" if r.stddev_s is None else f"{r.stddev_s:.3f}", f"{r.errors:,}", r.verdict]
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def restart_table(res: Results) -> list[str]:
    r = res.restart
    if r is None:
        return []
    return [
        "| keys | restart: spawn → all keys applied and serving | RSS | RSS of an empty node | memory per key |"
        " snapshot index / last index |",
        "|---:|---:|---:|---:|---:|---:|",
        f"| {r.keys:,} | {r.restart_s:.2f} s | {r.rss_bytes / 2**20:.0f} MiB | {r.empty_rss_bytes / 2**20:.0f} MiB |"
        f" {r.bytes_per_key:.0f} B | {r.snapshot_index:,} / {r.last_index:,} |",
    ]


def _find(res: Results, system: str, op: str, c: int, v: int, target: str) -> list[LoadResult]:
    for w, reps in res.http.get(system, {}).items():
        if (w.op, w.concurrency, w.value_bytes, w.target) == (op, c, v, target):
            return reps
    return []


def targets(res: Results) -> list[str]:
    out = []

    def verdict(ok: bool | None) -> str:
        return "not measured" if ok is None else ("**met**" if ok else "**not met**")

    # The speed issue's HTTP targets (10 B values): (op, clients, where, raftkv/etcd throughput
    # needed, p99 no worse than etcd's).
    for op, c, target, need, p99_too in (("write", 64, "spread", 1.5, True), ("write", 64, "leader", 1.5, True),
                                         ("write", 1, "spread", 1.0, False), ("write", 1, "leader", 1.0, False),
                                         ("read", 64, "spread", 2.0, False), ("read", 64, "leader", 2.0, False)):
        label = f"- HTTP {op}s at concurrency {c} (10 B, {target}) >= {need:g}x etcd{' with p99 no worse' * p99_too}"
        rk, et = _find(res, "raftkv", op, c, 10, target), _find(res, "etcd", op, c, 10, target)
        if not (rk and et):
            out.append(f"{label} → {verdict(None)}")
            continue
        ratio = _thr(rk).median / max(_thr(et).median, 1e-9)
        ok, extra = ratio >= need, ""
        if p99_too:
            p_rk, p_et = _pct(rk, 99).median, _pct(et, 99).median
            ok = ok and p_rk <= p_et
            extra = f"; p99 {p_rk * 1000:.1f} ms vs etcd {p_et * 1000:.1f} ms"
        out.append(f"{label}: {ratio:.2f}x{extra} → {verdict(ok)}")
    floor = res.embedded.get("floor", {}).get(1)
    if floor and 1 in res.embedded.get("raftkv", {}):
        behind = _emb_thr(floor).median / max(_emb_thr(res.embedded["raftkv"][1]).median, 1e-9)
        out.append(f"- embedded at 1 in flight within 1.25x of the floor (floor/raftkv commits/s): {behind:.2f}x → "
                   f"{verdict(behind <= 1.25)}")
        runtime = res.embedded.get("runtime-floor", {}).get(1)
        if runtime:
            on_runtime = _emb_thr(runtime).median / max(_emb_thr(res.embedded["raftkv"][1]).median, 1e-9)
            out.append("  (not a target: behind the same I/O on its own runtime, three asyncio processes,"
                       f" {on_runtime:.2f}x)")
    if "raftkv" in res.embedded:
        cells, oks = [], []
        for n, reps in sorted(res.embedded["raftkv"].items()):
            if n == 1 and floor:
                continue  # held to the floor instead: PySyncObj never fsyncs
            best = best_pysyncobj(res, n)
            if best:
                r = _emb_thr(reps).median / max(best[1].median, 1e-9)
                cells.append(f"{n}: {r:.2f}x")
                oks.append(r >= 2)
        out.append(f"- embedded writes >= 2x PySyncObj at each in-flight count: {', '.join(cells) or '-'} → "
                   f"{verdict(all(oks) if oks else None)}")
    fo = res.failover.get("raftkv")
    if fo:
        secs = [t.seconds if t.seconds is not None else math.inf for t in fo]
        med = statistics.median(secs)
        out.append(f"- failover median < 0.5 s: {med:.3f} s → {verdict(med < 0.5)}")
        codes = {}
        for t in fo:
            for k, v in t.errors.items():
                codes[k] = codes.get(k, 0) + v
        hangs = codes.get("TimeoutError", 0)
        out.append(f"- followers fail fast while leaderless (no request timeouts): {hangs} timed-out requests → "
                   f"{verdict(hangs == 0)}")
    if res.elections_during_load:
        n = res.elections_during_load.get("raftkv", 0)
        out.append(f"- no spurious elections under client load (raftkv term changes during HTTP load runs): {n} → "
                   f"{verdict(n == 0)}")
    if res.restart is not None:
        r = res.restart
        out.append(f"- restart with {r.keys:,} keys < 10 s: {r.restart_s:.2f} s → "
                   f"{verdict(r.restart_s < 10 if r.keys >= 1_000_000 else None)}"
                   + ("" if r.keys >= 1_000_000 else " (fewer than 1M keys in this run)"))
    return out


DURABILITY = [
    "- **raftkv**: appends to its WAL and fsyncs (group commit: one fsync per batch) before acknowledging; the"
    " leader sends entries while its own fsync runs, and a write is acknowledged only once a majority, counting"
    " the leader only when durable, has it on disk (default, and in every raftkv figure here).",
    "- **etcd**: fsyncs its WAL before acknowledging (default settings; nothing tuned).",
    "- **PySyncObj**: does not fsync. It ran in memory (no journal file), its fastest configuration; even with"
    " `journalFile` set its journal is not fsynced, so its acknowledged writes can be lost on power loss.",
]


def markdown(res: Results) -> str:
    m = res.meta
    parts = [
        "# raftkv benchmark results",
        "",
        f"Run {m.get('started', '?')} on {m.get('host', '?')} ({m.get('cpus', '?')} CPUs), "
        f"mode: {m.get('mode', '?')}; {m.get('reps', '?')} interleaved repetitions of"
        f" {m.get('duration_s', '?')} s each;"
        f" figures are medians with (min-max). Peers measured in the same run: {m.get('peers', '?')}."
        f" Load average (1/5/15 min) before: {m.get('load_before', '?')}, after: {m.get('load_after', '?')}"
        " (other work shares this machine; interleaving spreads its noise over all systems)."
        f" raftkv code measured: {m.get('raftkv_code', '?')}.",
        "",
    ]
    h = http_table(res)
    if h:
        parts += [
            "## HTTP: 3-node raftkv vs 3-member etcd, same closed-loop aiohttp client",
            "",
            "Random keys over 10k; `spread` = clients pinned round-robin to all nodes, `leader` = all to the leader;"
            " reads are linearizable (raftkv ReadIndex, etcd default range). etcd via its v3 JSON gateway.",
            "",
            *h,
            "",
        ]
    e = embedded_table(res)
    if e:
        parts += [
            "## Embedded: raftkv's in-process API vs PySyncObj (which has no network client)",
            "",
            "Not HTTP: each of the 3 nodes is its own OS process and the leader generates the writes itself through"
            " the library API (raftkv `await node.propose(Put(...))`, PySyncObj `@replicated` calls with callbacks),"
            " keeping exactly N writes in flight; committed writes per second. PySyncObj: best of its"
            f" configurations per row ({', '.join(m.get('pysyncobj_variants', []))}). Floor (bench/floor.py): what"
            " one write cannot avoid, done by hand in two processes (the leader's append + fdatasync while the"
            " record crosses loopback TCP to a follower that appends, fdatasyncs and answers); measured at 1 in"
            " flight.",
            "",
            *e,
            "",
        ]
    one = one_in_flight_table(res)
    if one:
        parts += [
            "At 1 in flight, beside the same I/O on raftkv's own runtime (bench/floor.py `RuntimeFloor`: a leader"
            " and two followers, each an asyncio loop on uvloop, the followers fsyncing on their loop and the"
            " leader on a thread, a write done at two durable copies of three; no consensus, no encoding): the"
            " runtime's share of the distance to the floor and raftkv's own.",
            "",
            *one,
            "",
        ]
    f = failover_table(res)
    if f:
        parts += ["## Failover (kill -9 of the leader under steady writes)", "", *f, ""]
    wt = watch_table(res)
    if wt:
        rate = next(iter(next(iter(res.watch.values())).values()))[0].workload.write_rate
        parts += [
            "## Watch: events delivered to N watchers of one prefix under a steady write load",
            "",
            f"{rate:g} writes/s offered to the leader (open loop, a new 16 B key under the prefix each, so one"
            " event per watcher per write), the same for both systems; watchers spread round-robin over the 3"
            f" nodes, at most {WATCHERS_PER_PROCESS} per watcher process (asyncio, aiohttp; at most"
            f" {MAX_PROCESSES} processes)."
            " raftkv: `GET /watch?prefix=` (Server-Sent Events); etcd: its JSON gateway's `POST /v3/watch`"
            " (newline-delimited JSON). Events/s: arrivals at all watchers inside the measured window; % of"
            f" offered: of (writes acknowledged in the window x watchers). Latency: up to {PROBES} probe watchers"
            " time each key's arrival against the moment the writer saw it acknowledged (negative when the"
            " writer's answer comes later than the event) and against when it was sent.",
            "",
            *wt,
            "",
            "Every run:",
            "",
            *watch_runs_table(res),
            "",
        ]
    k = load_table(res.keepalive)
    if k:
        parts += [
            "## Lease keep-alives (closed loop, same aiohttp client)",
            "",
            f"Each client renews one of {KEEPALIVE_LEASES} leases (TTL {KEEPALIVE_TTL_S} s) and sends the next"
            " renewal when the answer comes."
            " raftkv: `POST /leases/{id}/keepalive` (a follower relays it to the leader, which answers after a"
            " ReadIndex round); etcd: its JSON gateway's `POST /v3/lease/keepalive` (a follower forwards it to"
            " the leader); a renewal counts only if the lease was found (etcd answers 200 without a TTL otherwise).",
            "",
            *k,
            "",
        ]
    g = load_table(res.grpc)
    if g:
        parts += [
            "## gRPC: etcd's own v3 API, raftkv's etcd API vs etcd, same closed-loop grpc.aio client",
            "",
            "The writes and reads of the HTTP table (small values) as `KV.Put` and linearizable `KV.Range`"
            " RPCs, with the same generated stubs (etcd v3.5's protocol buffers) for both systems; the clients"
            " of one member share one channel, as etcd's clientv3 does. This is etcd's home ground.",
            "",
            *g,
            "",
        ]
    c = check_perf_table(res)
    if c:
        parts += [
            "## etcdctl check perf: etcd's own load check, on raftkv's etcd API and on etcd",
            "",
            "60 s of 1 KiB writes under random binary keys at a fixed rate, from 50 clients (load s) or 200"
            " (load m), spread over the members; PASS needs over 90% of the rate, the slowest write at most"
            " 0.5 s and a standard deviation at most 0.1 s. One run per system and load.",
            "",
            *c,
            "",
        ]
    r = restart_table(res)
    if r:
        parts += ["## Restart and memory", "", *r, ""]
    parts += ["## Durability", "", *DURABILITY, ""]
    parts += ["## Targets (issue 6)", "", *targets(res), ""]
    if res.notes:
        parts += ["## Notes", "", *[f"- {n}" for n in res.notes], ""]
    return "\n".join(parts)


def plot(res: Results, path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5))
    for system, by_w in res.http.items():
        for op, style in (("write", "-o"), ("read", "--s")):
            pts = sorted(
                (w.concurrency, _thr(reps).median)
                for w, reps in by_w.items()
                if w.op == op and w.value_bytes == 10 and w.target == "spread"
            )
            if pts:
                ax1.plot(*zip(*pts, strict=True), style, label=f"{system} HTTP {op}s")
    for name, by_n in res.embedded.items():
        if name.startswith("pysyncobj"):
            continue
        pts = sorted((n, _emb_thr(reps).median) for n, reps in by_n.items())
        ax1.plot(*zip(*pts, strict=True), ":^", label=f"{name} embedded writes")
    best = sorted(
        (n, b[1].median) for n in {n for k, v in res.embedded.items() if k.startswith("pysyncobj") for n in v}
        if (b := best_pysyncobj(res, n))
    )
    if best:
        ax1.plot(*zip(*best, strict=True), ":v", label="PySyncObj embedded writes (best config)")
    ax1.set_xscale("log", base=2)
    ax1.set_xlabel("concurrency / writes in flight")
    ax1.set_ylabel("ops/s (median)")
    ax1.set_title("Throughput vs concurrency (10 B values)")
    ax1.grid(True, alpha=0.3)
    ax1.legend(fontsize=8)

    pcts = (50, 90, 99, 99.9)
    bars = []
    for system in res.http:
        for op in ("write", "read"):
            reps = _find(res, system, op, 64, 10, "spread")
            if reps:
                lat = [x for r in reps for x in r.latencies_s]
                bars.append((f"{system} {op}", [percentile(lat, p) * 1000 for p in pcts]))
    width = 0.8 / max(1, len(bars))
    for i, (label, vals) in enumerate(bars):
        ax2.bar([j + i * width for j in range(len(pcts))], vals, width, label=label)
    ax2.set_xticks([j + width * (len(bars) - 1) / 2 for j in range(len(pcts))], [f"p{p}" for p in pcts])
    ax2.set_ylabel("latency, ms")
    ax2.set_yscale("log")
    ax2.set_title("HTTP latency percentiles at concurrency 64 (10 B, spread)")
    ax2.grid(True, axis="y", alpha=0.3)
    if bars:
        ax2.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
