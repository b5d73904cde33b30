"""Damaged disks on real node processes, as Jepsen's bitflip and truncate nemeses damage them: a
node's WAL or snapshot is damaged while it is down (kill -9), and it starts again.

- Bits flipped in the middle of the WAL, or the WAL cut short (truncated, which a crash never
  does: a torn write keeps a segment's length): the node refuses to start, exits non-zero, and
  says which file and which byte offset on stderr (node.log); it never opens its client port, so
  it serves nothing of the damaged log. The damaged file is left as it was found, and putting the
  clean bytes back brings the node back, all of it.
- The newest snapshot with flipped bits, or cut short: the node falls back on the previous one
  while its WAL still reaches back to it (and says so), else refuses to start naming the file.
- The repair runbook of README's "Running raftkv safely" (remove the member, move its directory
  aside, join it again empty, promote it), followed through the command line while writes go on:
  the node is back with every acknowledged write.

A failing fsync is in test_disk_faults.py (it needs root for a block device).
"""

from __future__ import annotations

import random
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cluster import LocalCluster, Writer, http

pytestmark = pytest.mark.timeout(240)


# ---- helpers -------------------------------------------------------------------------------------


def put(cluster: LocalCluster, key: str, value: object, timeout_s: float = 20.0) -> None:
    """Write through any running node until one acknowledges it (a 503 wrote nothing)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for node_id, node in cluster.supervisor.nodes.items():
            if node.running:
                try:
                    if http("PUT", f"{cluster.url(node_id)}/kv/{key}", {"value": value}, timeout=5)[0] == 200:
                        return
                except OSError:
                    pass
        time.sleep(0.1)
    raise AssertionError(f"nobody acknowledged {key}")


def write_keys(cluster: LocalCluster, prefix: str, count: int) -> dict[str, str]:
    written = {f"{prefix}{i}": f"{prefix}-{i}-" + "v" * 80 for i in range(count)}
    for key, value in written.items():
        put(cluster, key, value)
    return written


def all_there(url: str, written: dict[str, str]) -> None:
    for key, value in written.items():
        status, body = http("GET", f"{url}/kv/{key}?stale=true")
        assert status == 200 and body["value"] == value, (url, key, status, body)


def follower(cluster: LocalCluster) -> str:
    leader = cluster.wait_for_leader()
    return next(n for n in cluster.urls if n != leader)


def wal_segment(cluster: LocalCluster, node_id: str) -> Path:
    return max((cluster.data_dir / node_id / "raft" / "wal").glob("*.wal"))


def records(segment: bytes) -> list[tuple[int, int]]:
    """(start, end) of each record, by the framing alone (u32 length, u32 crc, payload); zeros
    follow the last one, to the length the segment was made."""
    found, offset = [], 0
    while offset + 8 <= len(segment) and (length := int.from_bytes(segment[offset : offset + 4], "little")):
        found.append((offset, offset + 8 + length))
        offset += 8 + length
    return found


def poke(path: Path, changes: dict[int, int]) -> None:
    with open(path, "r+b") as f:
        for offset, byte in changes.items():
            f.seek(offset)
            f.write(bytes([byte]))


def refuses_to_start(cluster: LocalCluster, node_id: str, why: str) -> str:
    """Start the node: it must exit non-zero, saying `why` (a regex) before it ever served."""
    logged = len(cluster.log_text(node_id))
    cluster.supervisor.start(node_id)
    proc = cluster.supervisor.nodes[node_id].proc
    assert proc is not None
    assert proc.wait(timeout=60) != 0
    said = cluster.log_text(node_id)[logged:]
    assert re.search(why, said), said[-3000:]
    assert "Its data directory cannot be trusted" in said, said[-3000:]
    assert "Traceback" not in said, said[-3000:]
    with pytest.raises(OSError):  # nothing ever listened: a refused connection, not an answer
        http("GET", cluster.url(node_id) + "/health", timeout=2)
    return said


def comes_back(cluster: LocalCluster, node_id: str, written: dict[str, str]) -> None:
    cluster.supervisor.start(node_id)
    cluster.wait_for_leader(30)
    cluster.wait_converged(30)
    all_there(cluster.url(node_id), written)


@pytest.fixture(scope="module")
def wal_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    c = LocalCluster(tmp_path_factory.mktemp("wal") / "data", nodes=3).start()
    try:
        c.wait_for_leader(30)
        yield c
    finally:
        c.stop()


# ---- the WAL -------------------------------------------------------------------------------------


def test_bits_flipped_in_the_middle_of_the_wal_stop_the_node_naming_file_and_offset(
        wal_cluster: LocalCluster) -> None:
    cluster = wal_cluster
    written = write_keys(cluster, "flip", 150)
    victim = follower(cluster)
    cluster.wait_converged()
    cluster.supervisor.kill(victim)
    segment = wal_segment(cluster, victim)
    clean = segment.read_bytes()
    spans = records(clean)
    end = spans[-1][1]
    rng = random.Random(20_240_601)
    flips = {p: clean[p] ^ (1 << rng.randrange(8)) for p in sorted(rng.sample(range(end // 3, 2 * end // 3), 3))}
    poke(segment, flips)
    first = next(start for start, stop in spans if start <= min(flips) < stop)
    # Whichever field the first flip hit (length, checksum or payload), that record is named.
    refuses_to_start(cluster, victim, rf"{re.escape(str(segment))}: (record at byte offset {first} fails its checksum|"
                                      rf"damaged at byte offset \d+: the records end at byte offset {first}\b)")
    assert all(segment.read_bytes()[p] == b for p, b in flips.items()), "the damaged file is left as it was"
    poke(segment, {p: clean[p] for p in flips})
    comes_back(cluster, victim, written)


@pytest.mark.parametrize("where", ["at-a-record", "inside-a-record"])
def test_a_wal_cut_short_stops_the_node_naming_file_and_offset(wal_cluster: LocalCluster, where: str) -> None:
    """Cut at a record's start, what is left looks like a WAL that ended there; inside one, like a
    torn last write. Either way acknowledged records are gone, and the segment's length (made
    whole at once) gives it away."""
    cluster = wal_cluster
    written = write_keys(cluster, f"cut-{where}-", 100)
    victim = follower(cluster)
    cluster.wait_converged()
    cluster.supervisor.kill(victim)
    segment = wal_segment(cluster, victim)
    clean = segment.read_bytes()
    spans = records(clean)
    cut = spans[len(spans) // 2][0] + (0 if where == "at-a-record" else 5)
    with open(segment, "r+b") as f:
        f.truncate(cut)
    refuses_to_start(cluster, victim, rf"{re.escape(str(segment))}: cut short at byte offset {cut}: the segment "
                                      rf"was made {len(clean)} bytes long")
    assert segment.stat().st_size == cut, "the damaged file is left as it was"
    with open(segment, "r+b") as f:
        f.seek(cut)
        f.write(clean[cut : spans[-1][1]])
        f.truncate(len(clean))
    comes_back(cluster, victim, written)


# ---- snapshots -----------------------------------------------------------------------------------


def snapshots(cluster: LocalCluster, node_id: str) -> list[Path]:
    """Oldest first (the names are term-index, both fixed-width hex)."""
    return sorted((cluster.data_dir / node_id / "raft" / "snap").glob("*.snap"), key=index_of)


def damage(path: Path, how: str) -> None:
    if how == "bits-flipped":
        raw = path.read_bytes()
        poke(path, {len(raw) // 2: raw[len(raw) // 2] ^ 0x20})
    else:
        with open(path, "r+b") as f:
            f.truncate(path.stat().st_size // 2)


def index_of(path: Path) -> int:
    """A snapshot's index, or the index a WAL segment's first entry was to have, from its name."""
    return int(path.stem.split("-")[1], 16)


def two_snapshots_then_down(cluster: LocalCluster, prefix: str,
                            wal_past_previous: bool = False) -> tuple[str, dict[str, str], Path]:
    """Writes until a follower holds two snapshots (and, if asked, its WAL begins after the older
    one); then kills it. Returns it, what was written, and its newest snapshot (a copy of which
    is kept beside the data directory)."""
    victim = follower(cluster)
    written: dict[str, str] = {}

    def ready() -> bool:
        snaps = snapshots(cluster, victim)
        if len(snaps) < 2 or len(written) < 100:
            return False
        oldest_segment = min((cluster.data_dir / victim / "raft" / "wal").glob("*.wal"))
        return not wal_past_previous or index_of(oldest_segment) > index_of(snaps[-2]) + 1

    deadline = time.monotonic() + 60
    while not ready():
        assert time.monotonic() < deadline, snapshots(cluster, victim)
        written.update(write_keys(cluster, f"{prefix}{len(written)}-", 20))
    cluster.wait_converged()
    cluster.supervisor.kill(victim)
    newest = snapshots(cluster, victim)[-1]
    shutil.copy(newest, cluster.data_dir / "clean.snap")
    return victim, written, newest


@pytest.fixture(scope="module")
def snapshot_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """Snapshots every 40 entries; one 64 MiB WAL segment, never compacted: it reaches back to
    the first entry, so to every snapshot."""
    c = LocalCluster(tmp_path_factory.mktemp("snap") / "data", nodes=3, node_args=["--snapshot-every", "40"]).start()
    try:
        c.wait_for_leader(30)
        yield c
    finally:
        c.stop()


@pytest.mark.parametrize("how", ["bits-flipped", "cut-short"])
def test_a_damaged_newest_snapshot_falls_back_on_the_previous_one_the_wal_reaches(
        snapshot_cluster: LocalCluster, how: str) -> None:
    cluster = snapshot_cluster
    victim, written, newest = two_snapshots_then_down(cluster, f"fall-{how}-")
    previous = snapshots(cluster, victim)[-2]
    damage(newest, how)
    logged = len(cluster.log_text(victim))
    comes_back(cluster, victim, written)
    said = cluster.log_text(victim)[logged:]
    assert f"skipping unreadable {newest}" in said, said[-3000:]
    assert f"fell back to index {index_of(previous)}" in said, said[-3000:]


@pytest.fixture(scope="module")
def compacted_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """Snapshots every 40 entries and 4 KiB WAL segments: each snapshot deletes the segments it
    covers, so the WAL no longer reaches back to the previous snapshot."""
    c = LocalCluster(tmp_path_factory.mktemp("compacted") / "data", nodes=3,
                     node_args=["--snapshot-every", "40", "--wal-segment-bytes", "4096"]).start()
    try:
        c.wait_for_leader(30)
        yield c
    finally:
        c.stop()


@pytest.mark.parametrize("how", ["bits-flipped", "cut-short"])
def test_a_damaged_newest_snapshot_the_wal_no_longer_covers_stops_the_node_naming_it(
        compacted_cluster: LocalCluster, how: str) -> None:
    cluster = compacted_cluster
    victim, written, newest = two_snapshots_then_down(cluster, f"stop-{how}-", wal_past_previous=True)
    damage(newest, how)
    refuses_to_start(cluster, victim, rf"cannot recover: the WAL begins at index \d+ but the newest readable snapshot "
                                      rf"is at \d+: entries \d+\.\.\d+ are nowhere; skipped damaged snapshots: "
                                      rf"\['{re.escape(str(newest))}: ")
    shutil.copy(cluster.data_dir / "clean.snap", newest)
    comes_back(cluster, victim, written)


# ---- the repair runbook --------------------------------------------------------------------------


def raftkv(*args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "raftkv", *args], capture_output=True, text=True, timeout=60,
                         check=False)
    assert out.returncode == 0, (args, out.stdout, out.stderr)
    return out.stdout


def test_the_runbook_brings_a_node_with_a_damaged_wal_back_with_every_acknowledged_write(
        cluster: LocalCluster) -> None:
    leader = cluster.wait_for_leader()
    victim = next(n for n in cluster.urls if n != leader)
    healthy = [u for n, u in cluster.urls.items() if n != victim]
    endpoints = ",".join(healthy)
    writer = Writer(healthy, prefix="w")
    writer.start()
    try:
        time.sleep(1)
        cluster.wait_converged()
        cluster.supervisor.kill(victim)
        segment = wal_segment(cluster, victim)
        spans = records(segment.read_bytes())
        middle = spans[len(spans) // 2][0] + 4  # its checksum
        poke(segment, {middle: segment.read_bytes()[middle] ^ 0x01})
        refuses_to_start(cluster, victim, rf"{re.escape(str(segment))}: record at byte offset {middle - 4} fails")

        # The runbook, as README's "Running raftkv safely" gives it.
        raftkv("member", "remove", victim, "--endpoints", endpoints)
        data_dir = cluster.node_dir(victim)
        data_dir.rename(data_dir.with_name(f"{victim}.damaged"))
        me = next(m for m in cluster.members if m.id == victim)
        with open(cluster.data_dir / f"{victim}.rejoined.log", "wb") as log:
            rejoined = subprocess.Popen(
                [sys.executable, "-m", "raftkv", "node", "--join", healthy[0], "--name", victim,
                 "--advertise-client", me.url, "--advertise-peer", f"{me.host}:{me.raft_port}",
                 "--data-dir", str(data_dir), "--enable-fault-injection"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 60
            while not any(line.split()[1:3] == [victim, "learner"]
                          for line in raftkv("member", "list", "--endpoints", endpoints).splitlines()[1:]):
                assert time.monotonic() < deadline, "it never joined"
                time.sleep(0.5)
            while "promoted" not in (out := subprocess.run(
                    [sys.executable, "-m", "raftkv", "member", "promote", victim, "--endpoints", endpoints],
                    capture_output=True, text=True, timeout=60, check=False)).stdout:
                assert time.monotonic() < deadline, out
                assert "not_caught_up" in out.stdout + out.stderr or "pending" in out.stdout + out.stderr, out
                time.sleep(0.5)
            time.sleep(1)  # writes go on with the node back
            acknowledged = writer.stop()
            listed = raftkv("member", "list", "--endpoints", endpoints)
            assert sum(line.split()[2] == "voter" for line in listed.splitlines()[1:] if line.split()) == 3, listed
            new_id = next(line.split()[0] for line in listed.splitlines() if line.split()[1:2] == [victim])
            assert new_id != victim and new_id.startswith(f"{victim}-"), listed
            status, view = http("GET", f"{me.url}/raft-state")
            assert status == 200 and view["nodeId"] == new_id, view
            deadline = time.monotonic() + 30
            while (http("GET", f"{me.url}/raft-state")[1] or {}).get("lastApplied") != (
                    http("GET", f"{healthy[0]}/raft-state")[1] or {}).get("commitIndex"):
                assert time.monotonic() < deadline, "the rejoined node never caught up"
                time.sleep(0.1)
            for key, value in acknowledged.items():
                status, body = http("GET", f"{me.url}/kv/{key}")
                assert status == 200 and body["value"] == value, (key, status, body)
        finally:
            rejoined.terminate()
            rejoined.wait(15)
    finally:
        writer.stopping.set()
