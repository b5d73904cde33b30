"""What a node exposes by default: the lab's fault-injection routes answer 403, saying how to turn
them on, and change nothing, unless the node was started with --enable-fault-injection (as
`raftkv up`, `raftkv chaos` and the test clusters start theirs)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cluster import LocalCluster, http, wait_healthy

from raftkv.supervisor import free_ports

pytestmark = pytest.mark.timeout(60)

FAULT_ROUTES = [
    ("/force-election", None),
    ("/simulate-partition", {"partitioned": True}),
    ("/simulate-link", {"loss_percent": 50}),
    ("/lab", {"holding": True}),
    ("/lab/release", {"numbers": [1]}),
    ("/lab/drop", {"numbers": [1]}),
]


@pytest.fixture(scope="module")
def production_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A one-node cluster started as an operator would, without --enable-fault-injection."""
    http_port, raft_port = free_ports(2)
    data = tmp_path_factory.mktemp("production")
    with open(data / "node.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "raftkv", "node", "--id", "n1", "--cluster",
                                 f"n1@127.0.0.1:{http_port}:{raft_port}", "--data-dir", str(data / "n1")],
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{http_port}"
    try:
        wait_healthy(url, why=(data / "node.log").read_text())
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.parametrize(("route", "body"), FAULT_ROUTES)
def test_a_fault_injection_route_is_403_and_changes_nothing_by_default(
        production_node: str, route: str, body: dict | None) -> None:
    before = http("GET", production_node + "/raft-state")[1]
    status, answer = http("POST", production_node + route, body)
    assert status == 403, answer
    assert answer["reason"] == "fault_injection_off" and "--enable-fault-injection" in answer["error"], answer
    after = http("GET", production_node + "/raft-state")[1]
    assert after["faultInjection"] is False
    assert (after["term"], after["state"], after["faults"]) == (before["term"], before["state"], before["faults"])
    lab = http("GET", production_node + "/lab")[1]
    assert lab["faultInjection"] is False and lab["holding"] is False


def test_the_rest_of_the_api_works_without_fault_injection(production_node: str) -> None:
    assert http("PUT", production_node + "/kv/k", {"value": 1})[0] == 200
    assert http("GET", production_node + "/kv/k")[1]["value"] == 1


def test_a_lab_cluster_has_fault_injection_on(tmp_path: Path) -> None:
    lab = LocalCluster(tmp_path / "data", nodes=1).start()
    try:
        url = lab.url(lab.wait_for_leader())
        assert http("GET", url + "/raft-state")[1]["faultInjection"] is True
        status, answer = http("POST", url + "/simulate-link", {"loss_percent": 0})
        assert status == 200, answer
    finally:
        lab.stop()
