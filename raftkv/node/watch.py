"""Watching keys: every change to a key or a prefix, from a past revision or from now, in order.

Theory of operation
-------------------
The state machine's store tells the hub of every change as it is applied (mvcc.MVCCStore.listener);
the hub groups them by revision (a txn writing several keys is one revision) and hands each
revision's matching changes to every watcher of a key or prefix, as one `WatchBatch`. A watcher
starting at revision S first receives the retained history from S on (`changes_since`), then the
live changes; both are produced on the event loop, so nothing can slip between the two.

Order and exactness: batches leave in revision order, one per revision, so a client that resumes
after the last revision it saw (SSE's Last-Event-ID) receives no duplicate and misses nothing.
A start below the compacted revision is refused (`CompactedError`), never answered with a partial
history; a snapshot installed under a watcher (a follower that fell behind) replays what the
watcher has not seen, or cancels it with "compacted" when the history is gone.

Bounded: each watcher holds at most `max_pending_batches` undelivered batches. A slow watcher is
cancelled with the revision to resume from, never allowed to grow the node's memory or slow its
writes. Idle watchers get a progress notice every `PROGRESS_EVERY_S` seconds, with the revision
they are current to.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.core import GaugeMetricFamily

from raftkv.byte_text import byte_order
from raftkv.kv import Change, CompactedError, KVStateMachine, Row, key_value_of, kv_to_dict

__all__ = ["PROGRESS_EVERY_S", "WatchBatch", "WatchHub", "Watcher"]

PROGRESS_EVERY_S = 5.0
MAX_PENDING_BATCHES = 1000


@dataclass(frozen=True, slots=True)
class WatchBatch:
    """What a watcher receives: the changes of one revision, a progress notice (no changes), or
    the end of the watch (`cancelled` says why; `revision` is where to resume)."""

    revision: int
    changes: tuple[Change, ...] = ()
    progress: bool = False
    cancelled: str | None = None
    # The API's encodings of this batch, made once however many watchers receive the same batch
    # (every watcher of a prefix gets the one object flush made): with 1,000 watchers, encoding
    # each revision once per watcher was a sixth of a node's time.
    encoded: dict[Any, bytes] = field(default_factory=dict, compare=False, repr=False)

    def to_json(self, prev_kv: bool) -> dict[str, Any]:
        if self.cancelled is not None:
            return {"cancelled": self.cancelled, "resumeRevision": self.revision}
        if self.progress:
            return {"progress": True, "revision": self.revision}
        return {"revision": self.revision, "events": [_event(c, prev_kv) for c in self.changes]}


def _event(c: Change, prev_kv: bool) -> dict[str, Any]:
    event: dict[str, Any] = {"type": "put" if c.kv is not None else "delete", "key": c.key}
    if c.kv is not None:
        event["kv"] = kv_to_dict(c.key, c.kv)
    if prev_kv:
        event["prev"] = None if c.prev is None else kv_to_dict(c.key, c.prev)
    return event


@dataclass(eq=False)
class Watcher:
    key: str | None  # exactly this key, or
    prefix: str | None  # every key starting with this
    prev_kv: bool
    delivered_to: int  # the revision this watcher is current to
    queue: asyncio.Queue[WatchBatch] = field(default_factory=lambda: asyncio.Queue(MAX_PENDING_BATCHES + 1))
    cancelled: bool = False

    def __post_init__(self) -> None:
        self._ordered_prefix = byte_order(self.prefix or "")  # a prefix selects as a range of it does: by bytes

    def wants(self, key: str) -> bool:
        if self.key is not None:
            return key == self.key
        return byte_order(key).startswith(self._ordered_prefix)

    def offer(self, batch: WatchBatch) -> None:
        """Queue a batch; a watcher that has MAX_PENDING_BATCHES waiting is cancelled instead."""
        if self.cancelled:
            return
        if self.queue.qsize() >= MAX_PENDING_BATCHES:
            self.cancel(f"too slow: {MAX_PENDING_BATCHES} batches were waiting for it")
            return
        self.queue.put_nowait(batch)
        self.delivered_to = batch.revision

    def cancel(self, why: str) -> None:
        """End the watch; the last batch says why and where to resume (the slot kept for it)."""
        if not self.cancelled:
            self.cancelled = True
            self.queue.put_nowait(WatchBatch(self.delivered_to + 1, cancelled=why))


class WatchHub:
    def __init__(self, kv: KVStateMachine) -> None:
        self.kv = kv
        self.watchers: set[Watcher] = set()
        self._revision_changes: list[Change] = []  # the revision being applied, until it ends
        kv.store.listener = self._on_change

    def watch(self, *, key: str | None = None, prefix: str | None = None, start_revision: int | None = None,
              prev_kv: bool = False) -> Watcher:
        """A new watcher, its history from `start_revision` (default: only what comes next) already
        queued. Raises kv.CompactedError if that history is compacted."""
        assert (key is None) != (prefix is None)
        self.flush()
        now = self.kv.revision
        start = now + 1 if start_revision is None else start_revision
        watcher = Watcher(key, prefix, prev_kv, delivered_to=start - 1)
        try:
            self._replay(watcher, start - 1)
        except CompactedError as e:  # said of the first revision the watch asked for, not of the one before it
            raise CompactedError(start, e.compacted) from None
        watcher.delivered_to = max(watcher.delivered_to, now)
        self.watchers.add(watcher)
        return watcher

    def forget(self, watcher: Watcher) -> None:
        self.watchers.discard(watcher)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """The watchers and what waits for them, as Prometheus gauges (the hub is a collector)."""
        yield GaugeMetricFamily("raft_watchers", "Key watches open on this node", value=len(self.watchers))
        yield GaugeMetricFamily("raft_watch_queued_batches", "Revisions queued for watchers, not yet sent",
                                value=sum(w.queue.qsize() for w in self.watchers))

    def _replay(self, watcher: Watcher, after: int) -> None:
        batch: list[Change] = []
        for change in self.kv.store.changes_since(after):
            if batch and change.revision != batch[0].revision:
                watcher.offer(WatchBatch(batch[0].revision, tuple(batch)))
                batch = []
            if watcher.wants(change.key):
                batch.append(change)
        if batch:
            watcher.offer(WatchBatch(batch[0].revision, tuple(batch)))

    # ---- live changes -------------------------------------------------------------------------

    def _on_change(self, revision: int, key: str, row: Row | None, prev: Row | None) -> None:
        if not self.watchers:
            return
        if self._revision_changes and self._revision_changes[0].revision != revision:
            self.flush()
        self._revision_changes.append(Change(revision, key, key_value_of(row), key_value_of(prev)))

    def flush(self) -> None:
        """Hand the changes of the revision just applied to their watchers (the group calls this
        after each batch of entries; a new revision's first change does it too)."""
        changes, self._revision_changes = self._revision_changes, []
        if not changes:
            return
        revision = changes[0].revision
        shared: dict[tuple[int, ...], WatchBatch] = {}  # watchers wanting the same changes share a batch
        for watcher in list(self.watchers):
            picked = tuple(i for i, c in enumerate(changes) if watcher.wants(c.key))
            if picked and revision > watcher.delivered_to:
                batch = shared.get(picked)
                if batch is None:
                    batch = shared[picked] = WatchBatch(revision, tuple(changes[i] for i in picked))
                watcher.offer(batch)

    def progress(self) -> None:
        """Tell idle watchers how current they are: nothing they want changed up to now. Also when
        the store has not moved since the last notice: the notice is a client's sign that its
        watch is alive (etcd's progress_notify is sent every interval)."""
        self.flush()
        now = self.kv.revision
        for watcher in self.watchers:
            if watcher.queue.empty() and watcher.delivered_to <= now:  # (not one from a future revision)
                watcher.offer(WatchBatch(now, progress=True))

    def restored(self) -> None:
        """A snapshot replaced the store: replay what each watcher missed, or cancel it."""
        self._revision_changes = []
        for watcher in list(self.watchers):
            try:
                self._replay(watcher, watcher.delivered_to)
            except ValueError:  # CompactedError: the history it needs is gone
                watcher.cancel(f"compacted: history before revision {self.kv.store.compacted + 1} is gone")
