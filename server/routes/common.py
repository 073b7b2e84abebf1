"""Helpers the generation routes share: tokenizing within limits, waiting for completions while
watching for the client to go away."""

import asyncio
from collections.abc import Callable

from fastapi import Request

from model.engine import Completion, RequestStream
from model.tokenizer import Tokenizer, TokenizerError
from server.errors import APIError
from server.runtime import RequestRecord, Runtime
from server.streaming import merge

LONG_TEXT = 20_000  # characters; longer prompts are tokenized off the event loop


def runtime_of(request: Request) -> Runtime:
    return request.app.state.runtime


def record_of(request: Request) -> RequestRecord:
    record = getattr(request.state, "record", None)
    if record is None:  # called outside the middleware (tests building their own app)
        import time
        import uuid
        record = RequestRecord(request_id=uuid.uuid4().hex, started=time.perf_counter())
        request.state.record = record
    return record


async def encode(tokenizer: Tokenizer, text: str, field: str) -> list[int]:
    try:
        if len(text) > LONG_TEXT:
            ids = await asyncio.to_thread(tokenizer.encode, text)
        else:
            ids = tokenizer.encode(text)
    except TokenizerError as e:
        raise APIError("validation", f"{field} cannot be tokenized: {e}", field) from None
    if not ids:
        raise APIError("validation", f"{field} must not be empty", field)
    return ids


def fit_prompt(ids: list[int], context: int, field: str, truncate: int | None = None) -> list[int]:
    """Apply `truncate` (keep the last N tokens) and make sure at least one new token fits."""
    if truncate is not None and len(ids) > truncate:
        ids = ids[-truncate:]
    if len(ids) >= context:
        hint = "" if truncate is not None else " (or set truncate)"
        raise APIError("validation", f"{field} has {len(ids)} tokens but the model's context holds {context}, "
                                     f"leaving no room to generate; shorten it{hint}", field)
    return ids


def max_new(requested: int | None, default: int, prompt_len: int, context: int, field: str) -> int:
    """The default is capped to the room left; an explicit value that does not fit is a 422."""
    room = context - prompt_len
    if requested is None:
        return min(default, room)
    if prompt_len + requested > context:
        raise APIError("validation", f"{field} must be at most {room}: the prompt has {prompt_len} tokens and the "
                                     f"model's context holds {context} (got {requested})", field)
    return requested


async def _watch_disconnect(request: Request, on_disconnect: Callable[[], None]) -> None:
    """Wait for the client to go away (the body was already read), then cancel."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            on_disconnect()
            return


class Disconnected(Exception):
    """The client left before a non-streaming response was ready."""


async def collect(request: Request, streams: list[RequestStream], record: RequestRecord) -> list[Completion]:
    """Wait for every stream's completion; cancel them all if the client disconnects."""
    gone = False

    def cancel_all() -> None:
        nonlocal gone
        gone = True
        for s in streams:
            s.cancel()

    watcher = asyncio.create_task(_watch_disconnect(request, cancel_all))
    completions: list[Completion | None] = [None] * len(streams)
    try:
        async for i, event in merge(streams):
            if event.token is not None:
                record.token_seen()
            if event.completion is not None:
                completions[i] = event.completion
    finally:
        watcher.cancel()
        for s in streams:
            s.cancel()
    if gone:
        record.finish_reason = "cancelled"
        raise Disconnected()
    return [c for c in completions if c is not None]


def check_failure(completion: Completion) -> None:
    """An engine failure is a 500; a request the engine cancelled itself (shutdown) is a 503."""
    if completion.finish_reason == "error":
        raise APIError("generation", completion.error or "generation failed")
    if completion.finish_reason == "cancelled":
        raise APIError("unavailable", "the server stopped before the generation finished")


def stream_failure(completion: Completion) -> tuple[str, str] | None:
    """(error_type, message) for a stream that ended without finishing normally."""
    if completion.finish_reason == "error":
        return "generation", completion.error or "generation failed"
    if completion.finish_reason == "cancelled":
        return "unavailable", "the server stopped before the generation finished"
    return None
