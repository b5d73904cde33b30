"""Node configuration: the --cluster syntax, TOML files, and a real cluster over mutual TLS, which a
node added at run time joins over mutual TLS too."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from certs import make_test_certs
from cluster import LocalCluster, http

from raftkv.node.config import ConfigError, Member, NodeConfig, load_toml, parse_cluster
from raftkv.supervisor import free_ports


def test_cluster_syntax() -> None:
    members = parse_cluster("node1@127.0.0.1:3000:4000, node2@10.0.0.2:3001:4001")
    assert members["node2"] == Member("node2", "10.0.0.2", 3001, 4001)
    assert members["node1"].url == "http://127.0.0.1:3000"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no members"),
        ("node1", "expected id@host:http_port:raft_port"),
        ("node1@h:3000", "expected id@host:http_port:raft_port"),
        ("node1@h:x:4000", "ports must be numbers"),
        ("node1@h:99999:4000", r"port 99999 is not a port \(1 to 65535\)"),  # would bind to 34463
        ("node1@h:3000:0", "port 0 is not a port"),
        ("a@h:1:2,a@h:3:4", "unique"),
    ],
)
def test_bad_cluster_syntax_is_explained(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_cluster(text)


def test_node_must_be_a_member_and_tls_is_all_or_nothing(tmp_path: Path) -> None:
    members = parse_cluster("a@h:1:2")
    with pytest.raises(ConfigError, match="not one of the members"):
        NodeConfig("b", tmp_path, members)
    with pytest.raises(ConfigError, match="all of tls_ca"):
        NodeConfig("a", tmp_path, members, tls_ca=tmp_path / "ca.crt")


def test_toml_file(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text(
        'node_id = "n1"\ntick_ms = 15\n'
        '[[members]]\nid = "n1"\nhost = "127.0.0.1"\nhttp_port = 3000\nraft_port = 4000\n'
        '[[members]]\nid = "n2"\nhost = "127.0.0.1"\nhttp_port = 3001\nraft_port = 4001\n'
    )
    cfg = load_toml(path)
    assert cfg.node_id == "n1" and cfg.tick_ms == 15 and set(cfg.peers()) == {"n2"}
    assert load_toml(path, node_id="n2").me.http_port == 3001
    path.write_text('node_id = "n1"\n[[members]]\nid = "n1"\n')
    with pytest.raises(ConfigError, match="needs id, host, http_port, raft_port"):
        load_toml(path)
    path.write_text('node_id = "n1"\nbogus = 1\n[[members]]\nid = "n1"\nhost = "h"\nhttp_port = 1\nraft_port = 2\n')
    with pytest.raises(ConfigError, match="bogus"):
        load_toml(path)


@pytest.mark.timeout(120)
def test_a_cluster_over_mutual_tls_replicates(tmp_path: Path) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command line to make test certificates")
    ca, cert, key = make_test_certs(str(tmp_path))
    c = LocalCluster(tmp_path / "data", 3, ["--tls-ca", ca, "--tls-cert", cert, "--tls-key", key]).start()
    try:
        leader = c.wait_for_leader()
        assert http("PUT", c.url(leader) + "/kv/secret", {"value": 42})[0] == 200
        c.wait_converged()
        state = c.state(leader)
        assert state["transport"]["tls"] is True
        assert all(peer["connected"] for peer in state["transport"]["peers"].values()), state["transport"]
        _a_joiner_links_over_mutual_tls(c, leader, tmp_path, ["--tls-ca", ca, "--tls-cert", cert, "--tls-key", key])
    finally:
        c.stop()


def _a_joiner_links_over_mutual_tls(c: LocalCluster, leader: str, tmp_path: Path, tls: list[str]) -> None:
    http_port, raft_port = free_ports(2)
    url = f"http://127.0.0.1:{http_port}"
    with open(tmp_path / "node4.log", "wb") as log:
        joiner = subprocess.Popen(
            [sys.executable, "-m", "raftkv", "node", "--join", c.url(leader), "--name", "node4", "--advertise-client",
             url, "--advertise-peer", f"127.0.0.1:{raft_port}", "--data-dir", str(tmp_path / "node4"), *tls],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                status, value = http("GET", url + "/kv/secret", timeout=2)
            except OSError:
                status = None
            if status == 200:
                break
            assert time.monotonic() < deadline, "node4 never served the cluster's data"
            time.sleep(0.2)
        assert value["value"] == 42
        transport = c.state(leader)["transport"]
        node4 = next(p for i, p in transport["peers"].items() if i.startswith("node4-"))
        assert transport["tls"] is True and node4["connected"], transport
    finally:
        joiner.terminate()
        joiner.wait(10)
