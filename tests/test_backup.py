"""Backup and disaster recovery: the file format (raftkv/node/backup.py), GET /snapshot, and
`raftkv snapshot save | restore | status`.

The format reads back as the store it froze, and a file with any one byte flipped, cut short or
lengthened is refused. A restored data directory holds what a node of a new cluster must find
(a self-describing snapshot of the new members, the identity its start-up checks), and a restore
that cannot be done writes nothing. End to end: a backup saved while writers run is one
consistent cut; every node is destroyed; a new cluster restored from the file on new addresses
holds exactly its keys on every node, remembers its request keys and continues its revision.
"""

from __future__ import annotations

import itertools
import random
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer
from cluster import LocalCluster, http

from raftkv.api import create_app
from raftkv.core import ConfChange, ConfChangeKind, Config, ConfState, HardState, RaftCore, SnapshotMeta
from raftkv.kv import Delete, KVStateMachine, Put, Txn, TxnDelete, TxnPut, encode
from raftkv.node import ConfigError, Member, NoLeaderError
from raftkv.node.backup import BackupError, BackupImage, freeze, parse_backup, read_backup, restore_data_dir
from raftkv.node.membership import BOOTSTRAP_TERM, MemberRecord, is_self_describing
from raftkv.node.startup import founding_config
from raftkv.storage import DiskStorage

pytestmark = pytest.mark.timeout(120)

OLD_MEMBERS = {f"node{i}": Member(f"node{i}", "127.0.0.1", 3000 + i, 4000 + i) for i in (1, 2, 3)}
NEW_CLUSTER = "a@127.0.0.1:5001:6001,b@127.0.0.1:5002:6002,c@127.0.0.1:5003:6003"


def sample_store() -> KVStateMachine:
    """A store with everything a backup carries: members (one removed), puts, a delete, a txn, a request key."""
    kv = KVStateMachine()
    index = itertools.count(1)
    for member_id, member in sorted(OLD_MEMBERS.items()):
        kv.apply_membership(next(index), ConfChange(ConfChangeKind.ADD_VOTER, member_id,
                                                    MemberRecord.of(member).encode()))
    kv.apply_noop(next(index))
    for i in range(20):
        kv.apply(next(index), encode(Put(f"k{i:02}", {"n": i, "s": "é" * i})))
    kv.apply(next(index), encode(Delete("k03")))
    kv.apply(next(index), encode(Txn(success=(TxnPut("t", [1, 2]), TxnDelete("k04")))))
    kv.apply(next(index), encode(Put("paid", True, request_id="order-17")))
    kv.apply_membership(next(index), ConfChange(ConfChangeKind.REMOVE, "node3"))
    return kv


def backup_of(kv: KVStateMachine) -> BackupImage:
    cut = freeze(kv, "node1")
    return cut.image(b"".join(cut.parts))


def backup_bytes(kv: KVStateMachine) -> bytes:
    return b"".join(backup_of(kv).chunks())


def raftkv(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "raftkv", *args], capture_output=True, text=True, timeout=60,
                          check=False)


def restore(backup: Path, node_id: str, cluster: str, data_dir: Path) -> subprocess.Popen:
    """`raftkv snapshot restore` started (restores of several members run side by side)."""
    return subprocess.Popen([sys.executable, "-m", "raftkv", "snapshot", "restore", str(backup), "--id", node_id,
                             "--cluster", cluster, "--data-dir", str(data_dir)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


# ---- the file format ---------------------------------------------------------------------------


def test_a_backup_reads_back_as_the_store_it_froze() -> None:
    kv = sample_store()
    image = backup_of(kv)
    raw = b"".join(image.chunks(max_chunk_bytes=7))
    assert len(raw) == image.size()
    back = parse_backup(raw, "backup")
    header = back.header
    assert (header.revision, header.applied_index, header.keys) == (kv.revision, kv.applied_index, len(kv))
    assert header.sha256 == kv.digest(), "the body is the state machine's image: its sha256 is the replicas' digest"
    assert header.members == {m: MemberRecord.of(OLD_MEMBERS[m]) for m in ("node1", "node2")}
    assert header.taken_by == "node1" and header.body_bytes == len(back.body)
    assert back.state_machine() == kv


def test_the_cut_is_taken_when_frozen_not_when_encoded() -> None:
    kv = sample_store()
    revision, digest = kv.revision, kv.digest()
    cut = freeze(kv, "node1")
    kv.apply(kv.applied_index + 1, encode(Put("later", 1)))
    image = cut.image(b"".join(cut.parts))
    assert (image.header.revision, image.header.sha256) == (revision, digest)
    assert image.state_machine().get("later") is None


def test_any_flipped_byte_and_any_wrong_length_is_refused() -> None:
    raw = backup_bytes(sample_store())
    for i in range(len(raw)):
        damaged = bytearray(raw)
        damaged[i] ^= 1 << (i % 8)
        with pytest.raises(BackupError):
            parse_backup(bytes(damaged), "damaged")
    for length in (0, 10, 30, len(raw) // 2, len(raw) - 1):
        with pytest.raises(BackupError):
            parse_backup(raw[:length], "cut")
    with pytest.raises(BackupError, match="truncated or has bytes added"):
        parse_backup(raw + b"\0", "longer")
    body_flip = bytearray(raw)
    body_flip[-5] ^= 0x40
    with pytest.raises(BackupError, match="checksum mismatch"):
        parse_backup(bytes(body_flip), "damaged")


# ---- restore -------------------------------------------------------------------------------------


def test_a_restored_directory_starts_a_new_cluster_of_the_given_members(tmp_path: Path) -> None:
    kv = sample_store()
    backup = tmp_path / "backup.snap"
    backup.write_bytes(backup_bytes(kv))
    header = restore_data_dir(backup, "b", NEW_CLUSTER, tmp_path / "b")
    assert header.revision == kv.revision

    with DiskStorage(tmp_path / "b" / "raft") as storage:
        durable = storage.load()
    assert is_self_describing(durable) and not durable.entries
    assert durable.snapshot.meta == SnapshotMeta(kv.applied_index, BOOTSTRAP_TERM, ConfState(("a", "b", "c")))
    assert durable.hard_state == HardState(BOOTSTRAP_TERM, None, kv.applied_index)
    core = RaftCore(Config("b", voters=()), random.Random(1), durable)
    assert core.conf == ConfState(("a", "b", "c")) and core.log.committed == kv.applied_index

    restored = KVStateMachine()
    restored.restore(durable.snapshot.data)
    assert restored.range() == kv.range() and restored.revision == kv.revision
    assert restored.dedup_stats()["requestKeys"] == 1, "request keys carry over"
    assert {m: MemberRecord.decode(d) for m, d in restored.members.items()} == {
        name: MemberRecord(name, f"http://127.0.0.1:500{n}", "127.0.0.1", 6000 + n)
        for n, name in enumerate("abc", start=1)}
    assert restored.removed_members == set(), "the new cluster's membership history begins at the restore"

    restore_data_dir(backup, "a", NEW_CLUSTER, tmp_path / "a")
    with DiskStorage(tmp_path / "a" / "raft") as storage:
        assert storage.load().snapshot == durable.snapshot, "every member starts from the same state"

    assert founding_config("b", NEW_CLUSTER, tmp_path / "b").node_id == "b"
    with pytest.raises(ConfigError, match="belongs to member b"):
        founding_config("a", NEW_CLUSTER, tmp_path / "b")
    with pytest.raises(ConfigError, match="was made for the cluster"):
        founding_config("b", NEW_CLUSTER.replace("5003", "5004"), tmp_path / "b")


def test_a_restore_that_cannot_be_done_writes_nothing(tmp_path: Path) -> None:
    raw = backup_bytes(sample_store())
    backup, damaged = tmp_path / "backup.snap", tmp_path / "damaged.snap"
    backup.write_bytes(raw)
    damaged.write_bytes(raw[:-1] + bytes([raw[-1] ^ 1]))
    with pytest.raises(BackupError, match="checksum mismatch"):
        restore_data_dir(damaged, "a", NEW_CLUSTER, tmp_path / "a")
    with pytest.raises(ConfigError):
        restore_data_dir(backup, "z", NEW_CLUSTER, tmp_path / "a")
    used = tmp_path / "used"
    used.mkdir()
    (used / "keep").write_text("mine")
    with pytest.raises(BackupError, match="not an empty directory"):
        restore_data_dir(backup, "a", NEW_CLUSTER, used)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["backup.snap", "damaged.snap", "used"]
    assert [p.name for p in used.iterdir()] == ["keep"]

    empty = tmp_path / "empty"
    empty.mkdir()
    restore_data_dir(backup, "a", NEW_CLUSTER, empty)
    assert sorted(p.name for p in empty.iterdir()) == ["MEMBER", "raft"]


# ---- the route -----------------------------------------------------------------------------------


class BackupNode:
    """What GET /snapshot uses of a node: its id, its store and a read barrier."""

    def __init__(self) -> None:
        self.id = "n1"
        self.kv = sample_store()
        self.barriers = 0
        self.barrier_error: Exception | None = None

    def leader_id(self) -> str | None:
        return self.id

    async def read_barrier(self) -> None:
        self.barriers += 1
        if self.barrier_error is not None:
            raise self.barrier_error

    def record_request(self, route: str, method: str, status: int, seconds: float) -> None:
        pass


async def test_the_route_sends_a_backup_taken_after_a_read_barrier() -> None:
    node = BackupNode()
    async with TestClient(TestServer(create_app(node))) as client:
        async with client.get("/snapshot") as resp:
            raw = await resp.read()
            assert resp.status == 200 and resp.content_type == "application/octet-stream"
        assert node.barriers == 1
        assert parse_backup(raw, "GET /snapshot").header.sha256 == node.kv.digest()
        async with client.head("/snapshot") as resp:
            assert resp.status == 200 and resp.content_length == len(raw) and await resp.read() == b""
        async with client.get("/snapshot?full=1") as resp:
            assert resp.status == 400
        node.barrier_error = NoLeaderError()
        async with client.get("/snapshot") as resp:
            assert resp.status == 503 and "error" in await resp.json()


# ---- end to end ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Write:
    key: str
    value: int
    status: int
    revision: int | None
    done_at: float


def write_until(stop: threading.Event, url: str, writer: int, log: list[Write]) -> None:
    for i in itertools.count():
        if stop.is_set():
            return
        key = f"w{writer}/{i % 15}"
        try:
            status, body = http("PUT", f"{url}/kv/{key}", {"value": i}, timeout=10)
        except OSError:
            status, body = 0, None
        log.append(Write(key, i, status, body["revision"] if status == 200 else None, time.monotonic()))


def assert_one_cut(kv: KVStateMachine, writes: list[Write], save_started: float) -> None:
    """Every key in the backup is as the cluster had it at the backup's revision."""
    cut = kv.revision
    acked = sorted((w for w in writes if w.status == 200), key=lambda w: w.revision)
    unknown = {w.key for w in writes if w.status != 200}  # may or may not have been applied
    assert all(w.revision <= cut for w in acked if w.done_at < save_started), "an acknowledged write is missing"
    assert any(w.revision > cut for w in acked) and any(w.revision <= cut for w in acked), "no load around the save"
    last = {w.key: w for w in acked if w.revision <= cut}
    for key in {w.key for w in writes} - unknown:
        got = kv.get(key)
        if key in last:
            assert got is not None and (got.value, got.mod_revision) == (last[key].value, last[key].revision), key
        else:
            assert got is None, key


def test_save_under_load_destroy_every_node_restore_a_new_cluster(tmp_path: Path) -> None:
    backup = tmp_path / "backup.snap"
    old = LocalCluster(tmp_path / "old").start()
    try:
        old.wait_for_leader()
        status, keyed = http("PUT", old.url("node1") + "/kv/order-17", {"value": "paid"},
                             headers={"Idempotency-Key": "order-17"})
        assert status == 200, keyed
        writes: list[Write] = []
        stop = threading.Event()
        writers = [threading.Thread(target=write_until, args=(stop, url, n, writes))
                   for n, url in enumerate(old.urls.values())]
        for t in writers:
            t.start()
        try:
            while len(writes) < 150:
                time.sleep(0.02)
            save_started = time.monotonic()
            saved = raftkv("snapshot", "save", str(backup), "--endpoints", old.url("node2"))
            time.sleep(0.3)  # the writers go on past the cut
        finally:
            stop.set()
            for t in writers:
                t.join()
    finally:
        old.stop()
    assert saved.returncode == 0, saved.stderr
    shutil.rmtree(tmp_path / "old")  # every node's data is gone

    image = read_backup(backup)
    kv = image.state_machine()
    cut = kv.revision
    assert f"revision {cut}, {len(kv)} keys" in saved.stdout and image.header.sha256 in saved.stdout, saved.stdout
    assert set(image.header.members) == set(old.urls)
    assert_one_cut(kv, writes, save_started)

    new = LocalCluster(tmp_path / "new")  # new ports: another cluster, not the old one come back
    damaged = tmp_path / "damaged.snap"
    raw = bytearray(backup.read_bytes())
    raw[len(raw) // 2] ^= 0x10
    damaged.write_bytes(raw)
    refused = restore(damaged, "node1", new.spec, tmp_path / "refused")
    restores = [restore(backup, node_id, new.spec, new.node_dir(node_id)) for node_id in new.urls]
    out, err = refused.communicate(timeout=60)
    assert refused.returncode == 1 and "checksum mismatch" in err, (out, err)
    assert not (tmp_path / "refused").exists()
    for proc in restores:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0 and f"revision {cut}" in out, err

    new.start()
    try:
        new.wait_for_leader()
        new.wait_converged()
        expected = {key: (v.value, v.create_revision, v.mod_revision, v.version) for key, v in kv.range()[0]}
        for node_id, url in new.urls.items():
            status, page = http("GET", url + "/kv?limit=10000")
            assert status == 200 and page["revision"] == cut and not page["more"], (node_id, page)
            found = {it["key"]: (it["value"], it["create_revision"], it["mod_revision"], it["version"])
                     for it in page["items"]}
            assert found == expected, node_id

        status, view = http("GET", new.url("node3") + "/members")
        assert {(m["id"], m["clientURL"], m["role"]) for m in view["members"]} == {
            (node_id, url, "voter") for node_id, url in new.urls.items()} and view["removedIDs"] == [], view

        status, replay = http("PUT", new.url("node2") + "/kv/order-17", {"value": "paid"},
                              headers={"Idempotency-Key": "order-17"})
        assert status == 200 and replay["revision"] == keyed["revision"], "a remembered request key is answered once"
        status, fresh = http("PUT", new.url("node3") + "/kv/after-restore", {"value": 1})
        assert status == 200 and fresh["revision"] == cut + 1, fresh
        new.wait_converged()
        digests = {http("GET", url + "/raft-state?digest=true")[1]["kvDigest"] for url in new.urls.values()}
        assert len(digests) == 1

        new.supervisor.kill("node1")  # a restored node recovers from its own directory like any other
        new.supervisor.start("node1")
        new.wait_for_leader()
        status, body = http("GET", new.url("node1") + "/kv/after-restore")
        assert status == 200 and body["value"] == 1 and body["revision"] == cut + 1, body
    finally:
        new.stop()
