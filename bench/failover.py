"""Failover: kill -9 the leader under a steady write load; time from the kill to the first write
sent after the kill that succeeds.

Writers are closed-loop HTTP clients (the same request builders as the load driver) spread over
the live members. A writer whose request fails (connection refused, timeout, 503...) moves to the
next member and tries again at once, so the figure is the system's recovery time, not a client
back-off. Requests time out after `REQUEST_TIMEOUT_S`, so a member that hangs instead of failing
fast shows up as a longer failover. After each trial the killed member is restarted and the
cluster is given time to settle before the next one.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field

import aiohttp

from .load import HttpSystem, make_value

WRITERS = 8
REQUEST_TIMEOUT_S = 1.0


@dataclass
class FailoverTrial:
    seconds: float | None  # None: no write succeeded within the window
    errors: Counter = field(default_factory=Counter)  # what failed requests looked like


async def _trial(system: HttpSystem, kill: object, before_s: float, after_s: float) -> FailoverTrial:
    value = make_value(10)
    urls = system.urls()
    successes: list[tuple[float, float]] = []
    errors: Counter = Counter()
    killed_at = float("inf")
    stop_at = float("inf")
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)

    async with aiohttp.ClientSession(connector=system.access.connector(limit=0), timeout=timeout,
                                     headers=system.access.headers()) as session:

        async def writer(i: int) -> None:
            n = i
            target = i
            while time.monotonic() < stop_at:
                n += 1
                method, url, body, headers = system.build_write(urls[target % len(urls)], f"f{n % 10_000:05d}", value)
                sent = time.monotonic()
                try:
                    async with session.request(method, url, data=body, headers=headers) as resp:
                        await resp.read()
                        if system.ok("write", resp.status):
                            successes.append((sent, time.monotonic()))
                            continue
                        if sent >= killed_at:
                            errors[f"HTTP {resp.status}"] += 1
                except (aiohttp.ClientError, TimeoutError, OSError) as e:
                    if sent >= killed_at:
                        errors[type(e).__name__] += 1
                target += 1  # next member
                await asyncio.sleep(0.002)

        tasks = [asyncio.create_task(writer(i)) for i in range(WRITERS)]
        await asyncio.sleep(before_s)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, kill)  # type: ignore[arg-type]
        # From when the process is gone (kill waits for it): a write sent earlier could still be
        # answered by the old leader and would make the failover look instant.
        killed_at = time.monotonic()
        # Stop early once writes flow again (0.5 s after the first success), else after `after_s`.
        deadline = killed_at + after_s
        while time.monotonic() < deadline:
            if any(s >= killed_at for s, _ in successes):
                deadline = min(deadline, time.monotonic() + 0.5)
            await asyncio.sleep(0.01)
        stop_at = time.monotonic()
        await asyncio.wait(tasks, timeout=REQUEST_TIMEOUT_S + 2)
        for t in tasks:
            t.cancel()
    after = [acked for sent, acked in successes if sent >= killed_at]
    return FailoverTrial(min(after) - killed_at if after else None, errors)


def run_failover(system: object, trials: int, before_s: float = 1.0, after_s: float = 10.0, progress=None) -> list:
    """`system` is an HttpSystem that can also `kill_leader()` and `restart_member(name)`."""
    results = []
    for trial_no in range(trials):
        killed: list[str] = []

        def kill(killed: list[str] = killed) -> None:
            killed.append(system.kill_leader())  # type: ignore[attr-defined]

        trial = asyncio.run(_trial(system, kill, before_s, after_s))  # type: ignore[arg-type]
        results.append(trial)
        if trial_no + 1 < trials:
            system.restart_member(killed[0])  # type: ignore[attr-defined]
            system.leader(20)  # type: ignore[attr-defined]
            time.sleep(1.0)  # let the restarted member catch up before the next kill
        if progress is not None:
            progress.update(1)
    return results
