"""The clusters a chaos run can act on: started on loopback, started in a netns lab, or attached.

Theory of operation
-------------------
The nemesis needs two things from a cluster: the client URL of each node, and (for kill, pause
and member) the node processes. `ChaosCluster` is that narrow interface, its nodes known by slot:
a name, with its addresses and its data directory `<data>/<name>`. When the member nemesis
removes a member, `retire` stops the slot's process and moves its data directory to
`<data>/removed/<member id>`; `start_joiner` starts the name again on the same addresses with an
empty data directory and `--join`, so the cluster gives it a new id. Three implementations:

* `LocalCluster`: `python -m raftkv node` processes on free loopback ports, through the project's
  `Supervisor` (kill is SIGKILL, pause SIGSTOP, restart recovers from the data directory);
* `NetnsCluster`: the same processes, each started with `ip netns exec <node namespace>` on its
  lab address (`ip netns exec` replaces itself with the program, so the pid is the node's);
* `AttachedCluster`: someone else's nodes, known only by URL: no processes to kill or pause.

With `etcd` (the etcd workload's clients), each slot's node also serves etcd's gRPC API on a port
of its own (`--listen-etcd`), also when the member nemesis starts the slot again as a new member.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import NoReturn, Protocol

from raftkv.chaos.netns import Lab
from raftkv.node.config import Member
from raftkv.supervisor import NodeProcess, Supervisor, free_ports, last_log_line, loopback_members

__all__ = ["AttachedCluster", "ChaosCluster", "LocalCluster", "NetnsCluster"]

NODE_HTTP_PORT = 3000
NODE_RAFT_PORT = 4000
NODE_ETCD_PORT = 2379
STOP_GRACE_S = 3.0  # a removed node gets this long to exit on SIGTERM before kill -9
REMOVED_DIR = "removed"


class ChaosCluster(Protocol):
    urls: dict[str, str]  # node id -> client URL
    can_signal: bool  # kill/pause available

    def start_all(self) -> None: ...
    def kill(self, node_id: str) -> None: ...
    def start(self, node_id: str) -> None: ...
    def pause(self, node_id: str) -> None: ...
    def resume(self, node_id: str) -> None: ...
    def is_down(self, node_id: str) -> bool: ...
    def is_running(self, node_id: str) -> bool: ...
    def retire(self, node_id: str, member_id: str) -> Path: ...
    def start_joiner(self, node_id: str, join_url: str, join_token: str | None) -> None: ...
    def last_words(self, node_id: str) -> str: ...
    def stop(self) -> None: ...
    def log_tail(self, node_id: str, chars: int = 3000) -> str: ...


class _SupervisedCluster:
    can_signal = True

    def __init__(self, supervisor: Supervisor, members: list[Member], data_dir: Path,
                 slot_args: dict[str, list[str]] | None = None) -> None:
        """`slot_args`: arguments of one slot's node besides every node's (its etcd API's address)."""
        self.supervisor = supervisor
        self.members = members
        self.data_dir = data_dir
        self.urls = {m.id: m.url for m in members}
        self.slot_args = slot_args or {}
        for slot, args in self.slot_args.items():
            supervisor.nodes[slot].extra_args += args

    def start_all(self) -> None:
        self.supervisor.start_all()

    def kill(self, node_id: str) -> None:
        self.supervisor.kill(node_id)

    def start(self, node_id: str) -> None:
        self.supervisor.start(node_id)  # it counts the restart

    def pause(self, node_id: str) -> None:
        self.supervisor.pause(node_id)

    def resume(self, node_id: str) -> None:
        self.supervisor.resume(node_id)

    def is_down(self, node_id: str) -> bool:
        node = self.supervisor.nodes[node_id]
        return not node.running or node.paused

    def is_running(self, node_id: str) -> bool:
        return self.supervisor.nodes[node_id].running

    def retire(self, node_id: str, member_id: str) -> Path:
        """A removed member: stop its process (SIGTERM by pid, kill -9 after a grace) and keep its
        data under removed/<member id> (ids are never reused); the slot's directory is then free."""
        self.supervisor.stop(node_id, STOP_GRACE_S)
        node = self.supervisor.nodes[node_id]
        archive = self.data_dir / REMOVED_DIR / member_id
        archive.parent.mkdir(parents=True, exist_ok=True)
        if node.data_dir.exists():
            node.data_dir.rename(archive)
        return archive

    def start_joiner(self, node_id: str, join_url: str, join_token: str | None) -> None:
        """Start the slot's name as a new member: its addresses, an empty data directory, --join
        (with an admin's token when auth is on)."""
        old = self.supervisor.nodes[node_id]
        assert not old.running, f"{node_id} still runs"
        args = [*self.supervisor.node_args, *self.slot_args.get(node_id, [])]
        self.supervisor.nodes[node_id] = NodeProcess(old.member, self.data_dir / node_id, extra_args=args,
                                                     join_url=join_url, join_token=join_token)
        self.supervisor.start(node_id)

    def last_words(self, node_id: str) -> str:
        node = self.supervisor.nodes[node_id]
        return last_log_line(node.data_dir / "node.log") or node.exit_status or "no output"

    def stop(self) -> None:
        self.supervisor.stop_all()

    def log_tail(self, node_id: str, chars: int = 3000) -> str:
        path = self.data_dir / node_id / "node.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""


class LocalCluster(_SupervisedCluster):
    def __init__(self, data_dir: Path, nodes: int = 3, node_args: list[str] | None = None,
                 client_tls: bool = False, etcd: bool = False) -> None:
        """`client_tls`: the nodes serve their client API over TLS (node_args say with what), and
        then etcd's API too."""
        members = loopback_members(nodes, client_tls=client_tls)
        taken = {p for m in members for p in (m.http_port, m.raft_port)}
        etcd_ports = [p for p in free_ports(3 * nodes) if p not in taken][:nodes] if etcd else []
        etcd_args = {m.id: ["--listen-etcd", f"127.0.0.1:{port}"]
                     for m, port in zip(members, etcd_ports, strict=False)}  # (none without etcd)
        super().__init__(Supervisor(members, data_dir, node_args), members, data_dir, etcd_args)


class _NetnsSupervisor(Supervisor):
    """The project's Supervisor, with each node's command run inside its lab namespace."""

    def __init__(self, lab: Lab, members: list[Member], data_dir: Path, node_args: list[str] | None) -> None:
        super().__init__(members, data_dir, node_args)
        self.lab = lab

    def start(self, node_id: str) -> None:
        node = self.nodes[node_id]
        if node.running:
            return
        node.data_dir.mkdir(parents=True, exist_ok=True)
        cmd = [*self.lab.exec_prefix(self.lab.node_ns(node_id)), *self.node_command(node)]
        with open(node.data_dir / "node.log", "ab") as log:
            node.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        node.paused = False


class NetnsCluster(_SupervisedCluster):
    def __init__(self, lab: Lab, data_dir: Path, node_args: list[str] | None = None, etcd: bool = False) -> None:
        members = [Member(n, lab.address(n), NODE_HTTP_PORT, NODE_RAFT_PORT) for n in lab.node_ids]
        etcd_args = {n: ["--listen-etcd", f"{lab.address(n)}:{NODE_ETCD_PORT}"] for n in lab.node_ids} if etcd else {}
        super().__init__(_NetnsSupervisor(lab, members, data_dir, node_args), members, data_dir, etcd_args)
        self.lab = lab


class AttachedCluster:
    """Nodes this run did not start: only their HTTP API can be used (so no kill, pause or member)."""

    can_signal = False

    def __init__(self, urls: dict[str, str]) -> None:
        self.urls = dict(urls)

    def start_all(self) -> None:
        pass

    def _refuse(self, node_id: str, *args: str) -> NoReturn:
        raise RuntimeError("kill, pause and member need the node processes; an attached cluster has none")

    kill = start = pause = resume = retire = start_joiner = _refuse

    def is_down(self, node_id: str) -> bool:
        return False

    def is_running(self, node_id: str) -> bool:
        return True

    def last_words(self, node_id: str) -> str:
        return ""

    def stop(self) -> None:
        pass

    def log_tail(self, node_id: str, chars: int = 3000) -> str:
        return ""
