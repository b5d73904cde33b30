"""The node process's garbage-collector policy (raftkv/node/heap.py), in a process of its own: it
changes the whole interpreter's collector."""

from __future__ import annotations

import subprocess
import sys

SURVIVORS_ARE_FROZEN = """
import gc
from raftkv.node.heap import tune_gc
heap = tune_gc()
before = gc.get_freeze_count()
kept = [[i] for i in range(200_000)]  # long-lived, tracked: what a store's history is to the collector
gc.collect(0)  # a young collection: its survivors leave the collector's sight
frozen = gc.get_freeze_count() - before
assert frozen >= 200_000, frozen
assert sum(gc.get_count()) < 1_000, gc.get_count()
assert heap.collect_if_grown() is None, "200,000 more objects are not worth a full collection"
print("ok")
"""

CYCLES_FROZEN_ALIVE_ARE_COLLECTED_ONCE_THE_HEAP_DOUBLES = """
import gc, weakref
from raftkv.node.heap import tune_gc
heap = tune_gc()
heap.growth_floor = 10_000

class Node:
    pass

a, b = Node(), Node()
a.other, b.other = b, a  # a cycle, alive while a and b are named
gone = weakref.ref(a)
gc.collect(0)
del a, b  # garbage now, but frozen: no collection of the young generations sees it
gc.collect(0)
gc.collect(1)
assert gone() is not None, "a frozen cycle is not collected by the young collections"
grown = [[i] for i in range(2 * heap.baseline)]
gc.collect(0)
seconds = heap.collect_if_grown()
assert seconds is not None and gone() is None, "the full collection once the heap doubled frees it"
assert heap.baseline >= len(grown) and heap.collect_if_grown() is None
print("ok")
"""

AN_IMAGE_BEING_PACKED_IS_OUT_OF_THE_YOUNG_COLLECTIONS = """
import asyncio, gc
from raftkv.kv import KVStateMachine, Put, encode
from raftkv.node.heap import tune_gc
from raftkv.node.snapshots import pack_between_turns
tune_gc()
kv = KVStateMachine()
for i in range(20_000):
    kv.apply(i + 1, encode(Put(f"k{i}", i)))
for i in range(100):  # some history: its keys are sorted after the writes below
    kv.apply(kv.applied_index + 1, encode(Put(f"k{i}", "again")))
gc.collect()
seen = []

async def main():
    parts = kv.snapshot_later()

    async def look_and_write():
        await asyncio.sleep(0)
        seen.extend(o for g in range(3) for o in gc.get_objects(g) if type(o) in (dict, list) and len(o) == 20_000)
        for i in range(5):  # writes go on while the image is packed
            kv.apply(kv.applied_index + 1, encode(Put(f"new{i}", i)))

    looking = asyncio.create_task(look_and_write())
    packed = await pack_between_turns(parts)
    await looking
    assert packed != kv.snapshot() and len(packed) < len(kv.snapshot())

asyncio.run(main())
assert not seen, [type(o) for o in seen]
gc.collect(0)
# Nothing froze the new values before a collection could stop tracking them.
assert not any(gc.is_tracked(kv.store.current()[f"new{i}"]) for i in range(5))
print("ok")
"""


def _run(code: str) -> None:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout == "ok\n", done.stderr


def test_what_survives_a_collection_is_frozen_so_later_collections_never_scan_it_again() -> None:
    _run(SURVIVORS_ARE_FROZEN)


def test_a_cycle_frozen_while_alive_is_collected_by_the_full_collection_once_the_heap_doubles() -> None:
    _run(CYCLES_FROZEN_ALIVE_ARE_COLLECTED_ONCE_THE_HEAP_DOUBLES)


def test_a_snapshots_image_is_out_of_the_young_collections_while_it_is_packed() -> None:
    _run(AN_IMAGE_BEING_PACKED_IS_OUT_OF_THE_YOUNG_COLLECTIONS)
