"""The dashboard's lab, guided tours, true log table, replay and cost, in a real browser against a
real 3-node cluster of OS processes (one cluster, dashboard and Chromium for the module, as in
test_dashboard.py; before each test the cluster is brought back to health).

What a learner comes for, checked on the page: an election stepped message by message with each
role change seen in order; a split vote reached in the lab; a diverged log repaired, its truncated
cells shown beside their replacement; a snapshot installed on a lagging node; a trace exported
and loaded back, replayed; equal committed indexes showing equal terms on every node; every tour
run twice, the second time after the load generator. And what the page costs: the main thread's
CPU time while idle, and its longest task while the load generator runs (printed, and bounded).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cluster import LocalCluster, module_cluster
from dashboard_pages import (
    Dashboard,
    cards,
    click_node_button,
    follow_tour,
    heal,
    log_cells,
    one_leader,
    opened,
    shot,
    tour_state,
    wait_until,
)

pytestmark = [pytest.mark.timeout(300), pytest.mark.browser]

IDLE_MEASURE_S = 5.0
IDLE_WINDOWS = 2  # the page's idle work is steady; the least busy window is the one least disturbed
MAX_IDLE_CPU_FRACTION = 0.10  # of one core
# Under load, the CPU time of main-thread tasks: the browser's long-task mark, which at most 1% of
# them may pass (one frame's layout and paint of the whole page takes 30-50 ms here, and a little
# more when other work shares the cores), and a bound none may pass.
LONG_TASK_MS = 50.0
MAX_LONG_TASK_SHARE = 0.01
MAX_TASK_MS = 100.0
CLASSIC_DEMOS = ("election", "failover", "partition", "consistency")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    yield from module_cluster(tmp_path_factory.mktemp("dashboard-lab") / "data")


@pytest.fixture
def page(browser: Any, dashboard: Dashboard, cluster: LocalCluster) -> Iterator[Any]:
    """The dashboard at 1440x900 in a fresh browser context, no tour running, the lab off and the
    cluster healthy."""
    dashboard.api("POST", "/api/tour/stop")
    dashboard.api("POST", "/api/lab", {"active": False})
    heal(dashboard, cluster)
    with opened(browser, dashboard, 1440, 900) as pg:
        wait_until("one leader on the page", lambda: one_leader(pg), 20)
        yield pg
    dashboard.api("POST", "/api/lab", {"active": False})


def deliver(pg: Any, src: str, dst: str, kind: str, pre_vote: bool = False) -> None:
    """Wait for the held `kind` from src to dst in the lab's queue and press its Deliver."""
    held = pg.locator(f'#lab-queue li[data-src="{src}"][data-dst="{dst}"][data-type="{kind}"]'
                      f'[data-pre-vote="{str(pre_vote).lower()}"]')
    wait_until(f"{src}'s {kind} to {dst} held in the queue", lambda: held.count() >= 1, 10)
    held.first.locator('button[data-act="deliver"]').click()
    wait_until(f"{src}'s {kind} to {dst} gone from the queue", lambda: held.count() == 0, 10)


def roles(pg: Any) -> dict[str, tuple[str, int]]:
    return {n: (c["role"], c["term"]) for n, c in cards(pg).items()}


# ------------------------------------------------------------------------------ the lab ------------


def test_an_election_stepped_message_by_message_shows_each_role_change_in_order(page: Any) -> None:
    leader, term = one_leader(page)
    candidate, voter = sorted(n for n in cards(page) if n != leader)
    page.click("#lab-toggle")
    wait_until("the lab on, clocks held", lambda: "clocks held" in page.locator("#lab-pill").inner_text(), 10)
    seen = [roles(page)]

    click_node_button(page, candidate, "force-election")  # through the leader: a transfer request first
    deliver(page, candidate, leader, "TransferRequest")
    time.sleep(0.5)
    assert roles(page) == seen[-1], "nothing may move while the leader's answer is held"
    deliver(page, leader, candidate, "TimeoutNow")
    wait_until(f"{candidate} a candidate of term {term + 1}",
               lambda: roles(page)[candidate] == ("candidate", term + 1), 10)
    seen.append(roles(page))
    assert seen[-1][leader] == ("leader", term) and seen[-1][voter] == ("follower", term)

    deliver(page, candidate, voter, "VoteRequest")
    wait_until(f"{voter} in term {term + 1}", lambda: roles(page)[voter] == ("follower", term + 1), 10)
    seen.append(roles(page))
    assert seen[-1][candidate] == ("candidate", term + 1), "the vote is held: no leader yet"
    own = page.locator(f'[data-ring-node="{candidate}"] .vote-badges text').first  # who voted, then how
    assert own.text_content().startswith(f"{candidate.replace('node', 'n')}✓"), own.text_content()
    shot(page, "lab-election.png")

    deliver(page, voter, candidate, "VoteResponse")
    wait_until(f"{candidate} leader of term {term + 1}", lambda: roles(page)[candidate] == ("leader", term + 1), 10)
    seen.append(roles(page))
    assert seen[-1][leader] == ("leader", term), f"{leader} hears of the new term only when a message reaches it"
    assert [s[candidate][0] for s in seen] == ["follower", "candidate", "candidate", "leader"]

    page.select_option("#lab-rate", "live")  # messages flow as sent; the lab stays on, the clocks held
    wait_until("the lab letting messages flow", lambda: "messages flow live" in page.locator("#lab-pill").inner_text()
               and page.locator("#lab-queue li").count() == 0, 10)
    wait_until(f"{leader} told of term {term + 1}", lambda: roles(page)[leader] == ("follower", term + 1), 10)
    page.click("#lab-toggle")  # leaving sends everything held; the clocks run again
    wait_until("the whole cluster following the new leader", lambda: one_leader(page) == (candidate, term + 1), 15)
    feed = page.locator("#feed").inner_text()
    assert "lab: hold-and-step on" in feed and "lab: delivered" not in feed  # deliveries travel, they do not chatter


def test_a_split_vote_is_reached_in_the_lab_then_a_new_term_elects_a_leader(page: Any) -> None:
    split: list[dict] = []

    def look(caption: str) -> None:
        if "Split vote:" in caption:
            shown = cards(page)
            candidates = {n: c for n, c in shown.items() if c["role"] == "candidate"}
            assert len(candidates) == 2 and len({c["term"] for c in candidates.values()}) == 1, shown
            assert all("refused" in c["text"] for c in candidates.values()), shown
            split.append(candidates)
            shot(page, "split-vote.png")

    captions = follow_tour(page, "split-vote", look)
    assert split, captions
    term = next(iter(split[0].values()))["term"]
    wait_until("one leader in a later term", lambda: (r := one_leader(page)) and r[1] > term, 20)


def test_divergence_and_repair_shows_the_truncated_cells_and_their_replacement(page: Any) -> None:
    repaired: list[dict] = []

    def look(caption: str) -> None:
        if "dropped its conflicting entries" in caption:
            def table_shows_the_repair() -> tuple[dict, dict] | None:
                # The table follows each node's /raft/log as it polls it: it may trail the caption.
                rows = log_cells(page)
                replaced = {n: [c for c in row.values() if c["oldTerm"] is not None and "replaced" in c["classes"]]
                            for n, row in rows.items()}
                return (rows, replaced) if any(replaced.values()) else None

            rows, replaced = wait_until("the replaced cells in the log table", table_shows_the_repair, 10)
            old_leader = next(n for n, cells in replaced.items() if cells)
            assert all(c["term"] != c["oldTerm"] for c in replaced[old_leader]), replaced
            repaired.append(replaced)
            assert_equal_committed_terms(rows)
            shot(page, "divergence.png", "#h-logs")

    captions = follow_tour(page, "divergence", look)
    assert repaired, captions


def test_a_snapshot_install_is_seen_on_the_lagging_node(page: Any) -> None:
    installed: list[str] = []

    def look(caption: str) -> None:
        if "installed it at index" in caption:
            lagging = caption.split(" installed it at index")[0].rsplit(" ", 1)[-1]
            row = log_cells(page)[lagging]
            wait_until(f"{lagging}'s row to start at its snapshot", lambda: any(
                "snap" in c["classes"] for c in log_cells(page)[lagging].values()) or min(row) > 1, 10)
            feed = page.locator("#feed").inner_text()
            assert re.search(rf"sent a snapshot at index \d+ to {lagging}", feed), feed
            installed.append(lagging)
            shot(page, "snapshot.png")

    follow_tour(page, "snapshot", look)
    assert installed
    assert "snapshot" in page.locator("#feed").inner_text()


def test_equal_committed_indexes_show_equal_terms_on_every_node(page: Any, dashboard: Dashboard) -> None:
    status, body = dashboard.api("POST", "/api/load", {"writers": 4, "seconds": 2})
    assert status == 200, body
    wait_until("the load to finish", lambda: "finished" in page.locator("#load-out").inner_text(), 20)
    dashboard.api("POST", f"/api/nodes/{one_leader(page)[0]}/force-election")  # a term change among the entries
    wait_until("one leader", lambda: one_leader(page), 20)
    rows = wait_until("every row's log read", lambda: (r := log_cells(page)) and all(
        any(c["committed"] for c in row.values()) for row in r.values()) and r, 10)
    assert_equal_committed_terms(rows)


def assert_equal_committed_terms(rows: dict[str, dict[int, dict]]) -> None:
    by_index: dict[int, set[int]] = {}
    for row in rows.values():
        for index, c in row.items():
            if c["committed"] and c["term"] is not None:
                by_index.setdefault(index, set()).add(c["term"])
    assert by_index, rows
    assert all(len(terms) == 1 for terms in by_index.values()), {i: t for i, t in by_index.items() if len(t) > 1}


# ------------------------------------------------------------------------------ replay -------------


def test_an_exported_trace_loaded_back_replays_and_says_it_is_the_past(
        page: Any, dashboard: Dashboard, tmp_path: Path) -> None:
    dashboard.api("POST", f"/api/nodes/{one_leader(page)[0]}/force-election")
    wait_until("one leader", lambda: one_leader(page), 20)
    status, text = dashboard.api("GET", "/api/trace.ndjson")
    assert status == 200 and text.startswith('{"type": "export"'), text[:200]
    trace = tmp_path / "raftkv-trace.ndjson"
    trace.write_text(text)
    page.set_input_files("#trace-file", str(trace))
    mode = page.locator("#mode-pill")
    wait_until("the header to say a trace file is shown", lambda: "PAST: trace file" in mode.inner_text(), 10)
    assert "events" in page.locator("#replay-msg").inner_text()
    assert page.locator("#sampling").inner_text().startswith("Messages"), "the page says whether messages are sampled"
    first = page.locator("#view-at").inner_text()
    for _ in range(5):
        page.click("#step")
    assert page.locator("#view-at").inner_text() != first
    page.select_option("#speed", "5")
    page.click("#play")
    wait_until("the replay to draw recorded messages travelling", lambda: page.locator("#msg-layer .mg").count()
               >= 1, 20)
    wait_until("the replay to show a leader from the file", lambda: "leader" in [c["role"] for c in cards(page)
                                                                                  .values()], 20)
    shot(page, "replay.png")
    page.click("#live")
    wait_until("live again", lambda: mode.inner_text() == "LIVE" and one_leader(page), 15)


# ------------------------------------------------------------------------------ cost ---------------


def test_the_idle_page_is_cheap_and_no_frame_is_long_under_load(page: Any, dashboard: Dashboard) -> None:
    """Measured in the CPU time of the page's main thread, not on the clock: this 2-core machine also
    runs the nodes, the load generator and often other tests, and a task that waits for a core takes
    long on the clock while the page does nothing more. Idle: the main thread's busy time over a few
    seconds. Under the load generator: a trace of the main thread's tasks, each task's CPU time (a
    frame's script, style, layout and paint run in such tasks); the long animation frames the page
    reports on the clock are printed beside it. Even CPU time grows when other work shares the cores
    (caches, the scheduler), so idle is measured in a few windows and the least busy one counts."""
    cdp = page.context.new_cdp_session(page)
    cdp.send("Performance.enable", {"timeDomain": "threadTicks"})

    def busy_s() -> float:
        return next(m["value"] for m in cdp.send("Performance.getMetrics")["metrics"] if m["name"] == "TaskDuration")

    def idle_window() -> float:
        before, t0 = busy_s(), time.monotonic()
        time.sleep(IDLE_MEASURE_S)
        return (busy_s() - before) / (time.monotonic() - t0)

    time.sleep(1)
    windows = [idle_window() for _ in range(IDLE_WINDOWS)]
    idle = min(windows)

    page.evaluate("""() => { window.longFrames = [];
        new PerformanceObserver(l => l.getEntries().forEach(e => window.longFrames.push(e.duration)))
          .observe({type: 'long-animation-frame', buffered: false}); }""")
    browser = page.context.browser
    browser.start_tracing(page=page, categories=["toplevel"])
    try:
        status, body = dashboard.api("POST", "/api/load", {"writers": 8, "seconds": 5})
        assert status == 200, body
        wait_until("the load to finish", lambda: "finished" in page.locator("#load-out").inner_text(), 20)
    finally:
        trace = json.loads(browser.stop_tracing())
    tasks_ms = main_thread_task_cpu_ms(trace)
    clock_frames = page.evaluate("() => window.longFrames")
    longest = max(tasks_ms)
    long_tasks = [ms for ms in tasks_ms if ms > LONG_TASK_MS]
    print(f"\npage cost: idle, the main thread busy {', '.join(f'{w:.1%}' for w in windows)} of one core (CPU "
          f"time, {IDLE_MEASURE_S:g} s windows); under load, {len(tasks_ms)} "
          f"main-thread tasks, the longest {longest:.1f} ms of CPU, {len(long_tasks)} over {LONG_TASK_MS:g} ms; "
          f"on the clock {len(clock_frames)} animation frames took over 50 ms "
          f"(longest {max(clock_frames, default=0):.0f} ms)")
    assert idle < MAX_IDLE_CPU_FRACTION, f"idle page keeps the main thread busy: {windows}"
    assert len(long_tasks) <= MAX_LONG_TASK_SHARE * len(tasks_ms), sorted(tasks_ms)[-10:]
    assert longest <= MAX_TASK_MS, sorted(tasks_ms)[-10:]


def main_thread_task_cpu_ms(trace: Any) -> list[float]:
    """The CPU time (ms) of each task the page's main thread ran while traced."""
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    mains = {(e["pid"], e["tid"]) for e in events
             if e.get("ph") == "M" and e.get("name") == "thread_name" and e["args"].get("name") == "CrRendererMain"}
    tasks = [e["tdur"] / 1000 for e in events if e.get("ph") == "X" and (e["pid"], e["tid"]) in mains
             and e.get("name") in ("RunTask", "ThreadControllerImpl::RunTask") and "tdur" in e]
    assert tasks, "the trace holds no task of the page's main thread"
    return tasks


# ------------------------------------------------------------------------------ every tour twice ---


def test_the_classic_demos_run_and_back_shows_an_earlier_step_as_it_was(page: Any) -> None:
    went_back: list[str] = []

    def back_then_next(caption: str) -> None:
        if "step 2:" not in caption:
            return
        page.click("#tour-back")
        wait_until("the first step's caption, in the past", lambda: (s := tour_state(page))["state"] == "past"
                   and "step 1:" in s["caption"], 5)
        assert page.locator("#mode-pill").inner_text().startswith("PAST"), "Back shows the cluster as it was then"
        page.click("#tour-next")  # forward again, to the step that waits
        wait_until("the present step again, live", lambda: (s := tour_state(page))["state"] == "waiting"
                   and s["caption"] == caption and page.locator("#mode-pill").inner_text() == "LIVE", 5)
        went_back.append(caption)

    for demo in CLASSIC_DEMOS:
        captions = follow_tour(page, demo, back_then_next if demo == "election" else None)
        assert "Demo finished" in captions[-1], captions
    assert went_back


def test_every_tour_runs_after_the_load_generator(page: Any, dashboard: Dashboard) -> None:
    """Every demo, after a load run wrote far more keys than a node's status shows (the tests above
    run some of them on their own too); the tour goes through all of them in order."""
    status, body = dashboard.api("POST", "/api/load", {"writers": 8, "seconds": 3})
    assert status == 200, body
    wait_until("the load to finish", lambda: "finished" in page.locator("#load-out").inner_text(), 20)
    wait_until("a card to say it shows the keys written last", lambda: "written last shown"
               in page.locator('[data-node="node2"] .kv-count').inner_text(), 10)
    captions = follow_tour(page, "all")
    assert "every demo ran" in captions[-1], captions
    assert tour_state(page)["state"] == "done"
