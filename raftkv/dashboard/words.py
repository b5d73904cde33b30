"""What went wrong between the dashboard and a node, in plain words for the page.

A node card once read "ClientConnectorError: Cannot connect to host 127.0.0.1:3001 ssl:default
[Connect call failed ...]". A person needs to know what it means: nothing answers there (the
process is down, or the address is wrong), the node stopped answering, or the connection broke.
"""

from __future__ import annotations

import aiohttp

__all__ = ["plain_error", "unacknowledged_words"]

_UNANSWERED = {"ClientConnectorError": "could not connect", "ServerDisconnectedError": "lost the connection",
               "TimeoutError": "got no answer in time", "ClientOSError": "lost the connection"}


def plain_error(e: BaseException) -> str:
    """One short sentence for an error met while talking to a node."""
    if isinstance(e, aiohttp.ClientSSLError):  # before its base class: a TLS handshake that failed
        why = getattr(e.os_error, "verify_message", None) or getattr(e.os_error, "reason", None) or e.os_error
        return f"no TLS connection to {e.host}:{e.port} ({why}): check the dashboard's --cacert, --cert and --key"
    if isinstance(e, aiohttp.ClientConnectorError):
        where = f"{e.host}:{e.port}"
        if isinstance(e.os_error, ConnectionRefusedError):
            return f"nothing answers at {where} (the node's process is not running, or not listening yet)"
        return f"cannot connect to {where} ({_os_words(e.os_error)})"
    if isinstance(e, aiohttp.ServerDisconnectedError):
        return "the node closed the connection"
    if isinstance(e, aiohttp.WSServerHandshakeError):
        needs = {401: ": the dashboard needs --user or --token",
                 403: ": the dashboard's user may not read every key, which the event stream shows"}.get(e.status, "")
        return f"the node refused the event stream (HTTP {e.status}){needs}"
    if isinstance(e, aiohttp.ClientResponseError):
        return f"the node answered HTTP {e.status}"
    if isinstance(e, TimeoutError):
        return "the node did not answer in time"
    if isinstance(e, aiohttp.ClientPayloadError):
        return "the node's answer was cut short"
    if isinstance(e, (aiohttp.ClientOSError, OSError)):
        return f"the connection failed ({_os_words(e)})"
    return f"unexpected error: {type(e).__name__}"


def _os_words(e: BaseException) -> str:
    text = getattr(e, "strerror", None) or str(e) or type(e).__name__
    return text[0].lower() + text[1:] if text else text


def unacknowledged_words(counts: dict[str, int]) -> str:
    """Writes that were not acknowledged, by why: {"503": 2, "ClientConnectorError": 73} reads
    "73 could not connect, 2 answered 503" (an HTTP status, or the error that stood for an answer)."""
    said = [(n, f"answered {why}" if why.isdigit() else _UNANSWERED.get(why, f"failed ({why})"))
            for why, n in counts.items()]
    return ", ".join(f"{n} {words}" for n, words in sorted(said, key=lambda item: -item[0]))
