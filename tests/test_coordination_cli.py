"""The coordination commands as a person runs them against a real cluster: `raftkv lease`, `raftkv
put --lease`, `raftkv watch` (resuming on another node with no gap and no duplicate when its node
dies), `raftkv lock` (commands never overlap, fencing tokens increase, a lost lease stops the
command) and `raftkv elect` (leadership passes on when the leader resigns)."""

from __future__ import annotations

import os
import queue
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cluster import LocalCluster, http

from raftkv.supervisor import free_ports

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    c = LocalCluster(tmp_path_factory.mktemp("coordination") / "data", nodes=3).start()
    c.wait_for_leader()
    yield c
    c.stop()


def raftkv(cluster: LocalCluster, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "raftkv", *args], env=env(cluster), capture_output=True, text=True,
                          timeout=60, check=False)


def env(cluster: LocalCluster, first: str | None = None) -> dict[str, str]:
    """The cluster's endpoints in RAFTKV_ENDPOINTS (`first` first): options after `--` are the
    command's, not raftkv's."""
    urls = sorted(cluster.urls.values(), key=lambda url: url != first)
    return {**os.environ, "RAFTKV_ENDPOINTS": ",".join(urls)}


class Running:
    """A raftkv command left running; its output read line by line as it comes."""

    def __init__(self, cluster: LocalCluster, *args: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "raftkv", *args], env=env(cluster),
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def expect(self, pattern: str, timeout_s: float = 20.0) -> re.Match:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no line matching {pattern!r} within {timeout_s} s; saw {self.seen}") from None
            self.seen.append(line)
            if match := re.search(pattern, line):
                return match

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        return self.proc.wait(15)


def test_lease_grant_put_show_list_and_revoke(cluster: LocalCluster) -> None:
    out = raftkv(cluster, "lease", "grant", "60")
    assert out.returncode == 0, out
    lease_id = re.fullmatch(r"lease (\d+) granted with TTL 60 s\n", out.stdout).group(1)
    assert raftkv(cluster, "put", "svc/web", "10.0.0.7", "--lease", lease_id).returncode == 0
    out = raftkv(cluster, "lease", "show", lease_id)
    assert out.returncode == 0 and "TTL 60 s" in out.stdout and out.stdout.endswith("1 keys: svc/web\n"), out
    out = raftkv(cluster, "lease", "list")
    assert re.search(rf"^{lease_id}\s+60\s+1\s", out.stdout, re.M), out.stdout
    out = raftkv(cluster, "lease", "keepalive", "--once", lease_id)
    assert out.stdout == f"lease {lease_id} kept alive: TTL 60 s\n", out

    out = raftkv(cluster, "lease", "revoke", lease_id)
    assert out.returncode == 0 and "1 keys deleted" in out.stdout, out
    assert raftkv(cluster, "get", "svc/web").returncode == 1
    out = raftkv(cluster, "lease", "keepalive", "--once", lease_id)
    assert out.returncode == 1 and "error 404" in out.stderr, out
    out = raftkv(cluster, "put", "svc/db", "x", "--lease", lease_id)
    assert out.returncode == 1 and raftkv(cluster, "get", "svc/db").returncode == 1, out  # nothing written


def test_watch_prints_each_change_once_in_order_across_its_node_dying(cluster: LocalCluster) -> None:
    leader = cluster.wait_for_leader()
    first = next(n for n in cluster.urls if n != leader)  # the watch's node; the leader stays up
    start = http("PUT", cluster.url(leader) + "/kv/app/start", {"value": 0})[1]["revision"]
    watcher = subprocess.Popen([sys.executable, "-m", "raftkv", "watch", "app/", "--rev", str(start + 1)],
                               env=env(cluster, cluster.url(first)), stdout=subprocess.PIPE, text=True)
    try:
        writes = [("PUT", "app/a", 1), ("PUT", "app/b", 2), ("DELETE", "app/a", None)]
        for method, key, value in writes:
            http(method, f"{cluster.url(leader)}/kv/{key}", None if value is None else {"value": value})
        time.sleep(1)  # the watch delivered those from `first`
        cluster.supervisor.kill(first)
        for i in range(5):
            assert http("PUT", f"{cluster.url(leader)}/kv/app/after-{i}", {"value": i})[0] == 200
        time.sleep(3)  # the watch resumes on another node
    finally:
        watcher.terminate()
        output, _ = watcher.communicate(timeout=15)
        cluster.supervisor.start(first)
    lines = output.splitlines()
    assert lines == [f"PUT app/a 1  @{start + 1}", f"PUT app/b 2  @{start + 2}", f"DELETE app/a  @{start + 3}",
                     *[f"PUT app/after-{i} {i}  @{start + 4 + i}" for i in range(5)]], lines


def test_lock_commands_never_overlap_and_tokens_increase(cluster: LocalCluster, tmp_path: Path) -> None:
    record = tmp_path / "record"
    script = ("import os, time, sys; t = os.environ['RAFTKV_FENCING_TOKEN']; f = open(sys.argv[1], 'a'); "
              "f.write(f'start {t} {time.monotonic()}\\n'); f.flush(); time.sleep(0.4); "
              "f.write(f'end {t} {time.monotonic()}\\n'); f.close()")
    command = [sys.executable, "-m", "raftkv", "lock", "jobs", "--", sys.executable, "-c", script, str(record)]
    holders = [subprocess.Popen(command, env=env(cluster), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for _ in range(3)]
    results = [h.communicate(timeout=60) for h in holders]
    assert [h.returncode for h in holders] == [0, 0, 0], results
    events = [line.split() for line in record.read_text().splitlines()]
    assert [e[0] for e in events] == ["start", "end"] * 3, events  # one holder at a time
    tokens = [int(e[1]) for e in events[::2]]
    assert tokens == sorted(tokens) and len(set(tokens)) == 3, tokens
    assert all(events[i][1] == events[i + 1][1] for i in range(0, 6, 2)), events
    printed = {int(re.search(r"fencing token (\d+)", err).group(1)) for _, err in results}
    assert printed == set(tokens)
    _, page = http("GET", cluster.url(cluster.wait_for_leader()) + "/kv?prefix=jobs/")
    assert page["items"] == [], page  # every holder's key went with its lease


def test_a_lock_whose_lease_is_lost_stops_its_command_and_exits_1(cluster: LocalCluster) -> None:
    leader_url = cluster.url(cluster.wait_for_leader())
    out = raftkv(cluster, "lock", "passthrough", "--", sys.executable, "-c", "raise SystemExit(7)")
    assert out.returncode == 7, out  # the command's own exit status

    holder = Running(cluster, "lock", "batch", "--ttl", "3", "--", sys.executable, "-c", "import time; time.sleep(60)")
    holder.expect(r"holds batch, fencing token \d+")
    [item] = http("GET", leader_url + "/kv?prefix=batch/")[1]["items"]
    revoked_at = time.monotonic()
    assert http("DELETE", f"{leader_url}/leases/{item['lease']}")[0] == 200
    holder.expect(r"lost batch/.*stopping the command", timeout_s=10)
    assert holder.proc.wait(10) == 1
    assert time.monotonic() - revoked_at < 10
    holder.expect("the lease was lost")


def test_elect_passes_leadership_on_when_the_leader_resigns(cluster: LocalCluster) -> None:
    observer = Running(cluster, "elect", "primary", "--listen")
    one = Running(cluster, "elect", "primary", "one")
    try:
        first_token = int(one.expect(r'elected in primary: "one", fencing token (\d+)').group(1))
        observer.expect(rf'leader of primary: "one" \(fencing token {first_token}\)')
        two = Running(cluster, "elect", "primary", "two")
        two.expect('waiting for election primary')
        if not any('leader of primary: "one"' in line for line in two.seen):  # printed in either order
            two.expect(r'leader of primary: "one"')
        assert one.stop() == 130  # resigned: its lease is revoked at once, not left to expire
        second_token = int(two.expect(r'elected in primary: "two", fencing token (\d+)', timeout_s=5).group(1))
        assert second_token > first_token
        observer.expect(rf'leader of primary: "two" \(fencing token {second_token}\)')
        two.stop()
        observer.expect("leader of primary: none")
    finally:
        for p in (observer, one):
            p.stop()


def test_lock_and_elect_say_that_they_wait_for_an_unreachable_cluster() -> None:
    """The session's lease is retried for up to RETRY_S while no node answers: said at once, not
    after 30 silent seconds."""
    unreachable = {**os.environ, "RAFTKV_ENDPOINTS": f"http://127.0.0.1:{free_ports(1)[0]}"}
    for args in (["lock", "jobs", "--", "true"], ["elect", "jobs", "me"]):
        waiting = subprocess.Popen([sys.executable, "-m", "raftkv", *args], env=unreachable,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert waiting.stderr is not None
            assert waiting.stderr.readline() == "waiting for the cluster to grant a lease (retried for up to 30 s)\n"
        finally:
            waiting.terminate()
            waiting.communicate(timeout=15)


def test_lock_and_elect_refuse_an_empty_name() -> None:
    """NAME is the prefix of the queue's keys: empty, the queue would sit among every key at the top."""
    for args in (["lock", "", "--", "true"], ["elect", "", "me"]):
        done = subprocess.run([sys.executable, "-m", "raftkv", *args], capture_output=True, text=True, timeout=30)
        assert done.returncode == 2 and "Invalid value for 'NAME': must not be empty" in done.stderr, done


def test_watch_exact_prints_that_key_alone(cluster: LocalCluster) -> None:
    leader_url = cluster.url(cluster.wait_for_leader())
    start = http("PUT", leader_url + "/kv/exact/a", {"value": 1})[1]["revision"]
    http("PUT", leader_url + "/kv/exact/ab", {"value": 2})  # under the prefix exact/a, not that key
    http("PUT", leader_url + "/kv/exact/a", {"value": 3})
    watcher = Running(cluster, "watch", "exact/a", "--exact", "--rev", str(start))
    try:
        watcher.expect(rf"PUT exact/a 3  @{start + 2}")
    finally:
        watcher.stop()
    assert watcher.seen == [f"PUT exact/a 1  @{start}", f"PUT exact/a 3  @{start + 2}"]


def test_watch_from_a_compacted_revision_says_so(cluster: LocalCluster) -> None:
    leader_url = cluster.url(cluster.wait_for_leader())
    revision = http("PUT", leader_url + "/kv/old/k", {"value": 1})[1]["revision"]
    http("PUT", leader_url + "/kv/old/k", {"value": 2})
    assert http("POST", leader_url + "/compact", {"revision": revision + 1})[0] == 200
    out = raftkv(cluster, "watch", "old/", "--rev", str(revision))
    assert out.returncode == 1 and f"revision {revision} is compacted" in out.stderr and "--rev" in out.stderr, out
    assert out.stdout == ""


def test_raftkv_node_keeps_the_history_it_is_told_to(tmp_path: Path) -> None:
    """--history-revisions 10: the leader compacts the rest away through the log by itself."""
    single = LocalCluster(tmp_path / "data", nodes=1, node_args=["--history-revisions", "10"]).start()
    try:
        url = single.url(single.wait_for_leader())
        for i in range(30):
            revision = http("PUT", url + "/kv/counter", {"value": i})[1]["revision"]
        deadline = time.monotonic() + 15
        while (status := http("GET", f"{url}/kv/counter?revision={revision - 15}")[0]) != 410:
            assert status == 200 and time.monotonic() < deadline, status
            time.sleep(0.5)
        assert http("GET", f"{url}/kv/counter?revision={revision - 5}")[0] == 200  # within the last 10
    finally:
        single.stop()


def test_a_fenced_write_of_a_stale_holder_is_refused(cluster: LocalCluster) -> None:
    """The README's fence: a transaction writes only while its token exceeds the largest seen."""
    url = cluster.url(cluster.wait_for_leader())
    http("PUT", url + "/kv/reports-fence", {"value": 0})

    def token_of_one_holding() -> int:
        out = raftkv(cluster, "lock", "reports", "--", sys.executable, "-c", "")
        assert out.returncode == 0, out
        return int(re.search(r"fencing token (\d+)", out.stderr).group(1))

    def fenced_write(token: int, what: str) -> bool:
        status, answer = http("POST", url + "/txn", {
            "compare": [{"key": "reports-fence", "target": "value", "op": "<", "value": token}],
            "success": [{"op": "put", "key": "reports-fence", "value": token},
                        {"op": "put", "key": "reports-latest", "value": what}], "failure": []})
        assert status == 200, answer
        return answer["succeeded"]

    stale, current = token_of_one_holding(), token_of_one_holding()
    assert stale < current
    assert fenced_write(current, "new")
    assert not fenced_write(stale, "old")  # the paused holder woke up: refused
    assert http("GET", url + "/kv/reports-latest")[1]["value"] == "new"
