"""How late a node's event loop runs while a snapshot is packed: on the loop a part per turn (as a
node packs it), against the same parts packed in a thread (as nodes did before 62c13c7).

    .venv/bin/python bench/snapshot_stall.py              # the embedded benchmark's store, 3 of each
    .venv/bin/python bench/snapshot_stall.py --keys 1000000 --writes 1000000 --reps 1

Theory of operation
-------------------
A store like the one the embedded phase leaves at 4096 writes in flight (10,000 keys, 110,000
puts, so about 100,000 versions of history) is built by applying puts to a `KVStateMachine`. Then,
alternately, its snapshot is packed by `pack_between_turns` (a part per loop turn) and by a worker
thread joining the same parts, while a task on the loop sleeps 0.2 ms at a time and records how
much later than that it wakes. Packing holds the interpreter's lock, so beside the thread the loop
runs only when the thread lets go of it (about once per switch interval, 5 ms); on the loop, once
per part. Printed per rep: the cut's time (the image taken, on the loop), the packing's wall
time, and the loop's lateness at the median, p99 and worst. One process, so the machine's other
work moves these figures less than a cluster's.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script

from raftkv.kv import KVStateMachine, Put
from raftkv.kv.commands import encode
from raftkv.node.snapshots import pack_between_turns

TIMER_S = 0.0002


def build_store(keys: int, writes: int) -> KVStateMachine:
    kv, rng = KVStateMachine(), random.Random(1)
    for index in range(1, writes + 1):
        kv.apply(index, encode(Put(f"k{rng.randrange(keys):07d}", "x" * 10)))
    return kv


async def lateness_while(pack: str, kv: KVStateMachine) -> tuple[float, float, list[float]]:
    """The cut's time (`snapshot_later`'s call, one turn of the loop), the packing's wall time
    with it, and how late each 0.2 ms timer of the loop woke meanwhile."""
    late: list[float] = []

    async def timer() -> None:
        while True:
            started = time.perf_counter()
            await asyncio.sleep(TIMER_S)
            late.append(time.perf_counter() - started - TIMER_S)

    ticking = asyncio.create_task(timer())
    await asyncio.sleep(0.05)
    late.clear()
    started = time.perf_counter()
    parts = kv.snapshot_later()
    cut = time.perf_counter() - started
    if pack == "loop":
        await pack_between_turns(parts)
    else:
        await asyncio.get_running_loop().run_in_executor(None, b"".join, parts)
    took = time.perf_counter() - started
    woken = len(late)
    while len(late) == woken:  # the timer that spans the packing's end counts too (a small store's may be the only one)
        await asyncio.sleep(TIMER_S)
    ticking.cancel()
    return cut, took, sorted(late)


async def measure(kv: KVStateMachine, reps: int) -> None:
    for rep in range(1, reps + 1):
        for pack in ("loop", "thread"):
            cut, took, late = await lateness_while(pack, kv)
            p99 = late[min(len(late) - 1, int(len(late) * 0.99))]
            print(f"rep {rep}, cut in {cut * 1e3:5.1f} ms, packed in a {pack:6s}: {took * 1e3:6.0f} ms; "
                  f"the loop woke {len(late):5d} times, "
                  f"late by {statistics.median(late) * 1e3:5.2f} ms at the median, {p99 * 1e3:6.2f} at p99, "
                  f"{late[-1] * 1e3:6.2f} at worst")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--keys", type=int, default=10_000, help="distinct keys (default 10,000)")
    ap.add_argument("--writes", type=int, default=110_000, help="puts applied (default 110,000)")
    ap.add_argument("--reps", type=int, default=3, help="alternating pairs (default 3)")
    a = ap.parse_args()
    kv = build_store(a.keys, a.writes)
    print(f"store: {len(kv):,} keys, {a.writes:,} puts applied")
    asyncio.run(measure(kv, a.reps))


if __name__ == "__main__":
    main()
