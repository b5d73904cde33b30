"""Key history, compaction and leases in the replicated state machine (raftkv/kv/mvcc.py, leases.py),
fed as a node feeds it: encoded commands at consecutive indexes."""

from __future__ import annotations

import gc
from typing import Any
from unittest import mock

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raftkv.kv import (
    INVALID,
    NOT_FOUND,
    Compact,
    CompactedError,
    Delete,
    KeyValue,
    KVStateMachine,
    LeaseGrant,
    LeaseRevoke,
    Put,
    Txn,
    TxnDelete,
    TxnPut,
    decode,
    encode,
    mvcc,
    state_machine,
)
from raftkv.kv.mvcc import as_key_value


class Replica:
    def __init__(self, sm: KVStateMachine | None = None) -> None:
        self.sm = sm if sm is not None else KVStateMachine()

    def __call__(self, cmd: Any) -> dict[str, Any]:
        return self.sm.apply(self.sm.applied_index + 1, encode(cmd))


@pytest.fixture
def kv() -> Replica:
    return Replica()


def value_at(kv: Replica, key: str, revision: int) -> Any:
    found = kv.sm.store.get_at(key, revision)
    return None if found is None else found.value


def test_a_key_reads_as_it_was_at_every_past_revision(kv: Replica) -> None:
    kv(Put("a", 1))  # rev 1
    kv(Put("b", "x"))  # rev 2
    kv(Put("a", 2))  # rev 3
    kv(Delete("a"))  # rev 4
    kv(Put("a", 3))  # rev 5: a new life, version 1 again
    assert [value_at(kv, "a", r) for r in range(0, 6)] == [None, 1, 1, 2, None, 3]
    assert kv.sm.get("a").version == 1 and kv.sm.get("a").create_revision == 5
    assert [rev for rev, _ in kv.sm.store.history("a")] == [1, 3, 4, 5]
    items, _ = kv.sm.range("", revision=3)
    assert [(k, v.value) for k, v in items] == [("a", 2), ("b", "x")]
    assert [(k, v.value) for k, v in kv.sm.range("", revision=4)[0]] == [("b", "x")]


def test_changes_replay_in_revision_order_with_previous_values(kv: Replica) -> None:
    kv(Put("a", 1))
    kv(Txn((), (TxnPut("a", 2), TxnPut("b", 1)), ()))  # one revision, two keys
    kv(Delete("b"))
    changes = [(c.revision, c.key, c.kv and c.kv.value, c.prev and c.prev.value) for c in kv.sm.store.changes_since(0)]
    assert changes == [(1, "a", 1, None), (2, "a", 2, 1), (2, "b", 1, None), (3, "b", None, 1)]
    assert [c.revision for c in kv.sm.store.changes_since(2)] == [3]


def test_compaction_forgets_what_no_later_read_can_see_and_refuses_reads_below_it(kv: Replica) -> None:
    for i in range(5):
        kv(Put("a", i))  # revs 1-5
    kv(Put("gone", 1))  # 6
    kv(Delete("gone"))  # 7
    kv(Put("b", 1))  # 8
    result = kv(Compact(7))
    assert result["ok"] and result["compacted"] == 7 and result["dropped"] == 6  # a@1..4, gone@6 and its delete
    assert value_at(kv, "a", 7) == 4 and value_at(kv, "gone", 7) is None and value_at(kv, "b", 8) == 1
    with pytest.raises(CompactedError, match="revision 6 is compacted: the compacted revision is 7"):
        kv.sm.store.get_at("a", 6)
    with pytest.raises(CompactedError):
        list(kv.sm.store.changes_since(5))
    assert [c.key for c in kv.sm.store.changes_since(7)] == ["b"]
    assert "gone" not in [k for k, _ in kv.sm.range("", revision=8)[0]]
    assert kv(Compact(3))["dropped"] == 0  # below the compacted revision: nothing to do
    assert kv(Compact(99))["error"] == INVALID  # in the future


def test_a_lease_owns_its_keys_and_its_revocation_deletes_them_in_one_revision(kv: Replica) -> None:
    assert kv(LeaseGrant(7, 10))["ok"]
    assert kv(LeaseGrant(7, 10))["error"] == INVALID  # an id is granted once
    kv(Put("svc/a", "10.0.0.1", lease=7))
    kv(Put("svc/b", "10.0.0.2", lease=7))
    kv(Put("svc/c", "10.0.0.3", lease=7))
    kv(Put("svc/c", "moved", lease=0))  # put without the lease: no longer the lease's
    kv(Put("other", 1))
    assert kv(Put("x", 1, lease=99))["error"] == NOT_FOUND  # no such lease: nothing written
    before = kv.sm.revision
    result = kv(LeaseRevoke(7, expired=True))
    assert result["deleted"] == ["svc/a", "svc/b"] and result["revision"] == before + 1 and result["expired"]
    assert kv.sm.get("svc/a") is None and kv.sm.get("svc/c").value == "moved" and 7 not in kv.sm.leases
    assert {c.key for c in kv.sm.store.changes_since(before)} == {"svc/a", "svc/b"}
    assert kv(LeaseRevoke(7))["error"] == NOT_FOUND


def test_history_compaction_and_leases_survive_a_snapshot(kv: Replica) -> None:
    kv(LeaseGrant(1, 30))
    for i in range(4):
        kv(Put("a", i, lease=1 if i == 3 else 0))
    kv(Delete("a"))
    kv(Put("a", "again"))
    kv(Compact(2))
    kv(Put("b", 1, lease=1))
    restored = KVStateMachine()
    restored.restore(kv.sm.snapshot())
    assert restored == kv.sm and restored.digest() == kv.sm.digest()
    assert restored.store.history("a") == kv.sm.store.history("a") and restored.store.compacted == 2
    assert list(restored.store.changes_since(2)) == list(kv.sm.store.changes_since(2))
    assert restored.leases.leases[1].keys == {"b"}
    assert Replica(restored)(LeaseRevoke(1))["deleted"] == ["b"]


def test_a_snapshot_is_cut_when_asked_for_and_packed_in_parts_that_join_to_one_packing(
        kv: Replica, monkeypatch: pytest.MonkeyPatch) -> None:
    """A node packs a snapshot a part at a time between its loop's other work, while writes go on
    applying: the image is the state when it was asked for, and its parts joined are the bytes of
    packing the whole at once. Keys are sorted a run per part and merged: the image lists them
    in order all the same."""
    monkeypatch.setattr(state_machine, "SNAPSHOT_PART_ROWS", 4)
    monkeypatch.setattr(state_machine, "SORT_RUN_KEYS", 3)
    for i in (7, 2, 9, 0, 4, 8, 1, 6, 3, 5):
        kv(Put(f"k{i}", i))
    for i in range(6):
        kv(Put("hot", i))
        kv(Put(f"k{9 - i}", "again"))
    whole = kv.sm.snapshot()
    parts = kv.sm.snapshot_later()
    kv(Put("later", 1))
    kv(Put("hot", "later"))
    packed = list(parts)
    assert len(packed) > 4 and b"".join(packed) == whole == msgpack.packb(msgpack.unpackb(whole))
    image = msgpack.unpackb(whole)
    assert [row[0] for row in image[3]] == sorted(["hot", *(f"k{i}" for i in range(10))])
    assert [key for key, _ in image[7]] == ["hot", "k4", "k5", "k6", "k7", "k8", "k9"]
    assert packed.count(b"") == 4 + 3  # a sort per run of 3 keys: 11 current, 7 with history
    restored = KVStateMachine()
    restored.restore(b"".join(packed))
    assert restored.get("later") is None and restored.get("hot").value == 5


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["put", "delete", "compact"]), st.sampled_from("abcd"),
                          st.integers(0, 9)), max_size=30), st.lists(st.tuples(
    st.sampled_from(["put", "delete", "compact"]), st.sampled_from("abcde"), st.integers(0, 9)), max_size=30))
def test_a_snapshot_reads_the_store_as_it_was_whatever_changes_while_it_is_packed(
        before: list[tuple[str, str, int]], during: list[tuple[str, str, int]]) -> None:
    """An image copies nothing when taken: the store saves a key's row in it before the key's
    first change after, and its keys are among the first arrivals of the store's list of them (a
    key deleted stays there, and one deleted and put again arrived twice). Whatever changes while
    it is packed, one change per part, the parts join to the snapshot taken at once when it was
    asked for; the list of arrivals is remade from the keys here as soon as it holds stale
    entries, with the image open or not."""

    def change(kv: Replica, op: str, key: str, n: int) -> None:
        if op == "put":
            kv(Put(key, n))
        elif op == "delete" and kv.sm.get(key) is not None:
            kv(Delete(key))
        elif op == "compact" and n <= kv.sm.revision:
            kv(Compact(n))

    with mock.patch.object(mvcc, "_ARRIVALS_SLACK", 0), mock.patch.object(state_machine, "SNAPSHOT_PART_ROWS", 1), \
            mock.patch.object(state_machine, "SORT_RUN_KEYS", 2):
        kv = Replica()
        for op, key, n in before:
            change(kv, op, key, n)
        whole = kv.sm.snapshot()
        changes, packed = iter(during), []
        for part in kv.sm.snapshot_later():
            packed.append(part)
            if (step := next(changes, None)) is not None:
                change(kv, *step)
        assert b"".join(packed) == whole
        assert not kv.sm.store._images  # closed once packed: later changes save nothing
        kv(Put("f", 0))  # a key arrives, then arrives in the history: each list is remade if
        kv(Put("f", 1))  # its stale entries outnumber the keys
        store = kv.sm.store
        assert len(store._arrivals.keys) <= 2 * len(store) and len(store._past_arrivals.keys) <= 2 * len(store._past)


def test_an_image_saves_only_what_changes_after_it_and_closes_when_dropped() -> None:
    """What a snapshot costs when it is cut does not grow with the store: the image saves the
    state of each key changed after it (its row or absence, its versions and how many), once,
    and nothing else; a compaction saves the version lists it replaces. An image closed, or
    dropped unread (a snapshot given up before its first part), no longer costs any change."""
    kv = Replica()
    for i in range(1_000):
        kv(Put(f"k{i}", i))
    kv(Put("k0", "again"))
    image = kv.sm.store.frozen()
    assert image._saved == image._saved_past == {} and (image.count, image.past_count) == (1_000, 1)
    old, history = kv.sm.store.current()["k1"], kv.sm.store.history("k0")
    kv(Put("k1", "x"))
    kv(Put("k1", "y"))
    kv(Delete("k2"))
    kv(Put("new", 0))
    kv(Compact(kv.sm.revision))
    assert set(image._saved) == set(image._saved_past) == {"k0", "k1", "k2", "new"}
    assert image.row("k1") is old and image.row("new") is None and image.row("k3") == kv.sm.store.current()["k3"]
    assert image.versions("k1") is None and [(rev, as_key_value(row)) for rev, row in image.versions("k0")] == history
    assert kv.sm.store.history("k0") == history[1:]  # compacted since: the image kept its list
    assert sorted(image.arrived_keys()) == sorted(f"k{i}" for i in range(1_000))
    image.close()
    kv(Put("k3", "z"))
    assert "k3" not in image._saved and not kv.sm.store._images
    kv.sm.snapshot_later()  # dropped unread
    assert not kv.sm.store._images
    never_closed = kv.sm.store.frozen()
    del never_closed
    assert not kv.sm.store._images


def test_a_snapshots_history_is_each_key_with_its_versions_as_plain_msgpack_arrays(
        kv: Replica, monkeypatch: pytest.MonkeyPatch) -> None:
    """The history is packed from the store's own (revision, KeyValue) tuples, in parts, without
    building a list per version: the bytes must stay those of the documented list form, the form
    digest() compares across replicas."""
    monkeypatch.setattr(state_machine, "SNAPSHOT_PART_ROWS", 1)  # every key a part of its own
    for i in range(3):
        kv(Put("a", {"n": i}))
    kv(Delete("a"))
    kv(Put("b", "x"))
    kv(Put("b", "y"))
    history = msgpack.unpackb(kv.sm.snapshot())[7]  # format 5: its eighth field
    image = kv.sm.store.frozen()
    past = {k: versions for k in image.arrived_past_keys() if (versions := image.versions(k)) is not None}
    as_lists = [[k, [[rev, None if v is None else list(v)] for rev, v in past[k]]] for k in sorted(past)]
    assert history == as_lists and [k for k, _ in history] == ["a", "b"]
    assert msgpack.packb(as_lists) in kv.sm.snapshot()  # byte for byte, as packing the lists gave
    assert history[0][1][-1][1] is None  # the delete
    assert history[0][1][0][1] == [{"n": 0}, 1, 1, 1, 0]


def test_the_garbage_collector_stops_tracking_the_stores_values(kv: Replica) -> None:
    """A full collection walks every tracked object: a node holding a million keys as KeyValues
    (NamedTuples, which the collector never stops tracking) stalled about a second in each. The
    store keeps plain tuples of strings and numbers, which it stops tracking once it has seen
    them, and reads still hand out KeyValues; so does a store restored from a snapshot. A version
    (revision, row) is let go once its row is; a collection may see the version first (it walks
    objects in the order it reached them), so it can take a second."""
    for i in range(3):
        kv(Put(f"k{i}", "v"))
    kv(Put("k0", "w"))
    kv(Delete("k1"))
    restored = KVStateMachine()
    restored.restore(kv.sm.snapshot())
    gc.collect()
    for store in (kv.sm.store, restored.store):
        image = store.frozen()
        versions = [version for key in set(image.arrived_past_keys()) for version in image.versions(key) or ()]
        rows = [row for key in image.arrived_keys() if (row := image.row(key)) is not None]
        assert image.count == len(rows) == 2 and len(versions) == 4
        assert not any(gc.is_tracked(row) for row in rows)
        assert not any(gc.is_tracked(row) for _, row in versions)
    gc.collect()
    for store in (kv.sm.store, restored.store):
        image = store.frozen()
        versions = [version for key in image.arrived_past_keys() for version in image.versions(key) or ()]
        assert not any(gc.is_tracked(version) for version in versions)
        assert type(store.get("k0")) is KeyValue and store.get("k0").value == "w"
        assert [type(found) for _, found in store.history("k1")] == [KeyValue, type(None)]


def test_a_format_3_snapshot_restores_with_no_history_and_no_leases() -> None:
    old = msgpack.packb([3, 4, 4, [["a", 1, 1, 4, 2]], [], [["n1", b"details"]], []])
    sm = KVStateMachine()
    sm.restore(old)
    assert sm.get("a").value == 1 and sm.get("a").lease == 0 and sm.store.compacted == 0 and not sm.leases.leases
    assert sm.members == {"n1": b"details"} and sm.store.get_at("a", 4).version == 2


def test_new_commands_round_trip_through_the_wire_form() -> None:
    for cmd in (Compact(5, "r1"), LeaseGrant(2**40, 60), LeaseRevoke(3, True), Put("k", 1, lease=9),
                Txn((), (TxnDelete("k"),), ())):
        assert decode(encode(cmd)) == cmd
    assert encode(Put("k", 1)) == msgpack.packb([1, "k", 1, None, None, None, None])  # no lease: the old form


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["put", "delete", "compact"]), st.sampled_from("abc"),
                          st.integers(0, 9)), min_size=1, max_size=40))
def test_a_read_at_any_kept_revision_agrees_with_a_replay_of_the_log(ops: list[tuple[str, str, int]]) -> None:
    """Against a model: the state at revision r is what applying the changes up to r gives."""
    kv = Replica()
    states: dict[int, dict[str, int]] = {0: {}}
    for op, key, n in ops:
        current = dict(states[kv.sm.revision])
        if op == "put":
            kv(Put(key, n))
            current[key] = n
        elif op == "delete" and key in current:
            kv(Delete(key))
            del current[key]
        elif op == "compact" and n <= kv.sm.revision:
            kv(Compact(n))
        states[kv.sm.revision] = current
    for revision in range(kv.sm.store.compacted, kv.sm.revision + 1):
        got = {k: v.value for k, v in kv.sm.range("", revision=revision)[0]}
        assert got == states[revision], revision


# Bytes that decode to ASCII, to characters of two, three and four bytes, and to escaped bytes
# (alone, or a lead byte cut short): every way a key's text and byte orders can disagree.
_KEY_BYTES = st.lists(st.sampled_from([b"a", b"z", b"/", b"\xd0\xbf", b"\xd1\x81", b"\xe4\xb8\xad", b"\xee\x80\x80",
                                       b"\xf0\x9f\x98\x80", b"\x80", b"\xd0", b"\xc2", b"\xf5", b"\xff"]),
                      max_size=4).map(b"".join)


@settings(max_examples=300, deadline=None)
@given(keys=st.lists(_KEY_BYTES.filter(bool), min_size=1, max_size=25, unique=True), prefix=_KEY_BYTES,
       start=_KEY_BYTES, end=st.none() | _KEY_BYTES, limit=st.none() | st.integers(1, 5), snapshotted=st.booleans())
def test_a_range_selects_and_orders_keys_by_their_bytes(keys: list[bytes], prefix: bytes, start: bytes,
                                                       end: bytes | None, limit: int | None, snapshotted: bool) -> None:
    """As etcd's: a key is in a range when its bytes are, and ranges come in byte order, whatever
    text the bytes are held as (byte_text: escapes sort among characters by code point, not by byte)."""
    from raftkv.byte_text import as_bytes, as_text

    kv = Replica()
    for key in keys:
        kv(Put(as_text(key), 1))
    if snapshotted:  # the order kept by a replica restored from a snapshot, not grown by writes
        restored = KVStateMachine()
        restored.restore(kv.sm.snapshot())
        kv = Replica(restored)
    expected = sorted(k for k in keys if k.startswith(prefix) and start <= k and (end is None or k < end))
    got, more = kv.sm.range(as_text(prefix), limit, as_text(start), None if end is None else as_text(end))
    assert [as_bytes(k) for k, _ in got] == expected[:limit]
    assert more == (limit is not None and len(expected) > limit)
