"""The key-value commands as a person types them against a real cluster: endpoints without a
scheme, `get` printing a string as it is, `put` and `del` keeping a big previous value off the terminal, and
`status` failing when any endpoint is unreachable (as `etcdctl endpoint health` does)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import click
import pytest
from cluster import LocalCluster, http

from raftkv.client import endpoint_url, parse_endpoints
from raftkv.supervisor import free_ports

pytestmark = pytest.mark.timeout(120)


def raftkv(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "raftkv", *args], capture_output=True, text=True, timeout=60,
                          check=False)


def bare_endpoints(cluster: LocalCluster) -> str:
    """host:port,host:port,... as a person types them, without http://."""
    return ",".join(url.removeprefix("http://") for url in cluster.urls.values())


def test_no_command_has_two_options_of_one_name() -> None:
    """Two options spelled alike shadow one another (click only warns, on every run): `raftkv
    watch --key` was both the exact-key flag and the TLS client key's file."""
    from raftkv.cli import main

    def commands(group: click.Group, path: str) -> Iterator[tuple[str, click.Command]]:
        for name, command in group.commands.items():
            yield f"{path} {name}", command
            if isinstance(command, click.Group):
                yield from commands(command, f"{path} {name}")

    for path, command in commands(main, "raftkv"):
        spellings = [opt for param in command.params for opt in (*param.opts, *param.secondary_opts)]
        assert len(spellings) == len(set(spellings)), (path, sorted(o for o in spellings if spellings.count(o) > 1))


def test_an_endpoint_without_a_scheme_is_http() -> None:
    assert endpoint_url("localhost:3000") == "http://localhost:3000"
    assert endpoint_url(" https://10.0.0.1:3000/ ") == "https://10.0.0.1:3000"
    assert parse_endpoints("localhost:3000, 127.0.0.1:3001,") == ["http://localhost:3000", "http://127.0.0.1:3001"]


def test_get_prints_a_string_as_it_is_and_json_only_when_asked(cluster: LocalCluster) -> None:
    cluster.wait_for_leader()
    endpoints = bare_endpoints(cluster)
    assert raftkv("put", "--endpoints", endpoints, "greeting", '"hola"').returncode == 0
    assert raftkv("put", "--endpoints", endpoints, "stock", '{"n": 5}').returncode == 0

    out = raftkv("get", "--endpoints", endpoints, "greeting")
    assert out.returncode == 0 and out.stdout == "hola\n", out
    out = raftkv("get", "--endpoints", endpoints, "stock")
    assert out.returncode == 0 and json.loads(out.stdout) == {"n": 5}, out
    out = raftkv("get", "--json", "--endpoints", endpoints, "greeting")
    answer = json.loads(out.stdout)
    assert answer["key"] == "greeting" and answer["value"] == "hola" and answer["mod_revision"] >= 1, answer


def test_del_shows_a_bounded_preview_of_the_previous_value(cluster: LocalCluster) -> None:
    cluster.wait_for_leader()
    endpoints = bare_endpoints(cluster)
    big = "x" * 100_000  # an argument may be at most 128 KiB
    assert raftkv("put", "--endpoints", endpoints, "big", json.dumps(big)).returncode == 0
    out = raftkv("del", "--endpoints", endpoints, "big")
    assert out.returncode == 0, out
    [line] = out.stdout.splitlines()
    assert len(line) < 200, line
    assert line.startswith("deleted big at revision ") and '"xxxxx' in line and "(97.7 KiB of JSON)" in line, line

    out = raftkv("put", "--endpoints", endpoints, "big", json.dumps(big))
    assert out.stdout.startswith("put big at revision ") and len(out.stdout) < 200, out  # no previous value yet
    out = raftkv("put", "--endpoints", endpoints, "big", "1")
    assert "; it was " in out.stdout and "(97.7 KiB of JSON)" in out.stdout and len(out.stdout) < 200, out
    out = raftkv("put", "--endpoints", endpoints, "50% off?#", "1")
    assert out.returncode == 0 and json.loads(raftkv("get", "--json", "--endpoints", endpoints,
                                                       "50% off?#").stdout)["key"] == "50% off?#", out
    assert raftkv("put", "--endpoints", endpoints, "small", "7").returncode == 0
    out = raftkv("del", "--endpoints", endpoints, "small")
    assert out.stdout.endswith("; it was 7\n"), out
    out = raftkv("del", "--endpoints", endpoints, "small")
    assert out.returncode == 1 and "404" in out.stderr


def test_status_fails_when_any_endpoint_is_unreachable_and_still_prints_the_table(cluster: LocalCluster) -> None:
    cluster.wait_for_leader()
    endpoints = bare_endpoints(cluster)
    out = raftkv("status", "--endpoints", endpoints)
    assert out.returncode == 0, out

    dead = f"127.0.0.1:{free_ports(1)[0]}"
    out = raftkv("status", "--endpoints", f"{endpoints},{dead}")
    assert out.returncode != 0
    lines = out.stdout.splitlines()
    assert len(lines) == 5 and sum(" leader " in line for line in lines) == 1, lines
    assert lines[-1].split() == [f"http://{dead}", "unreachable"], lines[-1]
    out = raftkv("status", "--json", "--endpoints", f"{endpoints},{dead}")
    assert out.returncode != 0 and json.loads(out.stdout)[-1]["problem"] == "unreachable"


def test_a_key_and_value_of_bytes_that_are_not_utf8_go_in_and_come_out_as_those_bytes(cluster: LocalCluster) -> None:
    """As with etcdctl: the shell hands over bytes, and `get` prints the same bytes back."""
    cluster.wait_for_leader()
    endpoints = bare_endpoints(cluster).encode()

    def run(*args: bytes) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "raftkv", *args], capture_output=True, timeout=60, check=False)

    done = run(b"put", b"--endpoints", endpoints, b"bin/\xff\x01", b'"\xfe\xc3\xa9"')
    assert done.returncode == 0 and done.stdout.startswith(b"put bin/\xff\x01 at revision "), done
    done = run(b"get", b"--endpoints", endpoints, b"bin/\xff\x01")
    assert done.returncode == 0 and done.stdout == b"\xfe\xc3\xa9\n", done
    status, answer = http("GET", next(iter(cluster.urls.values())) + "/kv/bin/%FF%01")  # the same bytes over HTTP
    assert status == 200 and answer["value"] == "\udcfeé", answer

