"""The OpenAPI 3.1 description of a raftkv node's HTTP API, served at GET /openapi.json.

Theory of operation
-------------------
The document is plain data built by `openapi_document()`, with the node's configured size limits
written into it. It must describe exactly what `http.create_app` serves: tests compare its paths
and methods with the app's router, and every status code any test observes on a route must appear
under that operation's `responses`, so the document cannot drift from the code unnoticed.

Conventions shared by all operations, documented once in `info.description` rather than on each:
405 (with Allow) for a method a route does not have, 404 for a path no route matches, CORS
preflight (OPTIONS) answered 204 on every path, and a JSON error body for every failure.
"""

from __future__ import annotations

from typing import Any

from raftkv.api.openapi_auth import with_auth
from raftkv.api.openapi_parts import E503, E504_WRITE, answer, e504, err, head_of, op, ref
from raftkv.kv import DEFAULT_MAX_DEDUP_BYTES, DEFAULT_MAX_DEDUP_ENTRIES, MAX_LEASE_TTL_S, MAX_REQUEST_ID_CHARS

__all__ = ["openapi_document"]

_BINARY = "application/octet-stream"


_E400 = err("Malformed input: invalid JSON, wrong field types, unknown fields, empty key, bad query parameter.")
_E400_QUERY = err("A query parameter: this route takes none.")
_SSE_EVENT = {"type": "object", "description": "One Server-Sent Event of the stream, by its fields.",
              "required": ["data"],
              "properties": {"event": {"enum": ["progress", "cancelled"]}, "id": {"type": "string"},
                             "data": {"type": "string", "contentMediaType": "application/json"}}}
_E404_KEY = err("The key does not exist.")
_E412 = answer(ref("PreconditionFailed"), "A compare-and-set precondition did not hold; nothing was written.")
_E403_LAB = err("Fault injection is off on this node (start it with --enable-fault-injection); nothing was done.")
_E422 = answer(ref("RequestKeyReused"), "The Idempotency-Key (request_id) was first used for another request (another "
                                         "operation, key or body); nothing was done.")
_REPLAYED = {"Idempotent-Replayed": {"schema": {"const": "true"},
                                     "description": "Present on the answer to a retry: this is the first answer, "
                                                    "again; nothing was done now."}}


def _done(schema: str, description: str) -> dict[str, Any]:
    """A write's 200, which may be a retry's replayed first answer."""
    return {**answer(ref(schema), description), "headers": _REPLAYED}
_E504_READ = e504("the read could not be confirmed as linearizable. Retry.")


_KEY = {"name": "key", "in": "path", "required": True, "schema": {"type": "string", "minLength": 1},
        "description": "The key; may contain '/' (percent-encode '?' and '#')."}
_REVISION = {"name": "revision", "in": "query", "schema": {"type": "integer", "minimum": 1},
             "description": "Read as of this past revision (410 if compacted, 400 if not reached yet)."}
# A boolean query parameter as errors.query_flag reads it: true or false, 1 or 0, yes or no, in any
# case, or the name alone (?stale) for true.
_FLAG = {"anyOf": [{"type": "boolean"}, {"type": "string", "pattern": (
    "^(|[01]|[Tt][Rr][Uu][Ee]|[Ff][Aa][Ll][Ss][Ee]|[Yy][Ee][Ss]|[Nn][Oo])$")}]}
_STALE = {"name": "stale", "in": "query", "schema": {**_FLAG, "default": False},
          "description": "Read this node's local state without a ReadIndex barrier (may be stale)."}
_IDEMPOTENCY = {"name": "Idempotency-Key", "in": "header",
                "schema": {"type": "string", "minLength": 1, "maxLength": MAX_REQUEST_ID_CHARS},
                "description": "Becomes the command's request_id: a retry (same key, same operation, key and body) is "
                               "applied at most once and returns the first answer; the same key for a different "
                               f"request is 422. The last {DEFAULT_MAX_DEDUP_ENTRIES:,} keys (at most "
                               f"{DEFAULT_MAX_DEDUP_BYTES >> 20} MiB of answers) are remembered."}
_LEASE_ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "integer", "minimum": 1},
             "description": "The lease's id."}
_MEMBER_ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"},
              "description": "The member's id (GET /members lists them)."}
_PREV_REVISION_Q = {"name": "prev_revision", "in": "query", "schema": {"type": "integer", "minimum": 1},
                    "description": "Delete only if the key's mod_revision equals this (also accepted in the body)."}


_HISTORY_ONLY_READ = ("The path ends in /history: a key's history, which is only read (a key that ends in /history "
                      "is written as .../%2Fhistory).")


def _key_ops(root: bool, limits: dict[str, int]) -> dict[str, Any]:
    """GET/PUT/DELETE on one key; `root` is the seed's /{key} spelling of the same operations."""
    extra: dict[str, Any] = {}
    note = ""
    if root:
        extra = {"405": err("The path is a fixed route (e.g. PUT /health) that does not have this method."),
                 "404": err("The key does not exist, or its first segment is a reserved name (use /kv/{key}).")}
        note = "The seed's spelling of /kv/{key}; keys whose first segment is a reserved route name are refused. "
    too_large_key = err(f"The key is longer than {limits['key']} bytes of UTF-8.")
    write_common = {"413": err(f"Key over {limits['key']} bytes, value over {limits['value']} bytes encoded, "
                                f"or body over {limits['body']} bytes."),
                    "422": _E422, "503": E503, "504": E504_WRITE,
                    "405": err(_HISTORY_ONLY_READ + (f" Or: {extra['405']['description']}" if root else ""))}
    params = [_KEY]
    return {
        "get": op("Read a key (linearizable unless stale=true)", {
            "200": answer({"oneOf": [ref("GetResult"), ref("History")]},
                         "The key's value and metadata (at `revision` if given); for .../history, its versions."),
            "400": _E400, "404": _E404_KEY, "410": answer(ref("Compacted"), "revision is below the compacted one."),
            "413": too_large_key, "503": E503, "504": _E504_READ,
            **({"405": extra["405"], "404": extra["404"]} if root else {})},
            parameters=[*params, _STALE, _REVISION],
            description=note + "A follower asks the leader for the read index (ReadIndex), then answers from its "
                               "own state once it has applied that far. GET /kv/{key}/history lists the key's "
                               "retained versions, oldest first (a delete is a null kv); a key that itself ends in "
                               "/history is written with its slash percent-encoded (%2Fhistory)."),
        "put": op("Write a key (compare-and-set with prev_*)", {
            "200": _done("PutResult", "Committed and applied."),
            "400": _E400, "412": _E412, **extra, **write_common,
            "404": err("The lease given does not exist (it expired or was revoked); nothing was written."
                       + (" Or the key's first segment is a reserved name (use /kv/{key})." if root else ""))},
            parameters=[*params, _IDEMPOTENCY], body=ref("PutRequest"),
            description=note + "Answered only after commit and apply; a follower forwards the write to the "
                                 "leader over the Raft link and answers once it has applied it too."),
        "delete": op("Delete a key", {
            "200": _done("DeleteResult", "Deleted."),
            "400": _E400, "404": _E404_KEY, "412": _E412, **extra, **write_common},
            parameters=[*params, _IDEMPOTENCY, _PREV_REVISION_Q], body=ref("DeleteRequest"), body_required=False,
            description=note + "The body is optional."),
    }


def _schemas() -> dict[str, Any]:
    any_json: dict[str, Any] = {"description": "Any JSON value."}
    kv = {"type": "object", "required": ["key", "value", "create_revision", "mod_revision", "version"],
          "properties": {"key": {"type": "string"}, "value": any_json, "create_revision": {"type": "integer"},
                         "mod_revision": {"type": "integer"}, "version": {"type": "integer"},
                         "lease": {"type": "integer", "description": "The lease it is attached to; absent: none."}}}
    answered = {"node": {"type": "string", "description": "The node that answered."},
                "leader": {"type": ["string", "null"], "description": "The leader as this node knows it."},
                "forwardedBy": {"type": "string",
                                "description": "Present when a follower forwarded the write to the leader; "
                                               "\"node\" is then the leader that took it."}}
    nullable_kv = {"oneOf": [ref("KeyValue"), {"type": "null"}]}
    op_item = {"type": "object", "description": "{\"op\": \"put\"|\"delete\"|\"get\"|\"range\", ...fields} or "
                                                "{\"put\": {...fields}}; put {key, value}, delete {key}, get {key}, "
                                                "range {prefix?, limit?}."}
    return {
        "Error": {"type": "object", "required": ["error", "node"],
                  "properties": {"error": {"type": "string"}, **answered}, "additionalProperties": True},
        "KeyValue": kv,
        "History": {"type": "object", "required": ["key", "versions", "compactRevision", "revision"], "properties": {
            "key": {"type": "string"}, "compactRevision": {"type": "integer"}, "revision": {"type": "integer"},
            "node": {"type": "string"},
            "versions": {"type": "array", "items": {"type": "object", "required": ["revision", "kv"], "properties": {
                "revision": {"type": "integer"}, "kv": {"oneOf": [ref("KeyValue"), {"type": "null"}]}}}}}},
        "Compacted": {"type": "object", "required": ["error", "compactRevision", "node"], "properties": {
            "error": {"type": "string"}, "compactRevision": {"type": "integer"}, "node": {"type": "string"}}},
        "RaftLog": {"type": "object", "required": ["nodeId", "firstIndex", "lastIndex", "commitIndex", "entries"],
                    "properties": {
                        "nodeId": {"type": "string"}, "term": {"type": "integer"},
                        "firstIndex": {"type": "integer"}, "lastIndex": {"type": "integer"},
                        "snapshotIndex": {"type": "integer"}, "commitIndex": {"type": "integer"},
                        "appliedIndex": {"type": "integer"}, "stableIndex": {"type": "integer"},
                        "readAt": {"type": "number"}, "node": {"type": "string"},
                        "entries": {"type": "array", "items": {"type": "object", "required": [
                            "index", "term", "kind", "summary", "onDisk", "committed", "applied"], "properties": {
                            "index": {"type": "integer"}, "term": {"type": "integer"},
                            "kind": {"enum": ["normal", "noop", "conf_change"]}, "summary": {"type": "string"},
                            "bytes": {"type": "integer"}, "onDisk": {"type": "boolean"},
                            "committed": {"type": "boolean"}, "applied": {"type": "boolean"}}}}}},
        "Lab": {"type": "object", "required": ["faultInjection", "holding", "clockHeld", "tickMs", "snapshotEvery",
                                               "held"],
                "properties": {"faultInjection": {"type": "boolean"}, "holding": {"type": "boolean"},
                               "clockHeld": {"type": "boolean"},
                               "tickMs": {"type": "integer"}, "snapshotEvery": {"type": "integer"},
                               "heldDroppedFull": {"type": "integer"}, "node": {"type": "string"},
                               "held": {"type": "array", "items": {"type": "object", "required": [
                                   "number", "type", "src", "dst", "term"], "properties": {
                                   "number": {"type": "integer"}, "type": {"type": "string"},
                                   "src": {"type": "string"}, "dst": {"type": "string"},
                                   "term": {"type": "integer"}, "entries": {"type": "integer"},
                                   "heldAt": {"type": "number"}}}}}},
        "LabSettings": {"type": "object", "additionalProperties": False, "properties": {
            "holding": {"type": "boolean"}, "clockHeld": {"type": "boolean"},
            "tickMs": {"type": "integer", "minimum": 1, "maximum": 1000},
            "snapshotEvery": {"type": "integer", "minimum": 1}}},
        "HeldNumbers": {"type": "object", "required": ["numbers"], "additionalProperties": False, "properties": {
            "numbers": {"type": "array", "items": {"type": "integer"}}}},
        "Member": {"type": "object", "required": ["id", "name", "clientURL", "peerURL", "role", "isLeader"],
                   "description": "A member added by its peer address alone (etcd's MemberAdd, `etcdctl member "
                                  "add`) has started false, and an empty name and clientURL, until its node starts "
                                  "and publishes them.",
                   "properties": {"id": {"type": "string"}, "name": {"type": "string"},
                                  "clientURL": {"type": "string"}, "peerURL": {"type": "string"},
                                  "role": {"enum": ["voter", "learner"]}, "isLeader": {"type": "boolean"},
                                  "started": {"type": "boolean"},
                                  "matchIndex": {"type": "integer"}, "lagEntries": {"type": "integer"}}},
        "Members": {"type": "object", "required": ["members", "leader", "removedIDs", "node"], "properties": {
            "members": {"type": "array", "items": ref("Member")}, "leader": {"type": ["string", "null"]},
            "removedIDs": {"type": "array", "items": {"type": "string"}}, "node": {"type": "string"}}},
        "AddMember": {"type": "object", "required": ["name", "clientURL", "peerURL"], "additionalProperties": False,
                      "properties": {"name": {"type": "string"}, "clientURL": {"type": "string"},
                                     "peerURL": {"type": "string", "description": "host:port of its Raft port"},
                                     "learner": {"type": "boolean", "default": True}}},
        "MoveMember": {"type": "object", "required": ["peerURL"], "additionalProperties": False,
                       "properties": {"peerURL": {"type": "string", "description": "host:port of its Raft port"}}},
        "MemberChanged": {"type": "object", "required": ["member", "members", "node"], "properties": {
            "member": ref("Member"), "members": {"type": "array", "items": ref("Member")},
            "node": {"type": "string"}}},
        "RequestKeyReused": {"type": "object", "required": ["error", "request_id", "mismatch", "first_use", "node"],
                             "properties": {
                                 "error": {"type": "string"}, "request_id": {"type": "string"},
                                 "mismatch": {"enum": ["operation", "key", "body"]},
                                 "first_use": {"type": "object", "required": ["op", "key"], "properties": {
                                     "op": {"enum": ["put", "delete", "txn"]}, "key": {"type": ["string", "null"]}}},
                                 "first_index": {"type": "integer", "description": "The log index of the first use."},
                                 **answered}},
        "PreconditionFailed": {"type": "object", "required": ["error", "key", "reason", "current", "revision"],
                               "properties": {"error": {"type": "string"}, "key": {"type": "string"},
                                              "reason": {"type": "string"}, "current": nullable_kv,
                                              "revision": {"type": "integer"}, **answered}},
        "PutRequest": {"type": "object", "required": ["value"], "additionalProperties": False, "properties": {
            "value": any_json, "prev_value": {"description": "Write only if the current value equals this."},
            "prev_revision": {"type": "integer", "minimum": 0,
                              "description": "Only if mod_revision equals this (0: absent)."},
            "prev_exist": {"type": "boolean", "description": "false: create only; true: update only."},
            "lease": {"type": "integer", "minimum": 0, "maximum": 2**63 - 1,
                      "description": "Attach the key to this lease (POST /leases): it is deleted when the lease "
                                     "ends. 0: none."},
            "request_id": {"type": "string", "maxLength": 256, "description": "Same as the Idempotency-Key header."}}},
        "PutResult": {"type": "object", "required": ["key", "value", "revision", "node", "leader"], "properties": {
            "op": {"const": "put"}, "key": {"type": "string"}, "value": any_json, "revision": {"type": "integer"},
            "prev": nullable_kv, **answered}},
        "GetResult": {"allOf": [kv, {"type": "object", "required": ["revision", "node"], "properties": {
            "revision": {"type": "integer", "description": "The store's revision when read."}, **answered}}]},
        "DeleteRequest": {"type": "object", "additionalProperties": False, "properties": {
            "prev_revision": {"type": "integer", "minimum": 1}, "request_id": {"type": "string", "maxLength": 256}}},
        "DeleteResult": {"type": "object", "required": ["key", "revision", "node", "leader"], "properties": {
            "op": {"const": "delete"}, "key": {"type": "string"}, "revision": {"type": "integer"},
            "prev": ref("KeyValue"), **answered}},
        "RangeResult": {"type": "object", "required": ["items", "more", "count", "revision", "node"], "properties": {
            "items": {"type": "array", "items": ref("KeyValue")}, "more": {"type": "boolean"},
            "next": {"type": "string", "description": "With more=true: the start of the next page."},
            "count": {"type": "integer"}, "revision": {"type": "integer"}, **answered}},
        "TxnRequest": {"type": "object", "additionalProperties": False, "properties": {
            "compare": {"type": "array", "maxItems": 128, "items": {
                "type": "object", "required": ["key", "target", "op", "value"], "properties": {
                    "key": {"type": "string"},
                    "target": {"enum": ["value", "version", "create_revision", "mod_revision", "exists"]},
                    "op": {"enum": ["==", "!=", ">", "<"]}, "value": any_json}}},
            "success": {"type": "array", "maxItems": 128, "items": op_item},
            "failure": {"type": "array", "maxItems": 128, "items": op_item},
            "request_id": {"type": "string", "maxLength": 256}}},
        "TxnResult": {"type": "object", "required": ["succeeded", "responses", "revision", "node", "leader"],
                      "properties": {"op": {"const": "txn"}, "succeeded": {"type": "boolean"},
                                     "responses": {"type": "array", "items": {"type": "object"}},
                                     "revision": {"type": "integer"}, **answered}},
        "RaftState": {"type": "object", "additionalProperties": True,
                      "required": ["nodeId", "state", "term", "votedFor", "logLength", "commitIndex"],
                      "properties": {"nodeId": {"type": "string"}, "state": {"type": "string"},
                                     "term": {"type": "integer"}, "votedFor": {"type": ["string", "null"]},
                                     "logLength": {"type": "integer"}, "commitIndex": {"type": "integer"},
                                     "lastApplied": {"type": "integer"}, "leaderId": {"type": ["string", "null"]},
                                     "snapshotIndex": {"type": "integer"}, "faultInjection": {"type": "boolean"},
                                     "peers": {"type": "array", "items": {"type": "object"}},
                                     "node": {"type": "string"}}},
        "ElectionResult": {"type": "object", "required": ["nodeId", "term", "state", "node"],
                           "additionalProperties": True, "properties": {
                               "nodeId": {"type": "string"}, "term": {"type": "integer"},
                               "state": {"type": "string"}, "node": {"type": "string"}}},
        "PartitionRequest": {"type": "object", "required": ["partitioned"], "additionalProperties": False,
                             "properties": {"partitioned": {"type": "boolean"},
                                            "peers": {"type": ["array", "null"],
                                                      "items": {"type": "string", "minLength": 1},
                                                      "description": "Only these peers; omitted: all peers."},
                                            "direction": {"enum": ["both", "outbound", "inbound"],
                                                          "description": "One-way cuts; default both."}}},
        "LinkRequest": {"type": "object", "additionalProperties": False,
                        "properties": {"peers": {"type": ["array", "null"], "items": {"type": "string", "minLength": 1},
                                                 "description": "Only these peers; omitted: all peers."},
                                       "loss_percent": {"type": ["number", "null"], "minimum": 0, "maximum": 100},
                                       "delay_ms": {"type": ["number", "null"], "minimum": 0, "maximum": 10000}},
                        "description": "Applies to this node's outbound Raft traffic; set it on both ends for a "
                                       "symmetric link. 0 removes the rule; null is as if left out."},
        "LinkResult": {"type": "object", "required": ["faults", "node"], "properties": {
            "peers": {"type": ["array", "null"], "items": {"type": "string"}},
            "loss_percent": {"type": ["number", "null"]}, "delay_ms": {"type": ["number", "null"]},
            "faults": {"description": "This node's resulting fault description."}, "node": {"type": "string"}}},
        "PartitionResult": {"type": "object", "required": ["partitioned", "peers", "faults", "node"], "properties": {
            "partitioned": {"type": "boolean"}, "peers": {"type": ["array", "null"], "items": {"type": "string"}},
            "direction": {"enum": ["both", "outbound", "inbound"]},
            "faults": {"description": "This node's resulting fault description."}, "node": {"type": "string"}}},
        "Health": {"type": "object", "required": ["status", "hasLeader", "node"], "additionalProperties": True,
                   "properties": {"status": {"enum": ["ok", "unavailable"]}, "leader": {"type": ["string", "null"]},
                                  "hasLeader": {"type": "boolean"}, "node": {"type": "string"},
                                  "reason": {"type": "string", "description": "Why it is unavailable."}}},
    }


def openapi_document(*, max_body_bytes: int, max_key_bytes: int, max_value_bytes: int) -> dict[str, Any]:
    """The OpenAPI 3.1 document for a node with these limits (a fresh dict each call)."""
    limits = {"body": max_body_bytes, "key": max_key_bytes, "value": max_value_bytes}
    paths: dict[str, Any] = {
        "/kv/{key}": _key_ops(False, limits),
        "/kv": {"get": op("List keys by prefix", {
            "200": answer(ref("RangeResult"), "Keys in sorted order; more=true if the limit cut the list, "
                                              "and then next is the first key not returned."),
            "400": _E400, "410": answer(ref("Compacted"), "revision is below the compacted one."),
            "413": err("prefix, start or end is longer than a key may be."), "503": E503, "504": _E504_READ},
            parameters=[{"name": "prefix", "in": "query", "schema": {"type": "string", "default": ""}},
                        {"name": "start", "in": "query", "schema": {"type": "string", "default": ""},
                         "description": "Only keys from this one on (inclusive); pass the previous page's "
                                        "\"next\" to page through a large prefix."},
                        {"name": "end", "in": "query", "schema": {"type": "string"},
                         "description": "Only keys before this one (exclusive), like etcd's range_end."},
                        {"name": "limit", "in": "query",
                         "schema": {"type": "integer", "minimum": 1, "maximum": 10000, "default": 1000}},
                        _STALE, _REVISION])},
        "/txn": {"post": op("Atomic transaction, like etcd's Txn", {
            "200": _done("TxnResult", "Applied: the success ops if every compare held, else the failure ops."),
            "400": _E400, "413": err("A key, value or the body is over its limit."),
            "422": _E422, "503": E503, "504": E504_WRITE},
            parameters=[_IDEMPOTENCY], body=ref("TxnRequest"))},
        "/raft-state": {"get": op("This node's Raft state (the seed's fields and more)", {
            "200": answer(ref("RaftState"), "Role, term, log, commit/apply indexes, peers' progress, faults."),
            "400": err("digest is not a boolean, or an unknown query parameter.")},
            parameters=[{"name": "digest", "in": "query", "required": False, "schema": _FLAG,
                         "description": "Also return kvDigest, a hash of the whole state machine (costly)."}])},
        "/force-election": {"post": op("Make this node start an election now", {
            "200": answer(ref("ElectionResult"), "The election began (the result says where it stands)."),
            "400": _E400, "403": _E403_LAB, "503": E503}, description="Takes no body (the seed's button sends none).")},
        "/simulate-partition": {"post": op("Cut (or restore) this node's Raft traffic", {
            "200": answer(ref("PartitionResult"), "The fault is in place."),
            "400": err("Wrong types, unknown fields or unknown peer ids."), "403": _E403_LAB,
            "413": err(f"Body over {max_body_bytes} bytes.")}, body=ref("PartitionRequest"))},
        "/simulate-link": {"post": op("Add packet loss and latency to this node's outgoing Raft traffic", {
            "200": answer(ref("LinkResult"), "The rule is in place."),
            "400": err("Wrong types, out-of-range numbers, unknown fields or unknown peer ids."), "403": _E403_LAB,
            "413": err(f"Body over {max_body_bytes} bytes.")}, body=ref("LinkRequest"))},
        "/metrics": {"get": op("Prometheus metrics", {"200": {
            "description": "Prometheus text exposition format.",
            "content": {"text/plain": {"schema": {"type": "string"}}}}, "400": _E400_QUERY})},
        "/health": {"get": op("Liveness and whether a leader is known", {
            "200": answer(ref("Health"), "Alive and a leader is known: status \"ok\"."),
            "503": answer(ref("Health"), "Alive, but no leader is known: status \"unavailable\" and the reason."),
            "400": _E400_QUERY})},
        "/openapi.json": {"get": op("This document", {"200": answer({"type": "object"}, "OpenAPI 3.1."),
                                                       "400": _E400_QUERY})},
        "/compact": {"post": op("Forget key history at or below a revision", {
            "200": answer({"type": "object", "required": ["compacted", "revision"], "properties": {
                "compacted": {"type": "integer"}, "dropped": {"type": "integer"}, "revision": {"type": "integer"},
                "op": {"const": "compact"}, "node": {"type": "string"}}}, "Committed on every replica."),
            "400": err("Not an integer >= 1, or a revision the store has not reached."),
            "413": err(f"Body over {max_body_bytes} bytes."), "503": E503, "504": E504_WRITE},
            body={"type": "object", "required": ["revision"], "additionalProperties": False,
                  "properties": {"revision": {"type": "integer", "minimum": 1}}})},
        "/watch": {"get": op("Watch a key or a prefix (Server-Sent Events)", {
            "200": {"description": "text/event-stream: one message per revision (id: the revision; data: "
                                   "{revision, events: [{type: put|delete, key, kv?, prev?}]}); event: progress "
                                   "{revision} when idle; event: cancelled {cancelled, resumeRevision} ends it.",
                    "content": {"text/event-stream": {"schema": _SSE_EVENT}}},
            "400": _E400, "410": answer(ref("Compacted"), "start_revision is below the compacted revision."),
            "413": err("key or prefix is longer than a key may be.")},
            parameters=[{"name": "key", "in": "query", "schema": {"type": "string"}},
                        {"name": "prefix", "in": "query", "schema": {"type": "string"}},
                        {"name": "start_revision", "in": "query", "schema": {"type": "integer", "minimum": 1},
                         "description": "Replay from this revision (default: only what comes next). A resumed "
                                        "EventSource's Last-Event-ID header does the same from the next one."},
                        {"name": "prev_kv", "in": "query", "schema": _FLAG}])},
        "/leases": {
            "get": op("Every lease", {"200": answer({"type": "object", "required": ["leases"], "properties": {
                "leases": {"type": "array", "items": {"type": "object"}}, "revision": {"type": "integer"},
                "node": {"type": "string"}}}, "Leases with their TTL and how many keys they hold.")}),
            "post": op("Grant a lease", {
                "200": answer({"type": "object", "required": ["id", "ttl"], "properties": {
                    "id": {"type": "integer"}, "ttl": {"type": "integer"}, "revision": {"type": "integer"},
                    "node": {"type": "string"}}}, "Granted: put keys with \"lease\": id."),
                "400": _E400, "409": err("That id is granted already."),
                "413": err(f"Body over {max_body_bytes} bytes."), "503": E503, "504": E504_WRITE},
                body={"type": "object", "required": ["ttl"], "additionalProperties": False, "properties": {
                    "ttl": {"type": "integer", "minimum": 1, "maximum": MAX_LEASE_TTL_S},
                    "id": {"type": "integer", "minimum": 1, "maximum": 2**63 - 1}}})},
        "/leases/{id}": {
            "get": op("A lease: TTL, time left (the leader's clock) and keys", {
                "200": answer({"type": "object", "required": ["id", "ttl", "remaining", "keys"], "properties": {
                    "id": {"type": "integer"}, "ttl": {"type": "integer"}, "remaining": {"type": "number"},
                    "keys": {"type": "array", "items": {"type": "string"}},
                    "grantedRevision": {"type": "integer"}, "node": {"type": "string"}}}, "The lease."),
                "400": _E400, "404": err("No such lease (expired, revoked or never granted)."),
                "503": E503}, parameters=[_LEASE_ID]),
            "delete": op("Revoke a lease: its keys are deleted in one revision", {
                "200": answer({"type": "object", "required": ["id", "deleted"], "properties": {
                    "id": {"type": "integer"}, "deleted": {"type": "array", "items": {"type": "string"}},
                    "revision": {"type": "integer"}, "node": {"type": "string"}}}, "Revoked."),
                "400": _E400, "404": err("No such lease."), "503": E503, "504": E504_WRITE},
                parameters=[_LEASE_ID])},
        "/leases/{id}/keepalive": {"post": op("Renew a lease for its whole TTL", {
            "200": answer({"type": "object", "required": ["id", "ttl"], "properties": {
                "id": {"type": "integer"}, "ttl": {"type": "integer"}, "node": {"type": "string"}}},
                "Renewed by the leader (after confirming it still leads)."),
            "400": _E400, "404": err("No such lease: it expired or was revoked; grant a new one."),
            "503": E503}, parameters=[_LEASE_ID])},
        "/raft/log": {"get": op("This node's log as it is", {
            "200": answer(ref("RaftLog"), "Entries with their real terms, kinds, summaries and where each stands."),
            "400": _E400},
            parameters=[{"name": "start", "in": "query", "schema": {"type": "integer", "minimum": 1},
                         "description": "First index to show (default: the newest `limit` entries)."},
                        {"name": "limit", "in": "query",
                         "schema": {"type": "integer", "minimum": 1, "maximum": 500, "default": 100}}])},
        "/lab": {
            "get": op("The lab: hold-and-step delivery, held clock, tick length, snapshot interval", {
                "200": answer(ref("Lab"), "The settings and the messages held now.")}),
            "post": op("Change the lab's settings", {
                "200": answer(ref("Lab"), "The settings in force."),
                "400": _E400, "403": _E403_LAB, "413": err(f"Body over {max_body_bytes} bytes.")},
                body=ref("LabSettings"),
                description="holding: this node's outgoing Raft messages wait until released (leaving releases "
                            "them all); clockHeld: nothing times out; tickMs: the tick length, at run time "
                            "(slow motion without a restart); snapshotEvery: applied entries between snapshots.")},
        "/lab/release": {"post": op("Send held messages on, in the order given", {
            "200": answer({"type": "object", "required": ["released"], "properties": {
                "released": {"type": "integer"}, "node": {"type": "string"}}}, "How many were still held."),
            "400": _E400, "403": _E403_LAB, "413": err(f"Body over {max_body_bytes} bytes.")},
            body=ref("HeldNumbers"))},
        "/lab/drop": {"post": op("Drop held messages", {
            "200": answer({"type": "object", "required": ["dropped"], "properties": {
                "dropped": {"type": "integer"}, "node": {"type": "string"}}}, "How many were still held."),
            "400": _E400, "403": _E403_LAB, "413": err(f"Body over {max_body_bytes} bytes.")},
            body=ref("HeldNumbers"))},
        "/members": {
            "get": op("The cluster's members", {
                "200": answer(ref("Members"), "Every member with its role (voter or learner); on the leader, how far "
                                              "behind each is. removedIDs: ids removed for good (never reused).")}),
            "post": op("Add a member (a learner by default)", {
                "200": answer(ref("MemberChanged"), "The change is committed; the new member and the configuration."),
                "400": err("Malformed input: a name, an http://host:port clientURL and a host:port peerURL."),
                "409": err("The name or an address is a member's already, or another change is not committed yet "
                            "(reason says which)."),
                "413": err(f"Body over {max_body_bytes} bytes."),
                "503": E503, "504": E504_WRITE},
                body=ref("AddMember"),
                description="Start the new node with `raftkv node --join URL`: it receives the log, or a snapshot, "
                            "as a learner. Any node accepts the request; a follower hands it to the leader.")},
        "/members/{id}/promote": {"post": op("Promote a learner to voter", {
            "200": answer(ref("MemberChanged"), "The change is committed."),
            "400": _E400, "404": err("No member with that id."),
            "409": err("Not a learner, not caught up with the leader's log yet (retry later), or another change "
                        "is pending (reason says which)."),
            "503": E503, "504": E504_WRITE}, parameters=[_MEMBER_ID])},
        "/members/{id}": {"delete": op("Remove a member", {
            "200": answer({"type": "object", "required": ["removed", "members"], "properties": {
                "removed": {"type": "string"}, "members": {"type": "array", "items": ref("Member")}}},
                "The change is committed."),
            "400": _E400, "404": err("No member with that id."),
            "409": err("The last voter, or another change is pending (reason says which)."),
            "503": E503, "504": E504_WRITE}, parameters=[_MEMBER_ID],
            description="Removing the leader hands leadership to another voter first."),
            "patch": op("Move a member to a new peer address", {
                "200": answer(ref("MemberChanged"), "The change is committed: every node dials it at the new "
                                                    "address."),
                "400": err("Malformed input: a host:port peerURL."),
                "404": err("No member with that id."),
                "409": err("The address is another member's, or the member's details changed meanwhile (reason "
                            "says which)."),
                "413": err(f"Body over {max_body_bytes} bytes."),
                "503": E503, "504": E504_WRITE}, parameters=[_MEMBER_ID], body=ref("MoveMember"),
                description="etcd's MemberUpdate. Restart the member's node listening there (`raftkv node "
                            "--listen-peer HOST:PORT`): until then the others cannot reach it.")},
        "/snapshot": {"get": op("A consistent backup of the whole store (`raftkv snapshot save`)", {
            "200": {"description": "The backup file: a header (format version, revision, applied index, key count, "
                                   "the members, the body's sha256) and the state machine's image.",
                    "content": {_BINARY: {"schema": {"type": "string", "contentMediaType": _BINARY}}}},
            "400": err("An unknown query parameter."), "503": E503, "504": _E504_READ},
            description="Taken after a linearizable read barrier, so it holds every write acknowledged before the "
                        "request, at one revision. One backup is made at a time per node; others wait their turn. "
                        "`raftkv snapshot restore` starts a new cluster from it.")},
        "/raft/events": {"get": op("This node's Raft event stream (WebSocket)", {
            "101": {"description": "Switching to WebSocket: each text message is one JSON event object (role "
                                   "changes, votes, messages sent and dropped, commits, periodic status)."},
            "400": err("Not a WebSocket upgrade request.")})},
        "/{key}": _key_ops(True, limits),
    }
    for path, ops in paths.items():
        if "get" in ops and path not in ("/raft/events", "/watch"):  # a stream has no HEAD
            ops["head"] = head_of(ops["get"])
    return with_auth({
        "openapi": "3.1.0",
        "info": {"title": "raftkv node API", "version": "0.1.0", "description": (
            "The client API of one raftkv node: a linearizable key-value store replicated with Raft. Any node "
            "accepts any request; followers forward writes to the leader over the Raft link. Every JSON "
            "answer names the answering node in \"node\". Errors are JSON {\"error\": ...}: 405 with Allow for a "
            "method a route lacks, 404 for an unknown path, 400 for an unknown query parameter or for a body "
            "with anything in it sent to an operation that takes none (empty and {} are none). Any origin may "
            "call the API (CORS); preflight "
            f"OPTIONS requests are answered 204 on every path. Limits: body {max_body_bytes} bytes, key "
            f"{max_key_bytes} bytes of UTF-8, value {max_value_bytes} bytes encoded.")},
        "paths": paths,
        "components": {"schemas": _schemas()},
    })
