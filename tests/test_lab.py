"""`raftkv up` and `raftkv lab` as a person uses them: real processes on free ports.

A taken port is reported in one line before anything starts; node exits and restarts are printed
in the `up` terminal; `raftkv lab` lists, stops, starts and restarts the nodes through the
dashboard, and adds and removes nodes at run time (the next `up` on the same data directory starts
the nodes added and not the ones removed); `--host 0.0.0.0` prints addresses other machines can
use while the nodes keep talking over loopback. Everything waits with deadlines, never with fixed
sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import psutil
import pytest
from cluster import http

from raftkv.node.config import Member
from raftkv.ports import DEFAULT_ETCD_PORT, network_addresses
from raftkv.supervisor import PORT_RANGE_VARIABLE, Supervisor, free_ports, port_is_free

pytestmark = pytest.mark.timeout(120)

RAFTKV = [sys.executable, "-m", "raftkv"]


def free_port_run(count: int) -> int:
    """The first of `count` consecutive loopback ports that are all free right now."""
    while True:
        first = free_ports(1)[0]
        if first + count > 65535:
            continue
        if all(port_is_free(port) for port in range(first, first + count)):
            return first


def listening_socket(port: int, host: str = "127.0.0.1") -> socket.socket:
    s = socket.socket()
    s.bind((host, port))
    s.listen()
    return s


def raftkv(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([*RAFTKV, *args], capture_output=True, text=True, timeout=timeout, check=False)


def get_json(url: str) -> dict | None:
    """The JSON answer of a 200, or None while the server is not (yet) answering."""
    try:
        status, body = http("GET", url, timeout=2)
    except OSError:
        return None
    return body if status == 200 else None


def wait_until(what: str, condition: Callable[[], object], timeout: float = 30.0) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout}s: {what}")


class Up:
    """`raftkv up` in a subprocess, its output collected line by line."""

    def __init__(self, data_dir: Path, nodes: int, host: str = "127.0.0.1",
                 ports: tuple[int, int, int, int] | None = None) -> None:
        # One more consecutive port than the nodes need: a node added at run time takes the next ones.
        # (etcd's default ports too would be free to another worker's `up` checking at the same moment)
        self.http_port, self.raft_port, self.dashboard_port, self.etcd_port = ports or (
            free_port_run(nodes + 1), free_port_run(nodes + 1), free_ports(1)[0], free_port_run(nodes + 1))
        self.dashboard = f"http://127.0.0.1:{self.dashboard_port}"
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [*RAFTKV, "up", "--nodes", str(nodes), "--host", host, "--http-port", str(self.http_port),
             "--raft-port", str(self.raft_port), "--etcd-port", str(self.etcd_port),
             "--dashboard-port", str(self.dashboard_port), "--data-dir", str(data_dir)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for_line(self, pattern: str, timeout: float = 30.0) -> str:
        return wait_until(f"a line matching {pattern!r} in {self.lines}",
                          lambda: next((line for line in self.lines if re.search(pattern, line)), None), timeout)

    def wait_ready(self) -> dict:
        """The dashboard's /api/state once the dashboard answers."""
        self.wait_for_line(r"^dashboard: ")
        return wait_until("the dashboard answers", lambda: get_json(self.dashboard + "/api/state"))

    def node_url(self, node_id: str) -> str:
        return f"http://127.0.0.1:{self.http_port + int(node_id.removeprefix('node')) - 1}"

    def lab(self, *args: str) -> subprocess.CompletedProcess:
        return raftkv("lab", *args, "--dashboard", self.dashboard)

    def stop(self) -> int:
        """Ctrl-C, as a person would; kill -9 (and its nodes) if it does not stop in time."""
        if self.proc.poll() is None:
            children = psutil.Process(self.proc.pid).children(recursive=True)
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                for p in [self.proc, *children]:
                    p.kill()
                self.proc.wait()
        self._reader.join(5)
        return self.proc.returncode


@pytest.fixture
def start_up(tmp_path: Path) -> Iterator[Callable[..., Up]]:
    started: list[Up] = []

    def start(nodes: int = 1, host: str = "127.0.0.1", ports: tuple[int, int, int, int] | None = None) -> Up:
        up = Up(tmp_path / "data", nodes, host, ports)
        started.append(up)
        return up

    yield start
    for up in started:
        up.stop()


# ---------------------------------------------------------------------- ports taken --------------


@pytest.mark.parametrize("taken", ["node2's client port", "node3's peer port", "the dashboard"])
def test_up_with_a_port_taken_says_which_in_one_line_and_starts_nothing(tmp_path: Path, taken: str) -> None:
    http_port, raft_port, dashboard_port = free_port_run(3), free_port_run(3), free_ports(1)[0]
    port = {"node2's client port": http_port + 1, "node3's peer port": raft_port + 2,
            "the dashboard": dashboard_port}[taken]
    with listening_socket(port):
        out = raftkv("up", "--nodes", "3", "--http-port", str(http_port), "--raft-port", str(raft_port),
                     "--dashboard-port", str(dashboard_port), "--data-dir", str(tmp_path / "data"))
    assert out.returncode != 0
    assert out.stdout == "", "nothing may be announced as started"
    [line] = out.stderr.splitlines()
    assert f":{port} ({taken}) is already in use by pid {os.getpid()}" in line, line
    assert "nothing was started" in line
    assert not (tmp_path / "data").exists(), "no node may have been started"


def test_free_ports_are_outside_the_range_the_os_hands_out_to_client_sockets() -> None:
    """A port from the ephemeral range can be taken by any process's outgoing connection between
    the check and the node's bind (a full test run lost a node that way): none is picked there."""
    ephemeral_low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = free_ports(50)
    assert len(set(ports)) == 50 and all(10000 <= p < ephemeral_low for p in ports), ports
    with listening_socket(ports[0]):  # and each was free: it can be listened on
        pass


def test_free_ports_are_picked_from_the_range_they_are_given(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two runs side by side (the suite's parallel workers) each name a range of their own; the top
    64 of it stay free for the ports callers take after a picked one."""
    monkeypatch.setenv(PORT_RANGE_VARIABLE, "20000-20200")
    ports = free_ports(60)
    assert len(set(ports)) == 60 and all(20000 <= p < 20136 for p in ports), ports
    for bad in ("20000", "a-b", "20000-20064", "100-2000", "60000-70000", "20200-20000"):
        monkeypatch.setenv(PORT_RANGE_VARIABLE, bad)
        with pytest.raises(ValueError, match=f"{PORT_RANGE_VARIABLE}='{bad}': expected low-high"):
            free_ports(1)


def test_up_refuses_ports_that_overlap_each_other(tmp_path: Path) -> None:
    first = free_port_run(4)
    out = raftkv("up", "--nodes", "3", "--http-port", str(first), "--raft-port", str(first + 1),
                 "--dashboard-port", str(free_ports(1)[0]), "--data-dir", str(tmp_path / "data"))
    assert out.returncode != 0 and out.stdout == ""
    assert f"port {first + 1} is both node1's peer port and node2's client port" in out.stderr, out.stderr
    assert not (tmp_path / "data").exists()


def test_up_says_so_when_the_port_range_it_would_pick_etcd_ports_from_does_not_parse(tmp_path: Path) -> None:
    http_port, raft_port, dashboard_port = free_ports(3)
    with contextlib.ExitStack() as held:
        if port_is_free(DEFAULT_ETCD_PORT):  # taken, so that up picks node1's etcd port itself
            held.enter_context(listening_socket(DEFAULT_ETCD_PORT))
        out = subprocess.run([*RAFTKV, "up", "--nodes", "1", "--http-port", str(http_port), "--raft-port",
                              str(raft_port), "--dashboard-port", str(dashboard_port), "--data-dir",
                              str(tmp_path / "data")], capture_output=True, text=True, timeout=60,
                             env={**os.environ, PORT_RANGE_VARIABLE: "3000"})
    assert out.returncode == 2 and out.stdout == "", out
    assert "RAFTKV_FREE_PORTS='3000': expected low-high" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "data").exists()


def test_node_and_dashboard_commands_check_their_ports_first(tmp_path: Path) -> None:
    http_port, raft_port = free_ports(2)
    with listening_socket(raft_port):
        out = raftkv("node", "--id", "n1", "--cluster", f"n1@127.0.0.1:{http_port}:{raft_port}",
                     "--data-dir", str(tmp_path / "n1"))
    assert out.returncode != 0
    [line] = out.stderr.splitlines()
    assert f":{raft_port} (n1's peer port) is already in use by pid {os.getpid()}" in line, line
    assert not (tmp_path / "n1").exists()

    port = free_ports(1)[0]
    with listening_socket(port):
        out = raftkv("dashboard", "--port", str(port), "--endpoints", "127.0.0.1:1")
    assert out.returncode != 0 and out.stdout == ""
    [line] = out.stderr.splitlines()
    assert f":{port} (the dashboard) is already in use by pid {os.getpid()}" in line, line


# ---------------------------------------------------------------------- exits and restarts -------


def test_the_supervisor_reports_every_exit_and_counts_every_later_start_as_a_restart(tmp_path: Path) -> None:
    http_port, raft_port = free_ports(2)
    events: list[str] = []
    sup = Supervisor([Member("node1", "127.0.0.1", http_port, raft_port)], tmp_path, on_event=events.append)
    try:
        sup.start("node1")
        sup.kill("node1")
        sup.start("node1")  # a start after a crash is a restart, not only an explicit restart()
        pid = sup.nodes["node1"].proc.pid
        assert sup.nodes["node1"].restarts == 1
        assert events == ["node1 exited: killed by SIGKILL", f"node1 restarted (pid {pid}, restarts: 1)"]
        sup.restart("node1")
        assert sup.nodes["node1"].restarts == 2 and sup.describe()[0]["restarts"] == 2

        # A node that stops itself: its status and its log's last line (the reason), once.
        sup.kill("node1")
        with listening_socket(http_port):
            sup.start("node1")
            sup.watch_exits()
            line = wait_until("the exit is reported", lambda: events[-1].startswith("node1 exited: status 1")
                              and events[-1])
        reason = f"node1/node.log: Error: port 127.0.0.1:{http_port} (node1's client port) is already in use"
        assert reason in line, line
        assert sum(e.startswith("node1 exited: status 1") for e in events) == 1
    finally:
        sup.stop_all()


def test_a_node_with_an_open_event_stream_stops_at_once_on_sigterm(tmp_path: Path) -> None:
    """The dashboard always watches /raft/events; a lab stop must not wait out aiohttp's shutdown timeout."""
    http_port, raft_port = free_ports(2)
    sup = Supervisor([Member("node1", "127.0.0.1", http_port, raft_port)], tmp_path)
    url = f"http://127.0.0.1:{http_port}"

    async def watch_while_stopping() -> float:
        async with aiohttp.ClientSession() as session, session.ws_connect(url + "/raft/events") as ws:
            await ws.receive()  # the stream is live
            started = time.monotonic()
            await asyncio.get_running_loop().run_in_executor(None, sup.stop, "node1", 8.0)
            return time.monotonic() - started

    try:
        sup.start("node1")
        wait_until("node1 answers", lambda: get_json(url + "/raft-state"))
        seconds = asyncio.run(watch_while_stopping())
        assert sup.nodes["node1"].exit_status == "status 0" and seconds < 4, (sup.describe(), seconds)
    finally:
        sup.stop_all()


def test_up_prints_a_killed_node_and_lab_restarts_it(start_up: Callable[..., Up]) -> None:
    up = start_up(nodes=1)
    up.wait_ready()
    pid = wait_until("node1 runs", lambda: up.lab("list").stdout.partition("running (pid ")[2].partition(")")[0])
    os.kill(int(pid), signal.SIGKILL)  # from outside, as `kill -9` in another terminal
    up.wait_for_line(r"^node1 exited: killed by SIGKILL$")
    listed = up.lab("list")
    assert listed.returncode == 0 and "exited: killed by SIGKILL" in listed.stdout, listed.stdout

    out = up.lab("restart", "node1")
    assert out.returncode == 0 and "running" in out.stdout and "restarts: 1" in out.stdout, out
    up.wait_for_line(r"^node1 restarted \(pid \d+, restarts: 1\)$")

    # A node stopped while it is still starting up has no SIGTERM handler yet: it would be "killed by SIGTERM".
    wait_until("node1 answers", lambda: get_json(up.node_url("node1") + "/raft-state"))
    out = up.lab("stop", "node1")
    assert out.returncode == 0 and "exited: status 0" in out.stdout, out
    up.wait_for_line(r"^node1 exited: status 0$")
    for action in ("crash", "pause", "stop", "resume"):  # nothing to do to an exited node: said, exit non-zero
        out = up.lab(action, "node1")
        assert out.returncode != 0 and "node1 is not " in out.stderr and "nothing was done" in out.stderr, out
    out = up.lab("start", "node1")
    assert out.returncode == 0 and "restarts: 2" in out.stdout, out
    header, row = up.lab("list").stdout.splitlines()
    assert header.split()[:4] == ["NODE", "URL", "PROCESS", "RESTARTS"]
    assert row.split()[0] == "node1" and "running (pid" in row and row.split()[5] == "2", row

    out = up.lab("restart", "node9")
    assert out.returncode != 0 and "no node 'node9'; nodes are ['node1']" in out.stderr, out

    wait_until("node1 answers again", lambda: get_json(up.node_url("node1") + "/raft-state"))  # as above
    assert up.stop() == 0
    assert "stopping nodes..." in up.lines and up.lines[-1] == "node1 exited: status 0", up.lines


def test_lab_says_so_when_no_raftkv_up_answers() -> None:
    url = f"http://127.0.0.1:{free_ports(1)[0]}"
    out = raftkv("lab", "list", "--dashboard", url)
    assert out.returncode != 0
    assert out.stderr.strip() == f"Error: no `raftkv up` answers at {url} (start one, or give its --dashboard URL)"
    out = raftkv("lab", "restart", "node1", "--dashboard", url)
    assert out.returncode != 0 and "no `raftkv up` answers" in out.stderr


# ---------------------------------------------------------------------- adding and removing nodes -


def lab_rows(up: Up) -> dict[str, list[str]]:
    out = up.lab("list")
    assert out.returncode == 0, out
    return {line.split()[0]: line.split() for line in out.stdout.splitlines()[1:]}


def test_lab_adds_a_node_that_joins_and_is_promoted_removes_one_and_the_next_up_remembers(
        start_up: Callable[..., Up], tmp_path: Path) -> None:
    up = start_up(nodes=3)
    up.wait_ready()
    wait_until("a leader", lambda: (s := get_json(up.node_url("node1") + "/raft-state")) and s["leaderId"])

    out = up.lab("add")
    node4_url, node4_etcd = f"http://127.0.0.1:{up.http_port + 3}", up.etcd_port + 3  # the next consecutive ports
    assert out.returncode == 0, out
    assert re.fullmatch(rf"node4 joined as a voter \(id node4-[0-9a-f]{{16}}\): running \(pid \d+\), {node4_url}, "
                        rf"etcd API port {node4_etcd}, data: {tmp_path / 'data' / 'node4'}\n", out.stdout), out.stdout
    up.wait_for_line(rf"^node4 added: joining through http://127\.0\.0\.1:\d+ \(pid \d+, {node4_url}, "
                     rf"etcd API port {node4_etcd}, data: ")
    members = get_json(up.node_url("node1") + "/members")["members"]
    assert {m["name"]: m["role"] for m in members} == {f"node{i}": "voter" for i in range(1, 5)}
    rows = lab_rows(up)
    assert sorted(rows) == ["node1", "node2", "node3", "node4"] and rows["node4"][2] == "running", rows

    out = up.lab("remove", "node2")
    assert out.returncode == 0, out
    assert out.stdout == (f"node2 was removed from the cluster (id node2); its process stopped, its data stays in "
                          f"{tmp_path / 'data' / 'node2'}\n")
    up.wait_for_line(rf"^node2 left the cluster and was stopped; its data stays in {tmp_path / 'data' / 'node2'}$")
    assert (tmp_path / "data" / "node2" / "raft").is_dir(), "a removed node's data is kept"
    assert sorted(lab_rows(up)) == ["node1", "node3", "node4"]
    out = up.lab("remove", "node2")
    assert out.returncode == 1 and "no member 'node2'; members are ['node1', 'node3', 'node4']" in out.stderr, out

    ports = (up.http_port, up.raft_port, up.dashboard_port, up.etcd_port)
    assert up.stop() == 0
    again = start_up(nodes=3, ports=ports)
    again.wait_ready()
    assert again.wait_for_line(r"^node4: ").endswith("(joined later)")
    # each node keeps its etcd port: node3's is not node2's now that node2 is gone, and node4 has one
    assert again.wait_for_line(r"^node3 etcd API ").endswith(f"127.0.0.1:{up.etcd_port + 2}")
    assert again.wait_for_line(r"^node4 etcd API ").endswith(f"127.0.0.1:{node4_etcd}")
    assert not any(line.startswith("node2: ") for line in again.lines), again.lines
    wait_until("node4 back and following a leader",
               lambda: (s := get_json(node4_url + "/raft-state")) and s["leaderId"] and s["state"] != "candidate")
    assert get_json(node4_url + "/raft-state")["etcdURL"] == f"http://127.0.0.1:{node4_etcd}"  # it serves it
    status, body = http("PUT", again.node_url("node3") + "/kv/after-restart", {"value": 1})
    assert status == 200, body


# ---------------------------------------------------------------------- every interface ---------


def test_up_on_every_interface_prints_reachable_addresses_and_peers_use_loopback(
    start_up: Callable[..., Up],
) -> None:
    up = start_up(nodes=2, host="0.0.0.0")
    up.wait_ready()
    printed = "\n".join(up.lines)
    assert "0.0.0.0" not in printed, printed
    node1 = up.wait_for_line(r"^node1: ")
    for host in ["127.0.0.1", *network_addresses("0.0.0.0")]:
        assert f"http://{host}:{up.http_port}" in node1, node1
        assert f"http://{host}:{up.dashboard_port}" in up.wait_for_line(r"^dashboard: ")
    assert up.wait_for_line(r"^warning: listening on every interface: anyone on your network can use the dashboard")

    node1_state = up.node_url("node1") + "/raft-state"
    state = wait_until("a leader", lambda: (s := get_json(node1_state)) and s["leaderId"] and s)
    assert {p["url"] for p in state["peers"]} == {up.node_url("node2")}
    listening = {c.laddr for c in psutil.net_connections("tcp") if c.status == psutil.CONN_LISTEN}
    assert ("0.0.0.0", up.http_port) in listening, "the client API serves every interface"
    assert ("127.0.0.1", up.raft_port) in listening, "peer traffic stays on loopback"
    assert ("0.0.0.0", up.dashboard_port) in listening
