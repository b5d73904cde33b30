"""Persist before send: does a driver keep the promises its votes and acknowledgements make?

Theory of operation
-------------------
Three kinds of message vouch for the sender's disk (Raft figure 2: "respond to RPCs only after
updating stable storage"); the core holds them in `Ready.messages` until that Ready is fsynced:

* a VoteRequest (not a pre-vote) of term T: T, and the vote for itself, are durable;
* a VoteResponse (not a pre-vote) of term T: T is durable and, if granted, the vote for the candidate;
* an AppendResponse of term T: T is durable and, on success, the log up to `match_index` is, as
  the sender's log holds it now.

`DiskLedger` follows one node's disk from the outside. Each write goes into a *written* image at
once and onto a list of pending writes, which a sync moves into the *synced* image (what survives a
crash, if the storage honours its syncs). `RecordingStorage` wraps any RaftStorage and tells the
ledger each write, sync and snapshot once the storage has done it; `PromiseCheckingTransport`
wraps any Transport and, as each message leaves, compares what it vouches for with the synced
image. A message of a term the node has durably left behind vouches for nothing any more (it is
as stale as one the network held back, which Raft tolerates), so it is not checked.

The checks look only at messages and at the storage's calls, never at Readys, so they hold the
driver to the promise and leave it free to batch its writes and syncs as it likes. The ledger
keeps the order of the last writes, syncs and checked sends: a broken promise is reported with
what the disk had done before it.
"""

from __future__ import annotations

import threading
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from raftkv.core import (
    AppendResponse,
    CompactedError,
    DurableState,
    Entry,
    HardState,
    Message,
    RaftCore,
    Snapshot,
    VoteRequest,
    VoteResponse,
)
from raftkv.storage import RaftStorage, StorageStats
from raftkv.transport import Transport, TransportWrapper

__all__ = ["DiskLedger", "PromiseCheckingTransport", "RecordingStorage"]

ORDER_LOG_LINES = 40


@dataclass(slots=True)
class _Image:
    """A node's disk as the ledger sees it: the hard state, the snapshot's point, the terms of the
    entries after it (terms[k] is the term of entry snapshot_index + 1 + k)."""

    hard_state: HardState = field(default_factory=HardState)
    snapshot_index: int = 0
    snapshot_term: int = 0
    terms: list[int] = field(default_factory=list)

    @classmethod
    def of(cls, state: DurableState) -> _Image:
        meta = state.snapshot.meta if state.snapshot else None
        return cls(state.hard_state, meta.index if meta else 0, meta.term if meta else 0,
                   [e.term for e in state.entries])

    def term_at(self, index: int) -> int | None:
        if index == self.snapshot_index:
            return self.snapshot_term
        k = index - self.snapshot_index - 1
        return self.terms[k] if 0 <= k < len(self.terms) else None

    def append(self, first: int, terms: list[int]) -> None:
        del self.terms[first - self.snapshot_index - 1 :]  # Raft truncation: first replaces first..end
        self.terms.extend(terms)

    def install(self, index: int, term: int) -> None:
        # Paper section 7: the log after the snapshot stays only if it agrees at the snapshot's index.
        kept = self.terms[index - self.snapshot_index :] if self.term_at(index) == term else []
        self.snapshot_index, self.snapshot_term, self.terms = index, term, kept


class DiskLedger:
    """What one node wrote and what it synced, and the promises its messages make checked against it."""

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self.written = _Image()
        self.synced = _Image()
        self._pending: list[Callable[[_Image], None]] = []
        self.order: deque[str] = deque(maxlen=ORDER_LOG_LINES)
        self.checked: Counter[str] = Counter()  # messages whose promise was checked, by type
        self._lock = threading.Lock()  # a leader's fsync reports from the disk thread

    # ---- what the storage did ------------------------------------------------------------------

    def loaded(self, state: DurableState) -> None:
        """The node (re)started on `state`: all of it is on disk."""
        with self._lock:
            self.written, self.synced, self._pending = _Image.of(state), _Image.of(state), []
            self.order.append(f"load: term {state.hard_state.term}, vote {state.hard_state.voted_for}, "
                              f"{len(state.entries)} entries")

    def wrote_entries(self, entries: list[Entry]) -> None:
        first, terms = entries[0].index, [e.term for e in entries]
        with self._lock:
            self.written.append(first, terms)
            self._pending.append(lambda image: image.append(first, terms))
            self.order.append(f"write entries {first}..{entries[-1].index} (terms {terms[0]}..{terms[-1]})")

    def wrote_hard_state(self, hs: HardState) -> None:
        with self._lock:
            self.written.hard_state = hs
            self._pending.append(lambda image: setattr(image, "hard_state", hs))
            self.order.append(f"write hard state: term {hs.term}, vote {hs.voted_for}, commit {hs.commit}")

    def synced_all(self) -> None:
        with self._lock:
            for write in self._pending:
                write(self.synced)
            self._pending.clear()
            self.order.append("fsync")

    def saved_snapshot(self, snapshot: Snapshot) -> None:
        """A snapshot is durable on return, and so is everything written before it."""
        index, term = snapshot.meta.index, snapshot.meta.term
        with self._lock:
            self.written.install(index, term)
            self._pending.append(lambda image: image.install(index, term))
            self.order.append(f"write snapshot at {index} (term {term})")
        self.synced_all()

    # ---- what the node sent --------------------------------------------------------------------

    def broken_promise(self, m: Message, log_term: Callable[[int], int | None]) -> str | None:
        """Why `m` may not leave yet (None: it may). `log_term(i)` is the term of entry i in the
        sender's log now (None: it holds no such entry)."""
        if not _vouches(m):
            return None
        with self._lock:
            self.order.append(f"send {_describe(m)}")
            hs = self.synced.hard_state
            if hs.term > m.term:
                return None
            self.checked[type(m).__name__] += 1
            if hs.term < m.term:
                return self._broken(m, f"its term {m.term} was fsynced (the synced term is {hs.term})")
            if type(m) is VoteRequest and hs.voted_for != m.src:
                return self._broken(m, f"its vote for itself in term {m.term} was fsynced")
            if type(m) is VoteResponse and m.granted and hs.voted_for != m.dst:
                return self._broken(m, f"its vote for {m.dst} in term {m.term} was fsynced")
            if type(m) is AppendResponse and m.success and not self._log_synced_to(m.match_index, log_term):
                return self._broken(m, f"its log up to index {m.match_index} was fsynced")
        return None

    def _log_synced_to(self, index: int, log_term: Callable[[int], int | None]) -> bool:
        synced = self.synced
        if index <= synced.snapshot_index:
            return True
        term = synced.term_at(index)
        return term is not None and term == log_term(index)

    def _broken(self, m: Message, what: str) -> str:
        history = "\n  ".join(self.order)
        return f"{self.node_id} sent {_describe(m)} before {what}; its disk, oldest first:\n  {history}"


def _vouches(m: Message) -> bool:
    if type(m) in (VoteRequest, VoteResponse):
        return not m.pre_vote  # type: ignore[attr-defined]
    return type(m) is AppendResponse


def _describe(m: Message) -> str:
    if type(m) is VoteResponse:
        detail = "granted" if m.granted else "refused"
    elif type(m) is AppendResponse:
        detail = f"match {m.match_index}" if m.success else f"reject at {m.reject_index}"
    elif type(m) is VoteRequest:
        detail = f"last log {m.last_log_index}/{m.last_log_term}"
    else:
        detail = ""
    return f"{type(m).__name__}(term {m.term}{', ' + detail if detail else ''}) to {m.dst}"


class RecordingStorage:
    """A RaftStorage that tells a DiskLedger what it did, after doing it."""

    def __init__(self, inner: RaftStorage, ledger: DiskLedger) -> None:
        self.inner = inner
        self.ledger = ledger

    @property
    def stats(self) -> StorageStats:
        return self.inner.stats

    def load(self) -> DurableState:
        state = self.inner.load()
        self.ledger.loaded(state)
        return state

    def append(self, entries: list[Entry]) -> None:
        self.inner.append(entries)
        if entries:
            self.ledger.wrote_entries(entries)

    def set_hard_state(self, hs: HardState) -> None:
        self.inner.set_hard_state(hs)
        self.ledger.wrote_hard_state(hs)

    def save_snapshot(self, snapshot: Snapshot) -> None:
        self.inner.save_snapshot(snapshot)
        self.ledger.saved_snapshot(snapshot)

    def sync(self) -> None:
        self.inner.sync()
        self.ledger.synced_all()

    def close(self) -> None:
        self.inner.close()


class PromiseCheckingTransport(TransportWrapper):
    """A Transport that checks, as each message leaves, that the sender's disk backs what it vouches
    for, and reports each broken promise to `report` (the message still leaves: the run decides)."""

    def __init__(self, inner: Transport, ledger: DiskLedger, report: Callable[[str], None]) -> None:
        super().__init__(inner)
        self.ledger = ledger
        self._report = report
        self._core: RaftCore | None = None

    def bind(self, core: RaftCore) -> None:
        """The core whose log acknowledgements are checked against (it exists once its group does)."""
        self._core = core

    def _log_term(self, index: int) -> int | None:
        if self._core is None:
            return None
        try:
            return self._core.log.term(index) or None  # 0: past the end of the log
        except CompactedError:
            return None

    def send(self, messages: list[Message]) -> None:
        for m in messages:
            broken = self.ledger.broken_promise(m, self._log_term)
            if broken is not None:
                self._report(broken)
        self.inner.send(messages)
