"""Real raftkv clusters on loopback for tests: real processes, real disks, real TCP.

`LocalCluster` wraps the Supervisor with free ports, a temporary data directory and helpers that
wait for what a test needs (a leader, convergence) with bounded timeouts.
"""

from __future__ import annotations

import json
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from raftkv.lab_ca import LabCertificates
from raftkv.supervisor import Supervisor, free_ports, loopback_members


def http(
    method: str, url: str, body: Any = None, timeout: float = 10.0, headers: dict | None = None,
    context: ssl.SSLContext | None = None,
) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json", **(headers or {})}
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=context) as resp:
            raw = resp.read()
            status = resp.status
    except urllib.error.HTTPError as e:
        raw, status = e.read(), e.code
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, raw.decode(errors="replace")


def wait_healthy(url: str, timeout_s: float = 20.0, why: str = "", context: ssl.SSLContext | None = None) -> None:
    """Until the node at `url` answers /health with 200 (it knows a leader)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if http("GET", url + "/health", timeout=1, context=context)[0] == 200:
                return
        except OSError:
            pass
        assert time.monotonic() < deadline, f"{url} not healthy within {timeout_s} s {why}".rstrip()
        time.sleep(0.1)


class LocalCluster:
    def __init__(self, data_dir: Path, nodes: int = 3, node_args: list[str] | None = None,
                 tls: LabCertificates | None = None, require_client_certs: bool = False,
                 env: dict[str, str] | None = None) -> None:
        """`tls`: the nodes serve their client API over TLS with these certificates (and mutual TLS
        between peers); the helpers below trust its CA, and present its client certificate when
        `require_client_certs` has the nodes require one."""
        self.members = loopback_members(nodes, client_tls=tls is not None)
        self.data_dir = data_dir
        self.context: ssl.SSLContext | None = None
        if tls is not None:
            node_args = [*(node_args or []), *tls.node_args(require_client_certs)]
            self.context = ssl.create_default_context(cafile=tls.ca)
            if require_client_certs:
                self.context.load_cert_chain(tls.client_cert, tls.client_key)
        self.supervisor = Supervisor(self.members, data_dir, node_args, env=env)

    def serve_etcd(self) -> dict[str, str]:
        """Before start(): every node also serves etcd's gRPC API, on a free port; {node id: host:port}."""
        endpoints = {}
        for (node_id, node), port in zip(self.supervisor.nodes.items(), free_ports(len(self.supervisor.nodes)),
                                         strict=True):
            node.extra_args += ["--listen-etcd", f"127.0.0.1:{port}"]
            endpoints[node_id] = f"127.0.0.1:{port}"
        return endpoints

    @property
    def urls(self) -> dict[str, str]:
        return {m.id: m.url for m in self.members}

    def url(self, node_id: str) -> str:
        """A node's client URL: one the supervisor runs now (a member added at run time too), or a
        founding member's."""
        node = self.supervisor.nodes.get(node_id)
        return node.member.url if node is not None else self.urls[node_id]

    @property
    def spec(self) -> str:
        """The --cluster its nodes run with (id@host:http_port:raft_port,...)."""
        return self.supervisor.cluster

    def node_dir(self, node_id: str) -> Path:
        """A node's data directory (given before the first start, it is the one the node starts from)."""
        return self.supervisor.nodes[node_id].data_dir

    def start(self) -> LocalCluster:
        self.supervisor.start_all()
        return self

    def stop(self) -> None:
        self.supervisor.stop_all()

    def state(self, node_id: str, timeout: float = 2.0) -> dict | None:
        try:
            status, body = http("GET", self.url(node_id) + "/raft-state", timeout=timeout, context=self.context)
        except OSError:
            return None
        return body if status == 200 else None

    def wait_for_leader(self, timeout: float = 20.0, among: list[str] | None = None) -> str:
        """The leader that every live node in `among` (by default every node the supervisor runs now,
        which a membership change may have replaced) agrees on."""
        among = among or list(self.supervisor.nodes)
        deadline = time.monotonic() + timeout
        last = {}
        while time.monotonic() < deadline:
            last = {n: self.state(n) for n in among if self.supervisor.nodes[n].running}
            leaders = {s["leaderId"] for s in last.values() if s}
            roles = [s for s in last.values() if s and s["state"] == "leader"]
            if len(leaders) == 1 and None not in leaders and len(roles) == 1 and all(last.values()):
                return leaders.pop()
            time.sleep(0.05)
        raise AssertionError(f"no agreed leader within {timeout}s: {last}")

    def wait_converged(self, timeout: float = 20.0) -> dict[str, dict]:
        """Every running node applied the same index as the leader's commit."""
        deadline = time.monotonic() + timeout
        states: dict = {}
        while time.monotonic() < deadline:
            states = {n: self.state(n) for n, p in self.supervisor.nodes.items() if p.running}
            applied = {s["lastApplied"] for s in states.values() if s}
            commits = {s["commitIndex"] for s in states.values() if s}
            if all(states.values()) and len(applied) == 1 and applied == commits:
                return states
            time.sleep(0.05)
        raise AssertionError(
            f"not converged within {timeout}s: "
            f"{ {n: s and (s['commitIndex'], s['lastApplied']) for n, s in states.items()} }"
        )

    def log_text(self, node_id: str) -> str:
        path = self.data_dir / node_id / "node.log"
        return path.read_text(errors="replace") if path.exists() else ""


def module_cluster(data_dir: Path) -> Iterator[LocalCluster]:
    """A 3-node cluster with an agreed leader, for a module's tests to share (a module-scoped
    fixture yields from it); stopped afterwards."""
    c = LocalCluster(data_dir, nodes=3).start()
    try:
        c.wait_for_leader(30)
        yield c
    finally:
        c.stop()


class Writer(threading.Thread):
    """Writes <prefix>0, <prefix>1, ... through the given nodes in turn (the next after each
    request, whatever its answer), keeping what was acknowledged."""

    def __init__(self, urls: list[str], prefix: str = "k") -> None:
        super().__init__(daemon=True)
        self.urls = urls
        self.prefix = prefix
        self.acknowledged: dict[str, int] = {}
        self.stopping = threading.Event()

    def run(self) -> None:
        i = 0
        while not self.stopping.is_set():
            key = f"{self.prefix}{i}"
            try:
                if http("PUT", f"{self.urls[i % len(self.urls)]}/kv/{key}", {"value": i}, timeout=6)[0] == 200:
                    self.acknowledged[key] = i
            except OSError:
                pass
            i += 1
            time.sleep(0.005)

    def stop(self) -> dict[str, int]:
        """Stop writing; what was acknowledged (at least 20 writes, or the run was broken)."""
        self.stopping.set()
        self.join(15)
        assert len(self.acknowledged) >= 20, f"only {len(self.acknowledged)} writes acknowledged"
        return self.acknowledged

