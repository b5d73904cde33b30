"""The dashboard is honest about a node started without --enable-fault-injection, as a production
node is: the controls that need that node's lab routes (forcing an election, partitions, the lab,
slow motion, the tours) are greyed in the browser, saying why and how to turn them on, while what
does not need them stays usable; asked anyway, the node's own refusal comes back in plain words.
A real 3-node cluster in which node2 runs without it; no auth (this holds either way)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from cluster import LocalCluster
from dashboard_pages import Dashboard, opened, wait_until

from raftkv.supervisor import NodeProcess, Supervisor

pytestmark = [pytest.mark.timeout(90), pytest.mark.browser]

REASON = "fault injection is off on node2: start it with --enable-fault-injection"


class Node2WithoutFaultInjection(Supervisor):
    """The test clusters' supervisor, but node2 is started as an operator would start it."""

    def node_command(self, node: NodeProcess) -> list[str]:
        command = super().node_command(node)
        return [a for a in command if a != "--enable-fault-injection"] if node.member.id == "node2" else command


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    c = LocalCluster(tmp_path_factory.mktemp("dashboard-fault-injection") / "data", nodes=3)
    c.supervisor = Node2WithoutFaultInjection(c.members, c.data_dir)
    c.start()
    try:
        c.wait_for_leader(30)
        yield c
    finally:
        c.stop()


def test_lab_controls_are_greyed_with_the_reason_when_a_node_runs_without_fault_injection(
        browser: Any, dashboard: Dashboard, cluster: LocalCluster) -> None:
    assert [cluster.state(n)["faultInjection"] for n in ("node1", "node2", "node3")] == [True, False, True]
    with opened(browser, dashboard) as pg:
        def greyed(selector: str) -> bool:
            control = pg.locator(selector)
            return control.is_disabled() and REASON in (control.get_attribute("title") or "")

        on_card = '[data-node="{}"] button[data-op="{}"]'
        wait_until("node2's own lab buttons greyed", lambda: greyed(on_card.format("node2", "force-election")), 10)
        assert greyed(on_card.format("node2", "isolate"))
        assert REASON in pg.inner_text('[data-node="node2"] .gate-why')
        for control in ("#lab-toggle", "#split", "#slowmo", "#lab-snapshot-set", "#tour-run"):  # every node's lab
            assert greyed(control), control
        assert REASON in pg.inner_text("#lab-gate") and REASON in pg.inner_text("#controls-gate")

        # What needs no lab route of node2 stays usable: node1's election, the supervisor's crash, healing.
        assert pg.locator(on_card.format("node1", "force-election")).is_enabled()
        assert pg.locator(on_card.format("node2", "crash")).is_enabled()
        assert pg.is_enabled("#heal") and pg.locator('[data-node="node1"] .gate-why').count() == 0
        # A cut or a lossy link is set on the "from" node: greyed from node2, not from node1.
        pg.select_option("#cut-src", "node2")
        wait_until("a cut from node2 greyed", lambda: greyed("#cut") and greyed("#link-apply"), 5)
        pg.select_option("#cut-src", "node1")
        wait_until("a cut from node1 allowed", lambda: pg.is_enabled("#cut") and pg.is_enabled("#link-apply"), 5)

        # Asked anyway (not through the greyed button), node2 refuses in its own words, and the feed says so.
        status, answer = dashboard.api("POST", "/api/nodes/node2/force-election")
        assert status == 403 and "fault injection is off on node2" in answer["error"], answer
        wait_until("the refusal in the feed", lambda: "refused: node2 refused: fault injection is off" in
                   pg.inner_text("#feed"), 5)
