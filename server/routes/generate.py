"""TGI-compatible generation: `POST /generate`, `POST /generate_stream` and `POST /` (SPEC §4).

Everything that can be refused (bounds, prompt length, a full queue) is refused before a stream opens,
so a bad streaming request still gets a real status code.
"""

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from model.engine import Completion, RequestStream, Token
from model.sampling import SamplingParams
from server.routes.common import (Disconnected, check_failure, collect, encode, fit_prompt, max_new, record_of,
                                  runtime_of, stream_failure)
from server.schemas import ErrorResponse, GenerateParameters, GenerateRequest, GenerateResponse, StreamEvent
from server.streaming import EventStreamResponse, sse

router = APIRouter(tags=["TGI"])

DEFAULT_MAX_NEW_TOKENS = 100
SAMPLING_FIELDS = ("temperature", "top_k", "top_p", "min_p", "typical_p")

ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse} for status in (400, 401, 413, 422, 429, 500, 503)
}
STREAM_RESPONSE = {"description": "server-sent events, one per token",
                   "content": {"text/event-stream": {"schema": StreamEvent.model_json_schema()}}}


@dataclass
class Prepared:
    prompt_ids: list[int]
    params: SamplingParams
    inputs: str
    details: bool
    return_full_text: bool


def token_json(t: Token) -> dict[str, Any]:
    return {"id": t.id, "text": t.text, "logprob": t.logprob, "special": t.special}


async def prepare(request: Request, body: GenerateRequest) -> Prepared:
    runtime = runtime_of(request)
    loaded = runtime.require_ready()
    p = body.parameters or GenerateParameters()
    context = loaded.info.context_length
    ids = await encode(loaded.tokenizer, body.inputs, "inputs")
    ids = fit_prompt(ids, context, "inputs", p.truncate)
    n = max_new(p.max_new_tokens, DEFAULT_MAX_NEW_TOKENS, len(ids), context, "parameters.max_new_tokens")
    do_sample = bool(p.do_sample) or any(getattr(p, f) is not None for f in SAMPLING_FIELDS)
    params = SamplingParams(
        max_new_tokens=n, do_sample=do_sample,
        temperature=p.temperature if p.temperature is not None else 1.0,
        top_k=p.top_k, top_p=p.top_p, min_p=p.min_p, typical_p=p.typical_p,
        repetition_penalty=p.repetition_penalty,
        frequency_penalty=p.frequency_penalty or 0.0, presence_penalty=p.presence_penalty or 0.0,
        seed=p.seed, stop=list(p.stop or []), ignore_eos=bool(p.ignore_eos),
        top_n_tokens=p.top_n_tokens or 0, prompt_logprobs=bool(p.decoder_input_details and p.details),
    )
    record_of(request).prompt_tokens = len(ids)
    return Prepared(prompt_ids=ids, params=params, inputs=body.inputs, details=bool(p.details),
                    return_full_text=bool(p.return_full_text))


def details_json(c: Completion, prep: Prepared) -> dict[str, Any]:
    return {
        "finish_reason": c.finish_reason,
        "generated_tokens": c.generated_tokens,
        "seed": c.seed,
        "prefill": [{"id": t.id, "text": t.text, "logprob": t.logprob} for t in c.prefill]
        if prep.params.prompt_logprobs else [],
        "tokens": [token_json(t) for t in c.tokens],
        "top_tokens": [[token_json(t) for t in step] for step in c.top_tokens] if prep.params.top_n_tokens else [],
    }


async def respond(request: Request, body: GenerateRequest, stream: bool, wrap_in_list: bool = False) -> Response:
    prep = await prepare(request, body)
    runtime = runtime_of(request)
    engine_stream = runtime.open_stream(prep.prompt_ids, prep.params)
    record = record_of(request)
    if stream:
        return EventStreamResponse(events(engine_stream, prep, record), [engine_stream],
                                   error_event=lambda text: sse({"error": text, "error_type": "generation"}))
    try:
        (completion,) = await collect(request, [engine_stream], record)
    except Disconnected:
        return Response(status_code=499)
    record.generated_tokens = completion.generated_tokens
    record.finish_reason = completion.finish_reason
    check_failure(completion)
    text = (prep.inputs if prep.return_full_text else "") + completion.generated_text
    out: dict[str, Any] = {"generated_text": text}
    if prep.details:
        out["details"] = details_json(completion, prep)
    headers = {"x-prompt-tokens": str(completion.prompt_tokens),
               "x-generated-tokens": str(completion.generated_tokens)}
    return JSONResponse([out] if wrap_in_list else out, headers=headers)


async def events(stream: RequestStream, prep: Prepared, record) -> AsyncIterator[bytes]:
    record.generated_tokens = 0
    try:
        async for event in stream:
            c = event.completion
            if event.token is not None:
                record.token_seen()
                record.generated_tokens = event.index
            if c is not None:
                record.finish_reason = c.finish_reason
                failure = stream_failure(c)
                if failure is not None:
                    yield sse({"error": failure[1], "error_type": failure[0]})
                    return
            if event.token is None:
                continue
            payload: dict[str, Any] = {
                "index": event.index,
                "token": token_json(event.token),
                "top_tokens": [token_json(t) for t in event.top_tokens] if event.top_tokens is not None else None,
                "generated_text": None,
                "details": None,
            }
            if c is not None:
                payload["generated_text"] = (prep.inputs if prep.return_full_text else "") + c.generated_text
                payload["details"] = {"finish_reason": c.finish_reason, "generated_tokens": c.generated_tokens,
                                      "seed": c.seed, "input_length": c.prompt_tokens}
            yield sse(payload)
    finally:
        if record.finish_reason is None:  # the client left before the end
            record.finish_reason = "cancelled"


@router.post("/generate", summary="Generate text (JSON; server-sent events when stream is true)",
             response_model=GenerateResponse, responses={**ERRORS, 200: {"model": GenerateResponse}})
async def generate(request: Request, body: GenerateRequest) -> Response:
    return await respond(request, body, stream=bool(body.stream))


@router.post("/generate_stream", summary="Generate text as server-sent events, one per token",
             responses={**ERRORS, 200: STREAM_RESPONSE})
async def generate_stream(request: Request, body: GenerateRequest) -> Response:
    return await respond(request, body, stream=True)


@router.post("/", summary="TGI's route: a list with one generation, or events when stream is true",
             response_model=list[GenerateResponse], responses=ERRORS)
async def compat_generate(request: Request, body: GenerateRequest) -> Response:
    return await respond(request, body, stream=bool(body.stream), wrap_in_list=True)
