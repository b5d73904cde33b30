"""What the dashboard's browser tests share: a dashboard served from a thread, Debian's Chromium
driven by Playwright, and reading what the page shows (cards, leader, log table, the tour).

The tests click what a person would click and wait, always with a bound, for the page to show what
the nodes really did. Screenshots go to docs/screenshots/ (the README shows them). If
/usr/bin/chromium is missing the browser tests skip with the reason, except under CI (CI=...),
where they fail: CI must run them (`./dev test` installs Debian's chromium).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cluster import http

from raftkv.client import NO_ACCESS, Access
from raftkv.dashboard.server import run_dashboard
from raftkv.supervisor import free_ports

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
SHOTS = Path(__file__).resolve().parent.parent / "docs" / "screenshots"
TOUR_STEP_S = 90.0  # the longest a tour's step may take to be carried out (the snapshot demo writes a lot)


def need_chromium() -> None:
    if CHROMIUM.exists():
        return
    reason = f"{CHROMIUM} is missing (install Debian's chromium: ./dev test does)"
    if os.environ.get("CI"):
        pytest.fail(f"CI must run the browser tests, but {reason}")
    pytest.skip(reason)


@contextlib.contextmanager
def chromium() -> Iterator[Any]:
    need_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, timeout=30_000)
        try:
            yield b
        finally:
            b.close()


def wait_until(what: str, check: Callable[[], Any], timeout_s: float = 20.0, every_s: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(every_s)
    raise AssertionError(f"{what}: not within {timeout_s} s (last seen: {last!r})")


class Dashboard:
    """A dashboard served from a thread of this process, like `raftkv up` serves it."""

    def __init__(self, node_urls: list[str], supervisor: Any, access: Access = NO_ACCESS,
                 port: int | None = None) -> None:
        """`access`: how it reaches the nodes (as `raftkv dashboard --user ...` would give it); `port`:
        one chosen before (the nodes of a traced cluster are told where to send their spans)."""
        self.port = port or free_ports(1)[0]
        self.url = f"http://127.0.0.1:{self.port}"
        self._stop, ready = threading.Event(), threading.Event()
        self._thread = threading.Thread(
            target=run_dashboard, args=("127.0.0.1", self.port, node_urls, supervisor),
            kwargs={"stop_event": self._stop, "ready": ready, "access": access}, daemon=True,
            name=f"dashboard-{self.port}")
        self._thread.start()
        assert ready.wait(15), "the dashboard did not start within 15 s"

    def api(self, method: str, path: str, body: Any = None, timeout: float = 60.0) -> tuple[int, Any]:
        return http(method, self.url + path, body, timeout=timeout)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(15)
        assert not self._thread.is_alive(), "run_dashboard did not return after being asked to stop"


@contextlib.contextmanager
def opened(browser: Any, dashboard: Dashboard, width: int = 1400, height: int = 1000) -> Iterator[Any]:
    """A fresh browser context (no shared state) on the dashboard, once three nodes show a status;
    the page must raise no JavaScript error."""
    context = browser.new_context(viewport={"width": width, "height": height})
    pg = context.new_page()
    pg.set_default_timeout(15_000)
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.goto(dashboard.url)
    wait_until("all three node cards to show a status", lambda: len(
        [r for r in cards(pg).values() if r["term"]]) == 3)
    yield pg
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def cards(pg: Any) -> dict[str, dict]:
    """What the page shows for each node (the cards' data attributes, set from the live view)."""
    return pg.evaluate("""() => Object.fromEntries([...document.querySelectorAll('[data-node]')].map(c => [
        c.dataset.node, {role: c.dataset.role, member: c.dataset.member,
        term: c.dataset.term ? Number(c.dataset.term) : null,
        reach: c.dataset.reach, partitioned: c.dataset.partitioned === 'true', tickMs: Number(c.dataset.tickMs),
        electionTimeoutMs: Number(c.querySelector('.facts').dataset.electionTimeoutMs || 0),
        text: c.innerText}]))""")


def one_leader(pg: Any, among: set[str] | None = None) -> tuple[str, int] | None:
    """(leader, term) once the page shows, for the nodes in `among` (default all), exactly one
    leader and every other node a follower in that same term: a settled election."""
    shown = {n: c for n, c in cards(pg).items() if among is None or n in among}
    leaders = [n for n, c in shown.items() if c["role"] == "leader"]
    if len(leaders) != 1:
        return None
    term = shown[leaders[0]]["term"]
    if any(c["term"] != term or c["role"] not in ("leader", "follower") for c in shown.values()):
        return None
    return leaders[0], term


def log_cells(pg: Any) -> dict[str, dict[int, dict]]:
    """The log table as drawn: node -> index -> {term, committed, oldTerm, classes}."""
    drawn = pg.evaluate("""() => Object.fromEntries(
        [...document.querySelectorAll('[data-log-node]')].map(r => [r.dataset.logNode, Object.fromEntries(
          [...r.querySelectorAll('.cell[data-index]')].map(c => [c.dataset.index, {
            term: c.dataset.term === '' ? null : Number(c.dataset.term), committed: c.dataset.committed === 'true',
            oldTerm: c.dataset.oldTerm === '' ? null : Number(c.dataset.oldTerm), classes: c.className}]))]))""")
    return {node: {int(i): c for i, c in row.items()} for node, row in drawn.items()}


def shot(pg: Any, name: str, show: str | None = None) -> None:
    """Save a screenshot of the viewport: the top of the page, or scrolled to the `show` selector."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    if show is None:
        pg.evaluate("() => window.scrollTo(0, 0)")
    else:
        pg.locator(show).first.evaluate("e => e.scrollIntoView({block: 'start'})")
    pg.screenshot(path=str(SHOTS / name), full_page=False)


def click_node_button(pg: Any, node: str, op: str) -> None:
    pg.locator(f'[data-node="{node}"] button[data-op="{op}"]').click()


def tour_state(pg: Any) -> dict:
    return pg.evaluate("""() => ({state: document.querySelector('#tour-box').dataset.state,
        caption: document.querySelector('#tour-caption').innerText,
        next: !document.querySelector('#tour-next').disabled})""")


def follow_tour(pg: Any, demo: str, at_step: Callable[[str], None] | None = None) -> list[str]:
    """Run `demo` from the page as a learner does: each caption waits for Next, which is pressed
    once the caption has been read (`at_step(caption)` looks at the page then). Returns the
    captions, the last being the one the tour ended on; fails if the tour stopped."""
    pg.select_option("#tour-demo", demo)
    captions = [tour_state(pg)["caption"]]  # what an earlier tour left on show, until this one speaks
    pg.click("#tour-run")
    wait_until(f"the server to take the {demo} tour", lambda: (m := pg.locator("#tour-msg").inner_text()) != "…" and m)
    assert "refused" not in pg.locator("#tour-msg").inner_text(), pg.locator("#tour-msg").inner_text()
    while True:
        state = wait_until(f"{demo}: the next caption waiting for the learner", lambda: (s := tour_state(pg))[
            "state"] in ("waiting", "done", "failed", "stopped") and s["caption"] not in captions[-1:] and s,
            TOUR_STEP_S, 0.1)
        captions.append(state["caption"])
        if state["state"] != "waiting":
            assert state["state"] == "done", f"the {demo} tour ended {state['state']}: {state['caption']}"
            return captions[1:]
        if at_step is not None:
            at_step(state["caption"])
        pg.click("#tour-next")


def heal(dashboard: Dashboard, cluster: Any) -> None:
    """The cluster back to healthy before a page test: links healed, every node resumed and
    running, one leader agreed."""
    dashboard.api("POST", "/api/heal")
    for node_id, proc in cluster.supervisor.nodes.items():
        cluster.supervisor.resume(node_id)
        if not proc.running:
            cluster.supervisor.start(node_id)
    cluster.wait_for_leader(30)
