"""Every failure of the HTTP API becomes one JSON body with the right status code.

Theory of operation
-------------------
Handlers never build error responses by hand: they raise `ApiError(status, message, **fields)`
(bad input, absent key, failed precondition, too large) or let the node's own exceptions escape
(`NoLeaderError`, `NotAppliedError`, `OutcomeUnknownError`; see raftkv/node/errors.py). The
`error_response` turns all of them, and aiohttp's own `HTTPException`s (404 no route, 405 wrong
method, 413 body over `client_max_size`), into `{"error": "...", "node": <id>, ...}` with this
status:

    400 malformed input (a body its Content-Encoding does not decode included)   404 absent / no
    route   405 wrong method (with Allow)   412 CAS failed   413 too large   415 a Content-Encoding
    other than gzip and deflate   422 request key reused   503 not done (no leader, refused),
    Retry-After   504 outcome unknown

Anything else is a bug, not bad input: it is logged with its traceback on logger `raftkv.api`
(with structured `extra` fields) and answered 500 in JSON, so a client never sees an HTML page or
a dropped connection. `asyncio.CancelledError` (the client went away) is never converted.

503 means "definitely not done, retry"; 504 means "we stopped waiting, it may still happen": the
difference is what a client needs to retry safely: a 504 says to retry with the same
Idempotency-Key when the write had one, and to read before writing again when it had none.

The small parsers at the end (`parse_json`, `parse_command`, `check_query`, `query_flag`,
`query_integer`) are the other source of errors: untrusted text in, a value or an ApiError 400 out.
JSON is parsed strictly (no NaN/Infinity) and every way `json.loads` can fail on hostile input
(bad UTF-8, 5000-digit integers, nesting deep enough to exhaust the recursion limit) is a 400.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import web
from multidict import MultiDict, MultiDictProxy

from raftkv.byte_text import ESCAPES
from raftkv.kv import InvalidCommand
from raftkv.node.errors import NodeError, OutcomeUnknownError, RequestRefused

__all__ = ["REQUEST_ID_KEY", "RETRY_AFTER_SECONDS", "ApiError", "check_query", "error_response", "json_response",
           "node_error", "parse_command", "parse_json", "query_flag", "query_integer", "retry_later"]

log = logging.getLogger("raftkv.api")

RETRY_AFTER_SECONDS = 1  # an election takes ~1 s with the default timeouts, so retry after that
# On a write's request: its command's request_id, or None.
REQUEST_ID_KEY: web.RequestKey[str | None] = web.RequestKey("request_id", str)

_DECIMAL = re.compile(r"[0-9]{1,19}")  # ASCII only: str.isdigit() also accepts "²" and "٣"
_TRUE, _FALSE = frozenset({"", "1", "true", "yes"}), frozenset({"0", "false", "no"})

_JSON = "application/json"


class ApiError(Exception):
    """An error response: `status`, a human `message` (the JSON "error") and extra JSON fields."""

    def __init__(self, status: int, message: str, *, headers: Mapping[str, str] | None = None,
                 **fields: Any) -> None:
        assert 400 <= status <= 599, status
        super().__init__(message)
        self.status = status
        self.message = message
        self.fields = fields
        self.headers = dict(headers or {})


def json_response(node_id: str, payload: dict[str, Any], status: int = 200,
                  headers: Mapping[str, str] | None = None) -> web.Response:
    """A JSON response that always names the node that answered (unless the payload already does,
    as a response relayed from the leader does)."""
    payload.setdefault("node", node_id)
    return web.Response(body=_dumps(payload).encode(), status=status, headers=headers, content_type=_JSON)


# Status dicts from the node may hold enums, paths or sets; a status page must not 500 on them.
# (Key values are JSON already: the kv module validated them.) Built once: json.dumps with a
# keyword argument builds a new encoder per call.
_dumps = json.JSONEncoder(default=lambda o: sorted(o, key=str) if isinstance(o, set | frozenset) else str(o)).encode


def retry_later(message: str, **fields: Any) -> ApiError:
    """503 with Retry-After: nothing was done, and trying again soon may work."""
    return ApiError(503, message, headers={"Retry-After": str(RETRY_AFTER_SECONDS)}, **fields)


def node_error(exc: NodeError, *, reading: bool, leader: str | None, request_id: str | None = None) -> ApiError:
    """The response for a node exception that reached the API; `request_id` is the write's, if it had one."""
    if isinstance(exc, OutcomeUnknownError):
        if reading:
            return ApiError(504, f"timed out: the read could not be confirmed ({exc}); retry", leader=leader)
        if request_id is not None:
            advice = f"retry with the same Idempotency-Key ({request_id!r}) to find out: it is applied at most once"
        else:
            advice = ("read the key to find out before writing again (this request had no Idempotency-Key, so a "
                      "blind retry could apply it twice)")
        return ApiError(504, f"timed out: the write may or may not have been applied ({exc}); {advice}",
                        leader=leader)
    if isinstance(exc, RequestRefused):
        return ApiError(exc.status, str(exc), reason=exc.reason, **exc.details)
    # NoLeaderError, NotAppliedError: the node says it did nothing.
    return retry_later(str(exc) or type(exc).__name__, leader=leader)


def _from_http_exception(exc: web.HTTPException, request: web.Request, max_body_bytes: int,
                         allowed: Callable[[str], set[str] | None]) -> ApiError:
    headers: dict[str, str] = {}
    if exc.status == 405:
        # The router's Allow set includes the root-key catch-all's methods for reserved paths
        # (POST /raft-state "could" be GET/PUT/DELETE /{key}); use the real route's methods. A
        # path no route has but the catch-all (POST /v3/frob) is no route: each method it listed
        # would answer that the path is under a reserved name.
        methods = allowed(request.path)
        if methods is None:
            return ApiError(404, f"no route {request.path}; see /openapi.json", path=request.path)
        headers["Allow"] = ", ".join(sorted(methods))
        return ApiError(405, f"method {request.method} is not allowed on {request.path}",
                        headers=headers, allowed=sorted(methods))
    if exc.status == 413:
        return ApiError(413, f"request body larger than {max_body_bytes} bytes", limit=max_body_bytes)
    if exc.status == 404:
        return ApiError(404, f"no route {request.path}; see /openapi.json", path=request.path)
    return ApiError(exc.status, exc.reason or exc.text or "error")


def error_response(node: Any, request: web.Request, exc: Exception, max_body_bytes: int,
                   allowed: Callable[[str], set[str] | None]) -> web.Response:
    """The JSON answer for an exception a handler raised (see the module docstring). An aiohttp
    HTTPException below 400 (a redirect) is no error: it is raised again.

    `allowed(path)` returns the methods of the fixed route at `path`, or None."""
    if isinstance(exc, ApiError):
        err = exc
    elif isinstance(exc, NodeError):
        err = node_error(exc, reading=request.method in ("GET", "HEAD"), leader=_leader(node),
                         request_id=request.get(REQUEST_ID_KEY))
    elif isinstance(exc, web.HTTPException):
        if exc.status < 400:
            raise exc
        err = _from_http_exception(exc, request, max_body_bytes, allowed)
    elif isinstance(exc, web.RequestPayloadError):  # a body its Content-Encoding does not decode
        err = ApiError(400, f"body: not {request.headers.get('Content-Encoding', 'as sent')} as its Content-Encoding "
                            f"says ({exc}); send it so, or uncompressed")
    else:  # a bug: log it, answer JSON, keep serving
        log.error("unhandled %s on %s %s", type(exc).__name__, request.method, request.path, exc_info=exc,
                  extra={"event": "api.unhandled", "node": node.id, "method": request.method,
                         "path": request.path, "exception": type(exc).__name__})
        err = ApiError(500, f"internal error: {type(exc).__name__}")
    return json_response(node.id, {"error": err.message, **err.fields}, err.status, err.headers)


def _leader(node: Any) -> str | None:
    try:
        return node.leader_id()
    except Exception:  # the hint is best-effort; never turn a 503 into a 500
        return None


# ---- input parsing that ends in 400 -----------------------------------------------------------


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_decode = json.JSONDecoder(parse_constant=_reject_constant).decode


def parse_json(raw: bytes) -> Any:
    """Strict JSON (no NaN/Infinity) in UTF-8 (RFC 8259 8.1), or ApiError 400; never
    RecursionError or UnicodeError."""
    try:
        return _decode(raw.decode("utf-8-sig"))
    except RecursionError:
        raise ApiError(400, "body: JSON nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, too many digits, NaN
        raise ApiError(400, f"body: malformed JSON: {exc}") from None


def parse_command(parser: Callable[..., Any], *args: Any) -> Any:
    """`parser(*args)` (a raftkv.kv *_from_json), with its InvalidCommand message as a 400."""
    try:
        return parser(*args)
    except InvalidCommand as exc:
        raise ApiError(400, str(exc)) from None


_NO_QUERY: MultiDictProxy[str] = MultiDictProxy(MultiDict())


def check_query(request: web.Request, allowed: set[str]) -> Mapping[str, str]:
    """The query parameters, after refusing any not in `allowed`. Values are decoded from the raw
    query as the bytes they percent-encode (byte_text.py), as a key in the path is: the router's
    own decoding would turn `?prefix=%ff` into U+FFFD, silently another prefix."""
    raw = request.rel_url.raw_query_string
    if not raw:
        return _NO_QUERY  # most requests: not worth a parse
    query = MultiDictProxy(MultiDict(parse_qsl(raw, keep_blank_values=True, errors=ESCAPES)))
    # Unknown parameters are refused: `?prefx=a` silently listing every key would be worse.
    if unknown := query.keys() - allowed:
        names = ", ".join(sorted(allowed)) or "none"
        raise ApiError(400, f"unknown query parameter {sorted(unknown)[0]!r} (allowed: {names})")
    if len(query) != len(set(query.keys())):  # `?prefix=a&prefix=b` read as one of them would answer another question
        twice = next(name for name in query if len(query.getall(name)) > 1)
        raise ApiError(400, f"query parameter {twice!r} given more than once; give it once")
    return query


def query_flag(value: str | None, name: str) -> bool:
    """A boolean parameter: absent is false; `?stale` alone, 1/true/yes are true; 0/false/no false."""
    if value is None:
        return False
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise ApiError(400, f"{name}: must be true or false, not {value!r}")


def query_integer(value: str, name: str, minimum: int, maximum: int = 2**63 - 1) -> int:
    """A decimal integer parameter within [minimum, maximum]."""
    if not _DECIMAL.fullmatch(value) or not minimum <= int(value) <= maximum:
        raise ApiError(400, f"{name}: must be an integer from {minimum} to {maximum}, not {value!r}")
    return int(value)
