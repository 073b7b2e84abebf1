"""Request and response bodies (SPEC §4): TGI's `/generate` shapes and OpenAI's `/v1/completions`.

Requests forbid unknown fields and accept null for every optional field. The bounds here are exactly
SPEC's; what needs the tokenizer (prompt length against the context) is checked in the routes.
"""

import json
from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

MAX_STOP = 8
MAX_TOP_N = 5
SEED_LIMIT = 2**64
MAX_OPENAI_N = 16
MAX_OPENAI_PROMPTS = 64

NonEmptyStr = Annotated[str, Field(min_length=1)]


class Request(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


def _only(allowed: str, ok: Callable[[Any], bool]) -> Any:
    """A field type for a feature this server lacks: it accepts the neutral value(s) only, else a 422."""

    def check(value: Any) -> Any:
        if not ok(value):
            raise ValueError(f"is not supported by this server: only {allowed} is accepted (got {_show(value)})")
        return value

    return Annotated[Any, AfterValidator(check)]


def _show(value: Any) -> str:
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


OnlyNull = _only("null", lambda v: v is None)
OnlyFalse = _only("false", lambda v: v is None or v is False)
OnlyOne = _only("1", lambda v: v is None or (type(v) is int and v == 1))
OnlyEmpty = _only("null or {}", lambda v: v is None or v == {})


# ---------------------------------------------------------------- TGI


class GenerateParameters(Request):
    max_new_tokens: int | None = Field(None, ge=1, description="default 100, capped to the room the prompt "
                                                               "leaves in the context")
    do_sample: bool | None = Field(None, description="sample; also on when any of temperature, top_k, top_p, "
                                                     "min_p, typical_p is set")
    temperature: float | None = Field(None, gt=0)
    top_k: int | None = Field(None, gt=0)
    top_p: float | None = Field(None, gt=0, le=1)
    min_p: float | None = Field(None, ge=0, lt=1)
    typical_p: float | None = Field(None, gt=0, lt=1)
    repetition_penalty: float | None = Field(None, gt=0)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    stop: list[NonEmptyStr] | None = Field(None, max_length=MAX_STOP)
    seed: int | None = Field(None, ge=0, lt=SEED_LIMIT)
    details: bool | None = None
    decoder_input_details: bool | None = None
    top_n_tokens: int | None = Field(None, ge=0, le=MAX_TOP_N)
    return_full_text: bool | None = None
    truncate: int | None = Field(None, ge=1)
    ignore_eos: bool | None = None
    # TGI's other fields, accepted at their neutral values only.
    watermark: OnlyFalse = Field(None, description="only false/null")
    best_of: OnlyOne = Field(None, description="only 1/null")
    grammar: OnlyNull = Field(None, description="only null")
    adapter_id: OnlyNull = Field(None, description="only null")


class GenerateRequest(Request):
    inputs: str = Field(min_length=1)
    parameters: GenerateParameters | None = None
    stream: bool | None = False


class TokenizeRequest(Request):
    inputs: str = Field(min_length=1)
    parameters: GenerateParameters | None = None


class TokenOut(BaseModel):
    id: int
    text: str
    logprob: float | None
    special: bool


class PrefillToken(BaseModel):
    id: int
    text: str
    logprob: float | None


class Details(BaseModel):
    finish_reason: Literal["length", "eos_token", "stop_sequence"]
    generated_tokens: int
    seed: int | None
    prefill: list[PrefillToken]
    tokens: list[TokenOut]
    top_tokens: list[list[TokenOut]]


class GenerateResponse(BaseModel):
    generated_text: str
    details: Details | None = None


class StreamDetails(BaseModel):
    finish_reason: Literal["length", "eos_token", "stop_sequence"]
    generated_tokens: int
    seed: int | None
    input_length: int


class StreamEvent(BaseModel):
    index: int
    token: TokenOut
    top_tokens: list[TokenOut] | None
    generated_text: str | None
    details: StreamDetails | None


class SimpleToken(BaseModel):
    id: int
    text: str
    start: int
    stop: int


class ErrorResponse(BaseModel):
    error: str
    error_type: str


# ---------------------------------------------------------------- OpenAI


class StreamOptions(Request):
    include_usage: bool | None = None


class CompletionRequest(Request):
    model: str | None = Field(None, description="any name; the one loaded model answers")
    prompt: str | list[str] = Field(description="a string or a list of strings, none empty")
    max_tokens: int | None = Field(None, ge=0, description="default 16; 0 only scores the prompt (with echo)")
    temperature: float | None = Field(None, ge=0, le=2, description="default 1; 0 is greedy")
    top_p: float | None = Field(None, gt=0, le=1)
    n: int | None = Field(None, ge=1, le=MAX_OPENAI_N)
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=0, lt=SEED_LIMIT)
    logprobs: int | None = Field(None, ge=0, le=MAX_TOP_N)
    echo: bool | None = None
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    user: str | None = None
    ignore_eos: bool | None = Field(None, description="vLLM's extension: generate max_tokens even past EOS")
    # OpenAI's other fields, accepted at their neutral values only.
    best_of: OnlyOne = Field(None, description="only 1/null")
    suffix: OnlyNull = Field(None, description="only null")
    logit_bias: OnlyEmpty = Field(None, description="only null or {}")

    @field_validator("prompt", mode="before")
    @classmethod
    def _prompt(cls, v: Any) -> Any:
        if isinstance(v, str):
            if not v:
                raise ValueError("must not be empty")
            return v
        if isinstance(v, list):
            if not v:
                raise ValueError("must not be an empty list")
            if len(v) > MAX_OPENAI_PROMPTS:
                raise ValueError(f"must have at most {MAX_OPENAI_PROMPTS} items (got {len(v)})")
            for i, item in enumerate(v):
                if not isinstance(item, str):
                    raise ValueError(f"must be a string or a list of strings (item {i} is not a string; "
                                     "token-id prompts are not supported)")
                if not item:
                    raise ValueError(f"must not contain an empty string (item {i})")
            return v
        raise ValueError("must be a string or a list of strings")

    @field_validator("stop", mode="before")
    @classmethod
    def _stop(cls, v: Any) -> Any:
        if v is None:
            return v
        items = [v] if isinstance(v, str) else v
        if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
            raise ValueError("must be a string or a list of strings")
        if len(items) > MAX_STOP:
            raise ValueError(f"must have at most {MAX_STOP} items (got {len(items)})")
        if any(not s for s in items):
            raise ValueError("must not contain an empty string")
        return v


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None
    finish_reason: Literal["stop", "length"] | None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None
    system_fingerprint: str | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    max_model_len: int


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelCard]


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class OpenAIError(BaseModel):
    error: OpenAIErrorDetail
