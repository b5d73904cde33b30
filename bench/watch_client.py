"""A watcher process of the watch benchmark: many watches of one prefix on one asyncio loop.

Theory of operation
-------------------
The coordinator (`watch.py`) starts a few of these so that 1,000 watchers' client work is spread
over several processes (and cores) instead of one Python loop. It talks to each over pipes, one
JSON object per line:

1. stdin: `{"system", "prefix", "watchers": [[url, probe], ...]}`; the process opens every watch
   (one HTTP stream each, one aiohttp session) and prints `{"ready": n}` once each stream has sent
   its first bytes, so each watch is registered before the first write.
2. stdin: `{"t0", "t1"}`, the measured window on CLOCK_MONOTONIC (which every process on the
   machine shares); events that arrive inside it are counted apart.
3. stdin: `stop`; it prints its counts, the probes' arrivals (`[key, time]`) and the CPU time it
   used since the window was sent, and exits.

A watch the server ends (raftkv cancels a watcher that is too slow) is reopened from the revision
the server named, so nothing is counted twice and nothing is skipped. Bounded: each stream's
unparsed tail is at most one message; the coordinator kills the process if it stops answering.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script

from bench.watch_wire import DIALECTS, WatchDialect

RETRY_PAUSE_S = 0.1


@dataclass
class Tally:
    """What this process's watchers received."""

    window: tuple[float, float] = (float("inf"), float("-inf"))
    in_window: int = 0
    total: int = 0
    resumed: int = 0  # streams the server ended (too slow) and this process reopened
    errors: dict[str, int] = field(default_factory=dict)
    arrivals: list[tuple[str, float]] = field(default_factory=list)  # probes only

    def error(self, what: str) -> None:
        self.errors[what] = self.errors.get(what, 0) + 1


async def watch(session: aiohttp.ClientSession, dialect: WatchDialect, url: str, prefix: str, probe: bool,
                tally: Tally, opened: asyncio.Queue[None]) -> None:
    """One watcher, for as long as the process runs; reopened where the server says to resume."""
    start_revision: int | None = None
    first = True
    monotonic, delimiter, mark = time.monotonic, dialect.delimiter, dialect.event_mark
    while True:
        method, full_url, body, headers = dialect.request(url, prefix, start_revision)
        try:
            async with session.request(method, full_url, data=body, headers=headers) as resp:
                if resp.status != 200:
                    tally.error(f"HTTP {resp.status}")
                    await asyncio.sleep(RETRY_PAUSE_S)
                    continue
                tail = b""
                async for chunk in resp.content.iter_any():
                    now = monotonic()
                    if first:
                        first = False
                        opened.put_nowait(None)
                    complete, sep, tail = (tail + chunk).rpartition(delimiter)
                    if not sep:
                        continue
                    n = complete.count(mark)
                    tally.total += n
                    if tally.window[0] <= now <= tally.window[1]:
                        tally.in_window += n
                    if probe and n:
                        for message in complete.split(delimiter):
                            tally.arrivals.extend((key, now) for key in dialect.keys(message))
                    resume = dialect.resume_revision(complete) if b"cancel" in complete else None
                    if resume is not None:
                        start_revision = resume
                        tally.resumed += 1
                        break
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            tally.error(type(e).__name__)
            await asyncio.sleep(RETRY_PAUSE_S)
        except RuntimeError as e:  # the watch cannot go on (an etcd watch cancelled)
            tally.error(str(e))
            return


async def serve(config: dict[str, Any]) -> dict[str, Any]:
    dialect = DIALECTS[config["system"]]
    tally = Tally()
    opened: asyncio.Queue[None] = asyncio.Queue()
    read_line = lambda: asyncio.to_thread(sys.stdin.readline)  # noqa: E731 - stdin is a pipe from the coordinator
    cacert = config.get("cacert")  # the cluster's CA, when it serves TLS (bench/run.py --tls)
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0,
                                     ssl=ssl.create_default_context(cafile=cacert) if cacert else True)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None)) as session:
        tasks = [asyncio.create_task(watch(session, dialect, url, config["prefix"], probe, tally, opened))
                 for url, probe in config["watchers"]]
        for _ in tasks:
            await opened.get()
        print(json.dumps({"ready": len(tasks)}), flush=True)
        window = json.loads(await read_line())
        tally.window = (window["t0"], window["t1"])
        cpu_before_s = time.process_time()
        await read_line()  # "stop"
        cpu_s = time.process_time() - cpu_before_s
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return {"in_window": tally.in_window, "total": tally.total, "resumed": tally.resumed, "errors": tally.errors,
            "arrivals": tally.arrivals, "cpu_s": cpu_s}


def main() -> int:
    config = json.loads(sys.stdin.readline())
    print(json.dumps(asyncio.run(serve(config))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
