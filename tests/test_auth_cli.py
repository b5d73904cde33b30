"""`raftkv auth|user|role` on a real one-node cluster: the README's walk-through, as a user types it.

The commands run in this process (click's runner: the same parsing, environment, standard input
and exit codes as from a shell), against real node processes; `raftkv up` runs as its own."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner
from cluster import LocalCluster, http, wait_healthy
from dashboard_pages import wait_until

from raftkv.cli import main
from raftkv.supervisor import free_ports

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    lab = LocalCluster(tmp_path_factory.mktemp("auth-cli"), nodes=1).start()
    try:
        lab.wait_for_leader()
        yield lab.url(lab.members[0].id)
    finally:
        lab.stop()


@dataclass(frozen=True)
class Done:
    returncode: int
    stdout: str
    stderr: str


def raftkv(endpoint: str, *args: str, stdin: str = "", env: dict[str, str] | None = None) -> Done:
    unset: dict[str, str | None] = {k: None for k in os.environ if k.startswith("RAFTKV_")}
    result = CliRunner().invoke(main, [*args, "--endpoints", endpoint], input=stdin, env={**unset, **(env or {})})
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return Done(result.exit_code, result.stdout, result.stderr)


def ok(endpoint: str, *args: str, **kwargs: object) -> str:
    done = raftkv(endpoint, *args, **kwargs)  # type: ignore[arg-type]
    assert done.returncode == 0, (args, done.stdout, done.stderr)
    return done.stdout


def test_the_readme_walk_through(endpoint: str) -> None:
    ok(endpoint, "user", "add", "root:s3cret")
    ok(endpoint, "role", "add", "app")
    ok(endpoint, "role", "grant", "app", "readwrite", "app/", "--prefix")
    ok(endpoint, "role", "grant", "app", "read", "config")
    ok(endpoint, "user", "add", "alice", "--password-stdin", stdin="wonder\n")
    ok(endpoint, "user", "grant-role", "alice", "app")
    ok(endpoint, "put", "config", '"v1"')
    assert "enabled" in ok(endpoint, "auth", "enable")

    refused = raftkv(endpoint, "put", "app/x", "1")
    assert refused.returncode == 1 and "authentication required: pass --user or --token" in refused.stderr, refused
    ok(endpoint, "put", "app/x", "1", "--user", "alice:wonder")
    denied = raftkv(endpoint, "put", "config", "2", "--user", "alice:wonder")
    assert denied.returncode == 1 and "may not write key 'config'" in denied.stderr, denied
    wrong = raftkv(endpoint, "get", "app/x", "--user", "alice:nope")
    assert wrong.returncode == 1 and "wrong user name or password" in wrong.stderr, wrong

    token = ok(endpoint, "auth", "token", "--user", "alice:wonder", "--ttl", "60").strip()
    assert "1" in ok(endpoint, "get", "app/x", env={"RAFTKV_TOKEN": token})
    assert "1" in ok(endpoint, "get", "app/x", "--user", "alice", env={"RAFTKV_PASSWORD": "wonder"})
    status = ok(endpoint, "auth", "status", "--token", token)
    assert "enabled" in status and "User: alice (roles: app; admin: no)" in status, status

    users = ok(endpoint, "user", "list", "--user", "root:s3cret")
    assert "alice  app" in users and "root   root" in users, users
    roles = ok(endpoint, "role", "list", "--user", "root:s3cret")
    assert "readwrite keys under app/; read config" in roles and "admin; readwrite every key" in roles, roles
    assert raftkv(endpoint, "user", "list", "--user", "alice:wonder").returncode == 1  # not an admin

    ok(endpoint, "role", "revoke", "app", "read", "config", "--user", "root:s3cret")
    assert raftkv(endpoint, "get", "config", "--user", "alice:wonder").returncode == 1
    ok(endpoint, "user", "passwd", "alice:looking-glass", "--user", "alice:wonder")  # one's own
    assert raftkv(endpoint, "get", "app/x", env={"RAFTKV_TOKEN": token}).returncode == 1  # void now
    ok(endpoint, "auth", "disable", "--user", "root:s3cret")
    assert "v1" in ok(endpoint, "get", "config")


def test_bad_arguments_are_usage_errors_that_send_nothing(endpoint: str) -> None:
    for args in (["role", "grant", "app", "read"],  # no key
                 ["role", "grant", "app", "admin", "k"],  # admin names no key
                 ["role", "grant", "app", "rw", "k"],  # no such access
                 ["auth", "token"],  # whose?
                 ["user", "add", "bob"]):  # no password, and no terminal to ask on
        done = raftkv(endpoint, *args)
        assert done.returncode == 2 and done.stderr, (args, done)
    bad_name = raftkv(endpoint, "user", "add", "has space:pw")
    assert bad_name.returncode == 1 and "letters, digits" in bad_name.stderr, bad_name


def test_raftkv_up_watches_with_the_user_it_is_given_once_auth_is_on(tmp_path: Path) -> None:
    """`raftkv up --user`: on a data directory whose cluster has auth on, its dashboard watches the
    nodes as that user (streams opened from the start, not left over from before auth)."""
    http_port, raft_port, etcd_port, dashboard_port = free_ports(4)
    node, dashboard = f"http://127.0.0.1:{http_port}", f"http://127.0.0.1:{dashboard_port}"

    def start_up(*args: str) -> subprocess.Popen:
        with open(tmp_path / "up.log", "ab") as log:
            return subprocess.Popen([sys.executable, "-m", "raftkv", "up", "--nodes", "1", "--http-port",
                                     str(http_port), "--raft-port", str(raft_port), "--etcd-port", str(etcd_port),
                                     "--dashboard-port", str(dashboard_port), "--data-dir", str(tmp_path / "data"),
                                     *args],
                                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def stop(up: subprocess.Popen) -> None:
        up.send_signal(signal.SIGINT)
        up.wait(30)

    first = start_up()
    try:
        wait_healthy(node, why=(tmp_path / "up.log").read_text())
        ok(node, "user", "add", "root:s3cret")
        ok(node, "auth", "enable")
    finally:
        stop(first)
    again = start_up("--user", "root:s3cret")
    try:
        wait_healthy(node, why=(tmp_path / "up.log").read_text())
        login = urllib.request.Request(dashboard + "/api/login", method="POST", data=json.dumps(
            {"name": "root", "password": "s3cret"}).encode(), headers={"Content-Type": "application/json"})
        cookie = wait_until("a dashboard login", lambda: _login(login), 20)

        def watched() -> bool:
            state = http("GET", dashboard + "/api/state", headers={"Cookie": cookie})[1]
            return state["reach"]["node1"]["reach"] == "ok" and bool(state["nodes"][0]["status"])

        wait_until("the dashboard watching node1 with auth on", watched, 20)
    finally:
        stop(again)


def _login(request: urllib.request.Request) -> str | None:
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return resp.headers["Set-Cookie"].split(";")[0]
    except OSError:
        return None
