"""The OpenAPI description of the `/auth` routes, and of what auth adds to every other route: the
two ways to authenticate, 401 and 403 (see raftkv/api/auth.py for the rules)."""

from __future__ import annotations

from typing import Any

from raftkv.api.auth import MAX_PASSWORD_CHARS, MAX_TOKEN_TTL_S, Need, route_need
from raftkv.api.openapi_parts import E503, E504_WRITE, answer, err, head_of, op, ref
from raftkv.kv import Access

__all__ = ["with_auth"]

_NAME = {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$"}
_USER = {"name": "name", "in": "path", "required": True, "schema": _NAME, "description": "The user's name."}
_ROLE_NAME = {"name": "name", "in": "path", "required": True, "schema": _NAME, "description": "The role's name."}
_ROLE = {"name": "role", "in": "path", "required": True, "schema": _NAME, "description": "The role's name."}
_E400_NAME = err("A malformed name or body.")
_E404 = err("The user or role does not exist.")
_E409 = err("Refused by the current auth state (it exists already, root cannot lose its role, ...); nothing was done.")
_E401 = {**err("Authentication is on and the request carries no credentials, wrong ones, or an expired or void "
               "token (reason says which). Nothing was done."),
         "headers": {"WWW-Authenticate": {"schema": {"type": "string"}}}}
_E403 = err("The user lacks the permission this needs (reason: permission_denied). Nothing was done.")


def _auth_schemas() -> dict[str, Any]:
    permission = {"type": "object", "required": ["access"], "additionalProperties": False, "properties": {
        "access": {"enum": [a.value for a in Access]},
        "key": {"type": "string", "description": "A key, or with prefix every key starting with it (\"\": all)."},
        "prefix": {"type": "boolean", "default": False}}}
    return {
        "Permission": permission,
        "AuthChanged": {"type": "object", "required": ["change", "authRevision"], "properties": {
            "op": {"const": "auth"}, "change": {"type": "string"}, "authRevision": {"type": "integer"},
            "revision": {"type": "integer"}, "node": {"type": "string"}, "leader": {"type": ["string", "null"]},
            "forwardedBy": {"type": "string"}}},
        "User": {"type": "object", "required": ["name", "roles"], "properties": {
            "name": {"type": "string"}, "roles": {"type": "array", "items": {"type": "string"}},
            "node": {"type": "string"}}},
        "Role": {"type": "object", "required": ["name", "permissions"], "properties": {
            "name": {"type": "string"}, "builtin": {"type": "boolean"},
            "permissions": {"type": "array", "items": permission}, "node": {"type": "string"}}},
    }


def _change(summary: str, *, body: dict[str, Any] | None = None, parameters: list[dict[str, Any]] | None = None,
            description: str = "", hashes: bool = False) -> dict[str, Any]:
    responses = {"200": answer(ref("AuthChanged"), "Committed on every replica."), "400": _E400_NAME,
                 "404": _E404, "409": _E409, "503": E503, "504": E504_WRITE}
    if body is not None:
        responses["413"] = err("Body too large.")
    return op(summary, responses, body=body, parameters=parameters,
              description=description + (" The password is hashed (argon2id) by the node that takes the request; "
                                         "only the hash is replicated." if hashes else ""))


def _auth_paths() -> dict[str, Any]:
    password = {"type": "object", "required": ["password"], "additionalProperties": False,
                "properties": {"password": {"type": "string", "minLength": 1, "maxLength": MAX_PASSWORD_CHARS}}}
    listing = {"type": "object", "properties": {"node": {"type": "string"}}}
    return {
        "/auth/status": {"get": op("Whether auth is on; with credentials, who they name and what that user may do", {
            "200": answer({"type": "object", "required": ["enabled", "authRevision"], "properties": {
                "enabled": {"type": "boolean"}, "authRevision": {"type": "integer"}, "user": {"type": "string"},
                "roles": {"type": "array", "items": {"type": "string"}}, "admin": {"type": "boolean"},
                "readsEveryKey": {"type": "boolean"}, "permissions": {"type": "array", "items": ref("Permission")},
                "node": {"type": "string"}}}, "The switch, and the caller's rights when it sent credentials."),
            "400": err("An unknown query parameter."), "401": _E401})},
        "/auth/token": {"post": op("Log in: a bearer token for Authorization: Bearer", {
            "200": answer({"type": "object", "required": ["token", "user", "ttl", "expiresAt"], "properties": {
                "token": {"type": "string"}, "user": {"type": "string"}, "ttl": {"type": "integer"},
                "expiresAt": {"type": "integer", "description": "Unix time."}, "node": {"type": "string"}}},
                "A token any node accepts until it expires, its user changes password or auth is enabled anew."),
            "400": err("Malformed body."), "401": _E401, "409": err("Auth is off: no token is needed."),
            "413": err("Body too large.")},
            body={"type": "object", "required": ["name", "password"], "additionalProperties": False, "properties": {
                "name": {"type": "string"}, "password": {"type": "string"},
                "ttl": {"type": "integer", "minimum": 1, "maximum": MAX_TOKEN_TTL_S, "default": 600}}})},
        "/auth/enable": {"post": _change("Turn authentication on (needs a user named root)",
                                         description="Gives root the built-in root role. Any body is ignored.")},
        "/auth/disable": {"post": _change("Turn authentication off")},
        "/auth/users": {"get": op("Every user and their roles", {"200": answer(
            {**listing, "required": ["users"], "properties": {**listing["properties"],
                                                              "users": {"type": "array", "items": ref("User")}}},
            "The users."), "400": err("An unknown query parameter.")})},
        "/auth/users/{name}": {
            "get": op("A user and their roles", {"200": answer(ref("User"), "The user."), "400": _E400_NAME,
                                                  "404": _E404}, parameters=[_USER]),
            "put": _change("Add a user", body=password, parameters=[_USER], hashes=True),
            "delete": _change("Delete a user (their tokens become void)", parameters=[_USER])},
        "/auth/users/{name}/password": {"post": _change(
            "Change a user's password (their older tokens become void)", body=password, parameters=[_USER],
            description="Needs the admin permission, or to be that user.", hashes=True)},
        "/auth/users/{name}/roles/{role}": {
            "put": _change("Grant a role to a user", parameters=[_USER, _ROLE]),
            "delete": _change("Revoke a role from a user", parameters=[_USER, _ROLE])},
        "/auth/roles": {"get": op("Every role and its permissions (root is built in)", {"200": answer(
            {**listing, "required": ["roles"], "properties": {**listing["properties"],
                                                              "roles": {"type": "array", "items": ref("Role")}}},
            "The roles."), "400": err("An unknown query parameter.")})},
        "/auth/roles/{name}": {
            "get": op("A role and its permissions", {"200": answer(ref("Role"), "The role."),
                                                     "400": _E400_NAME, "404": _E404}, parameters=[_ROLE_NAME]),
            "put": _change("Add a role (with no permission yet)", parameters=[_ROLE_NAME]),
            "delete": _change("Delete a role (its users lose it)", parameters=[_ROLE_NAME])},
        "/auth/roles/{name}/permissions": {
            "post": _change("Grant a permission to a role", body=ref("Permission"), parameters=[_ROLE_NAME]),
            "delete": _change("Revoke a permission from a role", body=ref("Permission"), parameters=[_ROLE_NAME])},
    }


def with_auth(document: dict[str, Any]) -> dict[str, Any]:
    """`document` (openapi.py's) with the /auth routes, the two schemes, and 401/403 on every
    operation that needs a user once auth is on."""
    paths = _auth_paths()
    for operations in paths.values():
        if "get" in operations:
            operations["head"] = head_of(operations["get"])
    document["paths"].update(paths)
    document["components"]["schemas"].update(_auth_schemas())
    document["components"]["securitySchemes"] = {
        "basic": {"type": "http", "scheme": "basic", "description": "A user's name and password (use TLS)."},
        "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                   "description": "A token from POST /auth/token."}}
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            if route_need(path, method.upper()) is Need.OPEN:
                operation["security"] = [{}]
                continue
            operation["security"] = [{"basic": []}, {"bearer": []}, {}]  # {}: while auth is off
            operation["responses"].setdefault("401", _E401)
            operation["responses"].setdefault("403", _E403)
    return document
