"""Disks that fail under a real node process, which must stop rather than carry on without its log,
and come back with every write it acknowledged once the disk is whole again:

- a disk that fills up: the WAL's write fails with ENOSPC (a 4 MiB tmpfs);
- a disk whose fsync fails (PostgreSQL's fsync lesson): ext4 on a loop device whose backing file
  sits on a small tmpfs, a thin-provisioned volume that runs out of blocks. ext4 accepts the
  writes into the page cache; writing them back fails in the block layer, and fdatasync reports
  EIO (the journal aborts, the filesystem turns read-only). This kernel has no device-mapper (no
  dm-error or dm-flakey target), so the failing device is this one; the error reaches the node the
  same way, through the real fdatasync of a real process.

Needs root to mount filesystems and attach loop devices; CI and these machines run the tests as
root."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cluster import http, wait_healthy

from raftkv.supervisor import free_ports

pytestmark = [pytest.mark.timeout(120),
              pytest.mark.skipif(os.geteuid() != 0, reason="mounting a size-limited tmpfs needs root")]

VALUE = "x" * 100_000


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], check=True, timeout=10)
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True, timeout=10)


def start_node(data_dir: Path, ports: tuple[int, int], log_path: Path) -> subprocess.Popen:
    with open(log_path, "ab") as log:
        return subprocess.Popen([sys.executable, "-m", "raftkv", "node", "--id", "n1", "--cluster",
                                 f"n1@127.0.0.1:{ports[0]}:{ports[1]}", "--data-dir", str(data_dir)],
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def test_a_full_disk_stops_the_node_and_it_recovers_every_acknowledged_write_when_space_returns(
        small_disk: Path, tmp_path: Path) -> None:
    ports = free_ports(2)
    url, log_path = f"http://127.0.0.1:{ports[0]}", tmp_path / "node.log"
    node = start_node(small_disk / "n1", ports, log_path)
    try:
        wait_healthy(url)
        acknowledged = []
        for i in range(100):  # 10 MB into 4 MB
            try:
                status, _ = http("PUT", f"{url}/kv/k{i}", {"value": VALUE}, timeout=10)
            except OSError:
                break  # the node went away mid-request: an unknown outcome
            if status != 200:
                assert status in (503, 504), status  # never a 200 for a write that did not reach the disk
                break
            acknowledged.append(f"k{i}")
        assert 10 < len(acknowledged) < 100, len(acknowledged)
        assert node.wait(30) != 0
        log = log_path.read_text()
        assert "No space left on device" in log and "refusing further writes" in log and ".wal" in log, log[-2000:]
    finally:
        if node.poll() is None:
            node.kill()
            node.wait()

    subprocess.run(["mount", "-o", "remount,size=32m", str(small_disk)], check=True, timeout=10)
    node = start_node(small_disk / "n1", ports, log_path)
    try:
        wait_healthy(url)
        for key in acknowledged:
            status, body = http("GET", f"{url}/kv/{key}")
            assert status == 200 and body["value"] == VALUE, (key, status)
        assert http("PUT", f"{url}/kv/after", {"value": 1})[0] == 200
    finally:
        node.terminate()
        node.wait(10)


@pytest.fixture
def thin_disk(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """An ext4 filesystem of 256 MiB on a loop device backed by a sparse file on a 64 MiB tmpfs:
    (where the filesystem is mounted, where its backing tmpfs is). Shrinking the tmpfs leaves the
    filesystem believing it has room its device no longer has."""
    if not (shutil.which("losetup") and shutil.which("mkfs.ext4") and shutil.which("e2fsck")):
        pytest.skip("needs losetup, mkfs.ext4 and e2fsck")
    backing, mount = tmp_path / "backing", tmp_path / "disk"
    backing.mkdir()
    mount.mkdir()
    image = backing / "image"
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(backing)], check=True, timeout=10)
    loop = None
    try:
        with open(image, "wb") as f:
            f.truncate(256 << 20)
        # Inode tables and journal made now, not lazily in the background after mounting.
        subprocess.run(["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", str(image)],
                       check=True, timeout=60)
        loop = subprocess.run(["losetup", "-f", "--show", str(image)], check=True, capture_output=True, text=True,
                              timeout=10).stdout.strip()
        subprocess.run(["mount", "-o", "noinit_itable", loop, str(mount)], check=True, timeout=10)
        try:
            yield mount, backing
        finally:
            subprocess.run(["umount", str(mount)], check=False, timeout=30)
    finally:
        if loop:
            subprocess.run(["losetup", "-d", loop], check=False, timeout=10)
        subprocess.run(["umount", str(backing)], check=True, timeout=10)


def test_a_failing_fsync_stops_the_node_and_it_comes_back_with_every_acknowledged_write(
        thin_disk: tuple[Path, Path], tmp_path: Path) -> None:
    mount, backing = thin_disk
    ports = free_ports(2)
    url, log_path = f"http://127.0.0.1:{ports[0]}", tmp_path / "node.log"
    node = start_node(mount / "n1", ports, log_path)
    try:
        wait_healthy(url)
        st = os.statvfs(backing)  # the device keeps 3 MiB more than its blocks hold now
        used = (st.f_blocks - st.f_bfree) * st.f_frsize
        subprocess.run(["mount", "-o", f"remount,size={used + (3 << 20)}", str(backing)], check=True, timeout=10)
        acknowledged = []
        for i in range(100):  # 10 MB onto 3 MB of blocks
            try:
                status, _ = http("PUT", f"{url}/kv/k{i}", {"value": VALUE}, timeout=10)
            except OSError:
                break  # the node went away mid-request: an unknown outcome
            if status != 200:
                assert status in (503, 504), status  # never a 200 for a write whose fsync failed
                break
            acknowledged.append(f"k{i}")
        assert 5 < len(acknowledged) < 100, len(acknowledged)
        assert node.wait(30) != 0, "the node stopped"
        log = log_path.read_text()
        assert "refusing further writes" in log and ".wal" in log and "[Errno 5] Input/output error" in log, log[-3000:]
    finally:
        if node.poll() is None:
            node.kill()
            node.wait()

    # The disk made whole: more blocks under it, the filesystem checked (its journal replayed).
    subprocess.run(["umount", str(mount)], check=True, timeout=30)
    subprocess.run(["mount", "-o", "remount,size=128m", str(backing)], check=True, timeout=10)
    loop = subprocess.run(["losetup", "-j", str(backing / "image")], check=True, capture_output=True, text=True,
                          timeout=10).stdout.split(":")[0]
    fsck = subprocess.run(["e2fsck", "-fy", loop], capture_output=True, text=True, timeout=120, check=False)
    assert fsck.returncode in (0, 1), fsck.stdout + fsck.stderr  # 1: errors corrected
    subprocess.run(["mount", loop, str(mount)], check=True, timeout=10)
    node = start_node(mount / "n1", ports, log_path)
    try:
        started = time.monotonic()
        wait_healthy(url)
        for key in acknowledged:
            status, body = http("GET", f"{url}/kv/{key}")
            assert status == 200 and body["value"] == VALUE, (key, status, time.monotonic() - started)
        assert http("PUT", f"{url}/kv/after", {"value": 1})[0] == 200
    finally:
        node.terminate()
        node.wait(10)
