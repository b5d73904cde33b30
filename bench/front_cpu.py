"""What the HTTP front and the API cost a node per request, with nothing else in the way.

    .venv/bin/python bench/front_cpu.py                # GET and PUT /kv/{key}, 20,000 each, five times
    .venv/bin/python bench/front_cpu.py --requests 50000 --profile

Theory of operation
-------------------
Under HTTP load every node's CPU is two thirds Python (bench/PROFILE.md, fourteenth round), and a
request's Python is spread over the front's parsing, the middleware, the handler and the answer.
Across processes on shared cores a change of a few microseconds a request drowns in the machine's
noise; in one process it does not. This builds the API as a node process does (`create_app`, the
connection bounds, the front) around the tests' in-memory node (`FakeNode` of tests/test_api.py:
no Raft, no disk, a read barrier that returns at once), feeds one keep-alive connection's requests
straight to its protocol over a transport that only keeps what is written, and times the
process's CPU per request, best of five. `--profile` adds cProfile's table of one more pass
(cProfile inflates small calls: read it for shares, not times).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # run as a script; FakeNode lives with the API's tests

from test_api import SMALL, FakeNode  # noqa: E402

from raftkv.api.connections import BoundedRunner, ConnectionLimits  # noqa: E402
from raftkv.api.http import create_app  # noqa: E402
from raftkv.kv import Put  # noqa: E402
from raftkv.kv.commands import encode  # noqa: E402

HEAD = (b"Host: 127.0.0.1:2379\r\nUser-Agent: Python/3.11 aiohttp/3.9\r\nAccept: */*\r\n"
        b"Accept-Encoding: gzip, deflate\r\n")
BODY = b'{"value": "xxxxxxxxxx"}'  # what bench/load.py writes: a 10-byte value
REQUESTS = {
    "GET": b"GET /kv/k00001 HTTP/1.1\r\n" + HEAD + b"\r\n",
    "PUT": b"PUT /kv/k00001 HTTP/1.1\r\n" + HEAD + b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
           % (len(BODY), BODY),
}


class KeptTransport(asyncio.Transport):
    """Keeps what the front writes; wakes whoever waits for the next answer."""

    def __init__(self, protocol: asyncio.Protocol) -> None:
        super().__init__()
        self.protocol = protocol
        self.written: list[bytes] = []
        self.answered: asyncio.Future[None] | None = None
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written.append(bytes(data))
        if self.answered is not None and not self.answered.done():
            self.answered.set_result(None)

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.protocol.connection_lost(None)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default


async def measure(requests: int, profile: bool) -> None:
    node = FakeNode()
    node.index = 1
    node.kv.apply(1, encode(Put("k00001", "x" * 10)))
    limits = ConnectionLimits(max_connections=10, header_timeout_s=5, body_timeout_s=5, idle_timeout_s=30,
                              send_timeout_s=5)
    runner = BoundedRunner(create_app(node, **SMALL), limits, node.id)
    await runner.setup()
    connection = runner.server()
    transport = KeptTransport(connection)
    connection.connection_made(transport)
    loop = asyncio.get_running_loop()

    async def send(raw: bytes, times: int) -> bytes:
        for _ in range(times):
            transport.answered = loop.create_future()
            connection.data_received(raw)
            await transport.answered
        return transport.written[-1]

    try:
        for method, raw in REQUESTS.items():
            status = (await send(raw, 1)).split(b"\r\n", 1)[0].decode()
            assert status == "HTTP/1.1 200 OK", (method, status)
            await send(raw, 2000)  # warm up
            costs = []
            for _ in range(5):
                started = time.process_time()
                await send(raw, requests)
                costs.append((time.process_time() - started) / requests * 1e6)
            print(f"{method} /kv/{{key}}: {min(costs):.1f} us of CPU per request "
                  f"(best of 5: {' '.join(f'{c:.1f}' for c in costs)})")
            if profile:
                profiler = cProfile.Profile()
                profiler.enable()
                await send(raw, requests)
                profiler.disable()
                pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
    finally:
        transport.close()
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20_000, help="requests per timed pass (default 20000)")
    parser.add_argument("--profile", action="store_true", help="cProfile one more pass of each")
    args = parser.parse_args()
    try:
        import uvloop  # the node's own loop (raftkv/node_server.py)
    except ImportError:
        asyncio.run(measure(args.requests, args.profile))
    else:
        uvloop.run(measure(args.requests, args.profile))


if __name__ == "__main__":
    main()
