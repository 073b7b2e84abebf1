"""The one pure-ASGI middleware every request passes through, outermost first:

request id → drain check (503) → API key (401) → body size (413) → the app → metrics + access log.

Pure ASGI (not BaseHTTPMiddleware) so that streaming responses and the client-disconnect message pass
through untouched. Whatever the app raises, the client gets SPEC's error shape, never a traceback.
"""

import hmac
import json
import logging
import re
import time
import uuid

from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.errors import error_body, error_headers
from server.logs import log_access
from server.runtime import RequestRecord, Runtime

log = logging.getLogger("gptserve.server")

# Reachable without the API key and while draining (they answer for themselves).
OPEN_PATHS = {"/health", "/metrics", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"}
ALWAYS_SERVED = {"/health", "/metrics"}
REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class GatewayMiddleware:
    def __init__(self, app: ASGIApp, runtime: Runtime, routes_of=None):
        self.app = app
        self.runtime = runtime
        self.routes_of = routes_of  # callable returning the routes (for the route label of requests refused here)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        runtime = self.runtime
        settings = runtime.settings
        started = time.perf_counter()
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        given_id = headers.get("x-request-id", "")
        request_id = given_id if REQUEST_ID.match(given_id) else uuid.uuid4().hex
        record = RequestRecord(request_id=request_id, started=started)
        scope.setdefault("state", {})["record"] = record
        path = scope.get("path", "")
        method = scope.get("method", "GET")
        status_box = {"status": 0, "started": False, "done": False}

        async def send_wrapped(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_box["status"] = message["status"]
                status_box["started"] = True
                message = dict(message)
                message["headers"] = list(message.get("headers", [])) + [(b"x-request-id", request_id.encode())]
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                status_box["done"] = True
            await send(message)

        async def reject(error_type: str, status: int, text: str, extra: dict[str, str] | None = None) -> None:
            body = json.dumps(error_body(path, error_type, text)).encode()
            hdrs = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
            for k, v in {**error_headers(error_type), **(extra or {})}.items():
                hdrs.append((k.lower().encode(), v.encode()))
            await send_wrapped({"type": "http.response.start", "status": status, "headers": hdrs})
            await send_wrapped({"type": "http.response.body", "body": body, "more_body": False})

        runtime.in_flight += 1
        try:
            if runtime.draining and path not in ALWAYS_SERVED:
                await reject("unavailable", 503, "the server is shutting down and accepts no new requests")
                return
            if settings.api_key and path not in OPEN_PATHS and not (path == "/" and method in ("GET", "HEAD")):
                auth = headers.get("authorization", "")
                scheme, _, token = auth.partition(" ")
                if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(),
                                                                         settings.api_key.encode()):
                    await reject("unauthorized", 401, "a valid API key is required: send 'Authorization: Bearer "
                                                      "<key>'", {"WWW-Authenticate": "Bearer"})
                    return
            limit = settings.max_body_bytes
            declared = headers.get("content-length")
            if declared is not None:
                try:
                    too_big = int(declared) > limit
                except ValueError:
                    too_big = False
                if too_big:
                    await reject("payload_too_large", 413, f"the request body is {declared} bytes; the limit is "
                                                           f"{limit} bytes")
                    return
            # Read the whole body here, counting the bytes as they stream in (chunked uploads have no
            # Content-Length), then hand it to the app as one message.
            chunks: list[bytes] = []
            size = 0
            more = True
            while more:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > limit:
                    await reject("payload_too_large", 413, f"the request body exceeds the limit of {limit} bytes")
                    return
                chunks.append(chunk)
                more = message.get("more_body", False)
            body = b"".join(chunks)
            replayed = False

            async def receive_replay() -> Message:
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()

            if method == "POST":
                # JSON in: read any POST body as JSON, whatever Content-Type the client sent (curl -d sends a
                # form type); a body that is not JSON gets a 400 from the validation handler.
                raw = [(k, v) for k, v in scope.get("headers", []) if k.lower() != b"content-type"]
                scope["headers"] = raw + [(b"content-type", b"application/json")]
            try:
                await self.app(scope, receive_replay, send_wrapped)
            except Exception:  # noqa: BLE001 - the client never sees a traceback
                log.exception("unhandled error answering %s %s (request %s)", method, path, request_id)
                if not status_box["started"]:
                    await reject("generation", 500, "an internal error occurred while answering the request")
        finally:
            runtime.in_flight -= 1
            duration = time.perf_counter() - started
            status = status_box["status"] or 499  # nothing sent: the client went away first
            route = self._route_label(scope)
            try:
                runtime.metrics.observe_http(route, status, duration)
                log_access(method, route, path, status, record.prompt_tokens, record.generated_tokens,
                           record.ttft, duration, request_id, record.finish_reason)
            except Exception:  # noqa: BLE001
                log.exception("recording request metrics failed")

    def _route_label(self, scope: Scope) -> str:
        route = scope.get("route")
        if route is not None and getattr(route, "path", None):
            return route.path
        if self.routes_of is not None:
            partial = None
            for candidate in self.routes_of():
                try:
                    match, _ = candidate.matches(scope)
                except Exception:  # noqa: BLE001
                    continue
                found = getattr(candidate, "path", None)
                if match == Match.FULL and found:
                    return found
                if match == Match.PARTIAL and partial is None:
                    partial = found
            if partial:
                return partial
        return "unmatched"
