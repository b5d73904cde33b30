"""A small load generator: N concurrent writers for S seconds through the nodes' HTTP API.

Each writer sends `PUT /kv/load-<writer>-<n>` in a loop, spreading its requests over the nodes
that are members at the time (followers forward to the leader, as a real client's requests would be). While it runs, the
generator reports twice a second: writes acknowledged per second over the last interval,
latency percentiles of those, and errors by status. What a person sees under load is therefore
what clients experienced, while the charts show what the nodes measured themselves.

Bounded: at most `MAX_WRITERS` writers, `MAX_SECONDS` seconds, `KEYS_PER_WRITER` distinct keys
per writer (so the store does not grow without end); latencies are kept per interval, plus a
uniform sample of `OVERALL_SAMPLE` of them for the final figures.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from typing import Any

import aiohttp

from .hub import Hub
from .words import unacknowledged_words

MAX_WRITERS = 64
MAX_SECONDS = 120
KEYS_PER_WRITER = 50
REPORT_EVERY_S = 0.5
REQUEST_TIMEOUT_S = 6.0
OVERALL_SAMPLE = 20_000


def _pct(sorted_ms: list[float], q: float) -> float | None:
    if not sorted_ms:
        return None
    return round(sorted_ms[min(len(sorted_ms) - 1, int(q * len(sorted_ms)))], 2)


class LoadGenerator:
    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.task: asyncio.Task | None = None
        self.last: dict[str, Any] = {"running": False}

    @property
    def running(self) -> bool:
        return self.task is not None and not self.task.done()

    def start(self, writers: int, seconds: float) -> dict:
        if not 1 <= writers <= MAX_WRITERS:
            raise ValueError(f"writers: 1..{MAX_WRITERS}")
        if not 0 < seconds <= MAX_SECONDS:
            raise ValueError(f"seconds: more than 0, at most {MAX_SECONDS}")
        if self.running:
            raise RuntimeError("a load is already running; stop it first")
        self.hub.action(f"load: {writers} writers for {seconds:g} s", kind="load", icon="load", writers=writers,
                        seconds=seconds)
        self.task = asyncio.get_running_loop().create_task(self._run(writers, seconds))
        return {"started": True, "writers": writers, "seconds": seconds}

    async def stop(self) -> dict:
        """The load's final figures, and whether it was running (and is stopped now)."""
        running = self.task is not None and not self.task.done()
        if running:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        return {**self.last, "stopped": running}

    async def _run(self, writers: int, seconds: float) -> None:
        started = time.monotonic()
        deadline = started + seconds
        window: list[float] = []  # latencies (ms) of the current report interval
        overall: list[float] = []  # a uniform sample of every latency, for the final figures
        rng = random.Random(0)
        totals = {"ok": 0, "errors": {}}

        async def writer(w: int) -> None:
            n = 0
            while time.monotonic() < deadline:
                urls = [m.url.rstrip("/") for m in self.hub.members()]  # it follows nodes added and removed
                url = urls[(w + n) % len(urls)]
                key = f"load-{w}-{n % KEYS_PER_WRITER}"
                t0 = time.perf_counter()
                try:
                    async with session.put(f"{url}/kv/{key}", json={"value": n}) as resp:
                        await resp.read()
                        code = resp.status
                except (aiohttp.ClientError, OSError, TimeoutError) as e:
                    code = type(e).__name__
                if code == 200:
                    totals["ok"] += 1
                    ms = (time.perf_counter() - t0) * 1000
                    window.append(ms)
                    if len(overall) < OVERALL_SAMPLE:
                        overall.append(ms)
                    elif (j := rng.randrange(totals["ok"])) < OVERALL_SAMPLE:  # reservoir sampling
                        overall[j] = ms
                else:
                    totals["errors"][str(code)] = totals["errors"].get(str(code), 0) + 1
                    await asyncio.sleep(0.05)  # an unreachable node must not become a busy loop
                n += 1

        def report(running: bool, dt: float = 0.0) -> None:
            lat = sorted(window if running else overall)
            window.clear()
            elapsed = time.monotonic() - started
            if not running:
                dt = max(1e-3, min(elapsed, seconds))  # the final figures cover the whole run
            self.last = {
                "running": running,
                "writers": writers,
                "seconds": seconds,
                "elapsed": round(elapsed, 2),
                "ok": totals["ok"],
                "errors": dict(totals["errors"]),
                "throughput": round((len(lat) if running else totals["ok"]) / dt, 1),
                "p50Ms": _pct(lat, 0.5),
                "p99Ms": _pct(lat, 0.99),
            }
            self.hub.emit({"type": "load", **self.last})

        timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
        # The writes carry the credentials of the person who started the load (this task inherited
        # the request's ACTING_FOR), never the dashboard's own.
        async with aiohttp.ClientSession(timeout=timeout, connector=self.hub.access.connector(limit=writers * 2),
                                         headers=self.hub.acting_headers()) as session:
            tasks = [asyncio.create_task(writer(w)) for w in range(writers)]
            last = time.monotonic()
            try:
                while not all(t.done() for t in tasks):
                    await asyncio.sleep(REPORT_EVERY_S)
                    now = time.monotonic()
                    report(True, now - last)
                    last = now
            finally:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                report(False)  # the final figures cover the whole run
                self.hub.action(
                    f"load finished: {totals['ok']} writes acknowledged in {self.last['elapsed']} s"
                    + (f"; not acknowledged: {unacknowledged_words(totals['errors'])}" if totals["errors"] else ""),
                    kind="load-done", icon="load",
                )
