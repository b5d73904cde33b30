"""Starts, kills, pauses and restarts local node processes: what `raftkv up` and the tests use.

Each node is a real OS process (`python -m raftkv node ...`), so "crash" is a real SIGKILL, "pause"
a real SIGSTOP and "restart" a new process that recovers from its data directory. Each node's
output goes to `<data_dir>/<id>/node.log`.

Every start after a node's first is a restart, whichever path started it (the dashboard, `raftkv
lab`, slow motion, a test), so the count lives here and nowhere else. Whoever made the supervisor
can hear of each exit and restart as one line (`on_event`): `raftkv up` prints them. An exit the
supervisor caused is reported when it reaps the process; one from outside (kill -9 in a shell, a
crash) when `note_exits` next looks, which `watch_exits` does a few times a second.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from raftkv.node.config import Member

EXIT_WATCH_INTERVAL_S = 0.2
LOG_TAIL_BYTES = 4096
LOG_LINE_CHARS = 200


@dataclass
class NodeProcess:
    member: Member
    data_dir: Path
    proc: subprocess.Popen | None = None
    paused: bool = False
    restarts: int = 0
    exit_reported: bool = False  # this proc's exit has been told to on_event
    extra_args: list[str] = field(default_factory=list)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def exit_status(self) -> str | None:
        """How the last process ended, in words ("killed by SIGKILL"); None while running or never started."""
        if self.proc is None or self.running:
            return None
        return describe_exit(self.proc.returncode)

    def describe(self) -> dict:
        return {
            "id": self.member.id,
            "url": self.member.url,
            "pid": self.proc.pid if self.running and self.proc else None,
            "running": self.running,
            "paused": self.paused and self.running,
            "exitCode": self.proc.returncode if self.proc is not None and not self.running else None,
            "exit": self.exit_status,
            "restarts": self.restarts,
        }


def describe_exit(returncode: int) -> str:
    """A process's end in words: "killed by SIGKILL", "status 0"."""
    if returncode >= 0:
        return f"status {returncode}"
    try:
        return f"killed by {signal.Signals(-returncode).name}"
    except ValueError:
        return f"killed by signal {-returncode}"


def last_log_line(path: Path) -> str | None:
    """The last non-empty line of a node's log (its reason, when it stopped itself), shortened."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - LOG_TAIL_BYTES))
            lines = [line.strip() for line in f.read().decode(errors="replace").splitlines()]
    except OSError:
        return None
    line = next((line for line in reversed(lines) if line), None)
    if line is not None and len(line) > LOG_LINE_CHARS:
        line = line[: LOG_LINE_CHARS - 1] + "…"
    return line


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
    def __init__(
        self,
        members: list[Member],
        data_dir: Path,
        node_args: list[str] | None = None,
        on_event: Callable[[str], None] | None = None,
    ) -> None:
        self.cluster = ",".join(f"{m.id}@{m.host}:{m.http_port}:{m.raft_port}" for m in members)
        self.nodes = {m.id: NodeProcess(m, Path(data_dir) / m.id, extra_args=list(node_args or [])) for m in members}
        self._on_event = on_event
        self._report_lock = threading.Lock()  # the watcher and a kill may both see the same exit
        self._watching = threading.Event()

    def start(self, node_id: str) -> None:
        node = self.nodes[node_id]
        if node.running:
            return
        self._note_exit(node)  # an exit nobody reported yet comes before the restart line
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
        restarting = node.proc is not None
        node.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        node.paused = False
        node.exit_reported = False
        if restarting:
            node.restarts += 1
            self._report(f"{node_id} restarted (pid {node.proc.pid}, restarts: {node.restarts})")

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
        self._note_exit(node)

    def stop(self, node_id: str, grace_s: float) -> None:
        """SIGTERM (the node finishes its Ready and closes its WAL), then kill -9 after grace_s."""
        node = self.nodes[node_id]
        self.resume(node_id)
        if node.running and node.proc:
            node.proc.send_signal(signal.SIGTERM)
            try:
                node.proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                self.kill(node_id)
        self._note_exit(node)

    def restart(self, node_id: str) -> None:
        """kill -9 if it runs, then start it again from its data directory."""
        self.kill(node_id)
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
        self._watching.clear()
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
        self.note_exits()

    def describe(self) -> list[dict]:
        return [n.describe() for n in self.nodes.values()]

    # ------------------------------------------------------------------ exits -------------------

    def note_exits(self) -> None:
        """Report every node process that ended since the last look, whoever ended it."""
        for node in self.nodes.values():
            self._note_exit(node)

    def watch_exits(self) -> None:
        """Look for exits a few times a second, in a daemon thread, until stop_all."""
        self._watching.set()

        def watch() -> None:
            while self._watching.is_set():
                self.note_exits()
                time.sleep(EXIT_WATCH_INTERVAL_S)

        threading.Thread(target=watch, name="supervisor-exits", daemon=True).start()

    def _note_exit(self, node: NodeProcess) -> None:
        with self._report_lock:
            if node.proc is None or node.exit_reported or node.running:
                return
            node.exit_reported = True
            line = f"{node.member.id} exited: {node.exit_status}"
            reason = last_log_line(node.data_dir / "node.log") if node.proc.returncode > 0 else None
            if reason:
                line += f" (last line of {node.data_dir / 'node.log'}: {reason})"
            self._report(line)

    def _report(self, line: str) -> None:
        if self._on_event is not None:
            self._on_event(line)
