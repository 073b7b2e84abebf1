"""The FastAPI application: `create_app(settings, loaded)`.

With a model already loaded (the CLI loads it before uvicorn starts, so a bad checkpoint exits with one
line and code 2), the lifespan only starts and stops the engine. Without one, the lifespan loads it in
the background and every generation route, and /health, answer 503 until it is ready.
"""

import asyncio
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import disable_created_metrics
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from model.loader import LoadedModel
from server.config import Settings
from server.errors import APIError, describe_validation, error_body, error_headers
from server.middleware import GatewayMiddleware
from server.routes import generate, misc, openai, playground
from server.runtime import VERSION, Runtime

HTTP_KINDS = {400: "bad_request", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed",
              413: "payload_too_large", 422: "validation", 429: "overloaded", 503: "unavailable"}


def error_response(request: Request, error: APIError) -> JSONResponse:
    return JSONResponse(error_body(request.url.path, error.error_type, error.message, error.param),
                        status_code=error.status, headers=error_headers(error.error_type))


def create_app(settings: Settings | None = None, loaded: LoadedModel | None = None) -> FastAPI:
    settings = settings or Settings()
    disable_created_metrics()  # no `_created` series next to every counter and histogram
    runtime = Runtime(settings)
    if loaded is not None:
        runtime.attach(loaded)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        loader = None
        if runtime.loaded is None:
            loader = asyncio.create_task(runtime.load_in_background())
        else:
            runtime.start()
        try:
            yield
        finally:
            if loader is not None and not loader.done():
                loader.cancel()
            await runtime.shutdown()

    app = FastAPI(title="gptserve", version=VERSION, lifespan=lifespan,
                  description="Text generation for GPT-2 and nanoGPT checkpoints: TGI-compatible /generate, "
                              "OpenAI-compatible /v1/completions, Prometheus /metrics.")
    app.state.runtime = runtime

    @app.exception_handler(APIError)
    async def on_api_error(request: Request, exc: APIError) -> JSONResponse:
        return error_response(request, exc)

    @app.exception_handler(RequestValidationError)
    async def on_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        first = errors[0] if errors else {}
        if first.get("type") == "json_invalid":
            detail = (first.get("ctx") or {}).get("error", "")
            position = first.get("loc", ("body", 0))[-1]
            text = f"the request body is not valid JSON ({detail} at character {position})" if detail else \
                "the request body is not valid JSON"
            return error_response(request, APIError("bad_request", text))
        if first.get("type") == "missing" and tuple(first.get("loc", ())) == ("body",):
            return error_response(request, APIError("bad_request", "the request body is empty; send a JSON object"))
        message, param = describe_validation(errors)
        return error_response(request, APIError("validation", message, param))

    @app.exception_handler(ValidationError)
    async def on_pydantic(request: Request, exc: ValidationError) -> JSONResponse:
        message, param = describe_validation(exc.errors(include_url=False))
        return error_response(request, APIError("validation", message, param))

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = HTTP_KINDS.get(exc.status_code, "bad_request" if exc.status_code < 500 else "generation")
        text = str(exc.detail) if exc.detail else "error"
        if exc.status_code == 400 and text == "There was an error parsing the body":
            text = "the request body is not valid JSON (or not UTF-8)"
        elif exc.status_code == 404:
            text = f"no route {request.method} {request.url.path}"
        elif exc.status_code == 405:
            text = f"{request.method} is not allowed on {request.url.path}"
        response = error_response(request, APIError(kind, text, status=exc.status_code))
        if exc.headers:
            response.headers.update(exc.headers)
        return response

    app.include_router(generate.router)
    app.include_router(openai.router)
    app.include_router(misc.router)
    app.include_router(playground.router)
    own_routes = [*generate.router.routes, *openai.router.routes, *misc.router.routes, *playground.router.routes,
                  *app.router.routes]
    app.add_middleware(GatewayMiddleware, runtime=runtime, routes_of=lambda: own_routes)
    return app
