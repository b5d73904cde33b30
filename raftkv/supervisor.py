"""Starts, kills, pauses and restarts local node processes: what `raftkv up` and the tests use.

Each node is a real OS process (`python -m raftkv node ...`), so "crash" is a real SIGKILL, "pause"
a real SIGSTOP and "restart" a new process that recovers from its data directory. Each node's
output goes to `<data_dir>/<id>/node.log`.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from raftkv.node.config import Member


@dataclass
class NodeProcess:
    member: Member
    data_dir: Path
    proc: subprocess.Popen | None = None
    paused: bool = False
    restarts: int = 0
    extra_args: list[str] = field(default_factory=list)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def describe(self) -> dict:
        return {
            "id": self.member.id,
            "url": self.member.url,
            "pid": self.proc.pid if self.running and self.proc else None,
            "running": self.running,
            "paused": self.paused and self.running,
            "exitCode": self.proc.returncode if self.proc is not None and not self.running else None,
            "restarts": self.restarts,
        }


def free_ports(count: int) -> list[int]:
    """Loopback ports nothing listens on right now (the OS picks them; a small race remains until used)."""
    socks = [socket.socket() for _ in range(count)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def loopback_members(count: int) -> list[Member]:
    """`count` members on 127.0.0.1 on ports free right now (tests, benchmarks, the chaos runner)."""
    ports = free_ports(2 * count)
    return [Member(f"node{i + 1}", "127.0.0.1", ports[2 * i], ports[2 * i + 1]) for i in range(count)]


def local_members(count: int, host: str = "127.0.0.1", http_base: int = 3000, raft_base: int = 4000) -> list[Member]:
    return [Member(f"node{i + 1}", host, http_base + i, raft_base + i) for i in range(count)]


class Supervisor:
    def __init__(self, members: list[Member], data_dir: Path, node_args: list[str] | None = None) -> None:
        self.cluster = ",".join(f"{m.id}@{m.host}:{m.http_port}:{m.raft_port}" for m in members)
        self.nodes = {m.id: NodeProcess(m, Path(data_dir) / m.id, extra_args=list(node_args or [])) for m in members}

    def start(self, node_id: str) -> None:
        node = self.nodes[node_id]
        if node.running:
            return
        node.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(node.data_dir / "node.log", "ab")  # noqa: SIM115 - handed to the child process
        cmd = [
            sys.executable,
            "-m",
            "raftkv",
            "node",
            "--id",
            node_id,
            "--cluster",
            self.cluster,
            "--data-dir",
            str(node.data_dir),
            *node.extra_args,
        ]
        node.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        node.paused = False

    def start_all(self) -> None:
        for node_id in self.nodes:
            self.start(node_id)

    def kill(self, node_id: str) -> None:
        """kill -9: no chance to flush anything."""
        node = self.nodes[node_id]
        if node.running and node.proc:
            node.proc.send_signal(signal.SIGKILL)
            node.proc.wait()
        node.paused = False

    def restart(self, node_id: str) -> None:
        self.kill(node_id)
        self.nodes[node_id].restarts += 1
        self.start(node_id)

    def pause(self, node_id: str) -> None:
        node = self.nodes[node_id]
        if node.running and node.proc and not node.paused:
            os.kill(node.proc.pid, signal.SIGSTOP)
            node.paused = True

    def resume(self, node_id: str) -> None:
        node = self.nodes[node_id]
        if node.running and node.proc and node.paused:
            os.kill(node.proc.pid, signal.SIGCONT)
        node.paused = False

    def stop_all(self, timeout_s: float = 10.0) -> None:
        """Graceful: SIGTERM (resuming paused nodes first), then SIGKILL whatever is left."""
        for node_id, node in self.nodes.items():
            self.resume(node_id)
            if node.running and node.proc:
                node.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for node in self.nodes.values():
            if node.proc is None:
                continue
            try:
                node.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                node.proc.kill()
                node.proc.wait()

    def describe(self) -> list[dict]:
        return [n.describe() for n in self.nodes.values()]
