"""Watch benchmark: events per second delivered to N watchers of one prefix under a steady write
load, and the latency from a write's acknowledgement to its delivery.

Theory of operation
-------------------
One measurement, the same for raftkv and etcd:

1. N watchers of a fresh prefix are opened, spread round-robin over every node, and split into
   blocks of at most `WATCHERS_PER_PROCESS` per watcher process (`watch_client.py`, at most
   `MAX_PROCESSES`), so that the client side of 1,000 streams is a few asyncio loops on several
   cores rather than one loop that would measure itself. Writing starts only once every watch
   has answered, so each sees every write.
2. This process writes to the leader at a fixed rate (open loop: a write is sent when due, whatever
   the earlier ones are doing, at most `MAX_WRITES_IN_FLIGHT` at once), a new key under the prefix
   each time, so each write is exactly one event for every watcher. After a warm-up, a window of
   `duration_s` is measured: events that arrive at any watcher inside it, per second, are the
   delivery rate; the offered rate is the writes acknowledged in the window times N.
3. Up to `PROBES` of the watchers (spread over the nodes and processes) record when each key
   arrived; a key's latency is its arrival minus the moment its writer saw the write
   acknowledged, on the machine's shared monotonic clock. Only writes acknowledged inside the
   window count; the writes stop at its end and the watchers get `drain_s` more to deliver; what
   a probe never received by then is counted as undelivered, not left out. A delivery can precede
   the acknowledgement reaching the writer (a watcher on the leader is told in the same turn of
   its loop as the writer's answer is sent, and a node busy streaming answers its writer late),
   so the latency from when the write was sent is kept too.

Every process started is stopped by PID (asyncio's Process.kill) whatever happens, and every wait
is bounded.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from .load import HttpSystem, make_session, make_value, percentile
from .procs import cpu_seconds

WATCH_CLIENT = Path(__file__).with_name("watch_client.py")
WATCHERS_PER_PROCESS = 250
MAX_PROCESSES = 4
PROBES = 10
MAX_WRITES_IN_FLIGHT = 256
VALUE_BYTES = 16
ANSWER_TIMEOUT_S = 30.0
MAX_ANSWER_BYTES = 64 * 2**20  # a watcher process's report: the probes' arrivals, ~40 B each


@dataclass(frozen=True)
class WatchWorkload:
    watchers: int
    write_rate: float  # writes per second offered, the same for every system
    duration_s: float

    @property
    def label(self) -> str:
        return f"{self.watchers:,} watcher{'s' if self.watchers != 1 else ''}"


@dataclass
class WatchResult:
    workload: WatchWorkload
    events: int  # delivered inside the window, summed over the watchers
    writes: int  # acknowledged inside the window
    elapsed_s: float
    latencies_s: list[float] = field(repr=False, default_factory=list)  # acknowledged -> delivered
    sent_latencies_s: list[float] = field(repr=False, default_factory=list)  # sent -> delivered
    undelivered: int = 0  # probe deliveries of in-window writes that never arrived
    writes_unacknowledged: int = 0  # failed, or not sent because too many were in flight
    resumed: int = 0  # watches the server ended as too slow, reopened where it said
    watch_errors: dict[str, int] = field(default_factory=dict)
    # From the window's announcement to the watchers' stop (warm-up, window and drain): every
    # event delivered, and the CPU the servers and the watcher processes spent meanwhile.
    events_total: int = 0
    server_cpu_s: float = 0.0
    client_cpu_s: float = 0.0

    @property
    def events_per_s(self) -> float:
        return self.events / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def offered_per_s(self) -> float:
        return self.writes * self.workload.watchers / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def percentile(self, p: float) -> float:
        return percentile(self.latencies_s, p)

    def cpu_us_per_event(self, side: str) -> float:
        """CPU microseconds per delivered event of the servers ("server") or the watchers ("client")."""
        cpu_s = self.server_cpu_s if side == "server" else self.client_cpu_s
        return cpu_s / self.events_total * 1e6 if self.events_total else float("nan")


async def run_watch(system: HttpSystem, w: WatchWorkload, log_dir: Path, tag: str,
                    warmup_s: float = 0.5, drain_s: float = 2.0) -> WatchResult:
    """One measurement of `w` against `system` (its `name` picks the wire format, watch_wire.py)."""
    prefix = f"bench-watch-{tag}-{w.watchers}/"
    urls = system.urls()
    leader = system.leader_url()
    every = max(1, w.watchers // PROBES)
    plan = [(urls[j % len(urls)], j % every == 0) for j in range(w.watchers)]
    nproc = min(MAX_PROCESSES, -(-w.watchers // WATCHERS_PER_PROCESS))
    size = -(-w.watchers // nproc)
    blocks = [plan[k * size:(k + 1) * size] for k in range(nproc)]
    log_dir.mkdir(parents=True, exist_ok=True)
    procs: list[asyncio.subprocess.Process] = []
    try:
        for k, block in enumerate(blocks):
            with open(log_dir / f"watchers-{tag}-{w.watchers}-{k}.log", "wb") as log:
                procs.append(await asyncio.create_subprocess_exec(
                    sys.executable, str(WATCH_CLIENT), stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE, stderr=log, limit=MAX_ANSWER_BYTES))
            ca = system.access.tls.ca
            await _tell(procs[-1], {"system": system.name, "prefix": prefix, "watchers": block,
                                    "cacert": str(ca) if ca else None})
        for p in procs:
            await _answer(p, ANSWER_TIMEOUT_S + w.watchers / 20)  # {"ready": n}
        t0 = time.monotonic() + warmup_s
        t1 = t0 + w.duration_s
        pids = system.pids()
        server_cpu_s = -sum(map(cpu_seconds, pids))
        for p in procs:
            await _tell(p, {"t0": t0, "t1": t1})
        acks: dict[str, tuple[float, float]] = {}
        unacknowledged = await write_steadily(system, leader, prefix, w.write_rate, t1, acks)
        await asyncio.sleep(drain_s)
        for p in procs:
            await _tell(p, "stop")
        server_cpu_s += sum(map(cpu_seconds, pids))
        reports = [await _answer(p, ANSWER_TIMEOUT_S) for p in procs]
    finally:
        for p in procs:
            if p.returncode is None:
                p.kill()
            await asyncio.wait_for(p.wait(), ANSWER_TIMEOUT_S)
    in_window = {key: times for key, times in acks.items() if t0 <= times[1] <= t1}
    arrivals = [(in_window[key], arrived) for r in reports for key, arrived in r["arrivals"] if key in in_window]
    latencies = [arrived - acked for (_, acked), arrived in arrivals]
    probes = sum(probe for _, probe in plan)
    errors: dict[str, int] = {}
    for r in reports:
        for what, n in r["errors"].items():
            errors[what] = errors.get(what, 0) + n
    return WatchResult(w, sum(r["in_window"] for r in reports), len(in_window), w.duration_s, latencies,
                       sent_latencies_s=[arrived - sent for (sent, _), arrived in arrivals],
                       undelivered=len(in_window) * probes - len(latencies), writes_unacknowledged=unacknowledged,
                       resumed=sum(r["resumed"] for r in reports), watch_errors=errors,
                       events_total=sum(r["total"] for r in reports), server_cpu_s=server_cpu_s,
                       client_cpu_s=sum(r["cpu_s"] for r in reports))


async def write_steadily(system: HttpSystem, url: str, prefix: str, rate: float, until: float,
                         acks: dict[str, tuple[float, float]]) -> int:
    """Write a new key under `prefix` every 1/rate s until `until` (monotonic); record in `acks`
    when each was sent and acknowledged; return how many were not acknowledged (failed, or not
    sent: too many in flight)."""
    value = make_value(VALUE_BYTES)
    unacknowledged = 0
    in_flight: set[asyncio.Task] = set()

    async def write(session: aiohttp.ClientSession, key: str) -> None:
        nonlocal unacknowledged
        method, full_url, body, headers = system.build_write(url, key, value)
        sent = time.monotonic()
        try:
            async with session.request(method, full_url, data=body, headers=headers) as resp:
                answer = await resp.read()
                if system.ok("write", resp.status, answer):
                    acks[key] = (sent, time.monotonic())
                    return
        except (aiohttp.ClientError, TimeoutError, OSError):
            pass
        unacknowledged += 1

    async with make_session(MAX_WRITES_IN_FLIGHT, system.access) as session:
        started = time.monotonic()
        n = 0
        while (due := started + n / rate) < until:
            if (wait_s := due - time.monotonic()) > 0:
                await asyncio.sleep(wait_s)
            if len(in_flight) < MAX_WRITES_IN_FLIGHT:
                task = asyncio.create_task(write(session, f"{prefix}{n:08d}"))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
            else:
                unacknowledged += 1
            n += 1
        await asyncio.gather(*in_flight)
    return unacknowledged


async def _tell(p: asyncio.subprocess.Process, message: Any) -> None:
    assert p.stdin is not None
    p.stdin.write((message if isinstance(message, str) else json.dumps(message)).encode() + b"\n")
    await p.stdin.drain()


async def _answer(p: asyncio.subprocess.Process, timeout_s: float) -> dict[str, Any]:
    assert p.stdout is not None
    try:
        line = await asyncio.wait_for(p.stdout.readline(), timeout_s)
    except TimeoutError:
        raise TimeoutError(f"watcher process {p.pid}: no answer within {timeout_s:.0f} s") from None
    if not line:
        raise RuntimeError(f"watcher process {p.pid} exited (code {await p.wait()}); see its log")
    return json.loads(line)
