"""The garbage collector's policy for a node process: what survives a collection is frozen.

A node under write load keeps hundreds of thousands of long-lived objects it tracks for the cycle
collector: each retained version of a key and each Raft log entry until a snapshot covers it
(three per write when this was measured, values being NamedTuples then: below). CPython's
generational collector scans all of them again at each collection of an older generation:
measured at 4096 embedded writes in flight, a second-generation collection took 330-340 ms,
longer than a follower waits for a heartbeat, and most 20 s runs saw one to three elections.
Almost none of it is garbage: the collections found none.

So every object that survives a collection is frozen (`gc.freeze`): it leaves the collector's
sight for good, and each collection scans only what was allocated since the one before (a
pause of a few tens of ms). Frozen objects are still freed by reference counting, which is how
the store, the log and requests free theirs. What freezing gives up is reclaiming cycles that
were alive when frozen and became garbage later; `HeapWatch.collect_if_grown` makes good on
that: once the frozen objects have doubled since the last full collection (and grown by at
least `GROWTH_FLOOR`), it unfreezes them and collects everything once, a long pause that a
steady node, whose live objects stay about the same, never needs.

A growing store must not count toward that doubling, nor lengthen the pause: the store keeps
each key's value as a plain tuple, which the collector stops tracking once it has seen it
(kv/mvcc.py). With values kept as NamedTuples, which it tracks for good, a node filled with a
million keys had 1.1-1.3 million frozen objects, its full collection took 0.85-0.94 s on all
three nodes at once, and the leader lost its followers (bench/PROFILE.md, nineteenth round).
"""

from __future__ import annotations

import gc
import time

__all__ = ["GROWTH_FLOOR", "HeapWatch", "collect_young", "tune_gc"]

GROWTH_FLOOR = 1_000_000  # frozen objects gained before a full collection is worth its pause
YOUNG_THRESHOLD = 50_000  # allocations between collections (CPython's default, 700, is tuned for small heaps)
_tuned = False  # this process runs the policy (tune_gc)


def tune_gc() -> HeapWatch:
    """For a long-lived node process, at start-up: what is loaded so far (the modules, a restored
    state machine of maybe millions of objects) is frozen at once, and from then on what survives
    each collection. Returns the watch that collects fully when the heap has doubled."""
    global _tuned
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, 20, 100)
    watch = HeapWatch()
    gc.callbacks.append(watch.after_collection)
    _tuned = True
    return watch


def collect_young() -> None:
    """A collection of the young generation now, in a process tuned by `tune_gc`: it stops
    tracking what it can (tuples of plain values, kv/mvcc.py) and its survivors are frozen."""
    if _tuned:
        gc.collect(0)


class HeapWatch:
    def __init__(self, growth_floor: int = GROWTH_FLOOR) -> None:
        self.growth_floor = growth_floor
        self.baseline = gc.get_freeze_count()  # frozen objects after the last full collection

    def after_collection(self, phase: str, info: dict) -> None:
        """A gc callback: once a collection ends, its survivors (all that is tracked) are frozen."""
        if phase == "stop":
            gc.freeze()

    def collect_if_grown(self) -> float | None:
        """A full collection of everything, if the frozen objects have doubled since the last one;
        returns its duration in seconds, or None if none was due."""
        if gc.get_freeze_count() < max(2 * self.baseline, self.baseline + self.growth_floor):
            return None
        started = time.perf_counter()
        gc.unfreeze()
        gc.collect()  # its survivors are frozen again as it ends (after_collection)
        self.baseline = gc.get_freeze_count()
        return time.perf_counter() - started
