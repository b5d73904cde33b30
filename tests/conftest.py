from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cluster import LocalCluster
from dashboard_pages import Dashboard, chromium


@pytest.fixture
def cluster(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[LocalCluster]:
    """A running 3-node cluster on loopback; stopped (and its logs shown on failure) afterwards."""
    marker = request.node.get_closest_marker("cluster_args")
    c = LocalCluster(tmp_path / "data", nodes=3, node_args=list(marker.args) if marker else None).start()
    yield c
    c.stop()
    if request.node.rep_call.failed if hasattr(request.node, "rep_call") else False:
        for m in c.members:
            print(f"----- {m.id} log -----\n{c.log_text(m.id)[-4000:]}")


@pytest.fixture(scope="module")
def dashboard(cluster: LocalCluster) -> Iterator[Dashboard]:
    """A dashboard server watching the module's cluster (a module that asks for it has a
    module-scoped `cluster`, see cluster.module_cluster)."""
    d = Dashboard(list(cluster.urls.values()), cluster.supervisor)
    yield d
    d.stop()


@pytest.fixture(scope="module")
def browser(cluster: LocalCluster) -> Iterator[Any]:
    with chromium() as b:
        yield b


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    setattr(item, "rep_" + report.when, report)
