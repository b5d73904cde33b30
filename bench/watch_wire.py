"""How a watch looks on the wire, per system: the request that opens it and how its stream is read.

Theory of operation
-------------------
Both systems stream a watch over plain HTTP, one message per revision:

- raftkv: `GET /watch?prefix=P[&start_revision=N]`, Server-Sent Events; a message ends with a
  blank line; each event in it is a JSON object starting `{"type": "`; a slow watcher is ended
  with `event: cancelled` and the revision to resume from.
- etcd: its JSON gateway's `POST /v3/watch {"create_request": {"key", "range_end"}}` (keys in
  base64), newline-delimited JSON; each event is an object starting `{"kv":` (etcd leaves out a
  PUT's type, the enum's default); etcd never cancels a slow watcher, it catches it up from history.

A watcher process counts events by counting those markers in whole messages (`bytes.count`, in C),
so its cost is per chunk read, not per event: a watcher that falls behind reads bigger chunks and
costs less per event. Only the few probe watchers, which time each key's arrival, decode JSON.
This module imports nothing from raftkv: the watcher processes load only it and aiohttp.
"""

from __future__ import annotations

import base64
import json
from typing import Protocol
from urllib.parse import quote

__all__ = ["DIALECTS", "EtcdWatch", "RaftkvWatch", "WatchDialect", "prefix_end"]


class WatchDialect(Protocol):
    delimiter: bytes  # ends one message of the stream
    event_mark: bytes  # occurs exactly once per event in a message

    def request(self, url: str, prefix: str, start_revision: int | None) -> tuple[str, str, bytes, dict]: ...
    def keys(self, message: bytes) -> list[str]: ...
    def resume_revision(self, messages: bytes) -> int | None: ...


def prefix_end(prefix: str) -> str:
    """The first key after every key starting with `prefix` (etcd's range_end for a prefix)."""
    assert prefix and prefix[-1] != "\U0010ffff"
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


class RaftkvWatch:
    delimiter = b"\n\n"
    event_mark = b'{"type": "'
    _cancelled = b"event: cancelled\n"

    def request(self, url: str, prefix: str, start_revision: int | None) -> tuple[str, str, bytes, dict]:
        query = f"prefix={quote(prefix, safe='')}"
        if start_revision is not None:
            query += f"&start_revision={start_revision}"
        return "GET", f"{url}/watch?{query}", b"", {}

    def keys(self, message: bytes) -> list[str]:
        if not message.startswith(b"id: "):  # a comment, a progress or a cancel notice
            return []
        data = message.partition(b"\ndata: ")[2]
        return [event["key"] for event in json.loads(data)["events"]]

    def resume_revision(self, messages: bytes) -> int | None:
        at = messages.find(self._cancelled)
        if at < 0:
            return None
        data = messages[at:].split(b"\n\n", 1)[0].partition(b"\ndata: ")[2]
        return int(json.loads(data)["resumeRevision"])


class EtcdWatch:
    delimiter = b"\n"
    event_mark = b'{"kv":'
    _canceled = b'"canceled":true'

    def request(self, url: str, prefix: str, start_revision: int | None) -> tuple[str, str, bytes, dict]:
        create: dict = {"key": _b64(prefix), "range_end": _b64(prefix_end(prefix))}
        if start_revision is not None:
            create["start_revision"] = str(start_revision)
        body = json.dumps({"create_request": create}).encode()
        return "POST", f"{url}/v3/watch", body, {"Content-Type": "application/json"}

    def keys(self, message: bytes) -> list[str]:
        events = json.loads(message).get("result", {}).get("events", [])
        return [base64.b64decode(event["kv"]["key"]).decode() for event in events]

    def resume_revision(self, messages: bytes) -> int | None:
        if self._canceled in messages:  # only compaction cancels an etcd watch; the benchmark never compacts
            raise RuntimeError(f"etcd cancelled a watch: {messages[-300:]!r}")
        return None


DIALECTS: dict[str, WatchDialect] = {"raftkv": RaftkvWatch(), "etcd": EtcdWatch()}
