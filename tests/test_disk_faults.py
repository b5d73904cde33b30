"""A disk that fills up: on a small filesystem a node whose WAL write fails with ENOSPC stops
(refusing further writes, naming the file and the error) rather than carry on without its log, and
once there is space again it restarts with every acknowledged write (a torn last record is cut
off). Needs root to mount a size-limited tmpfs; CI and these machines run the tests as root."""

from __future__ import annotations

import os
import subprocess
import sys
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
