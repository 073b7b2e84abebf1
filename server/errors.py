"""SPEC's error shapes, one place.

TGI routes: `{"error": "<one sentence>", "error_type": "<kind>"}`.
OpenAI routes (`/v1/...`): `{"error": {"message", "type", "param", "code"}}`.
"""

import json
from typing import Any

from pydantic import ValidationError

STATUS_OF = {
    "bad_request": 400,
    "unauthorized": 401,
    "not_found": 404,
    "method_not_allowed": 405,
    "payload_too_large": 413,
    "validation": 422,
    "overloaded": 429,
    "generation": 500,
    "unavailable": 503,
}

# OpenAI's `type` for each of our kinds.
OPENAI_TYPE = {
    "bad_request": "invalid_request_error",
    "unauthorized": "authentication_error",
    "not_found": "not_found_error",
    "method_not_allowed": "invalid_request_error",
    "payload_too_large": "invalid_request_error",
    "validation": "invalid_request_error",
    "overloaded": "rate_limit_error",
    "generation": "server_error",
    "unavailable": "service_unavailable_error",
}

RETRY_AFTER_SECONDS = 1


class APIError(Exception):
    """An error a route answers with; `param` names the offending field (OpenAI's `param`)."""

    def __init__(self, error_type: str, message: str, param: str | None = None, status: int | None = None):
        super().__init__(message)
        self.error_type = error_type
        self.message = message
        self.param = param
        self.status = status or STATUS_OF.get(error_type, 500)


def is_openai_path(path: str) -> bool:
    return path == "/v1" or path.startswith("/v1/")


def error_body(path: str, error_type: str, message: str, param: str | None = None) -> dict[str, Any]:
    if is_openai_path(path):
        return {"error": {"message": message, "type": OPENAI_TYPE.get(error_type, "server_error"),
                          "param": param, "code": error_type}}
    return {"error": message, "error_type": error_type}


def error_headers(error_type: str) -> dict[str, str]:
    return {"Retry-After": str(RETRY_AFTER_SECONDS)} if error_type in ("overloaded", "unavailable") else {}


def error_bytes(path: str, error_type: str, message: str, param: str | None = None) -> bytes:
    return json.dumps(error_body(path, error_type, message, param)).encode()


def _loc_name(loc: tuple) -> str:
    parts = [str(p) for p in loc if p != "body"]
    name = ""
    for p in parts:
        if p.isdigit():
            name += f"[{p}]"
        else:
            name += ("." if name else "") + p
    return name


TYPE_WORDS = {
    "int_type": "an integer", "int_parsing": "an integer", "int_from_float": "a whole number",
    "float_type": "a number", "float_parsing": "a number", "finite_number": "a finite number",
    "bool_type": "true or false", "bool_parsing": "true or false", "string_type": "a string",
    "list_type": "a list", "dict_type": "a JSON object", "model_type": "a JSON object",
    "model_attributes_type": "a JSON object", "none_required": "null",
}


# pydantic's numeric bound errors: the words of the bound, and the ctx key holding its value.
COMPARISONS = {
    "greater_than": ("greater than", "gt"), "greater_than_equal": ("greater than or equal to", "ge"),
    "less_than": ("less than", "lt"), "less_than_equal": ("less than or equal to", "le"),
}


def _num(value: object) -> object:
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _bound_text(err: dict) -> str:
    """What is wrong with one field, as the end of a sentence that starts with the field's name."""
    kind = err.get("type", "")
    ctx = {k: _num(v) for k, v in (err.get("ctx") or {}).items()}
    msg = str(err.get("msg", "is invalid"))
    if kind == "extra_forbidden":
        return "is not a known field"
    if kind == "missing":
        return "is required"
    if kind == "value_error":
        return msg.removeprefix("Value error, ")
    if kind in COMPARISONS:
        words, key = COMPARISONS[kind]
        text = f"must be {words} {ctx.get(key)}"
    elif kind == "too_long":
        text = f"must have at most {ctx.get('max_length')} items"
    elif kind == "too_short":
        text = f"must have at least {ctx.get('min_length')} item{'s' if ctx.get('min_length') != 1 else ''}"
    elif kind == "string_too_short":
        n = ctx.get("min_length")
        text = "must not be empty" if n == 1 else f"must be at least {n} characters long"
    elif kind == "string_too_long":
        text = f"must be at most {ctx.get('max_length')} characters long"
    elif kind in TYPE_WORDS:
        text = f"must be {TYPE_WORDS[kind]}"
    else:
        text = msg[:1].lower() + msg[1:]
        for lead in ("input should be ", "value should be "):
            if text.startswith(lead):
                text = "must be " + text.removeprefix(lead)
    shown = err.get("input")
    if isinstance(shown, (int, float, bool)) or (isinstance(shown, str) and 0 < len(shown) <= 40):
        text += f" (got {json.dumps(shown)})"
    elif isinstance(shown, list) and kind == "too_long":
        text += f" (got {len(shown)})"
    return text


def describe_validation(errors: list[dict]) -> tuple[str, str | None]:
    """One sentence naming the field and the bound, plus the field's name (for OpenAI's `param`)."""
    if not errors:
        return "the request is invalid", None
    err = errors[0]
    name = _loc_name(tuple(err.get("loc", ())))
    text = _bound_text(err)
    sentence = f"{name} {text}" if name else f"the request body {text}"
    if len(errors) > 1:
        sentence += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    return sentence, name or None


def from_pydantic(error: ValidationError) -> APIError:
    message, param = describe_validation(error.errors(include_url=False))
    return APIError("validation", message, param)
