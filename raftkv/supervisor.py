"""Starts, kills, pauses and restarts local node processes: what `raftkv up` and the tests use.

Each node is a real OS process (`python -m raftkv node ...`), so "crash" is a real SIGKILL, "pause"
a real SIGSTOP and "restart" a new process that recovers from its data directory. Each node's
output goes to `<data_dir>/<id>/node.log`.

Every start after a node's first is a restart, whichever path started it (the dashboard, `raftkv
lab`, slow motion, a test), so the count lives here and nowhere else. Whoever made the supervisor
can hear of each exit and restart as one line (`on_event`): `raftkv up` prints them. An exit the
supervisor caused is reported when it reaps the process; one from outside (kill -9 in a shell, a
crash) when `note_exits` next looks, which `watch_exits` does a few times a second.

The node set changes at run time. `add_node` starts a new node that joins the running cluster
(`raftkv node --join <a live member's URL> --name nodeN ...`) on the next consecutive ports, or on
ports the OS picks when those are taken; `retire` stops a node the cluster has removed and forgets
its process. The cluster's side of a change (adding the member, promoting it, removing it) is
asked of the cluster by whoever drives the supervisor (the dashboard: dashboard/membership.py):
this module only runs processes. Both are written down in `<data_dir>/up-members.json`, so the
next `raftkv up` on the same directory starts the nodes that joined and not the ones removed. A
retired node's data directory is kept, never deleted: a removed member cannot rejoin with it
(its id is removed for good), but nothing it held disappears silently.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from raftkv.node.config import MAX_PORT, Member
from raftkv.ports import DEFAULT_ETCD_PORT, Listener, PortUnavailableError, check_listeners

EXIT_WATCH_INTERVAL_S = 0.2
LOG_TAIL_BYTES = 4096
LOG_LINE_CHARS = 200
LEDGER_FILE = "up-members.json"
IDENTITY_FILE = "MEMBER"  # a node's data directory names its member once it started (node/membership.py)
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # also a directory name under data_dir


class NameTakenError(ValueError):
    """A new node's name that a node of the cluster, or a data directory of a member, already has."""


@dataclass
class NodeProcess:
    member: Member
    data_dir: Path
    proc: subprocess.Popen | None = None
    paused: bool = False
    restarts: int = 0
    exit_reported: bool = False  # this proc's exit has been told to on_event
    extra_args: list[str] = field(default_factory=list)
    join_url: str | None = None  # a node added at run time joins the cluster through this member's URL
    etcd_port: int | None = None  # where it serves etcd's API (--listen-etcd), on the supervisor's etcd host
    # An admin's token for that join when the cluster has auth on: in the process's environment
    # (RAFTKV_JOIN_TOKEN), where other users of the machine cannot read it as they can a command line.
    join_token: str | None = field(default=None, repr=False)

    def identity_args(self, founding_cluster: str) -> list[str]:
        """Who the node is on its command line: a founding member, or a member that joins."""
        m = self.member
        if self.join_url is None:
            return ["--id", m.id, "--cluster", founding_cluster]
        return ["--join", self.join_url, "--name", m.id, "--advertise-client", m.url,
                "--advertise-peer", f"{m.host}:{m.raft_port}"]

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
            "joined": self.join_url is not None,
            "dataDir": str(self.data_dir),
            "pid": self.proc.pid if self.running and self.proc else None,
            "running": self.running,
            "paused": self.paused and self.running,
            "exitCode": self.proc.returncode if self.proc is not None and not self.running else None,
            "exit": self.exit_status,
            "restarts": self.restarts,
            "etcdPort": self.etcd_port,
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
    """Loopback ports nothing listens on right now, picked at random from `port_pick_range()`. A
    small race with other callers of this remains, unless each is given a range of its own."""
    low, high = port_pick_range()
    ports: list[int] = []
    while len(ports) < count:
        port = _port_rng.randrange(low, high) if high > low else _os_picked_port()
        if port not in ports and port_is_free(port):
            ports.append(port)
    return ports


_port_rng = random.Random()
_SPARE_ABOVE = 64  # room above a picked port for the consecutive ones some callers take after it
PORT_RANGE_VARIABLE = "RAFTKV_FREE_PORTS"


def port_pick_range() -> tuple[int, int]:
    """Where `free_ports` picks, [low, high): the range $RAFTKV_FREE_PORTS names as "low-high" when
    it is set, so that runs side by side on one machine (the test suite's parallel workers) never
    pick the same port; otherwise from 10000 to the start of the system's ephemeral port range. A
    port the OS hands out itself (an outgoing connection's own port, a bind to port 0) comes from
    that range, so there another process's client socket could take one between the check and a
    node's bind. Either way the top _SPARE_ABOVE ports are left for callers that take the ports
    after a picked one. An empty range (the ephemeral range unknown): the OS picks."""
    if (given := os.environ.get(PORT_RANGE_VARIABLE)) is not None:
        low, _, high = given.partition("-")
        if not (low.isdigit() and high.isdigit() and 1024 <= int(low) < int(high) - _SPARE_ABOVE <= MAX_PORT):
            raise ValueError(f"{PORT_RANGE_VARIABLE}={given!r}: expected low-high between 1024 and {MAX_PORT}, "
                             f"more than {_SPARE_ABOVE} ports wide, e.g. 20000-25000")
        return int(low), int(high) - _SPARE_ABOVE
    try:
        ephemeral_low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0, 0
    return 10000, ephemeral_low - _SPARE_ABOVE


def _os_picked_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_is_free(port: int) -> bool:
    """Whether a loopback socket can bind `port` right now."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def loopback_members(count: int, client_tls: bool = False) -> list[Member]:
    """`count` members on 127.0.0.1 on ports free right now (tests, benchmarks, the chaos runner);
    `client_tls`: their client URLs are https (their nodes are started with client TLS)."""
    ports = free_ports(2 * count)
    return [Member(f"node{i + 1}", "127.0.0.1", ports[2 * i], ports[2 * i + 1], client_tls=client_tls)
            for i in range(count)]


def local_members(count: int, host: str = "127.0.0.1", http_base: int = 3000, raft_base: int = 4000,
                  client_tls: bool = False) -> list[Member]:
    return [Member(f"node{i + 1}", host, http_base + i, raft_base + i, client_tls=client_tls) for i in range(count)]


@dataclass
class Ledger:
    """What changed in an `up`'s node set since it was founded: the nodes that joined (name ->
    ports and join URL) and the names removed. Kept as JSON beside the nodes' data directories."""

    path: Path
    joined: dict[str, dict] = field(default_factory=dict)
    removed: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, data_dir: Path) -> Ledger:
        path = data_dir / LEDGER_FILE
        if not path.exists():
            return cls(path)
        raw = json.loads(path.read_text())
        return cls(path, dict(raw.get("joined", {})), list(raw.get("removed", [])))

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"joined": self.joined, "removed": self.removed}, indent=1))
        os.replace(tmp, self.path)


class Supervisor:
    def __init__(
        self,
        members: list[Member],
        data_dir: Path,
        node_args: list[str] | None = None,
        on_event: Callable[[str], None] | None = None,
        env: dict[str, str] | None = None,
        etcd_ports: dict[str, int] | None = None,
        etcd_host: str | None = None,
    ) -> None:
        """`env`: variables set for every node process, over this process's own (the OTEL_* ones
        of `raftkv up --trace`). `etcd_ports`: the founding members' etcd API ports on `etcd_host`
        (a node keeps its port, whichever others were removed); with an `etcd_host`, a node added
        later serves etcd's API too, on the port after the highest in use (kept in the ledger)."""
        self.env = dict(env or {})
        self.etcd_host = etcd_host
        self.cluster = ",".join(f"{m.id}@{m.host}:{m.http_port}:{m.raft_port}" for m in members)
        self.data_dir = Path(data_dir)
        self.node_args = list(node_args or [])
        self.host = members[0].host
        self.client_tls = members[0].client_tls  # the whole cluster's (node/config.py): joiners' URLs too
        self.nodes = {m.id: NodeProcess(m, self.data_dir / m.id, extra_args=list(self.node_args)) for m in members}
        self._ledger = Ledger.load(self.data_dir)
        for name in self._ledger.removed:
            self.nodes.pop(name, None)
        for name, port in (etcd_ports or {}).items():
            if name in self.nodes:  # (not one removed since)
                self.nodes[name].etcd_port = port
        for name, joined in self._ledger.joined.items():
            self.nodes[name] = self._joiner(name, joined["httpPort"], joined["raftPort"], joined["join"])
            self.nodes[name].etcd_port = joined.get("etcdPort") if etcd_host is not None else None
        self._on_event = on_event
        self._report_lock = threading.Lock()  # the watcher and a kill may both see the same exit
        self._nodes_lock = threading.Lock()  # two adds must not pick the same name or ports
        self._watching = threading.Event()

    def start(self, node_id: str) -> None:
        node = self.nodes[node_id]
        if node.running:
            return
        self._note_exit(node)  # an exit nobody reported yet comes before the restart line
        node.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(node.data_dir / "node.log", "ab")  # noqa: SIM115 - handed to the child process
        cmd = self.node_command(node)
        restarting = node.proc is not None
        env = {**self.env, **({"RAFTKV_JOIN_TOKEN": node.join_token} if node.join_token else {})}
        node.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env={**os.environ, **env} if env else None)
        log.close()
        node.paused = False
        node.exit_reported = False
        if restarting:
            node.restarts += 1
            self._report(f"{node_id} restarted (pid {node.proc.pid}, restarts: {node.restarts})")

    def node_command(self, node: NodeProcess) -> list[str]:
        """The command line of one of this lab's nodes: fault injection on, since a supervised
        cluster is a lab (the dashboard, `raftkv chaos` and the tests break it on purpose)."""
        etcd = ["--listen-etcd", f"{self.etcd_host}:{node.etcd_port}"] if node.etcd_port is not None else []
        return [sys.executable, "-m", "raftkv", "node", *node.identity_args(self.cluster),
                "--data-dir", str(node.data_dir), "--enable-fault-injection", *node.extra_args, *etcd]

    def start_all(self) -> None:
        for node_id in list(self.nodes):
            self.start(node_id)

    def joined(self) -> list[NodeProcess]:
        """The nodes added at run time (by this `up` or an earlier one on the same data directory)."""
        return [n for n in list(self.nodes.values()) if n.join_url is not None]

    # ------------------------------------------------------------------ the node set ------------

    def add_node(self, name: str | None = None, taken: set[str] | frozenset[str] = frozenset(),
                 join_url: str | None = None, extra_args: list[str] | None = None,
                 join_token: str | None = None) -> NodeProcess:
        """Start a new node that joins the running cluster through `join_url` (default: the first
        running node's), with `extra_args` (default: every node's) and `join_token` (an admin's,
        when the cluster has auth on). `name` defaults to the first
        nodeN that is free: not run here, not in `taken` (the cluster's member names), and not a
        data directory that belongs to a member. Its ports are the ones after the highest in use,
        if free. ValueError: a name not usable (NameTakenError: one taken)."""
        with self._nodes_lock:
            name = name or self._free_name(taken)
            self._check_name(name, taken)
            join_url = join_url or next((n.member.url for n in list(self.nodes.values()) if n.running), None)
            if join_url is None:
                raise ValueError("no node is running to join through")
            http_port, raft_port = self._next_ports()
            node = self._joiner(name, http_port, raft_port, join_url)
            if extra_args is not None:
                node.extra_args = list(extra_args)
            node.join_token = join_token
            node.etcd_port = self._next_etcd_port()
            self.nodes[name] = node
            self._ledger.joined[name] = {"httpPort": http_port, "raftPort": raft_port, "join": join_url,
                                         **({"etcdPort": node.etcd_port} if node.etcd_port is not None else {})}
            self._ledger.save()
        self.start(name)
        assert node.proc is not None
        etcd = f", etcd API port {node.etcd_port}" if node.etcd_port is not None else ""  # (its host may be 0.0.0.0)
        self._report(f"{name} added: joining through {join_url} (pid {node.proc.pid}, {node.member.url}{etcd}, "
                     f"data: {node.data_dir})")
        return node

    def retire(self, node_id: str, grace_s: float, why: str = "left the cluster") -> dict:
        """A node the cluster removed (or that could not join): stop its process and forget it.
        Its data directory stays."""
        node = self.nodes[node_id]
        self.stop(node_id, grace_s)
        with self._nodes_lock:
            del self.nodes[node_id]
            self._ledger.joined.pop(node_id, None)
            if node.join_url is None:  # a founding member: the next `up` must not start it again
                self._ledger.removed.append(node_id)
            self._ledger.save()
        self._report(f"{node_id} {why} and was stopped; its data stays in {node.data_dir}")
        return node.describe()

    def _joiner(self, name: str, http_port: int, raft_port: int, join_url: str) -> NodeProcess:
        member = Member(name, self.host, http_port, raft_port, client_tls=self.client_tls)
        return NodeProcess(member, self.data_dir / name, extra_args=list(self.node_args), join_url=join_url)

    def _free_name(self, taken: set[str] | frozenset[str]) -> str:
        n = 1
        while self._name_in_use(f"node{n}", taken):
            n += 1
        return f"node{n}"

    def _name_in_use(self, name: str, taken: set[str] | frozenset[str]) -> bool:
        belongs_to_a_member = (self.data_dir / name / IDENTITY_FILE).exists()
        return name in self.nodes or name in taken or belongs_to_a_member

    def _check_name(self, name: str, taken: set[str] | frozenset[str]) -> None:
        if not NAME_PATTERN.fullmatch(name):
            raise ValueError(f"name {name!r}: 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or "
                             "digit")
        if self._name_in_use(name, taken):
            raise NameTakenError(f"name {name!r} is taken (a node of this cluster, or a data directory of a member "
                             f"that was, in {self.data_dir / name})")

    def _next_ports(self) -> tuple[int, int]:
        """A new node's client and peer ports: the ones after the highest in use (or two the OS picks)."""
        members = [n.member for n in self.nodes.values()]
        http_port, raft_port = self._ports_after([
            Listener(self.host, max(m.http_port for m in members) + 1, "a new node's client port"),
            Listener(self.host, max(m.raft_port for m in members) + 1, "a new node's peer port")])
        return http_port, raft_port

    def _next_etcd_port(self) -> int | None:
        """A new node's etcd API port: the one after the highest in use (or one the OS picks); None
        when this lab serves no etcd API."""
        if self.etcd_host is None:
            return None
        in_use = [n.etcd_port for n in self.nodes.values() if n.etcd_port is not None]
        highest = max(in_use, default=DEFAULT_ETCD_PORT - 1)
        (port,) = self._ports_after([Listener(self.etcd_host, highest + 1, "a new node's etcd API port")])
        return port

    def _ports_after(self, wanted: list[Listener]) -> list[int]:
        """The `wanted` ports when no node has them and nothing listens there; else as many the OS picks."""
        taken = {p for n in self.nodes.values() for p in (n.member.http_port, n.member.raft_port, n.etcd_port)}
        try:
            if any(w.port in taken or w.port > MAX_PORT for w in wanted):
                raise PortUnavailableError("the next ports belong to a node")
            check_listeners(wanted)
        except PortUnavailableError:
            return free_ports(len(wanted))
        return [w.port for w in wanted]

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
        nodes = list(self.nodes.items())
        for node_id, node in nodes:
            self.resume(node_id)
            if node.running and node.proc:
                node.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for _, node in nodes:
            if node.proc is None:
                continue
            try:
                node.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                node.proc.kill()
                node.proc.wait()
        self.note_exits()

    def describe(self) -> list[dict]:
        return [n.describe() for n in list(self.nodes.values())]

    # ------------------------------------------------------------------ exits -------------------

    def note_exits(self) -> None:
        """Report every node process that ended since the last look, whoever ended it."""
        for node in list(self.nodes.values()):  # the node set may change meanwhile
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
