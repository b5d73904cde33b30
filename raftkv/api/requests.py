"""Reading a client request within the node's limits: the key in the path (percent-decoded as
UTF-8, one spelling per key), key and value sizes, and JSON bodies. One reader serves every route,
so a limit is enforced, and its error worded, in one place."""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote_to_bytes

from aiohttp import web

from raftkv.api.errors import ApiError, parse_json
from raftkv.byte_text import as_bytes, as_text, packb

__all__ = ["RequestReader", "path_key"]


class RequestReader:
    def __init__(self, max_body_bytes: int, max_key_bytes: int, max_value_bytes: int) -> None:
        assert max_body_bytes > 0 and max_key_bytes > 0 and max_value_bytes > 0
        self.max_body_bytes = max_body_bytes
        self.max_key_bytes = max_key_bytes
        self.max_value_bytes = max_value_bytes

    def key(self, request: web.Request) -> str:
        key = path_key(request)
        self.check_key_size(key, "key")
        return key

    def check_key_size(self, key: str, where: str) -> None:
        try:
            size = len(as_bytes(key))
        except UnicodeEncodeError:  # a lone surrogate that holds no byte: refused as a command
            size = len(key.encode("utf-8", "surrogatepass"))
        if size > self.max_key_bytes:
            raise ApiError(413, f"{where}: {size} bytes of UTF-8, more than the limit of {self.max_key_bytes}",
                           limit=self.max_key_bytes)

    def check_value_size(self, value: Any, where: str) -> None:
        size = len(packb(value))  # the bytes it will take in the log and the store
        if size > self.max_value_bytes:
            raise ApiError(413, f"{where}: {size} bytes encoded, more than the limit of {self.max_value_bytes}",
                           limit=self.max_value_bytes)

    async def body(self, request: web.Request, *, required: bool) -> Any:
        """The body as JSON (None if empty and not required). The Content-Type is not checked:
        the seed's `curl -d '{...}'` sends application/x-www-form-urlencoded."""
        if (request.content_length or 0) > self.max_body_bytes:  # refuse before reading any of it
            raise ApiError(413, f"request body larger than {self.max_body_bytes} bytes", limit=self.max_body_bytes)
        raw = await request.read()  # a chunked body over client_max_size raises 413
        if not raw.strip():
            if required:
                raise ApiError(400, "body: missing; send a JSON object")
            return None
        return parse_json(raw)

    async def no_body(self, request: web.Request) -> None:
        """For a route that takes no body: refuse one that says anything (empty, whitespace and
        `{}` say nothing). Ignored, its fields would be answered 200 for something else than asked:
        `{"ttl": 5}` to a keep-alive renews a lease for its own TTL, `{"node": "node2"}` to a
        forced election makes this node campaign."""
        body = await self.body(request, required=False)
        if body is not None and body != {}:
            got = f"field {sorted(body)[0]!r}" if type(body) is dict else f"a JSON {_json_type(body)}"
            raise ApiError(400, f"body: {request.method} {request.path} takes no body (got {got}); send none")

    async def object(self, request: web.Request, allowed: tuple[str, ...], example: str) -> dict[str, Any]:
        """A required JSON object body with only the `allowed` fields."""
        body = await self.body(request, required=True)
        if type(body) is not dict:
            raise ApiError(400, f"body: must be a JSON object such as {example}")
        if unknown := body.keys() - set(allowed):
            raise ApiError(400, f"body: unknown field {sorted(unknown)[0]!r} (allowed: {', '.join(allowed)})")
        return body


def _json_type(value: Any) -> str:
    return {list: "array", str: "string", bool: "boolean", int: "number", float: "number"}.get(type(value), "null")


def path_key(request: web.Request) -> str:
    """The key in a /kv/{key} or /{key} path: the bytes the raw path percent-encodes, as text
    (raftkv/byte_text.py: a byte that is not UTF-8, as from /kv/%ff, is an escaped byte). The
    router's own decoding leaves such a sequence as the three characters "%ff", which would make
    /kv/%ff and /kv/%25ff two spellings of one key."""
    raw = request.rel_url.raw_path
    path = as_text(unquote_to_bytes(raw)) if "%" in raw else raw  # decoded whole: /k%76/a is /kv/a to the router
    route = request.match_info.route.resource
    prefix = "/kv/" if route is not None and route.canonical.startswith("/kv/") else "/"
    assert path.startswith(prefix), (path, prefix)
    return path[len(prefix):]
