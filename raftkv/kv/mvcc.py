"""The multi-version key store: every key's current value, its past versions back to the compacted
revision, and the order in which keys changed (what a watch replays).

Theory of operation
-------------------
Each change of a key at revision R is a version: (R, Row) for a put, (R, None) for a delete.
A key's versions, oldest first, say what it held at any revision: the last version at or below
R. Only keys with more than one retained version keep a list (`_past`); a key changed once since
the compacted revision is read from `_current` alone, so a million keys that are never
overwritten cost nothing extra. `_changes` lists (revision, key) in apply order, one per key
changed, so a watch starting at revision S replays in revision order with a bisect and no scan.

Compaction to revision C forgets what no read at C or later can see: of each key's versions at
or below C only the last is kept (as the key's state at C), a key deleted at or below C is
forgotten, and changes at or below C leave `_changes`. A read, range or watch below C is refused
with `CompactedError(C)`, never answered from a partial history.

A value is kept as a `Row`, KeyValue's fields in a plain tuple, and reads hand out KeyValues made
from rows. The garbage collector stops tracking a plain tuple of strings and numbers the first
time it sees one, but never a NamedTuple: a node holding a million keys as KeyValues had a
million more objects for every full collection to walk, about a second during which the node
answered nobody (bench/PROFILE.md, nineteenth round).

A snapshot reads an `Image` of the store, taken in constant time however big the store: it
copies nothing (a copy of a million keys' dict held a node's loop for 80-230 ms, bench/PROFILE.md,
twenty-first round). While an image is open the store saves in it what a key held, its row and
its version list with the list's length, before the key's first change since the image was taken
(copy on write). The keys the image holds are found among the first entries of each dict's
`_Arrivals`, its keys in the order they entered it: a list only ever appended to, so its first N
entries stay what they were. An entry is stale once its key has left, and repeated when the key
comes back; the list is remade from the dict (a new list: an open image keeps reading the old
one) once its entries outnumber twice the keys.

Every replica applies the same changes and compactions at the same log indexes, so the stores
agree; `rows()` and `restore()` carry everything but `_changes`, which is rebuilt.
"""

from __future__ import annotations

import weakref
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterator
from functools import partial
from itertools import islice
from typing import Any, NamedTuple

from raftkv.byte_text import byte_order

__all__ = ["Change", "CompactedError", "Image", "KeyValue", "MVCCStore", "Row", "as_key_value", "checked_row",
           "key_value_of"]


class KeyValue(NamedTuple):
    value: Any
    create_revision: int
    mod_revision: int
    version: int  # number of writes since the key was (re)created; 1 after the first
    lease: int = 0  # the lease the key is attached to (0: none)


Row = tuple[Any, int, int, int, int]  # a KeyValue's fields, as the store keeps them (above)
Version = tuple[int, Row | None]  # (revision of the change, what the key held from then; None: deleted)
as_key_value: Callable[[Row], KeyValue] = partial(tuple.__new__, KeyValue)
MOD_REVISION = KeyValue._fields.index("mod_revision")  # where a Row holds it


def key_value_of(row: Row | None) -> KeyValue | None:
    return None if row is None else as_key_value(row)


def checked_row(fields: Any) -> Row:
    """A Row of a KeyValue's fields read from elsewhere (a snapshot); ValueError if too few or many."""
    if len(fields) != len(KeyValue._fields):
        raise ValueError(f"a key's value has {len(fields)} fields, not {len(KeyValue._fields)}")
    return tuple(fields)


class Change(NamedTuple):
    """One key's change at one revision, as a watch delivers it."""

    revision: int
    key: str
    kv: KeyValue | None  # None: deleted
    prev: KeyValue | None


class CompactedError(ValueError):
    """A read, range or watch asked for a revision whose history was compacted."""

    def __init__(self, revision: int, compacted: int) -> None:
        super().__init__(f"revision {revision} is compacted: the compacted revision is {compacted} (reads at it or "
                         f"later, watches from {compacted + 1} on)")
        self.revision, self.compacted = revision, compacted


class MVCCStore:
    def __init__(self) -> None:
        self._current: dict[str, Row] = {}
        self._past: dict[str, list[Version]] = {}  # keys with more than one retained version
        self._changes: list[tuple[int, str]] = []
        self.compacted = 0
        # Told of every change as it is made, as Change's fields but rows for KeyValues: a Change
        # is built only if wanted (most changes have no watcher, and a tuple per write costs
        # every replica's apply).
        self.listener: Callable[[int, str, Row | None, Row | None], None] | None = None
        # Sorted index of every key with a retained version (the current ones and the deleted ones
        # still in history), brought up to date lazily: puts of new keys are frequent and ranges rare.
        self._sorted_keys: list[str] = []
        self._all_ascii = True  # then code point order is byte order, and sorting needs no key
        self._index_added: set[str] = set()
        self._index_removed: set[str] = set()
        self._arrivals, self._past_arrivals = _Arrivals(self._current), _Arrivals(self._past)
        self._images: list[weakref.ref[Image]] = []  # the open images, each saving what changes

    # ---- changes ------------------------------------------------------------------------------

    def put(self, key: str, row: Row) -> None:
        """`row`: what the key holds from now, KeyValue's fields in a plain tuple."""
        cur = self._record(key, row[MOD_REVISION], row)
        self._current[key] = row
        if cur is None:
            self._arrivals.arrived(key)

    def delete(self, key: str, revision: int) -> None:
        self._record(key, revision, None)
        del self._current[key]

    def _record(self, key: str, revision: int, row: Row | None) -> Row | None:
        """Records the change of `key` and returns what it held before (None: nothing)."""
        versions = self._past.get(key)
        cur = self._current.get(key)
        if self._images:
            self._before_change(key, cur, versions)
        if versions is None:
            if cur is not None:
                self._past[key] = [(cur[MOD_REVISION], cur), (revision, row)]
                self._past_arrivals.arrived(key)
            elif key in self._past or row is None:
                raise AssertionError(f"deleting {key!r}, which holds nothing")
            else:
                self._index(key)
        else:
            versions.append((revision, row))
        self._changes.append((revision, key))
        if self.listener is not None:
            self.listener(revision, key, row, cur)
        return cur

    def _before_change(self, key: str, cur: Row | None, versions: list[Version] | None) -> None:
        for ref in self._images:
            image = ref()
            if image is not None:
                image.keep(key, cur, versions)

    def compact(self, revision: int) -> int:
        """Forget history at or below `revision`; returns how many versions were dropped."""
        assert revision >= self.compacted, (revision, self.compacted)
        upto = bisect_right(self._changes, (revision, _MAX_KEY))
        dropped = 0
        for key in dict.fromkeys(k for _, k in self._changes[:upto]):
            versions = self._past.get(key)
            if versions is None:
                continue
            if self._images:
                self._before_change(key, self._current.get(key), versions)
            keep_from = _last_at(versions, revision)  # the key's state at `revision`
            if versions[keep_from][1] is None:  # deleted by then: nothing left to read
                keep_from += 1
            dropped += keep_from
            # A new list, never trimmed in place: a snapshot frozen earlier still reads the old one.
            kept = versions[keep_from:]
            if not kept:
                del self._past[key]
                self._unindex(key)
            elif len(kept) == 1 and kept[0][1] is self._current.get(key):
                del self._past[key]  # one version left, the current one
            else:
                self._past[key] = kept
        del self._changes[:upto]
        self.compacted = revision
        return dropped

    def compaction_step(self, target: int, changes: int) -> int:
        """How far toward `target` one compaction should go: to the newest revision that forgets
        at most `changes` changes, or the oldest retained revision whole if it alone holds more.
        Compaction takes a step per change it forgets, on every replica in the same turn."""
        if len(self._changes) <= changes:
            return target
        return min(target, max(self._changes[changes][0] - 1, self._changes[0][0]))

    # ---- reads --------------------------------------------------------------------------------

    def get(self, key: str) -> KeyValue | None:
        return key_value_of(self._current.get(key))

    def get_at(self, key: str, revision: int) -> KeyValue | None:
        self._check(revision)
        return key_value_of(self._row_at(key, revision))

    def _row_at(self, key: str, revision: int) -> Row | None:
        versions = self._past.get(key)
        if versions is None:
            cur = self._current.get(key)
            return cur if cur is not None and cur[MOD_REVISION] <= revision else None
        at = _last_at(versions, revision)
        return versions[at][1] if at >= 0 else None

    def history(self, key: str) -> list[tuple[int, KeyValue | None]]:
        """Every retained version of `key`, oldest first."""
        return [(rev, key_value_of(row)) for rev, row in self._versions(key)]

    def _versions(self, key: str) -> list[Version]:
        versions = self._past.get(key)
        if versions is not None:
            return versions
        cur = self._current.get(key)
        return [(cur[MOD_REVISION], cur)] if cur is not None else []

    def range(self, prefix: str = "", limit: int | None = None, start: str = "", end: str | None = None,
              revision: int | None = None) -> tuple[list[tuple[str, KeyValue]], bool]:
        """Keys starting with `prefix`, from `start` (inclusive) to `end` (exclusive), in the order
        of their bytes (byte_text.byte_order, etcd's), as they were at `revision` (None: now); at
        most `limit`, and whether more matched."""
        if revision is not None:
            self._check(revision)
        keys = self._sorted()
        items: list[tuple[str, KeyValue]] = []
        prefix, end = byte_order(prefix), None if end is None else byte_order(end)
        key_order = None if self._all_ascii else byte_order  # an ASCII key is its own byte order
        i, n = bisect_left(keys, max(prefix, byte_order(start)), key=key_order), len(keys)
        while i < n and (ordered := keys[i] if key_order is None else key_order(keys[i])).startswith(prefix) \
                and (end is None or ordered < end):
            row = self._current.get(keys[i]) if revision is None else self._row_at(keys[i], revision)
            if row is not None:
                if limit is not None and len(items) >= limit:
                    return items, True
                items.append((keys[i], as_key_value(row)))
            i += 1
        return items, False

    def recently_changed(self, limit: int, look_back: int) -> list[str]:
        """Up to `limit` keys that hold a value now, the one changed last first, from the newest
        `look_back` retained changes (a bound: one key written over and over fills them all)."""
        assert limit >= 0 and look_back >= 0, (limit, look_back)
        found: dict[str, None] = {}
        current, changes = self._current, self._changes
        for i in range(len(changes) - 1, max(len(changes) - look_back, 0) - 1, -1):
            key = changes[i][1]
            if len(found) == limit:
                break
            if key not in found and key in current:
                found[key] = None
        return list(found)

    def changes_since(self, revision: int) -> Iterator[Change]:
        """Every change after `revision`, in revision order (what a watch from revision + 1 replays)."""
        self._check(revision)
        for rev, key in self._changes[bisect_right(self._changes, (revision, _MAX_KEY)):]:
            yield self.change_at(rev, key)

    def change_at(self, revision: int, key: str) -> Change:
        versions = self._versions(key)
        at = _last_at(versions, revision)
        assert at >= 0 and versions[at][0] == revision, (key, revision)
        prev = versions[at - 1][1] if at > 0 else None
        return Change(revision, key, key_value_of(versions[at][1]), key_value_of(prev))

    def _check(self, revision: int) -> None:
        if revision < self.compacted:
            raise CompactedError(revision, self.compacted)

    def __len__(self) -> int:
        return len(self._current)

    def current(self) -> dict[str, Row]:
        return self._current

    # ---- the sorted index ---------------------------------------------------------------------

    def _index(self, key: str) -> None:
        self._all_ascii = self._all_ascii and key.isascii()
        if key in self._index_removed:
            self._index_removed.discard(key)  # still in _sorted_keys
        else:
            self._index_added.add(key)

    def _unindex(self, key: str) -> None:
        if key in self._index_added:
            self._index_added.discard(key)  # never reached _sorted_keys
        else:
            self._index_removed.add(key)

    def _sorted(self) -> list[str]:
        if self._index_removed:
            removed = self._index_removed
            self._sorted_keys = [k for k in self._sorted_keys if k not in removed]
            self._index_removed = set()
        if self._index_added:
            # Timsort merges the sorted run with the sorted additions in linear time.
            order = None if self._all_ascii else byte_order
            self._sorted_keys += sorted(self._index_added, key=order)
            self._sorted_keys.sort(key=order)
            self._index_added = set()
        return self._sorted_keys

    # ---- snapshots ----------------------------------------------------------------------------

    def frozen(self) -> Image:
        """The store as it is now, to be read while it goes on changing (`Image`)."""
        return Image(self)

    @classmethod
    def restored(cls, current: dict[str, Row], past: dict[str, list[Version]], compacted: int) -> MVCCStore:
        store = cls()
        store._current, store._past, store.compacted = current, past, compacted
        keys = set(current) | set(past)
        store._all_ascii = all(key.isascii() for key in keys)
        store._sorted_keys = sorted(keys, key=None if store._all_ascii else byte_order)
        changes = [(row[MOD_REVISION], k) for k, row in current.items()
                   if k not in past and row[MOD_REVISION] > compacted]
        changes += [(rev, k) for k, versions in past.items() for rev, _ in versions if rev > compacted]
        store._changes = sorted(changes)
        store._arrivals, store._past_arrivals = _Arrivals(current), _Arrivals(past)
        return store


def _last_at(versions: list[Version], revision: int) -> int:
    """The index of the last version at or below `revision` (-1: none). A version (r, kv) sorts
    below the 1-tuple (revision + 1,) exactly when r <= revision, so the search compares revisions
    in C and never reaches a KeyValue; bisect's key= would call Python at every probe, and
    compaction searches every key it changed (bench/PROFILE.md)."""
    return bisect_left(versions, (revision + 1,)) - 1


_MAX_KEY = "\U0010ffff"  # sorts after every key: (revision, _MAX_KEY) bounds a revision's changes
_ARRIVALS_SLACK = 1_000  # stale or repeated arrivals allowed beyond the keys, so a small dict is not remade often
_UNCHANGED: Any = object()  # an image's saved state of a key not changed since it was taken


class _Arrivals:
    """A dict's keys in the order they entered it (the module's docstring); `arrived(key)` after
    each entry."""

    def __init__(self, of: dict[str, Any]) -> None:
        self.of, self.keys = of, list(of)

    def arrived(self, key: str) -> None:
        self.keys.append(key)
        if len(self.keys) > 2 * len(self.of) + _ARRIVALS_SLACK:
            self.keys = list(self.of)  # a new list: an open image goes on reading the old one


class Image:
    """The store as it was when taken, read while the store changes (the module's docstring):
    `count` current keys, each among `arrived_keys()`, with `row(key)`; `past_count` keys with a
    history, each among `arrived_past_keys()`, with `versions(key)`. The arrivals hold keys the
    image does not (None from those) and keys twice. `close()` once read: until then every change
    of the store saves its key's state in it (an image dropped unread closes as it dies)."""

    def __init__(self, store: MVCCStore) -> None:
        self._saved: dict[str, Row | None] = {}
        self._saved_past: dict[str, _Frozen | None] = {}
        self.count, self.past_count, self.compacted = len(store._current), len(store._past), store.compacted
        self._current, self._past = store._current, store._past
        self._keys, self._past_keys = store._arrivals.keys, store._past_arrivals.keys
        self._arrived, self._past_arrived = len(self._keys), len(self._past_keys)
        self._open = store._images
        self._ref: weakref.ref[Image] | None = weakref.ref(self, self._open.remove)
        self._open.append(self._ref)

    def keep(self, key: str, row: Row | None, versions: list[Version] | None) -> None:
        """`key` is about to change: what it holds now is what the image holds, unless it changed before."""
        self._saved.setdefault(key, row)
        if key not in self._saved_past:
            self._saved_past[key] = None if versions is None else _Frozen(versions, len(versions))

    def row(self, key: str) -> Row | None:
        """What `key` held when the image was taken (None: nothing)."""
        saved = self._saved.get(key, _UNCHANGED)
        return self._current.get(key) if saved is _UNCHANGED else saved

    def versions(self, key: str) -> list[Version] | None:
        """`key`'s retained versions when the image was taken (None: one at most, in `row`). A list
        unchanged since is the store's own: the store only appends to one, and saves it first."""
        saved = self._saved_past.get(key, _UNCHANGED)
        if saved is _UNCHANGED:
            return self._past.get(key)
        return None if saved is None else saved.fixed()

    def arrived_keys(self) -> Iterator[str]:
        """Every key held, with others (above), in no order. Filtered where each key's row is read
        anyway: a call per key here held the loop longer for every run of keys a snapshot sorts."""
        return islice(self._keys, self._arrived)

    def arrived_past_keys(self) -> Iterator[str]:
        """Every key with a history, with others (above), in no order."""
        return islice(self._past_keys, self._past_arrived)

    def close(self) -> None:
        if self._ref is not None:
            self._open.remove(self._ref)
            self._ref = None  # and with it the callback that would remove it as the image dies


class _Frozen(NamedTuple):
    """A version list as it was when a snapshot was frozen: its first `length` elements."""

    versions: list[Version]
    length: int

    def fixed(self) -> list[Version]:
        return self.versions[: self.length]
