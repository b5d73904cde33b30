from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cluster import LocalCluster
from dashboard_pages import Dashboard, chromium

from raftkv.supervisor import PORT_RANGE_VARIABLE, port_pick_range


def pytest_configure(config: pytest.Config) -> None:
    """The suite runs in parallel workers (pytest-xdist, `-n 2` in ./dev test): each picks its
    clusters' ports from a range of its own, inherited by every process it starts (a chaos run,
    `raftkv up`), so two workers never pick the same port between the check and the bind."""
    worker, count = os.environ.get("PYTEST_XDIST_WORKER"), os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if worker is None or count is None or PORT_RANGE_VARIABLE in os.environ:
        return
    low, high = port_pick_range()
    if high <= low:
        return  # the system's ephemeral range is unknown: the OS picks, and never picks twice
    width = (high - low) // int(count)
    first = low + int(worker.removeprefix("gw")) * width
    os.environ[PORT_RANGE_VARIABLE] = f"{first}-{first + width}"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The measurements tests report (`record_property("measured", ...)`: election latency, the
    seed's experiments), after the run, since a parallel worker's own output is not shown."""
    lines = [value for reports in terminalreporter.stats.values() for report in reports
             for name, value in getattr(report, "user_properties", ()) if name == "measured"
             and getattr(report, "when", None) == "call"]
    if lines:
        terminalreporter.section("measured")
        for line in lines:
            terminalreporter.write_line(line)


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
