"""The HTTP API of one raftkv node (aiohttp): `create_app(node)` serves the API the README's table lists.

`http` has the routes, validation and status mapping; `errors` maps every
failure to a JSON body and status; `openapi` is the OpenAPI 3.1 document served at /openapi.json;
`server` runs a node process (this API around a raftkv.node.NodeHost).
"""

from raftkv.api.errors import RETRY_AFTER_SECONDS, ApiError
from raftkv.api.http import (
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_KEY_BYTES,
    DEFAULT_MAX_VALUE_BYTES,
    IDEMPOTENCY_HEADER,
    RESERVED_NAMES,
    Node,
    create_app,
)
from raftkv.api.openapi import openapi_document

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_MAX_KEY_BYTES",
    "DEFAULT_MAX_VALUE_BYTES",
    "IDEMPOTENCY_HEADER",
    "RESERVED_NAMES",
    "RETRY_AFTER_SECONDS",
    "ApiError",
    "Node",
    "create_app",
    "openapi_document",
]
