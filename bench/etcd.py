"""etcd as a benchmark peer: a 3-member cluster from Debian's `etcd-server`, default settings.

Each member runs on 127.0.0.1 with its own ports and its own data dir under the run's temp dir.
Nothing is tuned: etcd's defaults fsync the WAL before acknowledging, heartbeat 100 ms, election
timeout 1 s. Requests go through etcd's v3 JSON gateway (grpc-gateway), the same HTTP client code
as raftkv's: PUT is `POST /v3/kv/put {"key": b64, "value": b64}`, a linearizable read is
`POST /v3/kv/range {"key": b64}` (serializable=false is etcd's default); a lease keep-alive is
`POST /v3/lease/keepalive {"ID": id}` (the gateway sends the one request of the stream and returns
etcd's answer, which names the TTL only if the lease exists); a watch is `POST /v3/watch`
(watch_wire.py). The gRPC phase (grpc_load.py) speaks gRPC to the same client port.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from pathlib import Path

from raftkv.client import NO_ACCESS
from raftkv.supervisor import free_ports

from .procs import http_json, kill9, stop_pid, wait_until

ETCD_BIN = "etcd"
JSON_HEADERS = {"Content-Type": "application/json"}


def available() -> str | None:
    """None if etcd can be run here, else why not."""
    return None if shutil.which(ETCD_BIN) else "etcd not installed (apt-get install etcd-server)"


def version() -> str:
    out = subprocess.run([ETCD_BIN, "--version"], capture_output=True, text=True, timeout=10).stdout
    return out.splitlines()[0].split()[-1] if out else "?"


def _b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


class EtcdCluster:
    name = "etcd"
    access = NO_ACCESS  # plain HTTP

    def __init__(self, base_dir: Path, members: int = 3) -> None:
        ports = free_ports(2 * members)
        self.names = [f"e{i + 1}" for i in range(members)]
        self.client_ports = dict(zip(self.names, ports[0::2], strict=True))
        self.peer_ports = dict(zip(self.names, ports[1::2], strict=True))
        self.base_dir = base_dir
        self.procs: dict[str, subprocess.Popen] = {}
        self.initial_cluster = ",".join(f"{n}=http://127.0.0.1:{self.peer_ports[n]}" for n in self.names)

    # ---- lifecycle ------------------------------------------------------------------------------

    def start(self, timeout_s: float = 30.0) -> EtcdCluster:
        for n in self.names:
            self._start_member(n, "new")
        wait_until("etcd leader", self._find_leader, timeout_s)
        return self

    def _start_member(self, n: str, state: str) -> None:
        data = self.base_dir / n
        data.mkdir(parents=True, exist_ok=True)
        client = f"http://127.0.0.1:{self.client_ports[n]}"
        peer = f"http://127.0.0.1:{self.peer_ports[n]}"
        cmd = [
            ETCD_BIN,
            "--name", n,
            "--data-dir", str(data / "data"),
            "--listen-client-urls", client,
            "--advertise-client-urls", client,
            "--listen-peer-urls", peer,
            "--initial-advertise-peer-urls", peer,
            "--initial-cluster", self.initial_cluster,
            "--initial-cluster-state", state,
            "--initial-cluster-token", "raftkv-bench",
        ]  # fmt: skip
        with open(data / "etcd.log", "ab") as log:
            self.procs[n] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def stop(self) -> None:
        for proc in self.procs.values():
            stop_pid(proc)

    def pid(self, n: str) -> int:
        return self.procs[n].pid

    def pids(self) -> list[int]:
        return [proc.pid for proc in self.procs.values() if proc.poll() is None]

    # ---- cluster view ---------------------------------------------------------------------------

    def url(self, n: str) -> str:
        return f"http://127.0.0.1:{self.client_ports[n]}"

    def urls(self) -> list[str]:
        return [self.url(n) for n in self.names if self.procs[n].poll() is None]

    def _status(self, n: str) -> dict | None:
        status, body = http_json("POST", self.url(n) + "/v3/maintenance/status", {}, timeout_s=1.0)
        return body if status == 200 and isinstance(body, dict) else None

    def _find_leader(self) -> str | None:
        for n in self.names:
            if self.procs[n].poll() is not None:
                continue
            st = self._status(n)
            if st and st.get("leader") and st["leader"] == st["header"]["member_id"]:
                return n
        return None

    def leader(self, timeout_s: float = 10.0) -> str:
        return wait_until("etcd leader", self._find_leader, timeout_s)

    def leader_url(self) -> str:
        return self.url(self.leader())

    def kill_leader(self) -> str:
        n = self.leader()
        kill9(self.procs[n])
        return n

    def restart_member(self, n: str, timeout_s: float = 30.0) -> None:
        self._start_member(n, "existing")
        wait_until(f"etcd {n} back", lambda: self._status(n), timeout_s)

    def grpc_targets(self) -> list[str]:
        return [f"127.0.0.1:{self.client_ports[n]}" for n in self.names if self.procs[n].poll() is None]

    def grpc_leader_target(self) -> str:
        return f"127.0.0.1:{self.client_ports[self.leader()]}"

    # ---- requests -------------------------------------------------------------------------------

    def build_write(self, url: str, key: str, value: str) -> tuple[str, str, bytes, dict]:
        body = json.dumps({"key": _b64(key), "value": _b64(value)}).encode()
        return "POST", url + "/v3/kv/put", body, JSON_HEADERS

    def build_read(self, url: str, key: str) -> tuple[str, str, bytes, dict]:
        return "POST", url + "/v3/kv/range", json.dumps({"key": _b64(key)}).encode(), JSON_HEADERS

    def build_keepalive(self, url: str, lease_id: str) -> tuple[str, str, bytes, dict]:
        return "POST", url + "/v3/lease/keepalive", json.dumps({"ID": lease_id}).encode(), JSON_HEADERS

    def grant_leases(self, n: int, ttl_s: int) -> list[str]:
        ids = []
        for _ in range(n):
            status, body = http_json("POST", self.leader_url() + "/v3/lease/grant", {"TTL": ttl_s}, timeout_s=5.0)
            if status != 200 or not isinstance(body, dict) or "ID" not in body:
                raise RuntimeError(f"etcd lease grant: {status} {body}")
            ids.append(body["ID"])
        return ids

    def ok(self, op: str, status: int, body: bytes = b"") -> bool:
        # etcd answers a keep-alive of an unknown lease 200 without a TTL
        return status == 200 and (op != "keepalive" or b'"TTL"' in body)
