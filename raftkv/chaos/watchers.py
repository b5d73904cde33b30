"""Watch clients under faults, and the judge of what they were told.

Theory of operation
-------------------
Before the workload starts, one linearizable range read of the watched prefix gives its state
and the revision R0 it was read at. `WATCHERS` watchers then follow the prefix from R0 + 1 with
`raftkv.client.Client.watch` (what `raftkv watch` uses: Server-Sent Events; a broken or silent
stream resumes on the next endpoint from the revision after the last one received). They start a
few seconds apart, so the later ones begin by replaying history and then go live, and each
starts on a different node. Every batch is kept as it arrived: [revision, time received, events].

At the end, once the cluster has settled, each watcher is given a bounded time to reach the last
revision that touched the prefix, and is stopped. The judge then compares each stream with the
cluster's own history (histories.py), read from every final member:

* order: revisions strictly increase; a revision received twice is a **duplicate**, a smaller one
  an **out-of-order** event;
* no **gap**: every revision the history has for the prefix between R0 + 1 and the last one the
  watcher received is in its stream (a watcher that did not reach the end is judged up to where
  it got, and that is reported as inconclusive);
* nothing **uncommitted**: each event must be exactly the history's change of that key at that
  revision (value, create and mod revision, version, lease), and a batch must hold every change
  the revision made under the prefix;
* **agreement with the final state**: the state at R0 with every received event applied in order
  is the prefix's final state;
* the replicas' histories of every key are identical (the reference is only one node's word).

The receive times are also the earliest moment anyone saw a revision committed: the lease judge
uses them to bound when an expiry happened (a revision cannot be received before it commits).
"""

from __future__ import annotations

import asyncio
import contextlib
from bisect import bisect_left, bisect_right
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from raftkv.chaos.connect import run_client
from raftkv.chaos.histories import NodeHistories, committed_revisions
from raftkv.chaos.judge import SideCheck
from raftkv.chaos.recorder import Recorder
from raftkv.client import WatchCompacted

__all__ = ["WATCHERS", "WatchStream", "Watchers", "first_seen", "judge_watches"]

WATCHERS = 3
START_EVERY_S = 2.0  # watcher i starts i * this after the workload: the later ones replay first
CONNECT_TIMEOUT_S = 2.0
MAX_REPORTED = 10  # per kind of finding: a broken stream repeats itself


@dataclass
class WatchStream:
    watcher: int
    start_revision: int
    endpoints: list[str]
    batches: list[list[Any]] = field(default_factory=list)  # [revision, received at, [[type, key, kv], ...]]
    error: str | None = None  # the watch ended by itself (compacted, refused)

    @property
    def last_revision(self) -> int:
        return self.batches[-1][0] if self.batches else self.start_revision - 1


class Watchers:
    def __init__(self, prefix: str, start_revision: int, urls: Mapping[str, str], recorder: Recorder,
                 count: int = WATCHERS) -> None:
        self.prefix = prefix
        self.recorder = recorder
        ordered = [urls[n] for n in sorted(urls)]
        self.streams = [WatchStream(i, start_revision, ordered[i % len(ordered):] + ordered[:i % len(ordered)])
                        for i in range(count)]
        self._tasks: list[asyncio.Task] = []

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._follow(s)) for s in self.streams]

    async def _follow(self, stream: WatchStream) -> None:
        await asyncio.sleep(stream.watcher * START_EVERY_S)
        async with run_client(stream.endpoints, timeout_s=CONNECT_TIMEOUT_S) as client:
            try:
                async for batch in client.watch(prefix=self.prefix, start_revision=stream.start_revision):
                    events = [[e["type"], e["key"], e.get("kv")] for e in batch["events"]]
                    stream.batches.append([batch["revision"], self.recorder.now(), events])
            except WatchCompacted as e:
                stream.error = f"compacted: {e}"
            except Exception as e:  # a watch the cluster refused: the judge reports it, the run goes on
                stream.error = f"{type(e).__name__}: {e}"

    async def stop(self, upto_revision: int, timeout_s: float) -> None:
        """Give every watcher `timeout_s` to receive `upto_revision`, then stop them all."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while loop.time() < deadline and any(s.last_revision < upto_revision and s.error is None
                                             for s in self.streams):
            await asyncio.sleep(0.1)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def to_json(self) -> list[dict[str, Any]]:
        return [asdict(s) for s in self.streams]


def first_seen(streams: list[dict[str, Any]]) -> list[tuple[int, float]]:
    """[(revision, earliest time any watcher received it or a later one)], by revision: the time
    by which that revision had certainly committed."""
    received: dict[int, float] = {}
    for stream in streams:
        for revision, at, _ in stream["batches"]:
            received[revision] = min(at, received.get(revision, at))
    out: list[tuple[int, float]] = []
    earliest = float("inf")
    for revision in sorted(received, reverse=True):
        earliest = min(earliest, received[revision])
        out.append((revision, earliest))
    return out[::-1]


def judge_watches(streams: list[dict[str, Any]], prefix: str, initial: Mapping[str, Any], final: Mapping[str, Any],
                  histories: NodeHistories) -> SideCheck:
    """`initial`/`final`: {key: kv} under the prefix at R0 and at the end; `histories`: every
    final member's histories of the keys (histories.py)."""
    check = SideCheck("watch")
    nodes = sorted(histories)
    if not nodes:
        check.inconclusive.append("no node's history could be read")
        return check
    _compare_replicas(histories, check)
    reference_node = nodes[0]
    reference = {rev: {k: kv for k, kv in changes.items() if k.startswith(prefix)}
                 for rev, changes in committed_revisions(histories[reference_node]).items()}
    reference = {rev: changes for rev, changes in reference.items() if changes}
    compacted = histories[reference_node]["compactRevision"]
    unread = sorted(k for k, v in histories[reference_node]["keys"].items() if isinstance(v, str))
    if unread:
        check.inconclusive.append(f"history of {len(unread)} key(s) unreadable on {reference_node}: "
                                  + ", ".join(unread[:MAX_REPORTED]))
    last_change = max(reference, default=0)
    events = 0
    for stream in streams:
        events += sum(len(b[2]) for b in stream["batches"])
        _judge_stream(stream, reference, compacted, last_change, initial, final, check)
    check.stats = {"watchers": len(streams), "revisions received": sum(len(s["batches"]) for s in streams),
                   "events": events, "revisions in history": len(reference)}
    return check


def _judge_stream(stream: dict[str, Any], reference: dict[int, dict[str, Any]], compacted: int, last_change: int,
                  initial: Mapping[str, Any], final: Mapping[str, Any], check: SideCheck) -> None:
    who = f"watcher {stream['watcher']}"
    in_history = sorted(r for r in reference if r > compacted)
    start = stream["start_revision"]
    found: dict[str, list[str]] = {}
    last = start - 1
    state = dict(initial)
    for revision, at, batch in stream["batches"]:
        if revision <= last:
            kind = "duplicate" if revision == last else "out of order"
            found.setdefault(kind, []).append(f"revision {revision} received at {at:.2f}s after revision {last}")
            continue
        skipped = in_history[bisect_right(in_history, last):bisect_left(in_history, revision)]
        if skipped:
            found.setdefault("gap", []).append(
                f"revision(s) {_ranges(sorted(skipped))} missing between {last} and {revision}")
        last = revision
        got = {key: kv for kind, key, kv in batch}
        wanted = reference.get(revision, {})
        for key, kv in sorted(got.items()):
            if key not in wanted or wanted[key] != kv:
                committed = f"history has {wanted[key]}" if key in wanted else "no such change in any history"
                found.setdefault("uncommitted", []).append(f"{key} at revision {revision}: event {kv}; {committed}")
        for key in sorted(set(wanted) - set(got)):
            found.setdefault("incomplete revision", []).append(
                f"revision {revision} changed {key} ({wanted[key]}) but the batch left it out")
        for key, kv in got.items():
            if kv is None:
                state.pop(key, None)
            else:
                state[key] = kv
    for kind, items in found.items():
        check.violations += [f"{who}: {kind}: {x}" for x in items[:MAX_REPORTED]]
        if len(items) > MAX_REPORTED:
            check.violations.append(f"{who}: {kind}: ... and {len(items) - MAX_REPORTED} more")
    if stream.get("error"):
        check.inconclusive.append(f"{who} ended: {stream['error']}")
    if compacted >= start:
        check.inconclusive.append(f"{who}: history is compacted up to {compacted}, so gaps from {start} to "
                                  f"{compacted} cannot be judged")
    if last < last_change:
        check.inconclusive.append(f"{who} reached revision {last} only; the prefix last changed at {last_change}")
    elif state != dict(final):
        differ = sorted(k for k in set(state) | set(final) if state.get(k) != final.get(k))
        check.violations.append(f"{who}: its events applied to the start state do not give the final state; "
                                f"keys differing: {', '.join(differ[:MAX_REPORTED])}")


def _compare_replicas(histories: NodeHistories, check: SideCheck) -> None:
    nodes = sorted(histories)
    keys = sorted({k for n in nodes for k in histories[n]["keys"]})
    for key in keys:
        seen = {n: histories[n]["keys"].get(key) for n in nodes if not isinstance(histories[n]["keys"].get(key), str)}
        if len({repr(v) for v in seen.values()}) > 1:
            check.violations.append(f"replicas' histories of {key} differ: "
                                    + "; ".join(f"{n}={v}" for n, v in sorted(seen.items())))


def _ranges(revisions: list[int]) -> str:
    """[3, 4, 5, 9] -> "3-5, 9" (a gap is usually a run of revisions)."""
    runs: list[list[int]] = []
    for r in revisions:
        if runs and runs[-1][1] == r - 1:
            runs[-1][1] = r
        else:
            runs.append([r, r])
    shown = [str(a) if a == b else f"{a}-{b}" for a, b in runs]
    return ", ".join(shown[:MAX_REPORTED]) + (" ..." if len(shown) > MAX_REPORTED else "")
