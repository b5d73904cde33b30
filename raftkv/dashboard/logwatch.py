"""Each node's true log, read for the page's log table: `GET /raft/log`, whenever the log moved.

Theory of operation
-------------------
The log table draws each node's real entries as the node serves them (raftkv/node/log_view.py):
index, term, kind, a summary, whether on disk, committed, applied, and where the log was compacted.
It never infers a term. The watcher reads a node's newest `LOG_WINDOW` entries when its status
(four a second) shows that its log moved (last index, term, commit, applied, on disk, snapshot),
when the node says it dropped conflicting entries, and at least every `REFRESH_S`; one read per
node is in flight at a time. Each read becomes a `log` event carrying the node's `readAt` and the
hub's receipt time, from which the page says how old each row is: a node that stops answering
keeps its last known log, drawn as stale.

Entries a node no longer holds as they were (another term at the same index, or gone because the
log got shorter: a conflicting suffix truncated, or unsynced entries lost in a crash) are listed in
the event as `replaced`, against the previous read, so the page can show what was there and what
took its place. Recording follows the status rule (hub.py): a log is recorded when its picture
changed, at most every `RECORD_EVERY_S`, except that a read with replaced entries is always
recorded, so a replay shows every truncation.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

import aiohttp

__all__ = ["LOG_WINDOW", "LogWatcher", "replaced_entries"]

LOG_WINDOW = 40  # newest entries read per node: the table shows at most this many indexes
REFRESH_S = 2.0  # an unchanged log is read again this often, so its age stays known
RECORD_EVERY_S = 1.0
READ_TIMEOUT_S = 1.5
STATUS_LOG_FIELDS = ("term", "logLength", "commitIndex", "lastApplied", "stableIndex", "snapshotIndex")


def replaced_entries(before: dict, after: dict) -> list[dict]:
    """Entries of the read `before` that the read `after` no longer holds as they were."""
    if not before:
        return []
    now = {e["index"]: e for e in after["entries"]}
    out = []
    for e in before["entries"]:
        i = e["index"]
        new = now.get(i)
        if new is not None and new["term"] != e["term"]:
            out.append({"index": i, "oldTerm": e["term"], "oldSummary": e["summary"], "newTerm": new["term"]})
        elif new is None and i > after["lastIndex"]:
            out.append({"index": i, "oldTerm": e["term"], "oldSummary": e["summary"], "newTerm": None})
    return out


def _picture(read: dict) -> tuple:
    bounds = tuple(read.get(k) for k in ("firstIndex", "lastIndex", "snapshotIndex", "commitIndex",
                                         "appliedIndex", "stableIndex"))
    return bounds, tuple((e["index"], e["term"]) for e in read["entries"])


class LogWatcher:
    """Reads nodes' logs for the hub; `emit` is the hub's (stamps, records, sends to pages)."""

    def __init__(self, session: Callable[[], aiohttp.ClientSession], emit: Callable[[dict], Any]) -> None:
        self._session, self._emit = session, emit
        self._last_status: dict[str, tuple] = {}  # node -> the status's log fields when last read
        self._last_read_at: dict[str, float] = {}  # node -> monotonic time of the last read started
        self._reads: dict[str, dict] = {}  # node -> the last read
        self._recorded: dict[str, tuple[tuple, float]] = {}  # node -> (picture, monotonic time) last recorded
        self._busy: set[str] = set()
        self._again: set[str] = set()
        self._tasks: set[asyncio.Task] = set()
        self.running = False  # reads start with the hub (a hub fed events by hand reads nothing)

    def start(self) -> None:
        self.running = True

    def on_status(self, node: str, url: str, state: dict) -> None:
        """A node's status arrived: read its log if the log moved or the last read is getting old."""
        fields = tuple(state.get(k) for k in STATUS_LOG_FIELDS)
        stale = time.monotonic() - self._last_read_at.get(node, 0.0) > REFRESH_S
        if fields != self._last_status.get(node) or stale:
            self._last_status[node] = fields
            self.refresh(node, url)

    def refresh(self, node: str, url: str) -> None:
        if not self.running:
            return
        if node in self._busy:
            self._again.add(node)
            return
        self._busy.add(node)
        self._last_read_at[node] = time.monotonic()
        task = asyncio.get_running_loop().create_task(self._read(node, url))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def last(self, node: str) -> dict:
        """The node's last read log ({} before the first)."""
        return self._reads.get(node, {})

    def forget(self, node: str) -> None:
        for table in (self._last_status, self._last_read_at, self._reads, self._recorded):
            table.pop(node, None)

    async def stop(self) -> None:
        self.running = False
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _read(self, node: str, url: str) -> None:
        try:
            read = await self._get(url)
            if read is not None:
                self._publish(node, read)
        finally:
            self._busy.discard(node)
            if node in self._again:
                self._again.discard(node)
                self.refresh(node, url)

    async def _get(self, url: str) -> dict | None:
        try:
            async with self._session().get(f"{url.rstrip('/')}/raft/log?limit={LOG_WINDOW}",
                                           timeout=aiohttp.ClientTimeout(total=READ_TIMEOUT_S)) as resp:
                read = await resp.json() if resp.status == 200 else None
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError):
            return None  # the node is down or busy: its row keeps its last read, and ages
        return read if isinstance(read, dict) and isinstance(read.get("entries"), list) else None

    def _publish(self, node: str, read: dict) -> None:
        replaced = replaced_entries(self._reads.get(node, {}), read)
        self._reads[node] = read
        picture, now = _picture(read), time.monotonic()
        last = self._recorded.get(node)
        changed = last is None or picture != last[0]
        record = bool(replaced) or (changed and (last is None or now - last[1] >= RECORD_EVERY_S))
        if record:
            self._recorded[node] = (picture, now)
        fields = {k: read.get(k) for k in ("term", "firstIndex", "lastIndex", "snapshotIndex", "commitIndex",
                                            "appliedIndex", "stableIndex", "readAt")}
        self._emit({"type": "log", "node": node, **fields, "entries": read["entries"], "replaced": replaced,
                    "recorded": record})
