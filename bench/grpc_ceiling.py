"""What etcd's gRPC API costs raftkv per call, against grpc.aio with nothing behind it.

    .venv/bin/python bench/grpc_ceiling.py                     # KV.Put at 64 clients, 8 s, three pairs
    .venv/bin/python bench/grpc_ceiling.py --op read --seconds 4 --reps 1

Theory of operation
-------------------
raftkv serves etcd's v3 API with grpc.aio (the gRPC project's asyncio server, on the node's event
loop). The full run's gRPC rows stay flat from 16 to 256 clients on the leader, so something
takes the calls at a fixed rate. Two systems answer the same closed loop of `bench/grpc_load.py`
(the clients share one channel, all on one endpoint), interleaved:
- `bare`: a process serving the same generated KV service with grpc.aio on uvloop, as a node
  does, whose `Put` and `Range` answer at once: what grpc.aio alone costs a server per call on
  this machine, and how many calls a second it can take.
- `raftkv`: a fresh 3-node cluster with its etcd API, every client on the leader: the calls a
  second, each node's CPU per call (`/proc`, every thread), and from the leader's `/metrics` the
  AppendRequests it sent and the fsyncs it made per write, which say how many writes share a
  Raft round.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import sys
import tempfile
import urllib.request
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script: `python bench/grpc_ceiling.py`

from bench.pin import pin_raftkv  # noqa: E402 - must run before anything imports raftkv

PINNED = pin_raftkv(ROOT)

import grpc  # noqa: E402
import uvloop  # noqa: E402

from bench.grpc_load import run_grpc_load  # noqa: E402
from bench.load import LoadResult, Workload  # noqa: E402
from bench.procs import cpu_seconds, wait_until  # noqa: E402
from bench.raftkv_http import RaftkvCluster, accepts  # noqa: E402
from raftkv import promtext  # noqa: E402
from raftkv.etcd.pb import kv_pb2, rpc_pb2, rpc_pb2_grpc  # noqa: E402
from raftkv.supervisor import free_ports  # noqa: E402


class AnswerAtOnce(rpc_pb2_grpc.KVServicer):
    """etcd's KV service with nothing behind it: a fixed header, the read key holding one value."""

    async def Put(self, request: rpc_pb2.PutRequest, context: grpc.aio.ServicerContext) -> rpc_pb2.PutResponse:
        return rpc_pb2.PutResponse(header=rpc_pb2.ResponseHeader(revision=1))

    async def Range(self, request: rpc_pb2.RangeRequest, context: grpc.aio.ServicerContext) -> rpc_pb2.RangeResponse:
        kv = kv_pb2.KeyValue(key=request.key, value=b"x" * 10, create_revision=1, mod_revision=1, version=1)
        return rpc_pb2.RangeResponse(header=rpc_pb2.ResponseHeader(revision=1), kvs=[kv], count=1)


def serve_bare(port: int) -> None:
    async def main() -> None:
        server = grpc.aio.server()
        rpc_pb2_grpc.add_KVServicer_to_server(AnswerAtOnce(), server)
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        await server.wait_for_termination()

    uvloop.run(main())


class BareServer:
    name = "bare"

    def __init__(self) -> None:
        self.target = f"127.0.0.1:{free_ports(1)[0]}"
        self.process = multiprocessing.get_context("spawn").Process(
            target=serve_bare, args=(int(self.target.rpartition(":")[2]),), daemon=True)

    def __enter__(self) -> BareServer:
        self.process.start()
        wait_until("the bare gRPC server", lambda: accepts(self.target), 10.0)
        return self

    def __exit__(self, *exc: object) -> None:
        self.process.terminate()
        self.process.join(5)

    def grpc_targets(self) -> list[str]:
        return [self.target]

    def grpc_leader_target(self) -> str:
        return self.target


def metrics(url: str) -> promtext.Sample:
    return promtext.parse(urllib.request.urlopen(url + "/metrics", timeout=5).read().decode())


def calls_line(r: LoadResult) -> str:
    return f"{r.throughput:,.0f} calls/s, p50 {r.percentile(50) * 1e3:.1f} ms"


def run_bare(w: Workload) -> str:
    with BareServer() as bare:
        before = cpu_seconds(bare.process.pid)
        r = asyncio.run(run_grpc_load(bare, w))
        cpu = cpu_seconds(bare.process.pid) - before
    assert not r.failed, f"{r.failed} calls failed"
    return f"bare:   {calls_line(r)}, server {cpu / r.completed * 1e6:,.0f} us CPU/call"


def run_raftkv(w: Workload, base: Path) -> str:
    cluster = RaftkvCluster(base, etcd_api=True).start()
    try:
        leader = cluster.leader()
        pids = {m.id: cluster.pid(m.id) for m in cluster.members}
        sample, cpu = metrics(cluster.url(leader)), {n: cpu_seconds(p) for n, p in pids.items()}
        r = asyncio.run(run_grpc_load(cluster, w))
        after, cpu = metrics(cluster.url(leader)), {n: cpu_seconds(p) - cpu[n] for n, p in pids.items()}
    finally:
        cluster.stop()
    assert not r.failed, f"{r.failed} calls failed"

    def per_call(name: str, **labels: str) -> float:
        return (promtext.value(after, name, **labels) - promtext.value(sample, name, **labels)) / r.completed

    nodes = "  ".join(f"{n}{' (leader)' if n == leader else ''} {c / r.completed * 1e6:,.0f}" for n, c in cpu.items())
    line = f"raftkv: {calls_line(r)}, us CPU/call {nodes}"
    if w.op == "write":
        appends = per_call("raft_messages_sent_total", type="AppendRequest")
        fsyncs = per_call("raft_wal_fsync_seconds_count")
        line += f"; the leader's AppendRequests/write {appends:.2f}, fsyncs/write {fsyncs:.2f}"
    return line


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--op", choices=("write", "read"), default="write", help="KV.Put or a linearizable KV.Range")
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=8.0, help="measured window of each run (default 8)")
    ap.add_argument("--reps", type=int, default=3, help="interleaved pairs (default 3)")
    args = ap.parse_args()
    w = Workload(args.op, args.concurrency, 10, "leader", args.seconds)
    print(f"{w.label}, {args.seconds:g} s each; raftkv code git {PINNED['commit']}")
    with tempfile.TemporaryDirectory() as base:
        for rep in range(args.reps):
            runs = [partial(run_bare, w), partial(run_raftkv, w, Path(base) / f"raftkv-{rep}")]
            for run in runs if rep % 2 == 0 else reversed(runs):
                print(f"pair {rep + 1} {run()}", flush=True)


if __name__ == "__main__":
    main()
