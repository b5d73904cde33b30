"""raftkv as a networked system: a 3-node cluster of real node processes on free loopback ports.

The nodes run with their defaults (fsync before acknowledging, 20 ms ticks, 200-400 ms election
timeout). Requests are the documented HTTP API: `PUT /kv/{key} {"value": ...}` and the
linearizable `GET /kv/{key}` (ReadIndex); a read of an absent key (404) is a completed read;
`POST /leases/{id}/keepalive` renews a lease (a follower relays it to the leader); a watch is
`GET /watch?prefix=...` (watch_wire.py). With `tls` (`bench/run.py --tls`) the nodes serve their
client API over HTTPS under a throwaway CA (raftkv/lab_ca.py, as `raftkv up --tls`), and every
request of the benchmark goes over it (`access`). With `env` (`--trace-ratio`, trace_ab.py) the
nodes run with the OTEL_* variables that make them export traces (bench/trace_sink.py). With
`etcd_api` each node also serves etcd's v3 gRPC API on a port of its own (`--listen-etcd`), for
the gRPC phase (grpc_load.py).
"""

from __future__ import annotations

import json
import socket
import ssl
from pathlib import Path

from raftkv.client import NO_ACCESS, Access
from raftkv.lab_ca import make_lab_certificates
from raftkv.supervisor import Supervisor, free_ports, loopback_members
from raftkv.tls import ClientTLS

from .procs import http_json, wait_until

JSON_HEADERS = {"Content-Type": "application/json"}


class RaftkvCluster:
    name = "raftkv"

    def __init__(self, base_dir: Path, nodes: int = 3, node_args: list[str] | None = None, tls: bool = False,
                 env: dict[str, str] | None = None, etcd_api: bool = False) -> None:
        """`env`: variables for the node processes (the OTEL_* ones of a traced run: trace_sink.py)."""
        self.members = loopback_members(nodes, client_tls=tls)
        self.access: Access = NO_ACCESS
        self._context: ssl.SSLContext | None = None
        if tls:
            certs = make_lab_certificates(base_dir / "tls")
            node_args = [*(node_args or []), *certs.node_args()]
            self.access = Access(ClientTLS(ca=certs.ca))
            self._context = ssl.create_default_context(cafile=certs.ca)
        self.supervisor = Supervisor(self.members, base_dir, node_args, env=env)
        self.base_dir = base_dir
        self.etcd_targets: dict[str, str] = {}
        if etcd_api:
            ports = free_ports(len(self.members))
            for member, port in zip(self.members, ports, strict=True):
                self.etcd_targets[member.id] = f"127.0.0.1:{port}"
                self.supervisor.nodes[member.id].extra_args += ["--listen-etcd", self.etcd_targets[member.id]]

    def start(self, timeout_s: float = 30.0) -> RaftkvCluster:
        self.supervisor.start_all()
        self.leader(timeout_s)
        # Two nodes elect a leader before the third listens: a load dialling its etcd port then
        # would see its first RPCs refused, and gRPC's reconnect backoff refuse more for seconds.
        for target in self.etcd_targets.values():
            wait_until(f"raftkv etcd API at {target}", lambda t=target: accepts(t), timeout_s)
        return self

    def stop(self) -> None:
        self.supervisor.stop_all()

    def pid(self, node_id: str) -> int:
        proc = self.supervisor.nodes[node_id].proc
        assert proc is not None
        return proc.pid

    def pids(self) -> list[int]:
        return [self.pid(node_id) for node_id, node in self.supervisor.nodes.items() if node.running]

    def url(self, node_id: str) -> str:
        return self.supervisor.nodes[node_id].member.url

    def urls(self) -> list[str]:
        return [n.member.url for n in self.supervisor.nodes.values() if n.running]

    def state(self, node_id: str) -> dict | None:
        status, body = http_json("GET", self.url(node_id) + "/raft-state", timeout_s=1.0, context=self._context)
        return body if status == 200 and isinstance(body, dict) else None

    def _find_leader(self) -> str | None:
        for node_id, proc in self.supervisor.nodes.items():
            if not proc.running:
                continue
            try:
                st = self.state(node_id)
            except OSError:
                continue
            if st and st.get("state") == "leader":
                return node_id
        return None

    def leader(self, timeout_s: float = 10.0) -> str:
        return wait_until("raftkv leader", self._find_leader, timeout_s)

    def leader_url(self) -> str:
        return self.url(self.leader())

    def kill_leader(self) -> str:
        node_id = self.leader()
        self.supervisor.kill(node_id)
        return node_id

    def restart_member(self, node_id: str, timeout_s: float = 30.0) -> None:
        self.supervisor.start(node_id)
        wait_until(f"raftkv {node_id} back", lambda: self.state(node_id), timeout_s)

    def grpc_targets(self) -> list[str]:
        return [self.etcd_targets[node_id] for node_id, node in self.supervisor.nodes.items() if node.running]

    def grpc_leader_target(self) -> str:
        return self.etcd_targets[self.leader()]

    def build_write(self, url: str, key: str, value: str) -> tuple[str, str, bytes, dict]:
        return "PUT", f"{url}/kv/{key}", json.dumps({"value": value}).encode(), JSON_HEADERS

    def build_read(self, url: str, key: str) -> tuple[str, str, bytes, dict]:
        return "GET", f"{url}/kv/{key}", b"", {}

    def build_keepalive(self, url: str, lease_id: str) -> tuple[str, str, bytes, dict]:
        return "POST", f"{url}/leases/{lease_id}/keepalive", b"", {}

    def grant_leases(self, n: int, ttl_s: int) -> list[str]:
        ids = []
        for _ in range(n):
            status, body = http_json("POST", self.leader_url() + "/leases", {"ttl": ttl_s}, timeout_s=5.0,
                                     context=self._context)
            if status != 200 or not isinstance(body, dict) or "id" not in body:
                raise RuntimeError(f"raftkv lease grant: {status} {body}")
            ids.append(str(body["id"]))
        return ids

    def ok(self, op: str, status: int, body: bytes = b"") -> bool:
        return status == 200 or (op == "read" and status == 404)


def accepts(target: str) -> bool:
    """A TCP connection to `target` (host:port) is accepted (OSError if not)."""
    host, port = target.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=1.0):
        return True
