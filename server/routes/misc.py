"""Health, model info, tokenization and Prometheus metrics."""

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from model.tokenizer import Tokenizer
from server.errors import error_body
from server.metrics import CONTENT_TYPE
from server.routes.common import encode, record_of, runtime_of
from server.runtime import VERSION
from server.schemas import ErrorResponse, GenerateParameters, SimpleToken, TokenizeRequest

router = APIRouter(tags=["Service"])


@router.get("/health", summary="200 when the model is loaded and the engine is running, else 503",
            responses={503: {"model": ErrorResponse}})
async def health(request: Request) -> JSONResponse:
    runtime = runtime_of(request)
    if runtime.ready and not runtime.draining:
        return JSONResponse({"status": "ok"})
    if runtime.draining:
        status, text = "draining", "the server is shutting down"
    elif runtime.status == "loading":
        status, text = "loading", "the model is still loading"
    elif runtime.status == "failed":
        status, text = "failed", f"the model failed to load: {runtime.load_error}"
    else:
        status, text = "unavailable", "the generation engine is not running"
    return JSONResponse({"status": status, **error_body(request.url.path, "unavailable", text)}, status_code=503)


@router.get("/info", summary="The served model and the server's limits")
async def info(request: Request) -> JSONResponse:
    runtime = runtime_of(request)
    loaded = runtime.require_ready()
    i = loaded.info
    s = runtime.settings
    return JSONResponse({
        "model_id": i.model_id,
        "model_format": i.format,
        "n_layer": i.n_layer,
        "n_head": i.n_head,
        "n_embd": i.n_embd,
        "vocab_size": i.vocab_size,
        "context_length": i.context_length,
        "n_params": i.n_params,
        "model_dtype": i.dtype,
        "model_device": i.device,
        "model_device_type": i.device.split(":")[0],
        "tokenizer": i.tokenizer,
        "max_concurrent_requests": s.max_batch_size,
        "max_queue": s.max_queue,
        "max_input_tokens": i.context_length - 1,
        "max_total_tokens": i.context_length,
        "max_body_bytes": s.max_body_bytes,
        "version": VERSION,
        "router": "gptserve",
    })


def token_spans(tokenizer: Tokenizer, text: str, ids: list[int]) -> list[dict[str, Any]]:
    """Each token with its character offsets in `text` (a token that ends inside a character covers it)."""
    pieces = [tokenizer.token_bytes(i) for i in ids]
    encoded = text.encode("utf-8")
    if b"".join(pieces) != encoded:
        # Not a byte-exact split (should not happen): fall back to decoded lengths.
        out, pos = [], 0
        for i in ids:
            t = tokenizer.decode([i])
            out.append({"id": i, "text": t, "start": pos, "stop": pos + len(t)})
            pos += len(t)
        return out
    # char_at[b] = index of the character that byte b belongs to; char_at[len] = len(text).
    char_at: list[int] = []
    for ci, ch in enumerate(text):
        char_at.extend([ci] * len(ch.encode("utf-8")))
    char_at.append(len(text))
    out, pos = [], 0
    for token_id, piece in zip(ids, pieces):
        end = pos + len(piece)
        start_char = char_at[pos]
        stop_char = char_at[end - 1] + 1 if end > pos else start_char
        out.append({"id": token_id, "text": text[start_char:stop_char], "start": start_char, "stop": stop_char})
        pos = end
    return out


@router.post("/tokenize", summary="The prompt's tokens with their character offsets",
             response_model=list[SimpleToken], responses={422: {"model": ErrorResponse}})
async def tokenize(request: Request, body: TokenizeRequest) -> JSONResponse:
    runtime = runtime_of(request)
    loaded = runtime.require_ready()
    ids = await encode(loaded.tokenizer, body.inputs, "inputs")
    spans = token_spans(loaded.tokenizer, body.inputs, ids)
    truncate = (body.parameters or GenerateParameters()).truncate
    if truncate is not None and len(spans) > truncate:
        spans = spans[-truncate:]
    record_of(request).prompt_tokens = len(spans)
    return JSONResponse(spans)


@router.get("/metrics", summary="Prometheus metrics (text format)", response_class=Response)
async def metrics(request: Request) -> Response:
    return Response(runtime_of(request).metrics.render(), media_type=CONTENT_TYPE)
