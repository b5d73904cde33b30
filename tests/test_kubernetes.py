"""deploy/kubernetes/: raftkv as a StatefulSet, the way etcd's guide runs etcd.

No Kubernetes cluster runs on these machines. So this validates the manifests against Kubernetes
1.30's schema (kubernetes-validate, strict: a misspelt field fails too), checks what a schema cannot
see (the StatefulSet's serviceName is the headless Service, the Services and the budget select its
pods, the probes hit routes the API serves, the image is the one docker-compose.yml builds from the
Dockerfile, which installs the entrypoint the pods run), and runs that entrypoint, raftkv-pod, as
the pods would: the command lines it builds for a founder and a joiner (every flag one that
`raftkv node --help` lists and that parses), the exec, what a volume decides on a restart, and, on
real nodes, a pod joining, being removed (`raftkv member remove`), and coming back on its old
volume.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from cluster import http

from raftkv.api.http import create_app
from raftkv.cli import node as node_command
from raftkv.node.membership import Identity
from raftkv.supervisor import free_ports

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy" / "kubernetes"
ENTRYPOINT = DEPLOY / "raftkv_pod.py"
KUBERNETES_VERSION = "1.30.0"
FOUNDING = ("raftkv-0@raftkv-0.raftkv.prod.svc.cluster.local:3000:4000,"
            "raftkv-1@raftkv-1.raftkv.prod.svc.cluster.local:3000:4000,"
            "raftkv-2@raftkv-2.raftkv.prod.svc.cluster.local:3000:4000")


def manifests() -> list[dict[str, Any]]:
    docs = [doc for path in sorted(DEPLOY.glob("*.yaml")) for doc in yaml.safe_load_all(path.read_text()) if doc]
    assert docs, f"no manifests in {DEPLOY}"
    return docs


def the(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in manifests() if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def container() -> dict[str, Any]:
    (only,) = the("StatefulSet")["spec"]["template"]["spec"]["containers"]
    return only


def env_of(c: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in c.get("env", [])}


# ---- the manifests ------------------------------------------------------------------------------


def test_every_manifest_is_valid_for_kubernetes_1_30() -> None:
    kinds = sorted(f"{d['kind']}/{d['metadata']['name']}" for d in manifests())
    assert kinds == ["PodDisruptionBudget/raftkv", "Service/raftkv", "Service/raftkv-client", "StatefulSet/raftkv"]
    for doc in manifests():
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_the_schema_check_has_teeth() -> None:
    """A misspelt field and a wrong type both fail: the validation above is not a formality."""
    statefulset = the("StatefulSet")
    misspelt = json.loads(json.dumps(statefulset))
    misspelt["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"httpGet": {"path": "/health"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(misspelt, KUBERNETES_VERSION, strict=True)
    wrong_type = json.loads(json.dumps(statefulset))
    wrong_type["spec"]["replicas"] = "three"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(wrong_type, KUBERNETES_VERSION, strict=True)


def test_the_statefulset_is_governed_by_a_headless_service_that_publishes_unready_pods() -> None:
    spec = the("StatefulSet")["spec"]
    headless = the("Service", spec["serviceName"])["spec"]
    assert headless["clusterIP"] == "None"
    # The founders must resolve each other before any of them is ready (ready = knows a leader).
    assert headless["publishNotReadyAddresses"] is True
    # And start together: with OrderedReady, raftkv-0 would wait alone to become ready, forever.
    assert spec["podManagementPolicy"] == "Parallel"
    ports = {p["name"]: p["containerPort"] for p in container()["ports"]}
    assert ports == {"client": 3000, "peer": 4000}
    assert env_of(container())["RAFTKV_ENDPOINTS"] == "http://127.0.0.1:3000", "`raftkv member` asks its own pod"
    assert {p["targetPort"] for p in headless["ports"]} == {"client", "peer"}
    client = the("Service", "raftkv-client")["spec"]
    assert client.get("clusterIP") != "None" and [p["targetPort"] for p in client["ports"]] == ["client"]


def test_services_and_the_budget_select_the_pods_and_the_budget_allows_one_down() -> None:
    spec = the("StatefulSet")["spec"]
    labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    for service in (the("Service", "raftkv"), the("Service", "raftkv-client")):
        assert service["spec"]["selector"].items() <= labels.items(), service["metadata"]["name"]
    budget = the("PodDisruptionBudget")["spec"]
    assert budget["selector"]["matchLabels"].items() <= labels.items()
    assert budget["maxUnavailable"] == 1 and "minAvailable" not in budget


def test_each_pod_has_its_own_volume_holding_the_data_directory() -> None:
    spec = the("StatefulSet")["spec"]
    (claim,) = spec["volumeClaimTemplates"]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    (mount,) = [m for m in container()["volumeMounts"] if m["name"] == claim["metadata"]["name"]]
    data_dir = env_of(container())["RAFTKV_DATA_DIR"]
    assert Path(data_dir).parent == Path(mount["mountPath"]), "a folder in the volume, not its root (lost+found)"
    # Scaling never deletes a member's data: a removed member's volume is set aside by raftkv-pod.
    assert spec["persistentVolumeClaimRetentionPolicy"] == {"whenDeleted": "Retain", "whenScaled": "Retain"}
    assert spec["replicas"] >= int(env_of(container())["RAFTKV_FOUNDERS"]) == 3


def test_pods_run_as_a_non_root_user_with_resource_requests() -> None:
    pod = the("StatefulSet")["spec"]["template"]["spec"]
    security = pod["securityContext"]
    assert security["runAsNonRoot"] is True and security["runAsUser"] != 0
    assert security["fsGroup"] == security["runAsGroup"], "the volume must be writable by the node's group"
    c = container()
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert {"cpu", "memory"} <= c["resources"]["requests"].keys()
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert f"USER {security['runAsUser']}:{security['runAsGroup']}" in dockerfile, "the image's user is the pods'"


def test_the_probes_hit_routes_the_api_serves() -> None:
    c = container()
    served = {(route.method, route.resource.canonical) for route in create_app(object()).router.routes()
              if route.resource is not None and "{" not in route.resource.canonical}  # not the /{key} catch-all
    ports = {p["name"] for p in c["ports"]}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = c[probe]["httpGet"]
        assert ("GET", get["path"]) in served, (probe, get["path"])
        assert get["port"] == "client" and get["port"] in ports
    # Ready means "knows a leader" (/health answers 503 without one); liveness must not mean that,
    # or a cluster that lost its quorum would have its members restarted, which cannot help.
    assert c["readinessProbe"]["httpGet"]["path"] == "/health"
    assert c["livenessProbe"]["httpGet"]["path"] != "/health"


def test_the_image_is_the_one_compose_builds_and_it_holds_the_entrypoint() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    (built,) = [svc["image"] for svc in compose["services"].values() if svc.get("build") == "."]
    c = container()
    image, _, tag = c["image"].partition(":")
    assert image == built and tag in ("", "latest"), (c["image"], built)
    assert c["imagePullPolicy"] == "IfNotPresent", "a locally built image is never pulled"
    dockerfile = (ROOT / "Dockerfile").read_text()
    installed = f"COPY {ENTRYPOINT.relative_to(ROOT)} /usr/local/bin/{c['command'][0]}"
    assert installed in dockerfile
    assert f"chmod 0755 /usr/local/bin/{c['command'][0]}" in dockerfile
    assert c["args"][0] == "node"
    assert ENTRYPOINT.read_text().startswith("#!/usr/bin/env python3\n") and os.access(ENTRYPOINT, os.X_OK)


# ---- the entrypoint -----------------------------------------------------------------------------


def pod_env(name: str, data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAFTKV_")}
    env.update(HOSTNAME=name, POD_NAMESPACE="prod", RAFTKV_DATA_DIR=str(data_dir), **extra)
    return env


def raftkv_pod(*args: str, env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess[str]:
    out = subprocess.run([sys.executable, str(ENTRYPOINT), *args], env=env, capture_output=True, text=True,
                         timeout=60, check=False)
    if check:
        assert out.returncode == 0, out.stderr
    return out


def command_of(name: str, data_dir: Path, **extra: str) -> list[str]:
    return shlex.split(raftkv_pod("command", env=pod_env(name, data_dir, **extra)).stdout)


def closed_url() -> str:
    """A URL where nothing listens: the cluster 'does not answer', at once and without DNS."""
    (port,) = free_ports(1)
    return f"http://127.0.0.1:{port}"


def test_ordinal_0_founds_the_cluster_with_the_pods_dns_names(tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert command_of("raftkv-0", data, RAFTKV_JOIN_URL=closed_url()) == [
        "raftkv", "node", "--id", "raftkv-0", "--cluster", FOUNDING,
        "--data-dir", str(data), "--listen-client", "0.0.0.0", "--listen-peer", "0.0.0.0"]


def test_ordinal_4_joins_through_the_client_service_advertising_its_dns_name(tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert command_of("raftkv-4", data) == [
        "raftkv", "node", "--join", "http://raftkv-client.prod.svc.cluster.local:3000", "--name", "raftkv-4",
        "--advertise-client", "http://raftkv-4.raftkv.prod.svc.cluster.local:3000",
        "--advertise-peer", "raftkv-4.raftkv.prod.svc.cluster.local:4000",
        "--data-dir", str(data), "--listen-client", "0.0.0.0", "--listen-peer", "0.0.0.0"]


def test_every_flag_the_entrypoint_passes_is_one_raftkv_node_accepts(tmp_path: Path) -> None:
    help_text = subprocess.run([sys.executable, "-m", "raftkv", "node", "--help"], capture_output=True, text=True,
                               timeout=60, check=True).stdout
    accepted = set(re.findall(r"^\s+(--[a-z][a-z-]*)", help_text, re.MULTILINE))
    assert {"--id", "--cluster", "--join", "--name"} <= accepted, accepted
    for name in ("raftkv-0", "raftkv-4"):
        command = command_of(name, tmp_path / name, RAFTKV_JOIN_URL=closed_url())
        assert command[:2] == ["raftkv", "node"]
        flags = {arg for arg in command[2:] if arg.startswith("--")}
        assert flags <= accepted, flags - accepted
        node_command.make_context("node", command[2:])  # and they parse, values included


def test_the_entrypoint_execs_raftkv_with_extra_flags_passed_on(tmp_path: Path) -> None:
    """`raftkv-pod node` becomes `raftkv node ...` (exec: same process, so the node gets SIGTERM)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    stub = bin_dir / "raftkv"
    stub.write_text(f'#!/bin/sh\necho "$$ $*" >> "{calls}"\n')
    stub.chmod(0o755)
    env = pod_env("raftkv-4", tmp_path / "data", PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    proc = subprocess.Popen([sys.executable, str(ENTRYPOINT), "node", "--tick-ms", "20"], env=env,
                            stderr=subprocess.PIPE, text=True)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    pid, args = calls.read_text().strip().split(" ", 1)
    assert int(pid) == proc.pid, "exec'd, not run as a child"
    assert args.split(" ") == [*command_of("raftkv-4", tmp_path / "data")[1:], "--tick-ms", "20"]
    assert "raftkv-pod: raftkv node --join" in stderr, "the command line is logged"


def test_a_pod_name_without_an_ordinal_is_refused(tmp_path: Path) -> None:
    out = raftkv_pod("command", env=pod_env("raftkv", tmp_path / "data"), check=False)
    assert out.returncode != 0 and "does not end in -<ordinal>" in out.stderr


def test_on_a_restart_the_volume_says_who_the_pod_is(tmp_path: Path) -> None:
    """A founder whose disk was replaced rejoined under a fresh id: its volume, not its ordinal,
    decides that it joins; a joined member's restart uses the same command as its first start."""
    rejoined = tmp_path / "raftkv-1"
    Identity("raftkv-1-0123456789abcdef", "raftkv-1", "http://raftkv-client:3000").save(rejoined)
    command = command_of("raftkv-1", rejoined, RAFTKV_JOIN_URL=closed_url())
    assert command[2:6] == ["--join", command[3], "--name", "raftkv-1"], command
    founder = tmp_path / "raftkv-2"
    Identity("raftkv-2", "raftkv-2", FOUNDING).save(founder)
    assert command_of("raftkv-2", founder, RAFTKV_JOIN_URL=closed_url())[2:4] == ["--id", "raftkv-2"]


class FakeCluster:
    """Answers GET /members as a cluster would, with what the test says."""

    def __init__(self, view: dict[str, Any]) -> None:
        self.view = view
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = json.dumps(outer.view).encode()
                self.send_response(200 if self.path == "/members" else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        if self.server.socket.fileno() != -1:
            self.server.shutdown()
            self.server.server_close()


@pytest.fixture
def fake_cluster() -> Iterator[FakeCluster]:
    cluster = FakeCluster({"members": [], "leader": None, "removedIDs": []})
    yield cluster
    cluster.close()


def test_a_volume_whose_member_was_removed_is_set_aside_and_the_pod_joins_anew(tmp_path: Path,
                                                                               fake_cluster: FakeCluster) -> None:
    fake_cluster.view["removedIDs"] = ["raftkv-1", "raftkv-4-00000000000000aa"]
    data = tmp_path / "data"
    Identity("raftkv-4-00000000000000aa", "raftkv-4", fake_cluster.url).save(data)
    (data / "raft").mkdir()
    command = command_of("raftkv-4", data, RAFTKV_JOIN_URL=fake_cluster.url)
    assert command[2:6] == ["--join", fake_cluster.url, "--name", "raftkv-4"]
    assert not data.exists(), "a fresh data directory for the new member"
    aside = tmp_path / "data.removed-raftkv-4-00000000000000aa"
    assert (aside / "raft").is_dir() and Identity.load(aside).member_id == "raftkv-4-00000000000000aa"
    # A founder removed (its disk lost): its empty volume joins instead of founding again.
    command = command_of("raftkv-1", tmp_path / "founder", RAFTKV_JOIN_URL=fake_cluster.url)
    assert command[2:6] == ["--join", fake_cluster.url, "--name", "raftkv-1"]


def test_a_founder_on_an_empty_volume_refuses_to_found_when_the_leader_knows_its_log(tmp_path: Path) -> None:
    """It ran before on another disk: founding again would forget its term and vote. Only the
    leader knows how far each member's log matches, so a follower's answer leads to the leader."""
    leader, follower = FakeCluster({}), FakeCluster({})
    try:
        rows = [{"id": f"raftkv-{i}", "name": f"raftkv-{i}", "role": "voter", "isLeader": i == 2,
                 "clientURL": leader.url if i == 2 else f"http://raftkv-{i}:3000"} for i in range(3)]
        follower.view = {"members": rows, "leader": "raftkv-2", "removedIDs": [], "node": "raftkv-0"}
        leader.view = {"members": [{**row, "matchIndex": 42, "lagEntries": 0} for row in rows],
                       "leader": "raftkv-2", "removedIDs": [], "node": "raftkv-2"}
        env = pod_env("raftkv-1", tmp_path / "data", RAFTKV_JOIN_URL=follower.url)
        out = raftkv_pod("command", env=env, check=False)
        assert out.returncode != 0 and out.stdout == ""
        assert "up to index 42" in out.stderr and "raftkv member remove raftkv-1" in out.stderr, out.stderr
        # The founders' first start: the leader has heard nothing from raftkv-1 yet.
        leader.view["members"] = [{**row, "matchIndex": 0, "lagEntries": 42} for row in rows]
        assert command_of("raftkv-1", tmp_path / "data", RAFTKV_JOIN_URL=follower.url)[2:4] == ["--id", "raftkv-1"]
        # No leader to ask: nothing is known, and the volume decides.
        leader.close()
        assert command_of("raftkv-1", tmp_path / "data", RAFTKV_JOIN_URL=follower.url)[2:4] == ["--id", "raftkv-1"]
    finally:
        follower.close()
        leader.close()


# ---- on real nodes ------------------------------------------------------------------------------


class PodProcess:
    """`raftkv-pod node` as a pod would run it, with its own ports (pods each have an IP; here they
    share loopback) and the virtualenv's raftkv first on PATH."""

    def __init__(self, name: str, data_dir: Path, join_url: str, ports: tuple[int, int] | None = None) -> None:
        self.client_port, self.peer_port = ports or free_ports(2)
        self.url = f"http://127.0.0.1:{self.client_port}"
        self.env = pod_env(name, data_dir, RAFTKV_FOUNDERS="1", RAFTKV_JOIN_URL=join_url,
                           RAFTKV_CLIENT_PORT=str(self.client_port), RAFTKV_PEER_PORT=str(self.peer_port),
                           PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
        data_dir.parent.mkdir(parents=True, exist_ok=True)  # the volume, as mounted
        self.log = data_dir.parent / f"{name}.log"
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, str(ENTRYPOINT), "node"], env=self.env, stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def member(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`kubectl exec <this pod> -- raftkv member ARGS` (its own node is the endpoint)."""
        return subprocess.run([sys.executable, "-m", "raftkv", "member", *args, "--endpoints", self.url],
                              capture_output=True, text=True, timeout=60, check=False)

    def until_answers(self, path: str, status: int = 200, timeout_s: float = 30.0) -> Any:
        deadline = time.monotonic() + timeout_s
        while True:
            assert self.proc.poll() is None, f"exited {self.proc.returncode}: {self.log.read_text()[-2000:]}"
            try:
                got, body = http("GET", self.url + path, timeout=2)
                if got == status:
                    return body
            except OSError:
                pass
            assert time.monotonic() < deadline, f"{path} did not answer {status}: {self.log.read_text()[-2000:]}"
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()  # the entrypoint exec'd raftkv, which stops on SIGTERM
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def pods() -> Iterator[list[PodProcess]]:
    started: list[PodProcess] = []
    yield started
    for pod in started:
        pod.stop()


def learners_named(founder: PodProcess, name: str) -> list[str]:
    return [m["id"] for m in founder.until_answers("/members")["members"] if m["name"] == name]


def test_pods_found_join_leave_and_come_back_on_real_nodes(tmp_path: Path, pods: list[PodProcess]) -> None:
    """A one-founder cluster (RAFTKV_FOUNDERS=1) on loopback: the probes answer; the founder
    restarts on its volume; raftkv-1 joins as a learner; it is removed (`raftkv member remove`, as
    before a scale-down); scaled up again on its old volume, it sets that volume aside and joins
    under a new id. (The learner's advertised DNS name does not resolve here, so it is never sent
    the log: promotion is not shown.)"""
    founder = PodProcess("raftkv-0", tmp_path / "raftkv-0" / "data", join_url=closed_url())
    pods.append(founder)
    founder.until_answers("/health")  # the readiness probe: a leader is known
    founder.until_answers("/raft-state")  # the startup and liveness probes
    founder.stop()  # a restart: the same command line, and its volume agrees
    founder = PodProcess("raftkv-0", tmp_path / "raftkv-0" / "data", join_url=closed_url(),
                         ports=(founder.client_port, founder.peer_port))
    pods.append(founder)
    assert founder.until_answers("/health")["node"] == "raftkv-0"

    joiner_dir = tmp_path / "raftkv-1" / "data"
    joiner = PodProcess("raftkv-1", joiner_dir, join_url=founder.url)
    pods.append(joiner)
    joiner.until_answers("/raft-state")
    (first_id,) = learners_named(founder, "raftkv-1")
    assert re.fullmatch(r"raftkv-1-[0-9a-f]{16}", first_id) and Identity.load(joiner_dir).member_id == first_id
    listed = founder.member("list", "--json")
    assert listed.returncode == 0, listed.stderr
    members = json.loads(listed.stdout)["members"]
    assert {m["id"]: m["role"] for m in members} == {"raftkv-0": "voter", first_id: "learner"}
    assert [m["clientURL"] for m in members if m["id"] == first_id] == [
        f"http://raftkv-1.raftkv.prod.svc.cluster.local:{joiner.client_port}"]

    removed = founder.member("remove", "raftkv-1")  # by name, as the README's scale-down says
    assert removed.returncode == 0, removed.stderr
    assert first_id in founder.until_answers("/members")["removedIDs"]
    joiner.stop()  # the scale-down

    joiner = PodProcess("raftkv-1", joiner_dir, join_url=founder.url)  # scaled up again, same claim
    pods.append(joiner)
    joiner.until_answers("/raft-state")
    (second_id,) = learners_named(founder, "raftkv-1")
    assert second_id != first_id and Identity.load(joiner_dir).member_id == second_id
    assert Identity.load(joiner_dir.with_name(f"data.removed-{first_id}")).member_id == first_id
