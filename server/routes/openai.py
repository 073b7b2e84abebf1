"""OpenAI-compatible completions: `POST /v1/completions`, `GET /v1/models` (SPEC §4).

The `openai` SDK's `client.completions.create(...)` works unchanged against `base_url=http://host:port/v1`,
streaming or not. Each of the `n` choices of each prompt is one engine request; choice `i*n + j` is
prompt i's j-th sample, seeded with `seed + j` when a seed is given.
"""

import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from model.engine import Completion, RequestStream, Token
from model.sampling import SamplingParams
from server.errors import OPENAI_TYPE, APIError
from server.routes.common import (Disconnected, check_failure, collect, encode, fit_prompt, max_new, record_of,
                                  runtime_of, stream_failure)
from server.schemas import SEED_LIMIT, CompletionRequest, CompletionResponse, ModelCard, ModelList, OpenAIError
from server.streaming import DONE, EventStreamResponse, merge, sse

router = APIRouter(prefix="/v1", tags=["OpenAI"])

DEFAULT_MAX_TOKENS = 16
ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": OpenAIError} for status in (400, 401, 413, 422, 429, 500, 503)
}


@dataclass
class Choice:
    index: int
    prompt: str
    prompt_ids: list[int]
    params: SamplingParams


def finish_reason(c: Completion) -> str:
    return "length" if c.finish_reason == "length" else "stop"


def top_dict(chosen: Token, alternatives: list[Token], n: int) -> dict[str, float]:
    """The n most likely alternatives, plus the chosen token (so up to n + 1 entries, as OpenAI says)."""
    out = {t.text: t.logprob for t in alternatives[:n] if t.logprob is not None}
    if chosen.logprob is not None:
        out.setdefault(chosen.text, chosen.logprob)
    return out


def logprobs_json(choice: Choice, c: Completion, echo: bool, n_top: int, score_only: bool) -> dict[str, Any]:
    tokens: list[str] = []
    values: list[float | None] = []
    tops: list[dict[str, float] | None] = []
    offsets: list[int] = []
    offset = 0
    if echo:
        for t in c.prefill:
            tokens.append(t.text)
            values.append(t.logprob)
            tops.append(None if t.logprob is None else {t.text: t.logprob})
            offsets.append(offset)
            offset += len(t.text)
        offset = len(choice.prompt)
    if not score_only:
        for k, t in enumerate(c.tokens):
            tokens.append(t.text)
            values.append(t.logprob)
            alternatives = c.top_tokens[k] if k < len(c.top_tokens) else []
            tops.append(top_dict(t, alternatives, n_top))
            offsets.append(offset)
            offset += len(t.text)
    return {"tokens": tokens, "token_logprobs": values, "top_logprobs": tops, "text_offset": offsets}


def openai_error_event(error_type: str, message: str) -> bytes:
    return sse({"error": {"message": message, "type": OPENAI_TYPE.get(error_type, "server_error"), "param": None,
                          "code": error_type}})


@router.post("/completions", summary="OpenAI-compatible text completion (server-sent events when stream is true)",
             response_model=CompletionResponse, responses=ERRORS)
async def completions(request: Request, body: CompletionRequest) -> Response:
    runtime = runtime_of(request)
    loaded = runtime.require_ready()
    record = record_of(request)
    context = loaded.info.context_length
    prompts = [body.prompt] if isinstance(body.prompt, str) else list(body.prompt)
    field = "prompt" if isinstance(body.prompt, str) else None
    n = body.n or 1
    echo = bool(body.echo)
    score_only = body.max_tokens == 0  # OpenAI's max_tokens=0: only the (echoed) prompt, with its logprobs
    temperature = 1.0 if body.temperature is None else body.temperature
    n_top = body.logprobs if body.logprobs is not None else 0
    stops = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    choices: list[Choice] = []
    prompt_tokens = 0
    for i, prompt in enumerate(prompts):
        name = field or f"prompt[{i}]"
        ids = fit_prompt(await encode(loaded.tokenizer, prompt, name), context, name)
        prompt_tokens += len(ids)
        requested = None if body.max_tokens is None else max(body.max_tokens, 1)
        limit = max_new(requested, DEFAULT_MAX_TOKENS, len(ids), context, "max_tokens")
        for j in range(n):
            seed = None if body.seed is None else (body.seed + j) % SEED_LIMIT
            params = SamplingParams(
                max_new_tokens=limit, do_sample=temperature > 0, temperature=temperature if temperature > 0 else 1.0,
                top_p=body.top_p, seed=seed, stop=stops, ignore_eos=bool(body.ignore_eos),
                frequency_penalty=body.frequency_penalty or 0.0, presence_penalty=body.presence_penalty or 0.0,
                top_n_tokens=n_top, prompt_logprobs=echo and body.logprobs is not None and not body.stream,
            )
            choices.append(Choice(index=len(choices), prompt=prompt, prompt_ids=ids, params=params))
    record.prompt_tokens = prompt_tokens

    streams: list[RequestStream] = []
    try:
        for choice in choices:
            streams.append(runtime.open_stream(choice.prompt_ids, choice.params))
    except APIError:
        for s in streams:
            s.cancel()
        raise

    completion_id = "cmpl-" + uuid.uuid4().hex
    created = int(time.time())
    model_id = loaded.info.model_id
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        content = stream_events(streams, choices, completion_id, created, model_id, echo, body.logprobs,
                                score_only, include_usage, prompt_tokens, record)
        return EventStreamResponse(content, streams,
                                   error_event=lambda text: openai_error_event("generation", text) + DONE)

    try:
        results = await collect(request, streams, record)
    except Disconnected:
        return Response(status_code=499)
    for c in results:
        check_failure(c)
    completion_tokens = 0 if score_only else sum(c.generated_tokens for c in results)
    record.generated_tokens = completion_tokens
    record.finish_reason = results[0].finish_reason if len(results) == 1 else None
    out_choices = []
    for choice, c in zip(choices, results):
        text = (choice.prompt if echo else "") + ("" if score_only else c.generated_text)
        out_choices.append({
            "index": choice.index,
            "text": text,
            "logprobs": logprobs_json(choice, c, echo, n_top, score_only) if body.logprobs is not None else None,
            "finish_reason": "length" if score_only else finish_reason(c),
        })
    return JSONResponse({
        "id": completion_id, "object": "text_completion", "created": created, "model": model_id,
        "choices": out_choices, "system_fingerprint": None,
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    })


async def stream_events(streams: list[RequestStream], choices: list[Choice], completion_id: str, created: int,
                        model_id: str, echo: bool, logprobs: int | None, score_only: bool, include_usage: bool,
                        prompt_tokens: int, record) -> AsyncIterator[bytes]:
    def chunk(index: int, text: str, lp: dict[str, Any] | None, finish: str | None) -> bytes:
        out: dict[str, Any] = {"id": completion_id, "object": "text_completion", "created": created,
                               "model": model_id,
                               "choices": [{"index": index, "text": text, "logprobs": lp, "finish_reason": finish}]}
        if include_usage:
            out["usage"] = None
        return sse(out)

    offsets = [len(c.prompt) if echo else 0 for c in choices]
    if echo:
        for choice in choices:
            yield chunk(choice.index, choice.prompt, None, None)
    completion_tokens = 0
    record.generated_tokens = 0
    failed = False
    ended = 0
    try:
        async for i, event in merge(streams):
            c = event.completion
            if event.token is not None:
                record.token_seen()
                if not score_only:
                    record.generated_tokens += 1
            if c is not None:
                ended += 1
                failure = stream_failure(c)
                if failure is not None:
                    record.finish_reason = c.finish_reason
                    yield openai_error_event(*failure)
                    failed = True
                    break
                completion_tokens += 0 if score_only else c.generated_tokens
                if len(streams) == 1:
                    record.finish_reason = c.finish_reason
            if event.token is None:
                continue
            token = event.token
            text = "" if score_only else token.text
            lp = None
            if logprobs is not None and not score_only:
                lp = {"tokens": [token.text], "token_logprobs": [token.logprob],
                      "top_logprobs": [top_dict(token, event.top_tokens or [], logprobs)],
                      "text_offset": [offsets[i]]}
            offsets[i] += len(text)
            finish = None if c is None else ("length" if score_only else finish_reason(c))
            yield chunk(choices[i].index, text, lp, finish)
        if not failed and include_usage:
            yield sse({"id": completion_id, "object": "text_completion", "created": created, "model": model_id,
                       "choices": [], "usage": {"prompt_tokens": prompt_tokens,
                                                "completion_tokens": completion_tokens,
                                                "total_tokens": prompt_tokens + completion_tokens}})
        yield DONE
    finally:
        if ended < len(streams) and not failed:  # the client left before the end
            record.finish_reason = "cancelled"


def model_card(request: Request) -> dict[str, Any]:
    runtime = runtime_of(request)
    loaded = runtime.require_ready()
    return {"id": loaded.info.model_id, "object": "model", "created": runtime.created, "owned_by": "gptserve",
            "max_model_len": loaded.info.context_length}


@router.get("/models", summary="The one served model", response_model=ModelList, responses=ERRORS)
async def list_models(request: Request) -> JSONResponse:
    return JSONResponse({"object": "list", "data": [model_card(request)]})


@router.get("/models/{model_id:path}", summary="One model by id", response_model=ModelCard, responses=ERRORS)
async def get_model(request: Request, model_id: str) -> JSONResponse:
    card = model_card(request)
    if model_id != card["id"]:
        raise APIError("not_found", f"the model {model_id!r} does not exist; this server serves {card['id']!r}",
                       "model", status=404)
    return JSONResponse(card)
