"""A node's client port within bounds, on real node processes (api/connections.py): connections past
the cap are refused with a 503 while the node keeps leading and writes keep committing; a slowloris
client (headers a byte at a time) and a body that never ends are cut off after their timeouts
while other clients' writes keep their latency; idle connections are closed; and a watcher that
never reads (Server-Sent Events), or a WebSocket consumer that stalls, neither slows writes nor
starves other watchers, and is cut off with nothing left queued for it.

The cluster runs with small limits so that each claim takes about a second to show."""

from __future__ import annotations

import base64
import contextlib
import os
import socket
import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cluster import LocalCluster, http

from raftkv import promtext

pytestmark = pytest.mark.timeout(120)

MAX_CONNECTIONS = 16
HEADER_TIMEOUT_S = BODY_TIMEOUT_S = SEND_TIMEOUT_S = 1.0
IDLE_TIMEOUT_S = 2.0
SLACK_S = 1.0  # a timer's lateness on a busy 2-core machine
NODE_ARGS = ["--max-client-connections", str(MAX_CONNECTIONS), "--client-header-timeout", str(HEADER_TIMEOUT_S),
             "--client-body-timeout", str(BODY_TIMEOUT_S), "--client-idle-timeout", str(IDLE_TIMEOUT_S),
             "--client-send-timeout", str(SEND_TIMEOUT_S),
             # what the store and the log keep is small, so what a stalled watcher held would stand out
             "--history-revisions", "50", "--snapshot-every", "200", "--snapshot-retain", "50"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    c = LocalCluster(tmp_path_factory.mktemp("bounds") / "data", nodes=3, node_args=NODE_ARGS).start()
    try:
        c.wait_for_leader(30)
        yield c
    finally:
        c.stop()


def address(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


def metric(url: str, name: str, **labels: str) -> float:
    status, text = http("GET", url + "/metrics")
    assert status == 200, text
    return promtext.value(promtext.parse(text), name, **labels)


def answer_of(sock: socket.socket, timeout_s: float) -> tuple[bytes, float]:
    """Everything the node sends until it closes the connection, and when it closed it."""
    sock.settimeout(timeout_s)
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except ConnectionResetError:
        pass
    return received, time.monotonic()


class Writer(threading.Thread):
    """Writes to one node, one after another, recording each write's status and latency."""

    def __init__(self, url: str, value: object = 1, prefix: str = "w") -> None:
        super().__init__(daemon=True)
        self.url, self.value, self.prefix = url, value, prefix
        self.results: list[tuple[int, float]] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        i = 0
        while not self.stopping.is_set():
            start = time.monotonic()
            status, _ = http("PUT", f"{self.url}/kv/{self.prefix}{i % 20}", {"value": self.value}, timeout=10)
            self.results.append((status, time.monotonic() - start))
            i += 1

    def stop(self) -> list[float]:
        self.stopping.set()
        self.join(15)
        assert self.results and all(status == 200 for status, _ in self.results), self.results
        return [seconds for _, seconds in self.results]


def baseline_latency_s(url: str) -> float:
    latencies = []
    for i in range(20):
        start = time.monotonic()
        assert http("PUT", f"{url}/kv/baseline{i}", {"value": i})[0] == 200
        latencies.append(time.monotonic() - start)
    return statistics.median(latencies)


def test_connections_past_the_cap_are_refused_while_the_node_keeps_leading(cluster: LocalCluster) -> None:
    leader = cluster.wait_for_leader()
    url = cluster.url(leader)
    followers = [u for n, u in cluster.urls.items() if n != leader]
    refused_before = metric(url, "raft_http_connections_refused_total")
    # Connections an earlier test left (a slow client is cut at its timeout) would take slots: wait
    # until only the scrape's own connection is open.
    deadline = time.monotonic() + 3 * IDLE_TIMEOUT_S
    while metric(url, "raft_http_connections") > 1:
        assert time.monotonic() < deadline, "the node kept connections of earlier tests open"
        time.sleep(0.1)

    held = [socket.create_connection(address(url)) for _ in range(MAX_CONNECTIONS)]  # every slot, idle
    opened = time.monotonic()
    time.sleep(0.2)
    for _ in range(5):
        with socket.create_connection(address(url)) as extra:
            extra.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            answer, _ = answer_of(extra, 2.0)
            assert answer.startswith(b"HTTP/1.1 503 ") and b"Retry-After: 1" in answer, answer
            assert b'"reason": "too_many_connections"' in answer, answer
    # The flooded node is the leader: it leads on, and writes through its followers commit.
    for i in range(10):
        status, body = http("PUT", f"{followers[i % 2]}/kv/flood{i}", {"value": i}, timeout=5)
        assert status == 200 and body["node"] == leader, body
    # The flood's connections are idle: each is closed after the idle timeout, freeing its slot.
    for sock in held:
        with sock:
            answer, closed = answer_of(sock, IDLE_TIMEOUT_S + SLACK_S)
            assert answer == b"", answer
            assert IDLE_TIMEOUT_S - 0.3 < closed - opened < IDLE_TIMEOUT_S + SLACK_S
    status, body = http("GET", f"{url}/kv/flood9")
    assert status == 200 and body["value"] == 9, body
    assert metric(url, "raft_http_connections_refused_total") - refused_before == 5


def slowloris(url: str, head: bytes, trickle: bytes, every_s: float) -> tuple[bytes, float]:
    """Send `head` at once, then `trickle` a byte at a time; what the node answered, and how long
    after the first byte it closed the connection."""
    with socket.create_connection(address(url)) as sock:
        start = time.monotonic()
        sock.sendall(head)
        sock.settimeout(every_s)
        received = b""
        for byte in trickle:
            try:
                sock.sendall(bytes([byte]))
                chunk = sock.recv(65536)
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                break
            received += chunk
            if not chunk:
                break
        else:
            raise AssertionError(f"still connected after {time.monotonic() - start:.1f} s")
        rest, closed = answer_of(sock, SLACK_S)
        return received + rest, closed - start


def test_slow_requests_are_cut_off_while_other_writes_keep_their_latency(cluster: LocalCluster) -> None:
    url = cluster.url(cluster.wait_for_leader())
    usual_s = baseline_latency_s(url)
    cut_before = {r: metric(url, "raft_http_connections_cut_total", reason=r)
                  for r in ("header_timeout", "body_timeout")}
    writer = Writer(url)
    writer.start()
    outcomes: dict[str, list[tuple[bytes, float]]] = {"header": [], "body": []}

    def header_a_byte_at_a_time() -> None:
        outcomes["header"].append(slowloris(url, b"", b"PUT /kv/slow HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 400,
                                            every_s=0.05))

    def body_a_byte_at_a_time() -> None:
        head = b'PUT /kv/slow HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{"value": "'
        outcomes["body"].append(slowloris(url, head, b"b" * 400, every_s=0.05))

    clients = [threading.Thread(target=header_a_byte_at_a_time) for _ in range(6)]
    clients += [threading.Thread(target=body_a_byte_at_a_time) for _ in range(3)]
    for client in clients:
        client.start()
    for client in clients:
        client.join(30)
    latencies = writer.stop()

    for kind, timeout_s in (("header", HEADER_TIMEOUT_S), ("body", BODY_TIMEOUT_S)):
        assert len(outcomes[kind]) == (6 if kind == "header" else 3)
        for answer, after_s in outcomes[kind]:
            assert answer.startswith(b"HTTP/1.1 408 "), answer
            assert f'"reason": "{kind}_timeout"'.encode() in answer, answer
            assert timeout_s - 0.1 < after_s < timeout_s + SLACK_S, after_s
        cut = metric(url, "raft_http_connections_cut_total", reason=f"{kind}_timeout") - cut_before[f"{kind}_timeout"]
        assert cut == len(outcomes[kind])
    assert status_of(url, "slow") == 404, "no slow request was ever applied"
    # Normal latency throughout: the slow clients cost the loop nothing but their timers.
    assert len(latencies) >= 10, latencies
    assert statistics.median(latencies) < 3 * usual_s + 0.05, (usual_s, latencies)
    assert max(latencies) < 1.0, latencies


def status_of(url: str, key: str) -> int:
    return http("GET", f"{url}/kv/{key}")[0]


def test_a_keep_alive_connection_is_closed_after_the_idle_timeout(cluster: LocalCluster) -> None:
    url = cluster.url(cluster.wait_for_leader())
    with socket.create_connection(address(url)) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        sock.settimeout(5)
        assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
        answered = time.monotonic()
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")  # kept alive: a second request is served
        assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
        answered = time.monotonic()
        rest, closed = answer_of(sock, IDLE_TIMEOUT_S + SLACK_S)
        assert rest == b"" and IDLE_TIMEOUT_S - 0.3 < closed - answered < IDLE_TIMEOUT_S + SLACK_S


def stalled(url: str, path: str, websocket: bool = False) -> socket.socket:
    """A client that asks for a stream, reads the first bytes of the answer, and never reads again."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # (set before connecting: it sets the window)
    sock.connect(address(url))
    upgrade = (b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: "
               + base64.b64encode(os.urandom(16)) + b"\r\n") if websocket else b""
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n".encode() + upgrade + b"\r\n")
    sock.settimeout(5)
    first = sock.recv(64)
    assert first.startswith(b"HTTP/1.1 101 " if websocket else b"HTTP/1.1 200 "), first
    return sock


class Watcher(threading.Thread):
    """A watcher that reads: the revisions (SSE ids) it receives, in order."""

    def __init__(self, url: str, prefix: str) -> None:
        super().__init__(daemon=True)
        self.sock = socket.create_connection(address(url))
        self.sock.sendall(f"GET /watch?prefix={prefix} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        self.revisions: list[int] = []

    def stop(self) -> None:
        """End the watch: its connection would otherwise hold one of the node's slots for good."""
        with contextlib.suppress(OSError):  # the node closed it already
            self.sock.shutdown(socket.SHUT_RDWR)
        self.join(10)

    def run(self) -> None:
        buffer = b""
        with self.sock:
            while chunk := self.sock.recv(1 << 20):
                buffer += chunk
                *events, buffer = buffer.split(b"\n\n")
                self.revisions += [int(line[4:]) for event in events for line in event.split(b"\n")
                                   if line.startswith(b"id: ") and b"event: progress" not in event]


def test_a_consumer_that_never_reads_is_cut_off_without_slowing_writes_or_other_watchers(
        cluster: LocalCluster) -> None:
    leader = cluster.wait_for_leader()
    url = cluster.url(leader)
    value = "v" * 65536
    usual_s = baseline_latency_s(url)
    cut_before = metric(url, "raft_http_connections_cut_total", reason="send_timeout")
    reader = Watcher(url, "big/")
    reader.start()
    stalled_watch = stalled(url, "/watch?prefix=big/")
    stalled_events = stalled(url, "/raft/events", websocket=True)
    time.sleep(0.2)
    assert metric(url, "raft_watchers") == 2

    # Each write under big/ sends 64 KiB to each watcher, and every write some Raft events to the
    # WebSocket: the stalled consumers fill their sockets' buffers (some megabytes, in the kernel)
    # and are cut off a second later.
    writer = Writer(url, value, prefix="big/")
    writer.start()
    busy = [Writer(url, i, prefix=f"small{i}-") for i in range(3)]
    for w in busy:
        w.start()
    deadline = time.monotonic() + 40
    while metric(url, "raft_http_connections_cut_total", reason="send_timeout") - cut_before < 2:
        assert time.monotonic() < deadline, "a stalled consumer was never cut off"
        time.sleep(0.2)
    assert metric(url, "raft_watchers") == 1, "the stalled watcher is gone, the reading one is not"
    time.sleep(1)  # writes go on: nothing is queued for the watcher that went away
    assert metric(url, "raft_watch_queued_batches") <= 5
    latencies = writer.stop()
    for w in busy:
        latencies += w.stop()

    written = sum(1 for status, _ in writer.results if status == 200)
    deadline = time.monotonic() + 10
    while len(reader.revisions) < written:
        assert time.monotonic() < deadline, (written, len(reader.revisions))
        time.sleep(0.1)
    assert reader.revisions == sorted(set(reader.revisions)), "every revision once, in order"
    reader.stop()
    assert statistics.median(latencies) < 3 * usual_s + 0.1, (usual_s, statistics.median(latencies))
    assert max(latencies) < 1.5, max(latencies)
    # Each stalled client finds its stream ended (what the kernel held for it, then the end), the
    # watch far short of what was written.
    with stalled_watch:
        watched, _ = answer_of(stalled_watch, 5)
    assert 0 < len(watched) < written * len(value), (len(watched), written)
    with stalled_events:
        assert answer_of(stalled_events, 5)[0]


def test_the_limits_are_checked_at_start(tmp_path: Path) -> None:
    from raftkv.node.config import ConfigError, NodeConfig, parse_cluster

    members = parse_cluster("n1@127.0.0.1:1:2")
    for bad in ({"max_client_connections": 0}, {"client_header_timeout_s": 0}, {"client_send_timeout_s": -1}):
        with pytest.raises(ConfigError):
            NodeConfig(node_id="n1", data_dir=tmp_path, members=members, **bad)  # type: ignore[arg-type]
