"""TLS on the client API, and the credentials a client sends.

Real node processes on loopback, under a throwaway CA (raftkv/lab_ca.py): a 3-node cluster serving
its client API over HTTPS (with mutual TLS between peers) answers the CLI that trusts the CA, and
no one else (plain HTTP, a client without the CA); its member table, and so every URL it hands
out, says https; a follower relays to the leader over HTTPS. A 2-node cluster that requires
client certificates refuses a client without one and relays with its own. `raftkv up --tls`
starts a lab that answers over https, on the HTTP port and on etcd's gRPC port, whose dashboard
reaches its nodes, and where a node added at run time joins over https. `raftkv chaos` attaches
to a TLS cluster.

Server-side authentication is not these tests' subject: a small aiohttp server here records the
`Authorization` header each request carries, and answers 401 when it carries none.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import pty
import re
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from aiohttp import web
from cluster import LocalCluster, http

from raftkv.client import Access, Client, Credentials
from raftkv.lab_ca import LabCertificates, make_lab_certificates
from raftkv.node.config import ConfigError, Member, NodeConfig
from raftkv.supervisor import free_ports, port_is_free
from raftkv.tls import ClientTLS

pytestmark = pytest.mark.timeout(90)

RAFTKV = [sys.executable, "-m", "raftkv"]


def raftkv(*args: str, env: dict[str, str] | None = None, timeout_s: float = 30) -> subprocess.CompletedProcess:
    """The CLI as a person runs it, with no RAFTKV_* settings of the test's environment."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RAFTKV_")}
    return subprocess.run([*RAFTKV, *args], capture_output=True, text=True, timeout=timeout_s, check=False,
                          env={**clean, **(env or {})}, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> LabCertificates:
    return make_lab_certificates(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory: pytest.TempPathFactory, certs: LabCertificates) -> Iterator[LocalCluster]:
    """3 nodes serving client TLS, clients not asked for certificates."""
    c = LocalCluster(tmp_path_factory.mktemp("tls-cluster"), nodes=3, tls=certs).start()
    try:
        c.wait_for_leader(30)
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def mtls_cluster(tmp_path_factory: pytest.TempPathFactory, certs: LabCertificates) -> Iterator[LocalCluster]:
    """2 nodes that require a client certificate the CA signed (--client-tls-ca)."""
    c = LocalCluster(tmp_path_factory.mktemp("mtls-cluster"), nodes=2, tls=certs, require_client_certs=True).start()
    try:
        c.wait_for_leader(30)
        yield c
    finally:
        c.stop()


def follower_of(cluster: LocalCluster) -> tuple[str, str]:
    leader = cluster.wait_for_leader()
    return leader, next(m.id for m in cluster.members if m.id != leader)


# ---------------------------------------------------------------------- configuration ----------------


PEER_TLS = {"tls_ca": Path("peer-ca.pem"), "tls_cert": Path("peer.pem"), "tls_key": Path("peer-key.pem")}


def test_client_tls_config_is_all_or_nothing_and_makes_every_member_url_https(tmp_path: Path) -> None:
    members = {"n1": Member("n1", "127.0.0.1", 3000, 4000), "n2": Member("n2", "127.0.0.1", 3001, 4001)}
    with pytest.raises(ConfigError, match="both client_tls_cert and client_tls_key"):
        NodeConfig("n1", tmp_path, members, client_tls_cert=Path("node.pem"))
    with pytest.raises(ConfigError, match=r"client_tls_ca .* needs client_tls_cert"):
        NodeConfig("n1", tmp_path, members, client_tls_ca=Path("ca.pem"))
    plain = NodeConfig("n1", tmp_path, members, listen_etcd="127.0.0.1:2379")
    assert plain.members["n2"].url == "http://127.0.0.1:3001" and plain.etcd_endpoint == "http://127.0.0.1:2379"
    tls = NodeConfig("n1", tmp_path, members, listen_etcd="127.0.0.1:2379", client_tls_cert=Path("node.pem"),
                     client_tls_key=Path("node-key.pem"), **PEER_TLS)
    assert [m.url for m in tls.members.values()] == ["https://127.0.0.1:3000", "https://127.0.0.1:3001"]
    assert tls.etcd_endpoint == "https://127.0.0.1:2379"
    # Calling another member, it trusts --client-tls-ca, else the peer CA, and presents its own certificate.
    assert tls.member_access.tls == ClientTLS(Path("peer-ca.pem"), Path("node.pem"), Path("node-key.pem"))
    mutual = NodeConfig("n1", tmp_path, members, client_tls_cert=Path("node.pem"), client_tls_key=Path("node-key.pem"),
                        client_tls_ca=Path("client-ca.pem"), **PEER_TLS)
    assert mutual.member_access.tls.ca == Path("client-ca.pem")


def test_a_node_with_an_unusable_certificate_says_so_and_starts_nothing(tmp_path: Path) -> None:
    not_pem = tmp_path / "node.pem"
    not_pem.write_text("not a certificate\n")
    http_port, raft_port = free_ports(2)
    out = raftkv("node", "--id", "n1", "--cluster", f"n1@127.0.0.1:{http_port}:{raft_port}", "--data-dir",
                 str(tmp_path / "n1"), "--client-tls-cert", str(not_pem), "--client-tls-key", str(not_pem))
    assert out.returncode != 0
    assert f"cannot use certificate {not_pem}" in out.stderr and "n1 not started" in out.stderr, out.stderr
    assert not (tmp_path / "n1").exists()


# ---------------------------------------------------------------------- a TLS cluster -----------------


def test_the_cli_reads_and_writes_over_https_with_the_ca(tls_cluster: LocalCluster, certs: LabCertificates) -> None:
    endpoints = ",".join(tls_cluster.urls.values())
    _, follower = follower_of(tls_cluster)
    put = raftkv("put", "--endpoints", tls_cluster.url(follower), "--cacert", str(certs.ca), "greeting", "hello")
    assert put.returncode == 0 and put.stdout.startswith("put greeting at revision"), put.stderr
    got = raftkv("get", "--endpoints", endpoints, "greeting", env={"RAFTKV_CACERT": str(certs.ca)})
    assert (got.returncode, got.stdout) == (0, "hello\n"), got.stderr


def test_plain_http_to_the_tls_port_gets_no_answer(tls_cluster: LocalCluster) -> None:
    plain = tls_cluster.url("node1").replace("https://", "http://")
    with pytest.raises((ConnectionError, urllib.error.URLError, OSError)):
        http("GET", plain + "/health", timeout=5)
    out = raftkv("get", "--endpoints", plain, "greeting")
    assert out.returncode == 1 and "no endpoint answered" in out.stderr, out.stderr


def test_a_client_that_does_not_trust_the_ca_is_refused(tls_cluster: LocalCluster) -> None:
    with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
        http("GET", tls_cluster.url("node1") + "/health", context=ssl.create_default_context())
    out = raftkv("get", "--endpoints", tls_cluster.url("node1"), "greeting")
    assert out.returncode == 1 and "CERTIFICATE_VERIFY_FAILED" in out.stderr, out.stderr


def test_members_leader_and_peers_are_https_and_a_follower_relays_over_https(
        tls_cluster: LocalCluster, certs: LabCertificates) -> None:
    leader, follower = follower_of(tls_cluster)
    url = tls_cluster.url(follower)
    status, view = http("GET", url + "/members", context=tls_cluster.context)
    assert status == 200 and view["leader"] == leader
    assert {m["id"]: m["clientURL"] for m in view["members"]} == tls_cluster.urls
    state = http("GET", url + "/raft-state", context=tls_cluster.context)[1]
    assert state["url"] == url and all(p["url"].startswith("https://") for p in state["peers"]), state["peers"]
    # A lease keep-alive on a follower is relayed to the leader's client API (node/forwarding.py).
    status, lease = http("POST", url + "/leases", {"ttl": 30}, context=tls_cluster.context)
    assert status == 200, lease
    status, kept = http("POST", f"{url}/leases/{lease['id']}/keepalive", context=tls_cluster.context)
    assert status == 200 and kept["ttl"] == 30, kept
    listed = raftkv("member", "list", "--endpoints", url, "--cacert", str(certs.ca))
    assert listed.returncode == 0 and tls_cluster.url(leader) in listed.stdout, listed.stderr


def test_a_new_member_of_a_tls_cluster_is_https(tls_cluster: LocalCluster) -> None:
    _, follower = follower_of(tls_cluster)
    url, ctx = tls_cluster.url(follower), tls_cluster.context
    http_port, raft_port = free_ports(2)
    status, answer = http("POST", url + "/members", {"name": "plain", "clientURL": f"http://127.0.0.1:{http_port}",
                                                     "peerURL": f"127.0.0.1:{raft_port}"}, context=ctx)
    assert status == 400 and "https://" in answer["error"], answer
    status, answer = http("POST", url + "/members", {"name": "secure", "clientURL": f"https://127.0.0.1:{http_port}",
                                                     "peerURL": f"127.0.0.1:{raft_port}"}, context=ctx)
    assert status == 200 and answer["member"]["clientURL"] == f"https://127.0.0.1:{http_port}", answer
    status, removed = http("DELETE", f"{url}/members/{answer['member']['id']}", context=ctx)  # it never starts
    assert status == 200, removed


def test_chaos_attaches_to_a_tls_cluster(tls_cluster: LocalCluster, certs: LabCertificates, tmp_path: Path) -> None:
    tls_cluster.wait_for_leader()
    out = tmp_path / "chaos-out"
    run = raftkv("chaos", "--endpoints", ",".join(tls_cluster.urls.values()), "--cacert", str(certs.ca),
                 "--duration", "3", "--nemesis", "partition", "--workload", "kv,watch", "--clients", "2",
                 "--out", str(out), "--no-progress", timeout_s=120)
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    report = json.loads((out / "run.json").read_text())
    assert report["judgement"]["outcomes"]["all"]["ok"] > 0 and report["meta"]["network"] == "attached"
    assert "access" not in report["meta"]  # what reaches the cluster is never written down


# ---------------------------------------------------------------------- client certificates ----------


def test_a_cluster_requiring_client_certificates(mtls_cluster: LocalCluster, certs: LabCertificates) -> None:
    _, follower = follower_of(mtls_cluster)
    url = mtls_cluster.url(follower)
    without = raftkv("put", "--endpoints", url, "--cacert", str(certs.ca), "k", "v")
    # TLS 1.3 may refuse the missing certificate only after the client sent its request, which the
    # client then cannot tell from an answer lost after sending.
    assert without.returncode == 1 and re.search("no endpoint answered|no answer", without.stderr), without.stderr
    assert http("GET", url + "/kv/k", context=mtls_cluster.context)[0] == 404
    with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
        http("GET", url + "/health", context=ssl.create_default_context(cafile=certs.ca))
    with_cert = raftkv("put", "--endpoints", url, "k", "v", env={
        "RAFTKV_CACERT": str(certs.ca), "RAFTKV_CERT": str(certs.client_cert), "RAFTKV_KEY": str(certs.client_key)})
    assert with_cert.returncode == 0, with_cert.stderr
    # The follower presents its own certificate when it relays to the leader.
    status, lease = http("POST", url + "/leases", {"ttl": 30}, context=mtls_cluster.context)
    assert status == 200, lease
    status, kept = http("POST", f"{url}/leases/{lease['id']}/keepalive", context=mtls_cluster.context)
    assert status == 200 and kept["ttl"] == 30, kept


# ---------------------------------------------------------------------- raftkv up --tls --------------


def test_up_with_tls_serves_https_with_its_own_ca(tmp_path: Path) -> None:
    import grpc

    from raftkv.etcd.pb import rpc_pb2, rpc_pb2_grpc

    http_port, raft_port, etcd_port, dashboard_port = _port_runs(2, 4)
    data = tmp_path / "data"
    proc = subprocess.Popen([*RAFTKV, "up", "--tls", "--nodes", "2", "--http-port", str(http_port), "--raft-port",
                             str(raft_port), "--etcd-port", str(etcd_port), "--dashboard-port", str(dashboard_port),
                             "--data-dir", str(data)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(line.rstrip("\n") for line in proc.stdout or ()),
                              daemon=True)
    reader.start()
    try:
        _wait(lambda: any(line.startswith("dashboard: ") for line in lines), f"up's URLs in {lines}")
        ca = data / "tls" / "ca.pem"
        assert f"node1: https://127.0.0.1:{http_port}" in "\n".join(lines)
        assert f"curl --cacert {ca} https://127.0.0.1:{http_port}/health" in "\n".join(lines), lines
        context = ssl.create_default_context(cafile=ca)
        _wait(lambda: _status(f"https://127.0.0.1:{http_port}/health", context) == 200, "a healthy node1")
        assert http("PUT", f"https://127.0.0.1:{http_port + 1}/kv/k", {"value": 1}, context=context)[0] == 200
        # etcd's gRPC API is served over TLS with the same certificate.
        with grpc.secure_channel(f"127.0.0.1:{etcd_port}", grpc.ssl_channel_credentials(ca.read_bytes())) as channel:
            status = rpc_pb2_grpc.MaintenanceStub(channel).Status(rpc_pb2.StatusRequest(), timeout=10)
            assert status.leader != 0
        # The dashboard reaches both nodes over https.
        def dashboard_reaches_all() -> bool:
            state = http("GET", f"http://127.0.0.1:{dashboard_port}/api/state", timeout=2)[1]
            return all(r["reach"] == "ok" for r in state["reach"].values())
        _wait(dashboard_reaches_all, "the dashboard connected to every node")
        # A node added at run time joins over https (its join request trusts the lab's CA) and is https.
        added = raftkv("lab", "add", "--learner", "--dashboard", f"http://127.0.0.1:{dashboard_port}", timeout_s=60)
        assert added.returncode == 0 and "node3 joined as a learner" in added.stdout, added.stdout + added.stderr
        url = re.search(r"(https://127\.0\.0\.1:\d+)", added.stdout)
        assert url, added.stdout
        _wait(lambda: _status(url.group(1) + "/health", context) == 200, "node3 healthy over https")
        members = http("GET", f"https://127.0.0.1:{http_port}/members", context=context)[1]["members"]
        assert {m["name"]: m["clientURL"] for m in members}["node3"] == url.group(1)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        reader.join(5)


def _port_runs(nodes: int, runs: int) -> list[int]:
    """The first ports of `runs` runs of `nodes` consecutive free loopback ports, none overlapping."""
    while True:
        firsts = free_ports(runs)
        wanted = [p for first in firsts for p in range(first, first + nodes)]
        if len(set(wanted)) == len(wanted) and max(wanted) <= 65535 and all(port_is_free(p) for p in wanted):
            return firsts


def _status(url: str, context: ssl.SSLContext) -> int | None:
    try:
        return http("GET", url, timeout=2, context=context)[0]
    except OSError:
        return None


def _wait(condition: Callable[[], object], what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except (OSError, KeyError, TypeError):
            pass
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout_s} s: {what}")


# ---------------------------------------------------------------------- credentials ------------------


class HeaderRecorder:
    """A tiny real HTTP server that records each request's Authorization header: /kv/{key} answers
    a value, /watch one Server-Sent Event, /events opens a WebSocket, and each answers 401 to a
    request without the header."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str | None]] = []
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def __aenter__(self) -> HeaderRecorder:
        app = web.Application()
        app.router.add_route("*", "/kv/{key}", self._kv)
        app.router.add_get("/watch", self._watch)
        app.router.add_get("/events", self._events)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    def _check(self, request: web.Request) -> web.Response | None:
        header = request.headers.get("Authorization")
        self.seen.append((request.path, header))
        if header is None:
            return web.json_response({"error": "no credentials"}, status=401)
        return None

    async def _kv(self, request: web.Request) -> web.StreamResponse:
        return self._check(request) or web.json_response({"value": "v", "revision": 1})

    async def _watch(self, request: web.Request) -> web.StreamResponse:
        refused = self._check(request)
        if refused is not None:
            return refused
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b'data: {"revision": 7, "events": []}\n\n')
        return response


    async def _events(self, request: web.Request) -> web.StreamResponse:
        refused = self._check(request)
        if refused is not None:
            return refused
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.close()
        return ws


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


async def run_cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RAFTKV_")}
    proc = await asyncio.create_subprocess_exec(*RAFTKV, *args, env={**clean, **(env or {})},
                                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                                stderr=subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_the_cli_sends_basic_or_bearer_credentials_and_says_when_they_are_needed() -> None:
    async with HeaderRecorder() as server:
        assert (await run_cli("get", "--endpoints", server.url, "k", "--user", "alice:s3cret:x"))[0] == 0
        assert (await run_cli("get", "--endpoints", server.url, "k", env={
            "RAFTKV_USER": "bob", "RAFTKV_PASSWORD": "pw"}))[0] == 0
        assert (await run_cli("get", "--endpoints", server.url, "k", "--token", "t0k3n"))[0] == 0
        assert [header for _, header in server.seen] == [basic("alice", "s3cret:x"), basic("bob", "pw"), "Bearer t0k3n"]

        status, _, err = await run_cli("get", "--endpoints", server.url, "k")
        assert status == 1 and "authentication required: pass --user or --token" in err, err
        status, _, err = await run_cli("get", "--endpoints", server.url, "k", "--user", "carol")
        assert status == 2 and "no password" in err and "RAFTKV_PASSWORD" in err, err


async def test_a_password_left_out_is_asked_for_on_a_terminal_without_echo() -> None:
    async with HeaderRecorder() as server:
        clean = {k: v for k, v in os.environ.items() if not k.startswith("RAFTKV_")}
        pid, terminal = pty.fork()  # the child's controlling terminal, where getpass reads
        if pid == 0:
            os.execve(sys.executable, [*RAFTKV, "get", "--endpoints", server.url, "k", "--user", "carol"], clean)

        def converse() -> tuple[str, int]:
            screen = b""
            while b"password for carol" not in screen:
                screen += os.read(terminal, 1024)
            os.write(terminal, b"wonder\n")
            with contextlib.suppress(OSError):  # EIO once the child has gone
                while chunk := os.read(terminal, 1024):
                    screen += chunk
            return screen.decode(errors="replace"), os.waitpid(pid, 0)[1]

        screen, status = await asyncio.wait_for(asyncio.to_thread(converse), 30)
        os.close(terminal)
    assert os.waitstatus_to_exitcode(status) == 0, screen
    assert "wonder" not in screen  # not echoed
    assert server.seen == [("/kv/k", basic("carol", "wonder"))]


async def test_a_client_sends_its_credentials_on_requests_and_streams() -> None:
    async with HeaderRecorder() as server:
        async with Client([server.url], access=Access(credentials=Credentials(token="abc"))) as client:
            assert (await client.get("k"))[0] == 200
            watch = client.watch(prefix="p/")
            assert (await asyncio.wait_for(anext(watch), 10))["revision"] == 7
            await watch.aclose()
        assert server.seen == [("/kv/k", "Bearer abc"), ("/watch", "Bearer abc")]
        # Sessions of one's own (the dashboard's event streams are WebSockets) send them too.
        async with Access(credentials=Credentials("dan", "pw")).session() as session, \
                session.ws_connect(server.url + "/events"):
            pass
    assert server.seen[-1] == ("/events", basic("dan", "pw"))


def test_credentials_are_one_kind_and_hide_their_secrets() -> None:
    with pytest.raises(ValueError):
        Credentials("u", "p", token="t")
    with pytest.raises(ValueError):
        Credentials()
    assert "s3cret" not in repr(Credentials("u", "s3cret")) and "t0k" not in repr(Credentials(token="t0k"))
    assert re.fullmatch(r"Basic [A-Za-z0-9+/=]+", Credentials("u", "p").authorization())

