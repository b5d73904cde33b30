"""The building blocks of the OpenAPI document (openapi.py, openapi_auth.py): references, JSON
answers, the error body, and the errors every write shares."""

from __future__ import annotations

from typing import Any

__all__ = ["E500", "E503", "E504_WRITE", "JSON", "answer", "e504", "err", "head_of", "op", "ref"]

JSON = "application/json"


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def answer(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def err(description: str) -> dict[str, Any]:
    return answer(ref("Error"), description)


def e504(what: str) -> dict[str, Any]:
    return err(f"Timed out: {what}")


E500 = err("A bug in the server (logged); never returned for bad input.")
E415 = {**err("A body in a Content-Encoding the API does not decode (it decodes gzip and deflate)."),
        "headers": {"Accept-Encoding": {"schema": {"type": "string"}, "description": "gzip, deflate"}}}
E503 = {**err("No leader or no quorum (or the leader hint loops): nothing was done. Retry after Retry-After."),
        "headers": {"Retry-After": {"schema": {"type": "integer"}, "description": "Seconds to wait."}}}
E504_WRITE = e504("the write may or may not have been applied. Retry with the same Idempotency-Key if it had one "
                  "(it is applied at most once); without one, read the key before writing again.")


def op(summary: str, responses: dict[str, Any], *, parameters: list[dict[str, Any]] | None = None,
       body: dict[str, Any] | None = None, body_required: bool = True, description: str = "") -> dict[str, Any]:
    """One operation; every operation may answer 415 (a Content-Encoding not decoded) and 500 (a bug, logged)."""
    operation: dict[str, Any] = {"summary": summary, "responses": {**responses, "415": E415, "500": E500}}
    if description:
        operation["description"] = description
    if parameters:
        operation["parameters"] = parameters
    if body is not None:
        operation["requestBody"] = {"required": body_required, "content": {JSON: {"schema": body}}}
    return operation


def head_of(get: dict[str, Any]) -> dict[str, Any]:
    """HEAD of a GET operation: the same statuses and headers, no body."""
    responses = {status: {k: v for k, v in answer.items() if k != "content"}
                 for status, answer in get["responses"].items()}
    head = {"summary": f"{get['summary']}: status and headers only (HEAD)", "responses": responses}
    if "parameters" in get:
        head["parameters"] = get["parameters"]
    return head
