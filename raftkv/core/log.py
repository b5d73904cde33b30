"""The Raft log as the core sees it: entries in memory after a compaction point.

Index layout: everything up to `offset` was compacted into a snapshot (or is before the first
entry); `entries[i]` has index `offset + 1 + i`. `offset_term` is the term of the entry at
`offset`, needed for the prev-log check of the first remaining entry.

Two watermarks split the entries for the driver:
- `stable`: everything <= stable is known to be durable; later entries are handed out in the
  next Ready to be written (a truncation lowers it, so a rewritten suffix is written again);
- `committed` / `applied`: committed entries after `applied` are handed out to be applied.

Invariants (asserted where they are relied on): offset <= applied <= committed <= last index, so
the first index (offset + 1) is at most last + 1; entries are contiguous; a committed entry is
never truncated.
"""

from __future__ import annotations

from .messages import Entry


class CompactedError(LookupError):
    """The asked-for index was compacted into a snapshot."""


class RaftLog:
    __slots__ = ("applied", "committed", "entries", "offset", "offset_term", "stable")

    def __init__(self, offset: int = 0, offset_term: int = 0, entries: list[Entry] | None = None) -> None:
        self.offset = offset
        self.offset_term = offset_term
        self.entries: list[Entry] = list(entries or [])
        if self.entries:
            assert self.entries[0].index == offset + 1, "entries must start right after the offset"
            assert self.entries[-1].index == self.last_index(), "entries must be contiguous"
        self.stable = self.last_index()
        self.committed = offset
        self.applied = offset

    # ---- reading ------------------------------------------------------------------------------

    def last_index(self) -> int:
        return self.offset + len(self.entries)

    def last_term(self) -> int:
        return self.entries[-1].term if self.entries else self.offset_term

    def first_index(self) -> int:
        return self.offset + 1

    def term(self, index: int) -> int:
        """Term of the entry at `index`; 0 past the end; CompactedError before the offset."""
        if index == self.offset:
            return self.offset_term
        if index < self.offset:
            raise CompactedError(index)
        if index > self.last_index():
            return 0
        return self.entries[index - self.offset - 1].term

    def entry(self, index: int) -> Entry:
        return self.entries[index - self.offset - 1]

    def matches(self, index: int, term: int) -> bool:
        try:
            return self.term(index) == term
        except CompactedError:
            return False

    def is_up_to_date(self, last_index: int, last_term: int) -> bool:
        """Raft 5.4.1: a candidate's log at least as up-to-date as ours gets our vote."""
        return last_term > self.last_term() or (last_term == self.last_term() and last_index >= self.last_index())

    def slice(self, lo: int, max_count: int, max_bytes: int) -> list[Entry]:
        """Entries from `lo` on, at most max_count of them and about max_bytes of data (at least one)."""
        start = lo - self.offset - 1
        if start < 0:
            raise CompactedError(lo)
        chunk = self.entries[start : start + max_count]
        size = 0
        for i, e in enumerate(chunk):
            size += len(e.data)
            if size > max_bytes and i > 0:
                return chunk[:i]
        return chunk

    def first_index_of_term(self, index: int) -> int:
        """Walk back from `index` to the first entry with the same term (for the conflict hint)."""
        term = self.term(index)
        while index - 1 > max(self.offset, self.committed) and self.term(index - 1) == term:
            index -= 1
        return index

    def last_index_of_term(self, term: int) -> int:
        """The last index holding `term`, or 0 if the log has no entry of that term."""
        for e in reversed(self.entries):
            if e.term == term:
                return e.index
            if e.term < term:
                break
        return 0

    # ---- writing ------------------------------------------------------------------------------

    def append(self, entries: list[Entry]) -> None:
        """Append entries whose first index is at most last+1, truncating any suffix they replace."""
        if not entries:
            return
        first = entries[0].index
        assert first > self.committed, f"truncating committed entry {first} <= {self.committed}"
        assert first <= self.last_index() + 1, "gap in the log"
        assert entries[-1].index == first + len(entries) - 1, "entries must be contiguous"
        del self.entries[first - self.offset - 1 :]
        self.entries.extend(entries)
        self.stable = min(self.stable, first - 1)

    def unstable(self) -> list[Entry]:
        return self.entries[self.stable - self.offset :] if self.stable >= self.offset else list(self.entries)

    def stable_to(self, index: int) -> None:
        self.stable = max(self.stable, min(index, self.last_index()))

    def commit_to(self, index: int) -> bool:
        if index > self.committed:
            assert index <= self.last_index(), f"commit {index} beyond last index {self.last_index()}"
            self.committed = index
            return True
        return False

    def committed_to_apply(self, max_count: int) -> list[Entry]:
        assert self.offset <= self.applied <= self.committed <= self.last_index(), (
            f"offset {self.offset} <= applied {self.applied} <= committed {self.committed} "
            f"<= last {self.last_index()} broken"
        )
        lo = max(self.applied, self.offset)
        hi = min(self.committed, lo + max_count)
        return self.entries[lo - self.offset : hi - self.offset]

    def compact(self, index: int) -> None:
        """Forget entries up to `index` (already covered by a durable snapshot)."""
        if index <= self.offset:
            return
        assert index <= self.applied, "compacting entries not yet applied"
        self.offset_term = self.term(index)
        del self.entries[: index - self.offset]
        self.offset = index

    def restore(self, index: int, term: int) -> None:
        """Reset the log to start after a snapshot at (index, term)."""
        # applied jumps to index: a snapshot behind it would make the state machine go back.
        assert index >= self.applied, f"restoring snapshot {index} behind applied {self.applied}"
        if self.matches(index, term) and index <= self.last_index():
            # Raft 7: keep the entries that follow a snapshot our log already agrees with.
            del self.entries[: index - self.offset]
        else:
            self.entries = []
        self.offset, self.offset_term = index, term
        self.committed = max(self.committed, index)
        self.applied = index
        self.stable = max(min(self.stable, self.last_index()), index)
        assert self.committed <= self.last_index(), f"commit {self.committed} beyond last {self.last_index()}"
