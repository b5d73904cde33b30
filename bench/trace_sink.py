"""A local receiver for the spans of a traced benchmark run: the dashboard's own OTLP/HTTP receiver
(raftkv/dashboard/traces.py) in a process of its own on a free loopback port.

Theory of operation
-------------------
`bench/run.py --trace-ratio R` and `bench/trace_ab.py` start one `TraceSink` per run and give
every traced raftkv node the standard OTEL_* variables that point its OTLP exporter here
(`TraceSink.node_env(R)`: the sampler `raftkv up --trace --trace-ratio R` configures). The sink
keeps what arrives as the dashboard would (bounded: raftkv.dashboard.traces.MAX_TRACES), so the
nodes pay the full export: encoding, HTTP, the receiver's answer. It runs apart from the load
driver, whose loop it would otherwise slow, and is stopped by PID. `received()` says how many
spans arrived, which the run reports: a traced run whose spans went nowhere measured nothing.

Run as `python -m bench.trace_sink PORT` it serves until SIGTERM (with the run's pinned raftkv,
bench/pin.py: that copy stays first on PYTHONPATH).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

from raftkv.supervisor import free_ports

from .procs import stop_pid, wait_until

ROOT = Path(__file__).resolve().parent.parent
BSP_SCHEDULE_DELAY_MS = 500  # as `raftkv up --trace` exports: at most every half second, in batches


class TraceSink:
    def __init__(self, log_dir: Path) -> None:
        self.port = free_ports(1)[0]
        self.log_path = log_dir / "trace-sink.log"
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def node_env(self, ratio: float) -> dict[str, str]:
        """The variables that make a node export the traces of `ratio` of its requests here."""
        return {"OTEL_EXPORTER_OTLP_ENDPOINT": self.url, "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
                "OTEL_TRACES_EXPORTER": "otlp", "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
                "OTEL_TRACES_SAMPLER_ARG": f"{ratio:g}", "OTEL_BSP_SCHEDULE_DELAY": str(BSP_SCHEDULE_DELAY_MS)}

    def start(self) -> TraceSink:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        path = os.environ.get("PYTHONPATH")  # the pinned raftkv first (bench/pin.py), then this checkout's bench
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (path, str(ROOT)) if p)}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "bench.trace_sink", str(self.port)], env=env,
                                         stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        wait_until("the trace sink to listen", lambda: self.get("/api/traces") is not None, timeout_s=20)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_pid(self.proc)

    def received(self) -> int:
        """Spans received since the sink started."""
        got = self.get("/api/traces")
        return int(got["spansReceived"]) if got else 0

    def get(self, path: str) -> dict | None:
        """The receiver's JSON answer to GET `path` (its /api/traces views), None while it does not answer."""
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"the trace sink exited ({self.proc.returncode}); see {self.log_path}")
        try:
            with urllib.request.urlopen(self.url + path, timeout=2) as r:
                return json.loads(r.read())
        except OSError:
            return None


async def _serve(port: int) -> None:
    from aiohttp import web

    from raftkv.dashboard.traces import add_trace_routes

    app = web.Application(client_max_size=64 * 1024 * 1024)
    add_trace_routes(app)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(_serve(int(sys.argv[1])))
