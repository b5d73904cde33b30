"""The dashboard in a real browser, against a real 3-node cluster of OS processes.

One cluster (started by the Supervisor on free loopback ports), one dashboard (run_dashboard in a
thread, so it shares the supervisor and can kill -9 / restart nodes) and one headless Debian
Chromium driven by Playwright serve every test in this module; before each test the network is
healed and every node is running again. The tests that change the membership (a node added from the
page, the "replace a dead machine" tour) have a cluster and a dashboard of their own. Each test
clicks what a person would click and waits, always with a bound, for the page to show what the nodes
really did (dashboard_pages.py). Screenshots go to docs/screenshots/ (the README shows them). The
lab, the tours, replay and the page's cost have a module of their own (test_dashboard_lab.py).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cluster import LocalCluster, http, module_cluster
from dashboard_pages import (
    Dashboard,
    cards,
    click_node_button,
    follow_tour,
    heal,
    one_leader,
    opened,
    shot,
    wait_until,
)

from raftkv.supervisor import free_ports

pytestmark = pytest.mark.timeout(240)
browser_test = pytest.mark.browser


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    yield from module_cluster(tmp_path_factory.mktemp("dashboard") / "data")


@pytest.fixture
def page(browser: Any, dashboard: Dashboard, cluster: LocalCluster) -> Iterator[Any]:
    """The dashboard in a fresh browser context, with the cluster back to healthy."""
    heal(dashboard, cluster)
    with opened(browser, dashboard) as pg:
        yield pg


@pytest.fixture(scope="module")
def growing_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A cluster of its own for the tests that add and remove members."""
    c = LocalCluster(tmp_path_factory.mktemp("membership") / "data", nodes=3).start()
    try:
        c.wait_for_leader(30)
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def growing_dashboard(growing_cluster: LocalCluster) -> Iterator[Dashboard]:
    d = Dashboard(list(growing_cluster.urls.values()), growing_cluster.supervisor)
    yield d
    d.stop()


# ------------------------------------------------------------------------------ the tests ----------


@browser_test
def test_page_shows_three_nodes_and_exactly_one_leader(page: Any) -> None:
    assert page.locator("[data-ring-node]").count() == 3
    assert page.locator("[data-node]").count() == 3
    leader, _ = wait_until("exactly one leader on the page", lambda: one_leader(page))
    roles = {n: c["role"] for n, c in cards(page).items()}
    assert sorted(roles.values()) == ["follower", "follower", "leader"], roles
    assert page.locator(f'[data-ring-node="{leader}"]').get_attribute("data-role") == "leader"
    wait_until("the safety checks to report", lambda: "safety checks hold" in page.locator("#safety-pill").inner_text())
    shot(page, "overview.png")


@browser_test
def test_force_election_changes_the_term_then_shows_one_leader(page: Any) -> None:
    leader, term = wait_until("one leader", lambda: one_leader(page))
    follower = next(n for n in cards(page) if n != leader)
    click_node_button(page, follower, "force-election")
    _, new_term = wait_until(
        "a higher term with one leader", lambda: (r := one_leader(page)) and r[1] > term and r, 20)
    assert new_term > term
    assert all(c["term"] == new_term for c in cards(page).values())
    wait_until("the feed to say someone asked for votes",
               lambda: "asked for votes" in page.locator("#feed").inner_text() or None)
    shot(page, "force-election.png")


@browser_test
def test_isolating_the_leader_shows_it_cut_off_and_a_new_leader_on_the_majority_side(page: Any) -> None:
    leader, term = wait_until("one leader", lambda: one_leader(page))
    majority = set(cards(page)) - {leader}
    click_node_button(page, leader, "isolate")
    wait_until(f"{leader} shown partitioned", lambda: cards(page)[leader]["partitioned"])
    assert "partitioned from all peers" in cards(page)[leader]["text"]
    new_leader, _ = wait_until(
        "a new leader on the majority side", lambda: (r := one_leader(page, majority)) and r[1] > term and r, 20)
    assert new_leader in majority
    # With check-quorum the cut-off leader steps down by itself.
    wait_until(f"{leader} to stop being leader", lambda: cards(page)[leader]["role"] != "leader", 15)
    assert page.locator(f'[data-ring-node="{leader}"].cut').count() == 1
    shot(page, "partition.png")
    page.locator("#heal").click()
    wait_until("the partition healed", lambda: not any(c["partitioned"] for c in cards(page).values()))
    wait_until("one leader for the whole cluster", lambda: one_leader(page), 20)


@browser_test
def test_split_into_groups_keeps_the_majority_working(page: Any, dashboard: Dashboard) -> None:
    wait_until("one leader", lambda: one_leader(page))
    status, body = dashboard.api("POST", "/api/split", {"groups": [["node1"], ["node2", "node3"]]})
    assert status == 200, body
    wait_until("every node shown partitioned", lambda: all(c["partitioned"] for c in cards(page).values()))
    wait_until("a leader in {node2, node3}", lambda: one_leader(page, {"node2", "node3"}), 20)
    status, body = dashboard.api("POST", "/api/cut", {"src": "node2", "dst": "node3"})
    assert status == 200 and body["result"]["faults"]["cut_outbound"] == ["node3"], body
    status, body = dashboard.api("POST", "/api/link-quality", {"node": "node2", "loss_percent": 20, "delay_ms": 10})
    assert status == 200 and body["result"]["faults"]["loss_percent"] == {"*": 20.0}, body
    page.locator("#heal").click()
    wait_until("one leader for the whole cluster", lambda: one_leader(page), 20)


@browser_test
def test_crash_and_restart_a_node(page: Any, cluster: LocalCluster) -> None:
    leader, _ = wait_until("one leader", lambda: one_leader(page))
    victim = leader  # the hardest case: the cluster must fail over, then take the node back
    click_node_button(page, victim, "crash")
    wait_until(f"{victim} shown crashed", lambda: cards(page)[victim]["reach"] == "crashed")
    assert not cluster.supervisor.nodes[victim].running
    assert "crashed" in cards(page)[victim]["text"]
    assert "grey" in (page.locator(f'[data-ring-node="{victim}"]').get_attribute("class") or "")
    wait_until("a new leader among the survivors", lambda: one_leader(page, set(cards(page)) - {victim}), 20)
    shot(page, "crash.png")
    click_node_button(page, victim, "restart")
    wait_until(f"{victim} back and following", lambda: cards(page)[victim]["reach"] == "ok"
               and cards(page)[victim]["role"] in ("follower", "leader"), 30)
    wait_until("one leader", lambda: one_leader(page), 20)


@browser_test
def test_pause_and_resume_a_node(page: Any, cluster: LocalCluster) -> None:
    leader, _ = wait_until("one leader", lambda: one_leader(page))
    follower = next(n for n in cards(page) if n != leader)
    click_node_button(page, follower, "pause")
    wait_until(f"{follower} shown paused", lambda: cards(page)[follower]["reach"] == "paused")
    assert cluster.supervisor.nodes[follower].paused
    assert page.locator(f'[data-node="{follower}"] button[data-op="resume"]').is_enabled()
    click_node_button(page, follower, "resume")
    wait_until(f"{follower} answering again", lambda: cards(page)[follower]["reach"] == "ok", 15)
    wait_until("one leader", lambda: one_leader(page), 20)


@browser_test
def test_put_then_get_shows_the_value_on_every_nodes_kv_view(page: Any) -> None:
    wait_until("one leader", lambda: one_leader(page))
    key, value = f"saldo_cuenta_{int(time.time() * 1000) % 100000}", 1500
    page.select_option("#kv-op", "put")
    page.fill("#kv-key", key)
    page.fill("#kv-value", str(value))
    page.select_option("#kv-node", "node2")  # any node accepts writes: followers forward them
    page.click("#kv-send")
    wait_until("the PUT acknowledged", lambda: "→ 200" in page.locator("#kv-result").inner_text())
    result = page.locator("#kv-result").inner_text()
    assert "revision" in result and "served by" in result, result
    wait_until("the write marked in every node's log row", lambda: all(
        page.locator(f'[data-log-node="{n}"] .cell.mine').count() >= 1 for n in ("node1", "node2", "node3")))
    shot(page, "log-write.png", "#h-logs")
    for node in ("node1", "node2", "node3"):
        cell = page.locator(f'[data-kv-node="{node}"] tr[data-key="{key}"] td')
        wait_until(f"{key} on {node}'s KV view",
                   lambda cell=cell: cell.count() == 1 and cell.inner_text() == str(value))
    page.select_option("#kv-op", "get")
    page.select_option("#kv-node", "node3")
    page.click("#kv-send")
    wait_until("the GET answered", lambda: f"value {value}" in page.locator("#kv-result").inner_text())
    shot(page, "kv.png", "#kv-result")


@browser_test
def test_a_large_value_shows_its_size_and_all_of_it_on_demand(page: Any, dashboard: Dashboard) -> None:
    key, value = "large_value", "y" * 300_000  # its JSON text (quotes included): 300,002 bytes
    status, body = dashboard.api("POST", "/api/kv", {"op": "put", "key": key, "value": value})
    assert status == 200 and body["status"] == 200, body
    try:
        cell = page.locator(f'[data-kv-node="node2"] tr[data-key="{key}"] td')
        wait_until("node2's KV view to show the start of the value and its size",
                   lambda: cell.count() == 1 and "293.0 KiB" in cell.inner_text())
        assert len(cell.inner_text()) < 100, cell.inner_text()
        cell.locator("button").click()
        whole = page.locator('[data-node="node2"] .kv-full pre')
        wait_until("all of the value, read from node2", lambda: whole.count() == 1 and whole.inner_text() == value)
    finally:
        dashboard.api("POST", "/api/kv", {"op": "delete", "key": key})


@browser_test
def test_load_pause_scrub_and_export(page: Any, dashboard: Dashboard) -> None:
    page.fill("#load-writers", "8")
    page.fill("#load-seconds", "3")
    page.click("#load-start")
    wait_until("the load to report", lambda: "running" in page.locator("#load-out").inner_text(), 10)
    wait_until("a link's rate shown on the ring", lambda: page.evaluate(
        "() => [...document.querySelectorAll('[data-rate]')].some(t => t.textContent.trim())"), 10)
    shot(page, "load.png")
    wait_until("the load to finish", lambda: "finished" in page.locator("#load-out").inner_text(), 20)
    assert "writes ok" in page.locator("#load-out").inner_text()
    time.sleep(2.5)  # the metrics polls after the last write
    page.click("#pause")
    assert page.locator("#pause").get_attribute("aria-pressed") == "true"
    page.locator("#scrub").fill("500")
    assert "viewing" in page.locator("#view-at").inner_text()
    # a card shows its node as it was: its buttons, which would act on the node as it is, are off
    wait_until("every card's buttons off in the past", lambda: page.locator(
        "[data-node] .buttons button:not([disabled])").count() == 0, 5)
    page.click("#live")
    assert page.locator("#view-at").inner_text() == "live"
    wait_until("the crash buttons back", lambda: page.locator(
        '[data-node] button[data-op="crash"]:not([disabled])').count() >= 1, 5)
    status, text = dashboard.api("GET", "/api/trace.ndjson")
    assert status == 200
    events = [json.loads(line) for line in text.splitlines() if line]
    assert {"status", "trace", "msg", "action"} <= {e["type"] for e in events}
    # The load wrote through every node; the throughput chart (the leader's commits) counts all of it.
    done = [e for e in events if e["type"] == "load" and not e.get("running")][-1]
    charted = sum(e["writesPerSecond"] * e["interval"] for e in events if e["type"] == "metrics" and e["isLeader"])
    assert charted >= 0.8 * done["ok"], (charted, done)


@browser_test
def test_slow_motion_changes_the_timers_without_a_restart_or_a_new_term(
        page: Any, dashboard: Dashboard, cluster: LocalCluster) -> None:
    leader, term = wait_until("one leader", lambda: one_leader(page))
    before = cards(page)
    assert all(c["tickMs"] == 20 for c in before.values()), before
    restarts = {n: p.restarts for n, p in cluster.supervisor.nodes.items()}
    page.click("#slowmo")
    try:
        wait_until("every node's tick 10x longer", lambda: all(
            c["tickMs"] == 200 and c["reach"] == "ok" for c in cards(page).values()), 10, 0.1)
        after = cards(page)
        for node, c in after.items():
            assert c["electionTimeoutMs"] >= 10 * 200, (node, c)  # at least 10 ticks of 200 ms
            assert c["electionTimeoutMs"] > before[node]["electionTimeoutMs"]
        wait_until("the slow-motion badge", lambda: "slow motion" in page.locator("#slowmo-pill").inner_text(), 5)
        time.sleep(3)  # several of the old election timeouts: nothing may move
        assert one_leader(page) == (leader, term), "changing the speed moved the term or the leader"
        assert {n: p.restarts for n, p in cluster.supervisor.nodes.items()} == restarts, "a node was restarted"
        shot(page, "slow-motion.png")
    finally:
        status, body = dashboard.api("POST", "/api/slowmo", {"factor": 1})
        assert status == 200, body
    wait_until("normal speed again", lambda: all(c["tickMs"] == 20 for c in cards(page).values()), 10)
    assert one_leader(page) == (leader, term)


@browser_test
def test_phone_width(page: Any) -> None:
    page.set_viewport_size({"width": 390, "height": 844})
    wait_until("one leader", lambda: one_leader(page))
    width = page.evaluate("() => document.documentElement.scrollWidth")
    assert width <= 392, f"the page scrolls sideways at phone width ({width} px)"
    assert page.locator('[data-node="node1"] button[data-op="force-election"]').is_visible()
    shot(page, "phone.png")
    unnamed = page.evaluate("""() => [...document.querySelectorAll('button, input, select')]
        .filter(e => !(e.getAttribute('aria-label') || e.labels?.length || e.textContent.trim()))
        .map(e => e.outerHTML)""")
    assert not unnamed, f"controls without an accessible name: {unnamed}"


@browser_test
def test_keyboard_alone_can_force_an_election(page: Any) -> None:
    leader, term = wait_until("one leader", lambda: one_leader(page))
    follower = next(n for n in cards(page) if n != leader)
    page.locator(f'[data-ring-node="{follower}"]').focus()
    page.keyboard.press("Enter")
    wait_until("a higher term with one leader", lambda: (r := one_leader(page)) and r[1] > term and r, 20)


@browser_test
def test_attached_to_a_remote_cluster_says_what_is_unavailable(browser: Any, cluster: LocalCluster) -> None:
    remote = Dashboard(list(cluster.urls.values()), None)
    try:
        status, body = remote.api("POST", "/api/nodes/node1/crash")
        assert status == 501 and "supervisor" in body["error"], body
        status, body = remote.api("POST", "/api/slowmo", {"factor": 10})
        assert status == 501, body
        status, body = remote.api("POST", "/api/members", {})
        assert status == 501 and "supervisor" in body["error"], body
        context = browser.new_context(viewport={"width": 1200, "height": 900})
        try:
            pg = context.new_page()
            pg.goto(remote.url)
            wait_until("three nodes with status", lambda: len([c for c in cards(pg).values() if c["term"]]) == 3)
            assert pg.locator("#remote-note").is_visible()
            assert "remote cluster" in pg.locator("#remote-note").inner_text()
            assert pg.locator('[data-node="node1"] button[data-op="crash"]').is_disabled()
            assert pg.locator("#slowmo").is_disabled()
            assert pg.locator('[data-node="node1"] button[data-op="force-election"]').is_enabled()
            # "The dashboard cannot reach a node" and "a node is partitioned" are different things.
            cluster.supervisor.kill("node3")
            status, body = remote.api("POST", "/api/nodes/node1/isolate")
            assert status == 200, body
            wait_until("node3 unreachable, node1 partitioned", lambda: (c := cards(pg))["node3"]["reach"]
                       == "unreachable" and c["node1"]["reach"] == "partitioned")
            shown = cards(pg)
            assert "dashboard cannot reach node" in shown["node3"]["text"]
            assert "partitioned from all peers" in shown["node1"]["text"] and not shown["node3"]["partitioned"]
            shot(pg, "remote-unreachable-vs-partitioned.png")
        finally:
            context.close()
    finally:
        remote.api("POST", "/api/heal")
        cluster.supervisor.start("node3")
        remote.stop()


@browser_test
def test_a_node_added_from_the_page_catches_up_as_a_learner_is_promoted_and_removed(
        browser: Any, growing_dashboard: Dashboard, growing_cluster: LocalCluster) -> None:
    before = sorted(growing_cluster.supervisor.nodes)  # node1..node3, or the three the tour's test left
    voters = ", ".join(before)
    with opened(browser, growing_dashboard) as pg:
        pg.locator("#add-promote").uncheck()  # stay a learner, to be seen and promoted by hand
        pg.click("#add-node")
        wait_until("the ring to grow to four", lambda: pg.locator("[data-ring-node]").count() == 4, 30)
        drawn = pg.locator("[data-ring-node]").evaluate_all("gs => gs.map(g => g.getAttribute('data-ring-node'))")
        new = next(n for n in drawn if n not in before)
        ring = pg.locator(f'[data-ring-node="{new}"]')
        wait_until(f"{new} drawn as a learner that caught up", lambda: ring.get_attribute("data-role") == "learner"
                   and "caught up" in ring.locator(".bar-text").text_content(), 30)
        wait_until(f"{new}'s card to show it a learner", lambda: "learner (follower)" in cards(pg)[new]["text"])
        assert cards(pg)[new]["member"] == "learner"
        assert "learner, does not vote" in cards(pg)[new]["text"]
        wait_until("the feed to tell the new configuration, by name", lambda: f"now has voters {voters} and "
                   f"learners {new}" in pg.locator("#feed").inner_text())
        shot(pg, "membership.png")

        pg.locator(f'[data-node="{new}"] button[data-op="promote"]').click()
        wait_until(f"{new} a voter", lambda: cards(pg)[new]["member"] == "voter"
                   and ring.get_attribute("data-role") in ("follower", "leader"), 30)
        wait_until("the feed to tell four voters", lambda: f"now has voters {voters}, {new}"
                   in pg.locator("#feed").inner_text())
        assert f"{new}-" not in pg.locator("#feed").inner_text(), "members are named by name, not by id"
        wait_until("each configuration change marked on the timeline", lambda: pg.locator("#timeline .m-conf").count()
                   >= 2, 5)

        pg.locator(f'[data-node="{new}"] button[data-op="remove"]').click()
        wait_until(f"{new} shown removed", lambda: cards(pg).get(new, {}).get("member") == "removed", 30)
        assert "removed from the cluster" in cards(pg)[new]["text"]
        wait_until("the ring back to three", lambda: pg.locator("[data-ring-node]").count() == 3, 30)
    assert new not in growing_cluster.supervisor.nodes
    assert (growing_cluster.data_dir / new / "raft").is_dir(), "a removed node's data directory is kept"


@browser_test
def test_guided_tour_replaces_a_dead_machine_while_writes_flow(
        browser: Any, growing_dashboard: Dashboard, growing_cluster: LocalCluster) -> None:
    with opened(browser, growing_dashboard) as pg:
        seen_learner: list[bool] = []

        def look(caption: str) -> None:
            if "joined as a learner" in caption:
                wait_until("the new node drawn as a learner, and reached", lambda: any(
                    c["member"] == "learner" and c["reach"] == "ok" for c in cards(pg).values())
                    and pg.locator('[data-ring-node][data-role="learner"]').count() == 1, 10)
                seen_learner.append(True)
                shot(pg, "replace-machine.png")

        captions = follow_tour(pg, "replace", look)
        assert seen_learner and "Demo finished" in captions[-1], captions
        told_on_page = "\n".join(captions) + "\n" + pg.locator("#feed").inner_text()  # the captions the tour showed
        for told in ("dies for good", "is removed: the voters are now", "joins through", "holds entry",
                     "is a voter now", "writes were acknowledged"):
            assert told in told_on_page, (told, told_on_page)
        wait_until("the removed machine gone from the ring", lambda: pg.locator("[data-ring-node]").count() == 3, 10)
    supervised = set(growing_cluster.supervisor.nodes)
    assert len(supervised) == 3 and len(supervised - {"node1", "node2", "node3"}) == 1, supervised


def test_dashboard_command_serves_a_remote_cluster_until_sigterm(cluster: LocalCluster, tmp_path: Path) -> None:
    """`raftkv dashboard --endpoints ...` in its own process: it serves, and SIGTERM ends it cleanly."""
    port = free_ports(1)[0]
    code = "from raftkv.dashboard.cli_command import dashboard; dashboard()"
    log = open(tmp_path / "dashboard.log", "wb")  # noqa: SIM115 - handed to the child process
    proc = subprocess.Popen([sys.executable, "-c", code, "--endpoints", ",".join(cluster.urls.values()),
                             "--port", str(port)], stdout=log, stderr=subprocess.STDOUT)
    log.close()
    try:
        def state() -> Any:
            try:
                status, body = http("GET", f"http://127.0.0.1:{port}/api/state", timeout=2)
            except OSError:
                return None
            return body if status == 200 and all(n["status"] for n in body["nodes"]) else None

        body = wait_until("the dashboard to serve every node's status", state, 20)
        assert body["supervisor"] is False and body["slowmo"]["available"] is False
        assert sorted(n["id"] for n in body["nodes"]) == ["node1", "node2", "node3"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_number_fields_out_of_range_or_not_numbers_get_a_400_naming_the_field_and_range(dashboard: Dashboard) -> None:
    from raftkv.dashboard.lab import SLOWMO_MAX_FACTOR
    from raftkv.dashboard.load import MAX_SECONDS, MAX_WRITERS

    refused = [
        ("/api/slowmo", {"factor": "abc"}, f"factor: an integer from 1 to {SLOWMO_MAX_FACTOR}"),
        ("/api/slowmo", {"factor": SLOWMO_MAX_FACTOR + 1}, f"factor: an integer from 1 to {SLOWMO_MAX_FACTOR}"),
        ("/api/slowmo", {"factor": True}, f"factor: an integer from 1 to {SLOWMO_MAX_FACTOR}"),
        ("/api/load", {"writers": "many"}, f"writers: an integer from 1 to {MAX_WRITERS}"),
        ("/api/load", {"writers": 2.5}, f"writers: an integer from 1 to {MAX_WRITERS}"),
        ("/api/load", {"seconds": "ten"}, f"seconds: a number from 0.1 to {MAX_SECONDS}"),
        ("/api/load", {"seconds": 0}, f"seconds: a number from 0.1 to {MAX_SECONDS}"),
    ]
    for path, body, error in refused:
        status, answer = dashboard.api("POST", path, body)
        assert (status, answer["error"]) == (400, error), (path, body, answer)
        assert answer["field"] == next(iter(body)), answer


def test_a_field_a_control_does_not_know_is_refused_and_nothing_is_done(dashboard: Dashboard,
                                                                         cluster: LocalCluster) -> None:
    """Every control of the dashboard's API refuses a body field it does not know (400 naming it),
    before it acts: `{"node": "node3"}` to node2's crash crashed node2, `{"factr": 5}` to slow
    motion set its default of 10. A control that takes no body says so. Next and Stop without a
    tour, and Stop without a load, say there is none."""
    heal(dashboard, cluster)
    dashboard.api("POST", "/api/load/stop")  # a load an earlier test started would change the state below
    before = dashboard.api("GET", "/api/state")[1]
    controls = [
        ("POST", "/api/nodes/node2/crash", None), ("POST", "/api/nodes/node2/force-election", None),
        ("POST", "/api/members/node2/promote", None), ("DELETE", "/api/members/node2", None),
        ("POST", "/api/heal", None), ("POST", "/api/load/stop", None), ("POST", "/api/lab/timeout/node2", None),
        ("POST", "/api/tour/next", None), ("POST", "/api/tour/stop", None), ("POST", "/api/logout", None),
        ("POST", "/api/members", "name, promote"), ("POST", "/api/split", "groups"), ("POST", "/api/cut", "src, dst"),
        ("POST", "/api/link-quality", "node, loss_percent, delay_ms"), ("POST", "/api/load", "writers, seconds"),
        ("POST", "/api/slowmo", "factor"), ("POST", "/api/lab", "active"), ("POST", "/api/lab/clock", "held"),
        ("POST", "/api/lab/rate", "rate"), ("POST", "/api/lab/deliver", "ids"), ("POST", "/api/lab/drop", "ids"),
        ("POST", "/api/lab/snapshot", "every"), ("POST", "/api/tour", "demo"),
        ("POST", "/api/coordination/watch", "prefix, start_revision"), ("POST", "/api/login", "name, password"),
        ("POST", "/api/kv", "op, key, node, value, prev_value, prev_revision, prev_exist, stale, trace"),
    ]
    for method, path, allowed in controls:
        status, answer = dashboard.api(method, path, {"factr": 5})
        known = f"allowed: {allowed}" if allowed else f"{method} {path} takes no body"
        assert (status, answer) == (400, {"error": f"body: unknown field 'factr' ({known})", "field": "factr"}), path
    after = dashboard.api("GET", "/api/state")[1]
    assert all(proc.running and not proc.paused for proc in cluster.supervisor.nodes.values())
    for what in ("slowmo", "load", "tour", "lab"):
        assert after[what] == before[what], what
    links = {n: (r["reach"], r["connectedSince"]) for n, r in before["reach"].items()}
    assert {n: (r["reach"], r["connectedSince"]) for n, r in after["reach"].items()} == links  # none reconnected
    assert [n["id"] for n in after["nodes"]] == [n["id"] for n in before["nodes"]]
    assert dashboard.api("POST", "/api/tour/next") == (409, {"error": "no tour is running: start one first"})
    assert dashboard.api("POST", "/api/tour/stop", {}) == (200, {"stopped": False})
    status, load = dashboard.api("POST", "/api/load/stop", {})
    assert status == 200 and load["stopped"] is False  # (and the figures of the load before, if one ran)


# ------------------------------------------------------------------------------ pure parts ---------
# The checks and the metrics arithmetic, without a browser: a broken guarantee must turn red.


def test_safety_checks_flag_two_leaders_in_one_term() -> None:
    from raftkv.dashboard.safety import SafetyChecker

    s = SafetyChecker()
    assert not s.observe_leader("node1", 3)
    assert not s.observe_leader("node1", 3)
    assert not s.observe_leader("node2", 4)
    assert s.observe_leader("node2", 3)
    broken = {c["id"]: c for c in s.describe()}["one-leader"]
    assert not broken["ok"] and "node1" in broken["violation"] and "node2" in broken["violation"]


def test_safety_checks_flag_diverging_state_and_lost_commits() -> None:
    from raftkv.dashboard.safety import SafetyChecker

    base = {"state": "follower", "term": 2, "revision": 5, "keys": 3, "uptime": 10.0, "logLength": 9}
    s = SafetyChecker()
    assert not s.observe_status("node1", {**base, "lastApplied": 7, "commitIndex": 7})
    assert not s.observe_status("node2", {**base, "lastApplied": 7, "commitIndex": 7})
    assert not s.observe_status("node1", {**base, "lastApplied": 3, "commitIndex": 3, "uptime": 1.0})  # restarted
    assert all(c["ok"] for c in s.describe())
    assert s.observe_status("node3", {**base, "lastApplied": 7, "commitIndex": 7, "revision": 6})
    assert s.observe_status("node2", {**base, "lastApplied": 7, "commitIndex": 6, "uptime": 11.0})
    assert SafetyChecker().observe_status("x", {**base, "term": 1, "commitIndex": 9}) is False
    s2 = SafetyChecker()
    s2.observe_status("node1", {**base, "term": 1, "commitIndex": 9, "lastApplied": 9})
    assert s2.observe_status("node2", {**base, "state": "leader", "term": 2, "logLength": 8, "lastApplied": 1})
    assert "index 9" in {c["id"]: c for c in s2.describe()}["never-lost"]["violation"]


def test_metrics_rates_from_prometheus_text() -> None:
    from raftkv import promtext

    def text(b1: float, b2: float, count: float) -> str:
        return f"""# TYPE raft_propose_to_commit_seconds histogram
raft_propose_to_commit_seconds_bucket{{le="0.001"}} {b1}
raft_propose_to_commit_seconds_bucket{{le="0.01"}} {b2}
raft_propose_to_commit_seconds_bucket{{le="+Inf"}} {count}
raft_propose_to_commit_seconds_count {count}
raft_propose_to_commit_seconds_sum 0.5
raft_leaderless_seconds_total 0.5
raft_is_leader 1
"""

    r = promtext.RateTracker()
    assert r.update(promtext.parse(text(5, 10, 10)), 100.0) is None
    fig = r.update(promtext.parse(text(5, 110, 110)), 101.0)
    assert fig is not None
    assert fig["writesPerSecond"] == 100.0 and fig["isLeader"]
    assert 1.0 < fig["commitP50Ms"] <= 10.0
    assert r.update(promtext.parse(text(1, 3, 3)), 102.0) is None  # the node restarted: counters reset


def test_replaced_entries_are_the_ones_a_node_no_longer_holds_as_they_were() -> None:
    from raftkv.dashboard.logwatch import replaced_entries

    def read(last: int, terms: dict[int, int]) -> dict:
        entries = [{"index": i, "term": t, "summary": f"e{i}t{t}"} for i, t in terms.items()]
        return {"lastIndex": last, "entries": entries}

    before = read(6, {4: 2, 5: 2, 6: 2})
    assert replaced_entries({}, before) == []
    assert replaced_entries(before, read(7, {5: 2, 6: 2, 7: 2})) == []  # a window that moved on: nothing lost
    assert replaced_entries(before, read(5, {4: 2, 5: 3})) == [  # 5 overwritten by term 3, 6 gone
        {"index": 5, "oldTerm": 2, "oldSummary": "e5t2", "newTerm": 3},
        {"index": 6, "oldTerm": 2, "oldSummary": "e6t2", "newTerm": None}]


def test_connection_errors_are_told_in_plain_words() -> None:
    import aiohttp
    from aiohttp.client_reqrep import ConnectionKey

    from raftkv.dashboard.words import plain_error

    key = ConnectionKey("127.0.0.1", 3001, False, True, None, None, None)
    refused = aiohttp.ClientConnectorError(key, ConnectionRefusedError(111, "Connect call failed"))
    assert plain_error(refused) == "nothing answers at 127.0.0.1:3001 (the node's process is not running, or not " \
                                   "listening yet)"
    assert plain_error(aiohttp.ServerDisconnectedError()) == "the node closed the connection"
    assert plain_error(TimeoutError()) == "the node did not answer in time"
    assert "ssl" not in plain_error(refused) and "ClientConnectorError" not in plain_error(refused)
    from raftkv.dashboard.words import unacknowledged_words  # what a load's unanswered writes met, counted

    assert unacknowledged_words({"503": 2, "ClientConnectorError": 73}) == "73 could not connect, 2 answered 503"


def test_recorded_messages_are_sampled_per_link_and_type_heartbeats_more_sparsely() -> None:
    from raftkv.dashboard.hub import HEARTBEAT_RECORD_EVERY_S, MSG_RECORD_EVERY_S, MessageSampler

    sampler = MessageSampler()

    def msg(kind: str, dst: str = "n2") -> dict:
        return {"src": "n1", "dst": dst, "kind": kind, "count": 1}

    assert sampler.keep(msg("AppendRequest")) and sampler.keep(msg("HeartbeatRequest"))
    assert sampler.keep(msg("AppendRequest", dst="n3")), "another link is sampled on its own"
    assert not sampler.keep(msg("AppendRequest")) and not sampler.keep(msg("HeartbeatRequest"))
    time.sleep(MSG_RECORD_EVERY_S * 1.5)
    later = msg("AppendRequest")
    assert sampler.keep(later) and later["skipped"] == 1, "the next one kept says how many were left out"
    assert not sampler.keep(msg("HeartbeatRequest")), f"heartbeats: one per {HEARTBEAT_RECORD_EVERY_S} s"
    assert sampler.describe()["skipped"] == 3
