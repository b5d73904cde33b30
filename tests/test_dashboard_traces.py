"""A traced write's waterfall on the dashboard, and the critical path it states.

In Chromium, on three real node processes that export their spans with the OpenTelemetry SDK's own
OTLP exporter to the dashboard's receiver, with the variables `raftkv up --trace --trace-ratio 0`
gives them (so only a write that asks is traced): the form's switch turns on, a write goes through
a follower, the feed offers its trace once the spans are on the dashboard, and the waterfall shows
the spans of all three nodes, the fsyncs, the network hops and a sentence naming the node whose
disk the write waited for, which must be the node whose durability completed the majority in the
spans themselves. Then the words of the switch when tracing is off, and the critical path of
spans where the leader's own fsync is, and is not, what the commit waited for.
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from cluster import LocalCluster
from dashboard_pages import Dashboard, chromium, one_leader, opened, shot, wait_until
from test_tracing import ASK, call

from raftkv.cli import trace_env
from raftkv.core.quorum import majority
from raftkv.dashboard.traces import TURN_ON, TraceStore, tracing_state
from raftkv.dashboard.waterfall import waterfall
from raftkv.supervisor import Supervisor, free_ports, loopback_members

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory) -> Any:
    port = free_ports(1)[0]  # the dashboard's, known before the nodes start: they send their spans there
    env = {**trace_env("127.0.0.1", port, 0), "OTEL_BSP_SCHEDULE_DELAY": "100"}
    cluster = LocalCluster(Path(tmp_path_factory.mktemp("traced")) / "data", nodes=3, env=env).start()
    try:
        cluster.wait_for_leader(30)
        dashboard = Dashboard(list(cluster.urls.values()), cluster.supervisor, port=port)
        try:
            yield cluster, dashboard
        finally:
            dashboard.stop()
    finally:
        cluster.stop()


def decided_by(spans: list[dict]) -> str:
    """The voter whose durability completed the majority, read straight from the spans: the leader
    when its fsync ended, a follower when its acknowledgement reached the leader."""
    propose = next(s for s in spans if s["name"] == "propose")
    leader, voters = propose["node"], propose["attributes"]["raftkv.voters"]
    durable = {e["attributes"]["raftkv.peer"]: e["timeNs"] for e in propose["events"]
               if e["name"].startswith("acknowledged by ")}
    fsync = next(s for s in spans if s["name"] == "fsync" and s["node"] == leader)
    durable[leader] = fsync["endNs"]
    return sorted(durable, key=durable.__getitem__)[majority(len(voters)) - 1]


def test_the_switch_traces_a_write_and_its_waterfall_names_what_it_waited_for(traced: Any) -> None:
    cluster, dashboard = traced
    with chromium() as browser, opened(browser, dashboard, 1400, 1000) as pg:
        leader, _ = wait_until("one leader on the page", lambda: one_leader(pg))
        follower = next(m.id for m in cluster.members if m.id != leader)
        wait_until("the switch to be on offer", lambda: not pg.locator("#kv-trace").is_disabled())
        assert "tracing is on" in pg.locator("#kv-trace-why").inner_text().lower()
        pg.select_option("#kv-node", follower)

        # The ratio is 0: without the switch the write is not traced.
        pg.fill("#kv-key", "untraced")
        pg.click("#kv-send")
        wait_until("the untraced write's answer", lambda: pg.locator("#kv-result").get_attribute("data-status"))
        assert pg.locator("#kv-result").get_attribute("data-trace") is None
        untraced = pg.locator("#feed li", has_text="PUT untraced")
        wait_until("the untraced write in the feed", lambda: untraced.count() >= 1)
        assert untraced.locator("button").count() == 0, "no trace to open for a write nobody traced"

        pg.check("#kv-trace")
        pg.fill("#kv-key", "traced-from-the-page")
        pg.click("#kv-send")
        trace_id = wait_until("the traced write's answer naming its trace",
                              lambda: pg.locator("#kv-result").get_attribute("data-trace"))
        assert pg.locator("#kv-result").get_attribute("data-status") == "200"
        # The feed offers the trace only once its spans are on the dashboard; open it from there.
        opener = pg.locator(f'#feed button[data-trace="{trace_id}"]')
        wait_until("the feed to offer the write's trace", lambda: opener.count() == 1)
        opener.click()

        def drawn() -> Any:
            rows = pg.evaluate("""() => [...document.querySelectorAll('#waterfall .wf-row')].map(r => ({
                node: r.dataset.node, name: r.dataset.name, kind: r.dataset.kind,
                critical: r.dataset.critical === 'true', text: r.innerText}))""")
            fsyncs = {r["node"] for r in rows if r["name"] == "fsync"}
            return rows if len(fsyncs) == 3 and any(r["name"] == "acknowledge" for r in rows) else None

        rows = wait_until("the waterfall with every node's fsync", drawn)
        nodes = {m.id for m in cluster.members}
        assert {r["node"] for r in rows if r["kind"] == "span"} == nodes
        assert any(r["name"] == "fsync" and "waits for its disk" in r["text"] for r in rows), "fsync in plain words"
        hops = [r["text"] for r in rows if r["kind"] == "hop"]
        assert any(f"{follower} → {leader}: the write forwarded" in h for h in hops), hops
        assert any(f"{leader} → " in h and ": the entry" in h for h in hops), hops
        assert any(r["critical"] for r in rows) and not all(r["critical"] for r in rows)

        sentence = pg.locator("#trace-sentence").inner_text()
        waited = re.search(r"This write waited [\d.]+ ms for (\w+)'s disk", sentence)
        assert waited and waited.group(1) in nodes, sentence
        _, body = dashboard.api("GET", f"/api/traces/{trace_id}")
        assert waited.group(1) == decided_by(body["spans"]), (sentence, "not the node that completed the majority")
        critical = {r["node"] for r in rows if r["critical"] and r["name"] == "fsync"}
        assert critical == {waited.group(1)}, "the fsync on the critical path is that node's"
        shot(pg, "trace-waterfall.png", show="#trace-panel")

        # A burst of traced writes: the leader writes them in a few batches, and the page shows one
        # fsync span shared by several writes, with how many it served (a link to each).
        with ThreadPoolExecutor(24) as pool:
            ids = [h["X-Raftkv-Trace-Id"] for _, h, _ in pool.map(
                lambda i: call("PUT", cluster.url(leader) + f"/kv/burst{i}", {"value": i}, ASK), range(24))]

        def a_shared_fsync() -> Any:
            for tid in ids:
                status, body = dashboard.api("GET", f"/api/traces/{tid}")
                rows = body["waterfall"]["rows"] if status == 200 else []
                if any(r["name"] == "fsync" and r["node"] == leader and (r["shared"] or {}).get("tracedWrites", 0) > 1
                       for r in rows):
                    return tid, body
            return None

        tid, body = wait_until("a trace whose leader fsync served several traced writes", a_shared_fsync)
        fsync = next(s for s in body["spans"] if s["name"] == "fsync" and s["node"] == leader)
        served = len({ln["traceId"] for ln in fsync["links"]})
        pg.evaluate(f"location.hash = 'trace={tid}'")
        row = pg.locator(f'#waterfall .wf-row.shared[data-name="fsync"][data-node="{leader}"]')
        wait_until("the shared fsync drawn", lambda: row.count() == 1)
        assert f"{served} traced writes" in row.inner_text() and "shared: one fsync for" in row.inner_text()


def test_the_switch_says_how_to_turn_tracing_on(tmp_path: Path) -> None:
    members, store = loopback_members(3), TraceStore()
    untraced = Supervisor(members, tmp_path, env={"OTEL_TRACES_EXPORTER": "none"})  # as `raftkv up` with no --trace
    off = tracing_state({**untraced.env}, store, ("127.0.0.1", 8080))
    assert not off["on"] and off["text"] == TURN_ON and "raftkv up --trace" in off["text"]
    here = tracing_state(trace_env("127.0.0.1", 8080, 0.01), store, ("127.0.0.1", 8080))
    assert here["on"] and here["here"] and "1% of requests" in here["text"]
    elsewhere = tracing_state({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://jaeger:4318"}, store, ("127.0.0.1", 8080))
    assert elsewhere["on"] and not elsewhere["here"] and "http://jaeger:4318/v1/traces" in elsewhere["text"]
    remote = tracing_state(None, store, ("127.0.0.1", 8080))  # attached to nodes it did not start
    assert not remote["on"] and "OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:8080" in remote["text"]


def span(node: str, name: str, start_us: float, end_us: float, parent: str | None = None, **fields: Any) -> dict:
    sid = f"{node}-{name}".replace(" ", "-")
    return {"traceId": "t", "spanId": sid, "parentSpanId": parent, "name": name, "node": node,
            "startNs": int(start_us * 1000), "endNs": int(end_us * 1000), "attributes": fields.get("attributes", {}),
            "events": fields.get("events", []), "links": fields.get("links", []), "status": "unset",
            "statusMessage": ""}


def write_on_leader(leader_fsync_end_us: float) -> list[dict]:
    """A write taken by node1 (the leader); the followers' acknowledgements reach it at 600 and
    700 us; its own fsync ends when asked."""
    events = [{"name": "acknowledged by node2", "timeNs": 600_000, "attributes": {"raftkv.peer": "node2"}},
              {"name": "acknowledged by node3", "timeNs": 700_000, "attributes": {"raftkv.peer": "node3"}}]
    commit = sorted([600, 700, leader_fsync_end_us])[1] + 10  # a majority of three durable, and then some
    events.append({"name": "committed", "timeNs": int(commit * 1000), "attributes": {}})
    events.sort(key=lambda e: e["timeNs"])
    spans = [span("node1", "PUT /kv/{key}", 0, 900, attributes={"http.route": "/kv/{key}"}),
             span("node1", "propose", 50, commit, "node1-PUT-/kv/{key}", events=events,
                  attributes={"raftkv.voters": ["node1", "node2", "node3"]}),
             span("node1", "write log", 60, 80, "node1-propose", attributes={"raftkv.entries": 3}),
             span("node1", "fsync", 80, leader_fsync_end_us, "node1-propose", attributes={"raftkv.entries": 3})]
    for node, offset in (("node2", 0), ("node3", 100)):
        spans += [span(node, "write log", 150 + offset, 170 + offset, "node1-propose"),
                  span(node, "fsync", 170 + offset, 500 + offset, "node1-propose"),
                  span(node, "acknowledge", 500 + offset, 520 + offset, "node1-propose")]
    spans.append(span("node1", "apply", commit + 5, commit + 20, "node1-propose"))
    return spans


def test_the_leaders_slow_fsync_is_off_the_critical_path_when_two_followers_are_a_majority() -> None:
    w = waterfall("t", write_on_leader(leader_fsync_end_us=2000))
    assert "waited 0.3 ms for node3's disk" in w["sentence"], w["sentence"]
    assert "node3's acknowledgement reached node1 (node2 and node3 had it on disk, a majority of 3)" in w["sentence"]
    assert "node1's own fsync (1.9 ms) was not on the critical path" in w["sentence"], w["sentence"]
    critical = {(r["node"], r["name"]) for r in w["rows"] if r["critical"] and r["kind"] == "span"}
    assert ("node3", "fsync") in critical and not {("node1", "fsync"), ("node2", "fsync")} & critical
    assert any(r["label"].startswith("node3 → node1: the acknowledgement") and r["critical"] for r in w["rows"])
    assert not any(r["label"].startswith("node2 → node1: the acknowledgement") and r["critical"] for r in w["rows"])
    shared = next(r for r in w["rows"] if r["node"] == "node1" and r["name"] == "fsync")["shared"]
    assert shared == {"entries": 3, "tracedWrites": 1}, "one fsync for three entries"


def test_the_leaders_fsync_is_the_critical_path_when_it_completes_the_majority() -> None:
    w = waterfall("t", write_on_leader(leader_fsync_end_us=650))
    assert "waited 0.6 ms for node1's disk" in w["sentence"], w["sentence"]
    assert "committed when node1's own fsync ended (node2 and node1 then had it on disk, a majority of 3)" \
        in w["sentence"], w["sentence"]
    critical = {(r["node"], r["name"]) for r in w["rows"] if r["critical"] and r["kind"] == "span"}
    assert ("node1", "fsync") in critical and ("node2", "fsync") not in critical
    # The leader notes acknowledgements until the commit: one it never noted did not count, and is said so.
    spans = write_on_leader(leader_fsync_end_us=650)
    propose = next(s for s in spans if s["name"] == "propose")
    propose["events"] = [e for e in propose["events"] if e["name"] != "acknowledged by node3"]
    assert "node3's acknowledgement reached node1 after the commit (or not at all)" in waterfall("t", spans)["sentence"]
