"""What key history costs in memory: a state machine in this process applies KEYS puts of new
keys (one version each), then VERSIONS - 1 more rounds overwriting every key, and reports the
resident memory per key after the first round and after the last, and per extra version.

    .venv/bin/python -m bench.history_memory [KEYS] [VERSIONS]     # default 1000000 10 (about 4 GiB, 2 min)

Values are short strings (about 16 bytes); garbage collection is off while filling, so the
figures are the store's own and not the collector's timing.
"""

from __future__ import annotations

import gc
import os
import sys
import time

from raftkv.kv.commands import Put, encode
from raftkv.kv.state_machine import KVStateMachine

from .procs import rss_bytes


def measure(keys: int, versions: int) -> str:
    assert keys >= 1 and versions >= 2
    machine = KVStateMachine()
    gc.disable()
    start, began = rss_bytes(os.getpid()), time.monotonic()
    index = 0
    after_first = start
    for version in range(versions):
        for i in range(keys):
            index += 1
            machine.apply(index, encode(Put(f"key{i:08d}", f"value-{version}-{i}")))
        if version == 0:
            after_first = rss_bytes(os.getpid())
    gc.collect()
    end = rss_bytes(os.getpid())
    return (f"{keys} keys: {(after_first - start) / keys:.0f} B/key with 1 version, {(end - start) / keys:.0f} B/key "
            f"with {versions}, {(end - after_first) / (keys * (versions - 1)):.0f} B per extra version; "
            f"{(end - start) / 2**30:.2f} GiB in all; {time.monotonic() - began:.0f} s")


if __name__ == "__main__":
    print(measure(*(int(a) for a in sys.argv[1:3])) if len(sys.argv) > 1 else measure(1_000_000, 10))
