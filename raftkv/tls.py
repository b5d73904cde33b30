"""TLS on the client API: what a node serves with, and what a client trusts and presents.

Theory of operation
-------------------
A node serving its client API over TLS (`raftkv node --client-tls-cert --client-tls-key`) holds a
certificate and its key; with `--client-tls-ca` it also asks every client for a certificate and
accepts only one that CA signed (mutual TLS). A client (the CLI, the dashboard, `raftkv chaos`, and
a node calling another member's client API) trusts a CA file, or the system's CAs when it names
none, and presents a certificate of its own when it has one, for servers that ask.

Unlike the peer links (transport/tcp.py), hostnames are checked, as curl and etcdctl check them:
people and programs reach the client API by the name or address in its URL, so the certificate
must name it (`raftkv up --tls` makes one for localhost, 127.0.0.1 and ::1).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

__all__ = ["ClientTLS", "TLSFileError", "server_context"]


class TLSFileError(ValueError):
    """A certificate, key or CA file that cannot be used, said with the file's name."""


def server_context(cert: Path, key: Path, ca: Path | None = None) -> ssl.SSLContext:
    """A server's context: its certificate chain; with `ca`, clients must present a certificate
    that CA signed (anything else fails the handshake)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    _load_chain(context, cert, key)
    if ca is not None:
        _load_ca(context, ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


@dataclass(frozen=True)
class ClientTLS:
    """What a client trusts (`ca`; None: the system's CAs) and presents when a server asks for a
    certificate (`cert`, with its `key`; the key may be in the certificate's file)."""

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None

    def __post_init__(self) -> None:
        if self.key is not None and self.cert is None:
            raise TLSFileError("a client key needs its certificate (--cert)")

    @cached_property
    def context(self) -> ssl.SSLContext | None:
        """The context to connect with; None when nothing is configured (the HTTP library's default
        then verifies https against the system's CAs)."""
        if self.ca is None and self.cert is None:
            return None
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        if self.ca is not None:
            _load_ca(context, self.ca)
        if self.cert is not None:
            _load_chain(context, self.cert, self.key)
        return context


def _load_chain(context: ssl.SSLContext, cert: Path, key: Path | None) -> None:
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as e:
        with_key = f" with key {key}" if key is not None else ""
        raise TLSFileError(f"cannot use certificate {cert}{with_key}: {_reason(e)}") from None


def _load_ca(context: ssl.SSLContext, ca: Path) -> None:
    try:
        context.load_verify_locations(cafile=ca)
    except (OSError, ssl.SSLError) as e:
        raise TLSFileError(f"cannot use CA file {ca}: {_reason(e)}") from None


def _reason(e: OSError) -> str:
    if isinstance(e, ssl.SSLError):  # OpenSSL's reason (KEY_VALUES_MISMATCH, ...); none for a file not PEM
        return e.reason or "not in PEM format"
    return e.strerror or str(e)
