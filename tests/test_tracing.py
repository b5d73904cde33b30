"""Tracing across real node processes: OTLP from the SDK's own exporter to the dashboard's receiver.

Three nodes run with the standard OTEL_* variables pointing at a receiver in this process (the
dashboard's, raftkv/dashboard/traces.py, on an aiohttp server of its own). The sampler is
`parentbased_traceidratio` at 0, so only the requests that ask (`X-Raftkv-Trace: 1`) are traced:
that one write through a follower becomes one trace holding the spans of all three processes,
with the parents node/tracing.py promises, and the fsyncs inside it.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from cluster import LocalCluster, wait_healthy

from raftkv.dashboard.traces import TraceStore, add_trace_routes
from raftkv.node.tracing import ASKED_ATTRIBUTE, DEFAULT_RATIO, AskedSampler, Sampling
from raftkv.supervisor import free_ports

pytestmark = pytest.mark.timeout(120)


class Receiver:
    """The dashboard's OTLP receiver on a port of its own, in a thread with its own loop."""

    def __init__(self) -> None:
        self.port = free_ports(1)[0]
        self.store = TraceStore()
        self._ready, self._stop = threading.Event(), threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._serve()), daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _serve(self) -> None:
        app = web.Application(client_max_size=16 * 1024 * 1024)
        add_trace_routes(app, self.store)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.port).start()
        self._ready.set()
        while not self._stop.is_set():
            await asyncio.sleep(0.05)
        await runner.cleanup()

    def __enter__(self) -> Receiver:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=5) as r:
            return json.loads(r.read())


def call(method: str, url: str, body: Any = None, headers: dict[str, str] | None = None) -> tuple[int, dict, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json", **(headers or {})})
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.status, dict(r.headers), json.loads(r.read())


ASK = {"X-Raftkv-Trace": "1"}


def spans_until(store: TraceStore, trace_id: str, done: Any, timeout_s: float = 15.0) -> list[dict]:
    deadline = time.monotonic() + timeout_s
    while True:
        spans = store.trace(trace_id)
        if done(spans):
            return spans
        if time.monotonic() > deadline:
            raise AssertionError("the trace is incomplete: " + json.dumps(
                sorted((s["node"], s["name"]) for s in spans)))
        time.sleep(0.1)


def one(spans: list[dict], node: str, name: str) -> dict:
    found = [s for s in spans if s["node"] == node and s["name"] == name]
    assert len(found) == 1, f"{name} on {node}: {len(found)} spans"
    return found[0]


@pytest.fixture(scope="module")
def traced_cluster(tmp_path_factory: pytest.TempPathFactory) -> Any:
    with Receiver() as receiver:
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_BSP_SCHEDULE_DELAY": "100",
               "OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0",
               "RAFTKV_LOG": "INFO"}
        cluster = LocalCluster(Path(tmp_path_factory.mktemp("traced")), nodes=3, env=env).start()
        try:
            cluster.wait_for_leader(30)
            yield cluster, receiver
        finally:
            cluster.stop()


def test_a_write_through_a_follower_is_one_trace_across_three_processes(traced_cluster: Any) -> None:
    cluster, receiver = traced_cluster
    leader = cluster.wait_for_leader()
    follower, third = [m.id for m in cluster.members if m.id != leader]

    status, headers, body = call("PUT", cluster.url(follower) + "/kv/traced", {"value": "v"}, ASK)
    assert status == 200 and body["forwardedBy"] == follower and body["node"] == leader
    trace_id = headers["X-Raftkv-Trace-Id"]

    wanted = {(follower, "PUT /kv/{key}"), (follower, "forward to leader"), (follower, "wait for commit"),
              (follower, "apply"), (follower, "fsync"), (follower, "acknowledge"),
              (leader, "propose"), (leader, "write log"), (leader, "fsync"), (leader, "apply"),
              (third, "write log"), (third, "fsync"), (third, "acknowledge")}
    spans = spans_until(receiver.store, trace_id, lambda got: wanted <= {(s["node"], s["name"]) for s in got})
    assert {s["traceId"] for s in spans} == {trace_id}, "every span of the write is in the write's trace"

    request = one(spans, follower, "PUT /kv/{key}")
    assert request["parentSpanId"] is None and request["kind"] == "server"
    assert request["attributes"]["http.response.status_code"] == 200
    propose = one(spans, leader, "propose")
    assert propose["parentSpanId"] == request["spanId"], "the leader's span is a child of the follower's request"
    for node, name in [(follower, "forward to leader"), (follower, "wait for commit"), (follower, "apply")]:
        assert one(spans, node, name)["parentSpanId"] == request["spanId"], (node, name)
    # Every node's disk work for the entry hangs off the leader's propose span, across the peer link.
    for node in (leader, follower, third):
        for name in ("write log", "fsync"):
            span = one(spans, node, name)
            assert span["parentSpanId"] == propose["spanId"], (node, name)
            assert {"traceId": trace_id, "spanId": propose["spanId"]} in span["links"]
    for node in (follower, third):
        assert one(spans, node, "acknowledge")["parentSpanId"] == propose["spanId"]
    assert one(spans, leader, "apply")["parentSpanId"] == propose["spanId"]

    # Times tell the same story: the entry commits once a majority (two of the leader's own fsync
    # and the followers' acknowledgements) holds it on disk.
    leader_fsync = one(spans, leader, "fsync")
    assert propose["startNs"] <= leader_fsync["startNs"] <= leader_fsync["endNs"]
    events = {e["name"]: e["timeNs"] for e in propose["events"]}
    durable = sorted([leader_fsync["endNs"], *(t for name, t in events.items() if name.startswith("acknowledged"))])
    assert len(durable) >= 2 and durable[1] <= events["committed"] <= propose["endNs"]
    # The follower answers only after the leader has committed; the leader's own apply (which ends
    # its propose span) races the follower's, since the commit index leaves on the leader's turn.
    assert request["startNs"] <= propose["startNs"] and events["committed"] <= request["endNs"]

    # A read on the follower: its ReadIndex round and its wait for apply, in its own trace.
    status, headers, body = call("GET", cluster.url(follower) + "/kv/traced", headers=ASK)
    assert body["value"] == "v"
    read_trace = headers["X-Raftkv-Trace-Id"]
    spans = spans_until(receiver.store, read_trace,
                        lambda got: {"GET /kv/{key}", "read index", "wait for apply"} <= {s["name"] for s in got})
    get = one(spans, follower, "GET /kv/{key}")
    assert one(spans, follower, "read index")["parentSpanId"] == get["spanId"]
    assert one(spans, follower, "wait for apply")["parentSpanId"] == get["spanId"]

    # The log line of a traced request carries its ids.
    deadline = time.monotonic() + 5
    while trace_id not in cluster.log_text(follower):
        assert time.monotonic() < deadline, "no log line of the follower names the write's trace"
        time.sleep(0.1)
    line = next(json.loads(raw) for raw in cluster.log_text(follower).splitlines() if trace_id in raw)
    assert line["trace_id"] == trace_id and line["span_id"] == request["spanId"]


def test_only_asked_requests_are_traced_and_one_fsync_links_every_write_it_served(traced_cluster: Any) -> None:
    cluster, receiver = traced_cluster
    leader = cluster.wait_for_leader()
    _, headers, _ = call("PUT", cluster.url(leader) + "/kv/untraced", {"value": "v"})
    assert "X-Raftkv-Trace-Id" not in headers, "the ratio is 0: a request that does not ask is not traced"
    _, headers, _ = call("PUT", cluster.url(leader) + "/kv/parent", {"value": "v"},
                         {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"})
    assert headers["X-Raftkv-Trace-Id"] == "0af7651916cd43dd8448eb211c80319c", "a sampled caller's trace goes on"

    with ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(lambda i: call("PUT", cluster.url(leader) + f"/kv/batch{i}", {"value": i}, ASK),
                                range(32)))
    traces = {h["X-Raftkv-Trace-Id"] for _, h, _ in answers}
    assert len(traces) == 32
    fsyncs: dict[str, dict] = {}
    for trace_id in traces:  # each write reaches the leader's fsync that served it: as a child or by a link
        spans = spans_until(receiver.store, trace_id, lambda got, t=trace_id: any(
            s["name"] == "fsync" and s["node"] == leader and (s["traceId"] == t or any(
                ln["traceId"] == t for ln in s["links"])) for s in got))
        for s in spans:
            if s["name"] == "fsync" and s["node"] == leader:
                fsyncs[s["spanId"]] = s
    served = sorted((len({ln["traceId"] for ln in s["links"]}) for s in fsyncs.values()), reverse=True)
    assert sum(served) >= 32 and served[0] > 1, f"writes per leader fsync span: {served}"
    assert len(fsyncs) < 32, "group commit: fewer fsync spans than writes, not one invented per write"


def test_up_with_trace_sends_the_nodes_spans_to_its_dashboard(tmp_path: Path) -> None:
    from test_lab import RAFTKV, free_port_run

    http_port, raft_port, etcd_port = free_port_run(2), free_port_run(2), free_port_run(2)
    dashboard_port = free_ports(1)[0]
    dashboard = f"http://127.0.0.1:{dashboard_port}"
    with open(tmp_path / "up.log", "ab") as out:
        up = subprocess.Popen([*RAFTKV, "up", "--trace", "--trace-ratio", "0", "--nodes", "2", "--http-port",
                               str(http_port), "--raft-port", str(raft_port), "--etcd-port", str(etcd_port),
                               "--dashboard-port", str(dashboard_port), "--data-dir", str(tmp_path / "data")],
                              stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        node2 = f"http://127.0.0.1:{http_port + 1}"
        wait_healthy(node2, why=(tmp_path / "up.log").read_text())
        _, headers, _ = call("PUT", node2 + "/kv/seen", {"value": "by the dashboard"}, ASK)
        trace_id = headers["X-Raftkv-Trace-Id"]
        deadline = time.monotonic() + 15
        while True:
            try:
                with urllib.request.urlopen(f"{dashboard}/api/traces/{trace_id}", timeout=5) as r:
                    spans = json.loads(r.read())["spans"]
                if {"node1", "node2"} <= {s["node"] for s in spans} and "fsync" in {s["name"] for s in spans}:
                    break
            except urllib.error.HTTPError as e:  # 401 until the dashboard has heard whether auth is on
                assert e.code in (401, 404), e
            assert time.monotonic() < deadline, "the dashboard did not receive the write's spans from both nodes"
            time.sleep(0.2)
        with urllib.request.urlopen(f"{dashboard}/api/traces", timeout=5) as r:
            listed = json.loads(r.read())["traces"]
        assert any(t["traceId"] == trace_id and t["name"] == "PUT /kv/{key}" for t in listed)
        bad = urllib.request.Request(f"{dashboard}/v1/traces", data=b"\xff not protobuf", method="POST",
                                     headers={"Content-Type": "application/x-protobuf"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(bad, timeout=5)
        assert refused.value.code == 400
    finally:
        up.send_signal(signal.SIGINT)
        up.wait(30)


# ---- the decision at a request's entry (in this process, with the SDK's own in-memory exporter) -------


def test_without_a_sampler_variable_one_request_in_five_hundred_is_traced() -> None:
    assert Sampling.from_env({}) == Sampling("parentbased_traceidratio", DEFAULT_RATIO) and DEFAULT_RATIO == 0.002
    assert Sampling.from_env({"OTEL_TRACES_SAMPLER_ARG": "0.25"}).ratio == 0.25
    # A sampler named without a usable argument: the SDK's fallback, every trace.
    assert Sampling.from_env({"OTEL_TRACES_SAMPLER": "traceidratio"}) == Sampling("traceidratio", 1.0)
    assert Sampling.from_env({"OTEL_TRACES_SAMPLER": "parentbased_always_on"}).ratio == 1.0
    assert not Sampling.from_env({"OTEL_PROPAGATORS": "b3"}).w3c_only


TRACEPARENTS = [None, "", "garbage", f"00-{'ab' * 16}-{'cd' * 8}-01", f"00-{'ab' * 16}-{'cd' * 8}-00",
                f"00-{'12' * 16}-{'cd' * 8}-01", f"00-{'0' * 32}-{'cd' * 8}-01", f"ff-{'ab' * 16}-{'cd' * 8}-01",
                f"00-{'ab' * 16}-{'cd' * 8}-01-extra"]


@pytest.mark.parametrize("env", [{}, {"OTEL_TRACES_SAMPLER_ARG": "0.5"}, {"OTEL_TRACES_SAMPLER": "always_on"},
                                 {"OTEL_TRACES_SAMPLER": "always_off"},
                                 {"OTEL_TRACES_SAMPLER": "parentbased_always_off"},
                                 {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.5"},
                                 {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0"}])
def test_the_entry_decides_as_the_sdk_sampler_would(env: dict[str, str]) -> None:
    from opentelemetry import propagate
    from opentelemetry.trace import get_current_span

    sampling = Sampling.from_env(env)
    sdk = AskedSampler(sampling.sdk_sampler())
    decided = 0
    for seed in range(400):
        traceparent, asked = TRACEPARENTS[seed % len(TRACEPARENTS)], seed % 7 == 0
        random.seed(seed)
        got = sampling.decide(traceparent, asked)
        random.seed(seed)
        drawn = random.getrandbits(128)
        parent = propagate.extract({"traceparent": traceparent} if traceparent is not None else {})
        parent_sc = get_current_span(parent).get_span_context()
        trace_id = parent_sc.trace_id if parent_sc.is_valid else drawn
        want = sdk.should_sample(parent, trace_id, "PUT /kv/{key}", attributes={ASKED_ATTRIBUTE: asked})
        assert (got is not None) == want.decision.is_sampled(), (seed, traceparent, asked)
        assert got in (None, 0 if parent_sc.is_valid else drawn)  # a new root's span gets the id judged
        decided += got is not None
    assert 0 < decided < 400 or sampling.sampler.endswith("always_on")


def test_an_unsampled_request_makes_no_span_and_a_sampled_one_is_traced_by_the_id_it_was_judged_by() -> None:
    from aiohttp.test_utils import TestClient, TestServer
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import get_current_span

    from raftkv.api.tracing import request_spans
    from raftkv.node.tracing import Tracing, entry_ids

    sampling, ids, exported = Sampling("parentbased_traceidratio", 0.5), entry_ids(), InMemorySpanExporter()
    provider = TracerProvider(sampler=AskedSampler(sampling.sdk_sampler()), id_generator=ids)
    provider.add_span_processor(SimpleSpanProcessor(exported))
    seen: list[int] = []  # the trace id current in the handler (0: no span at all)

    async def put(request: web.Request) -> web.Response:
        seen.append(get_current_span().get_span_context().trace_id)
        return web.json_response({})

    async def run() -> list[tuple[int, str]]:
        app = web.Application(middlewares=[request_spans(Tracing(provider.get_tracer("t"), "n1", sampling, ids))])
        app.router.add_put("/kv/{key}", put)
        out = []
        async with TestClient(TestServer(app)) as client:
            for i in range(200):
                r = await client.put(f"/kv/k{i}", headers=ASK if i == 0 else {})
                out.append((r.status, r.headers.get("X-Raftkv-Trace-Id", "")))
        return out

    answers = asyncio.run(run())
    assert all(status == 200 for status, _ in answers)
    traced = [int(tid, 16) for _, tid in answers if tid]
    spans = exported.get_finished_spans()
    assert answers[0][1] and 60 < len(traced) < 140  # the asked one, and about half of the rest
    assert sorted(s.context.trace_id for s in spans) == sorted(traced)  # no sampled span lost, none other made
    assert sorted(t for t in seen if t) == sorted(traced)
    assert seen.count(0) == 200 - len(traced)  # an unsampled request's handler sees no span, not a non-recording one
    assert ids.next_trace_id == 0
    provider.shutdown()
