"""Server-sent events, shared by the TGI and OpenAI routes.

Each event is one `data: <json>` line and a blank line, flushed as soon as it is produced. The response
object owns the engine streams it sends from: however the response ends (finished, client gone, server
error), it cancels them, so a disconnected client's KV-cache slot is freed at the engine's next step.
"""

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from model.engine import RequestStream, TokenEvent

log = logging.getLogger("gptserve.server")

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
DONE = b"data: [DONE]\n\n"


def sse(payload: Any) -> bytes:
    """One event: `data: {...}` and the blank line that ends it."""
    return b"data: " + json.dumps(payload, ensure_ascii=False).encode("utf-8") + b"\n\n"


class EventStreamResponse(StreamingResponse):
    """`text/event-stream`; cancels its engine requests whenever the response ends."""

    media_type = "text/event-stream"

    def __init__(self, content: AsyncIterator[bytes], streams: Iterable[RequestStream],
                 error_event: Callable[[str], bytes] | None = None, headers: dict[str, str] | None = None):
        super().__init__(guarded(content, error_event), headers={**SSE_HEADERS, **(headers or {})})
        self._streams = list(streams)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            for stream in self._streams:
                stream.cancel()
            closer = getattr(self.body_iterator, "aclose", None)
            if closer is not None:
                try:
                    await closer()
                except Exception:  # noqa: BLE001
                    pass


async def guarded(content: AsyncIterator[bytes], error_event: Callable[[str], bytes] | None) -> AsyncIterator[bytes]:
    """Pass events through; a failure after the stream started becomes a last error event, not a traceback."""
    try:
        async for chunk in content:
            yield chunk
    except Exception:  # noqa: BLE001
        log.exception("a stream failed after it started")
        if error_event is not None:
            yield error_event("an internal error interrupted the generation")
    finally:
        closer = getattr(content, "aclose", None)
        if closer is not None:
            await closer()


async def merge(streams: list[RequestStream]) -> AsyncIterator[tuple[int, TokenEvent]]:
    """Interleave several engine streams as their events arrive: yields (stream index, event)."""
    if len(streams) == 1:
        async for event in streams[0]:
            yield 0, event
        return
    queue: asyncio.Queue[tuple[int, TokenEvent | BaseException]] = asyncio.Queue()

    async def pump(i: int, stream: RequestStream) -> None:
        try:
            async for event in stream:
                queue.put_nowait((i, event))
        except Exception as e:  # noqa: BLE001 - hand it to the consumer
            queue.put_nowait((i, e))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    open_streams = len(streams)
    try:
        while open_streams:
            i, item = await queue.get()
            if isinstance(item, BaseException):
                raise item
            if item.completion is not None:
                open_streams -= 1
            yield i, item
    finally:
        for task in tasks:
            task.cancel()
        for stream in streams:
            stream.cancel()
