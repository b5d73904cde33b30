"""The closed-loop HTTP load driver every networked system is measured with.

Theory of operation
-------------------
`concurrency` clients each send one request, wait for its answer, and send the next, until the
fixed duration is over (a closed loop: the offered load adapts to the system, so throughput is
what the system sustains at that many requests in flight). Keys are drawn uniformly from a fixed
key space (10k by default); values have a fixed size. Clients are pinned to nodes round-robin
("spread") or all talk to the leader ("leader"). Each completed request's latency is recorded;
requests that fail are counted apart and not in the latencies.

What differs between systems is only how a request looks on the wire: an adapter gives
`build_write(url, key, value)` / `build_read(url, key)` / `build_keepalive(url, lease_id)`
returning (method, url, body, headers), and `ok(op, status, body)` to judge the answer. For
lease keep-alives the "keys" are the ids of leases granted beforehand (`grant_leases`).
Everything else (connection pooling, timing, key choice) is this same code for every system, so
ratios compare the servers, not the clients.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp

from raftkv.client import NO_ACCESS, Access

KEY_SPACE = 10_000
REQUEST_TIMEOUT_S = 10.0
KEEPALIVE_LEASES = 64  # granted before the keep-alive runs, renewed round-robin by the clients
KEEPALIVE_TTL_S = 600  # far longer than a run: a lease that expired would turn renewals into failures


class HttpSystem(Protocol):
    name: str
    access: Access  # how its client API is reached (TLS, credentials)

    def urls(self) -> list[str]: ...
    def pids(self) -> list[int]: ...
    def leader_url(self) -> str: ...
    def build_write(self, url: str, key: str, value: str) -> tuple[str, str, bytes, dict]: ...
    def build_read(self, url: str, key: str) -> tuple[str, str, bytes, dict]: ...
    def build_keepalive(self, url: str, lease_id: str) -> tuple[str, str, bytes, dict]: ...
    def grant_leases(self, n: int, ttl_s: int) -> list[str]: ...
    def ok(self, op: str, status: int, body: bytes = b"") -> bool: ...


@dataclass(frozen=True)
class Workload:
    op: str  # "write" | "read" | "keepalive"
    concurrency: int
    value_bytes: int
    target: str  # "spread" | "leader"
    duration_s: float

    @property
    def label(self) -> str:
        if self.op == "keepalive":
            return f"keepalive c={self.concurrency} {self.target}"
        return f"{self.op} c={self.concurrency} v={self.value_bytes}B {self.target}"


@dataclass
class LoadResult:
    workload: Workload
    completed: int
    failed: int
    elapsed_s: float
    latencies_s: list[float] = field(repr=False, default_factory=list)

    @property
    def throughput(self) -> float:
        return self.completed / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def percentile(self, p: float) -> float:
        return percentile(self.latencies_s, p)


def percentile(values: Sequence[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


def make_value(size: int) -> str:
    return "x" * size


def make_session(concurrency: int, access: Access = NO_ACCESS) -> aiohttp.ClientSession:
    connector = access.connector(limit=0, limit_per_host=0, force_close=False, enable_cleanup_closed=True)
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S),
                                 headers=access.headers())


async def run_load(system: HttpSystem, w: Workload, seed: int = 0, key_space: int = KEY_SPACE,
                   keys: list[str] | None = None) -> LoadResult:
    """One closed-loop measurement of `w` against `system`; `keys` (lease ids for keep-alives)
    replaces the random keys."""
    urls = [system.leader_url()] if w.target == "leader" else system.urls()
    value = make_value(w.value_bytes)
    build: Callable[[int, str], tuple[str, str, bytes, dict]]
    if w.op == "write":
        build = lambda i, key: system.build_write(urls[i % len(urls)], key, value)  # noqa: E731
    elif w.op == "read":
        build = lambda i, key: system.build_read(urls[i % len(urls)], key)  # noqa: E731
    else:
        assert w.op == "keepalive" and keys, "keep-alives need the ids of granted leases"
        build = lambda i, lease_id: system.build_keepalive(urls[i % len(urls)], lease_id)  # noqa: E731
    rng = random.Random(seed)
    keys = keys or [f"k{rng.randrange(key_space):05d}" for _ in range(4096)]

    async with make_session(w.concurrency, system.access) as session:

        async def request(i: int, n: int) -> bool:
            method, url, body, headers = build(i, keys[n % len(keys)])
            try:
                async with session.request(method, url, data=body, headers=headers) as resp:
                    return system.ok(w.op, resp.status, await resp.read())
            except (aiohttp.ClientError, TimeoutError, OSError):
                return False

        return await closed_loop(request, w)


async def closed_loop(request: Callable[[int, int], Awaitable[bool]], w: Workload) -> LoadResult:
    """`w.concurrency` clients, client i sending `request(i, n)` for n = i * 7919 + 1, + 2, ... (its
    keys), each as soon as its last was answered, for `w.duration_s` after a short warm-up whose
    requests are not counted (connections open, caches fill). `request` says whether it
    succeeded; a failed one is counted apart, and its client pauses 10 ms so as not to spin on a
    failing node."""
    latencies: list[float] = []
    failed = 0
    deadline = 0.0

    async def client(i: int) -> None:
        nonlocal failed
        n = i * 7919
        perf = time.perf_counter
        while True:
            n += 1
            started = perf()
            if started >= deadline:
                return
            if await request(i, n):
                latencies.append(perf() - started)
            else:
                failed += 1
                await asyncio.sleep(0.01)

    deadline = time.perf_counter() + min(0.3, w.duration_s / 5)
    await asyncio.gather(*(client(i) for i in range(w.concurrency)))
    latencies.clear()
    failed = 0
    started = time.perf_counter()
    deadline = started + w.duration_s
    await asyncio.gather(*(client(i) for i in range(w.concurrency)))
    return LoadResult(w, len(latencies), failed, time.perf_counter() - started, latencies)


@dataclass
class Summary:
    """Median of several repetitions, with the min and max across them."""

    values: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.values) if self.values else float("nan")

    @property
    def lo(self) -> float:
        return min(self.values) if self.values else float("nan")

    @property
    def hi(self) -> float:
        return max(self.values) if self.values else float("nan")

    def fmt(self, unit: str = "", scale: float = 1.0, digits: int = 0) -> str:
        if not self.values:
            return "-"
        m, lo, hi = self.median * scale, self.lo * scale, self.hi * scale
        if len(self.values) == 1:
            return f"{m:,.{digits}f}{unit}"
        return f"{m:,.{digits}f}{unit} ({lo:,.{digits}f}-{hi:,.{digits}f})"


def summarize(results: list[LoadResult], metric: Callable[[LoadResult], float]) -> Summary:
    return Summary([metric(r) for r in results])


def as_dict(r: LoadResult) -> dict[str, Any]:
    return {
        "label": r.workload.label,
        "throughput": r.throughput,
        "completed": r.completed,
        "failed": r.failed,
        "p50_ms": r.percentile(50) * 1000,
        "p99_ms": r.percentile(99) * 1000,
    }
