"""The scheduler: many requests share one model through continuous batching over a slot KV cache.

One thread owns the model and runs the loop: take new requests → drop cancelled ones → admit waiting
requests while cache slots are free → one batched decode step for every sequence that has a token to
feed → prefill chunks of newcomers within a per-step token budget → sample, detokenize, emit, finish
and free. Callers on other threads only submit, cancel and receive events through a callback.
"""

import asyncio
import collections
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

import torch

from model.gpt import GPT, Batch
from model.kv_cache import KVCache
from model.sampling import SamplerState, SamplingParams, sample
from model.tokenizer import StreamDecoder, Tokenizer

log = logging.getLogger("gptserve.engine")

FINISH_REASONS = ("length", "eos_token", "stop_sequence", "cancelled", "error")


@dataclass(frozen=True)
class Token:
    id: int
    text: str
    logprob: float | None
    special: bool


@dataclass
class Completion:
    """Everything known about a request when it ends; carried by its last event."""

    generated_text: str
    finish_reason: str  # one of FINISH_REASONS
    prompt_tokens: int
    generated_tokens: int
    seed: int | None
    tokens: list[Token]
    top_tokens: list[list[Token]]  # one list per generated token (empty when top_n_tokens is 0)
    prefill: list[Token]  # the prompt tokens; logprobs only with prompt_logprobs (the first is always None)
    error: str | None = None


@dataclass
class TokenEvent:
    index: int  # how many tokens this request has generated, counting this one
    token: Token | None  # None on a last event that brings no token (cancelled, error)
    top_tokens: list[Token] | None
    completion: Completion | None = None  # set on the request's last event only


@dataclass(frozen=True)
class RequestStats:
    """Timings of a finished request, for metrics."""

    prompt_tokens: int
    generated_tokens: int
    finish_reason: str
    queue_seconds: float  # submit → admission into the cache (the whole life if never admitted)
    ttft_seconds: float | None  # submit → first token
    inter_token_seconds: list[float]
    duration_seconds: float


@dataclass(frozen=True)
class EngineStats:
    running: int
    waiting: int
    kv_cache_usage: float


class EngineObserver(Protocol):
    """Receives the engine's measurements; called on the engine thread, so it must be quick."""

    def on_step(self, batch_size: int) -> None: ...

    def on_request_done(self, stats: RequestStats) -> None: ...


class QueueFullError(Exception):
    """The waiting queue is at its limit; the caller should retry later."""


class EngineClosedError(Exception):
    """The engine is stopped or was never started."""


@dataclass(eq=False)
class _Request:
    prompt_ids: list[int]
    params: SamplingParams
    deliver: Callable[[TokenEvent], None]
    sampler: SamplerState
    decoder: StreamDecoder
    submitted: float
    tokens: list[int] = field(default_factory=list)  # prompt, then generated ids
    computed: int = 0  # how many of `tokens` are in the cache
    slot: int | None = None
    admitted: float | None = None
    last_token_at: float | None = None
    first_token_at: float | None = None
    inter_token: list[float] = field(default_factory=list)
    generated: list[Token] = field(default_factory=list)
    top: list[list[Token]] = field(default_factory=list)
    prompt_logprobs: list[float | None] = field(default_factory=list)
    pending_text: str = ""  # decoded but held back: it may still become a stop string
    text: str = ""  # released so far
    cancelled: bool = False

    @property
    def n_generated(self) -> int:
        return len(self.tokens) - len(self.prompt_ids)


class RequestHandle:
    """The caller's grip on a submitted request."""

    def __init__(self, engine: "Engine", request: _Request):
        self._engine = engine
        self._request = request

    def cancel(self) -> None:
        """Stop the request; its cache slot is freed at the engine's next step."""
        self._request.cancelled = True
        self._engine._wake()


class Engine:
    def __init__(self, model: GPT, tokenizer: Tokenizer, max_batch_size: int = 8, max_queue: int = 64,
                 prefill_chunk: int = 512, observer: EngineObserver | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch_size = max_batch_size
        self.max_queue = max_queue
        self.prefill_chunk = prefill_chunk
        self.observer = observer
        self.block_size = model.config.block_size
        param = next(model.parameters())
        self.device = param.device
        self.cache = KVCache(model.config, max_batch_size, param.device, param.dtype)
        self._cond = threading.Condition()
        self._inbox: collections.deque[_Request] = collections.deque()
        self._waiting: collections.deque[_Request] = collections.deque()
        self._running: list[_Request] = []
        self._thread: threading.Thread | None = None
        self._stopping = False

    # ---- the caller's side (any thread) ----

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="gptserve-engine", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """End the loop; requests still open are finished as cancelled."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stopping

    def stats(self) -> EngineStats:
        return EngineStats(running=len(self._running), waiting=len(self._waiting) + len(self._inbox),
                           kv_cache_usage=self.cache.usage_ratio())

    def submit(self, prompt_ids: list[int], params: SamplingParams,
               deliver: Callable[[TokenEvent], None]) -> RequestHandle:
        """Queue a request; `deliver` receives its events on the engine thread, the last with a Completion."""
        if not prompt_ids:
            raise ValueError("the prompt has no tokens")
        if len(prompt_ids) >= self.block_size:
            raise ValueError(f"the prompt has {len(prompt_ids)} tokens; the context holds {self.block_size}")
        if params.max_new_tokens < 1:
            raise ValueError("max_new_tokens must be at least 1")
        if max(prompt_ids) >= self.model.n_logits or min(prompt_ids) < 0:
            raise ValueError("the prompt holds a token id outside the vocabulary")
        sampler = SamplerState.create(params, prompt_ids, self.model.n_logits, self.device)
        request = _Request(prompt_ids=list(prompt_ids), params=params, deliver=deliver, sampler=sampler,
                           decoder=StreamDecoder(self.tokenizer), submitted=time.perf_counter(),
                           tokens=list(prompt_ids), prompt_logprobs=[None] * len(prompt_ids))
        with self._cond:
            if not self.is_alive():
                raise EngineClosedError("the engine is not running")
            outstanding = len(self._inbox) + len(self._waiting) + len(self._running)
            if outstanding >= self.max_batch_size + self.max_queue:
                raise QueueFullError(f"the queue is full ({self.max_queue} requests waiting)")
            self._inbox.append(request)
            self._cond.notify()
        return RequestHandle(self, request)

    def stream(self, prompt_ids: list[int], params: SamplingParams) -> "RequestStream":
        """Submit from asyncio code; iterate the result for events. Call on the event loop's thread."""
        return RequestStream(self, prompt_ids, params)

    def generate(self, prompt_ids: list[int], params: SamplingParams) -> Iterator[TokenEvent]:
        """Submit from blocking code and yield events as they come; closing the iterator cancels."""
        events: queue.Queue[TokenEvent] = queue.Queue()
        handle = self.submit(prompt_ids, params, events.put)
        try:
            while True:
                event = events.get()
                yield event
                if event.completion is not None:
                    return
        finally:
            handle.cancel()

    def _wake(self) -> None:
        with self._cond:
            self._cond.notify()

    # ---- the engine thread ----

    def _loop(self) -> None:
        with torch.inference_mode():
            while True:
                with self._cond:
                    while not self._stopping and not self._inbox and not self._waiting and not self._running:
                        self._cond.wait()
                    if self._stopping:
                        break
                    self._waiting.extend(self._inbox)
                    self._inbox.clear()
                try:
                    self._step()
                except Exception:  # noqa: BLE001 - a bug in one step must not kill the server
                    log.exception("engine step failed; failing the running requests")
                    for request in list(self._running):
                        self._finish(request, "error", "internal error during generation")
        for request in list(self._running) + list(self._waiting) + list(self._inbox):
            self._finish(request, "cancelled")

    def _step(self) -> None:
        for request in [r for r in self._waiting if r.cancelled]:
            self._waiting.remove(request)
            self._finish(request, "cancelled")
        for request in [r for r in self._running if r.cancelled]:
            self._finish(request, "cancelled")
        while self._waiting and self.cache.free_slots:
            request = self._waiting.popleft()
            request.slot = self.cache.allocate()
            request.admitted = time.perf_counter()
            self._running.append(request)
        self._decode()
        self._prefill()

    def _decode(self) -> None:
        """Advance every sequence that has a sampled token to feed, in one batched forward."""
        # Ordered by slot, so that a full cache is one consecutive run and attention reads it without a copy.
        batch = sorted((r for r in self._running if r.computed == len(r.tokens) - 1), key=lambda r: r.slot)
        if not batch:
            return
        ids = torch.tensor([[r.tokens[-1]] for r in batch], device=self.device)
        try:
            logits = self.model(Batch.make(ids, [r.computed for r in batch], [r.slot for r in batch]), self.cache)
            for request in batch:
                request.computed += 1
            self._sample(batch, logits)
        except Exception:  # noqa: BLE001
            log.exception("decode step failed")
            for request in batch:
                if request in self._running:
                    self._finish(request, "error", "internal error during generation")
        if self.observer is not None:
            self.observer.on_step(len(batch))

    def _prefill(self) -> None:
        """Feed prompt chunks of admitted newcomers, up to `prefill_chunk` tokens this step."""
        budget = self.prefill_chunk
        for request in [r for r in self._running if r.computed < len(r.tokens) - 1]:
            if budget <= 0:
                break
            start = request.computed
            chunk = request.tokens[start: start + budget]
            budget -= len(chunk)
            try:
                ids = torch.tensor([chunk], device=self.device)
                batch = Batch.make(ids, [start], [request.slot])
                wants_all = request.params.prompt_logprobs
                logits = self.model(batch, self.cache, all_logits=wants_all)
                request.computed += len(chunk)
                if wants_all:
                    self._record_prompt_logprobs(request, start, logits[0])
                if request.computed == len(request.tokens):
                    self._sample([request], logits[:, -1] if wants_all else logits)
            except Exception:  # noqa: BLE001
                log.exception("prefill failed")
                self._finish(request, "error", "internal error during prefill")

    @staticmethod
    def _record_prompt_logprobs(request: _Request, start: int, logits: torch.Tensor) -> None:
        """Logits at position j score the prompt token at j + 1; the first prompt token never gets one."""
        targets = request.prompt_ids[start + 1: start + logits.shape[0] + 1]
        if not targets:
            return
        index = torch.tensor(targets, device=logits.device)[:, None]
        lp = torch.log_softmax(logits[: len(targets)].float(), dim=-1).gather(1, index)[:, 0].tolist()
        request.prompt_logprobs[start + 1: start + 1 + len(lp)] = lp

    def _prefill_tokens(self, request: _Request) -> list[Token]:
        decoder = StreamDecoder(self.tokenizer)
        tokens = []
        for i, (token_id, lp) in enumerate(zip(request.prompt_ids, request.prompt_logprobs)):
            special = self.tokenizer.is_special(token_id)
            text = "" if special else decoder.push(token_id)
            if i == len(request.prompt_ids) - 1:
                text += decoder.flush()
            tokens.append(Token(token_id, text, lp, special))
        return tokens

    def _sample(self, batch: list[_Request], logits: torch.Tensor) -> None:
        out = sample(logits, [r.sampler for r in batch])
        for i, request in enumerate(batch):
            top = [self._alt(tid, lp) for tid, lp in out.top[i]] if request.params.top_n_tokens else None
            self._accept(request, out.token_ids[i], out.logprobs[i], top)

    def _alt(self, token_id: int, logprob: float) -> Token:
        special = self.tokenizer.is_special(token_id)
        text = "" if special else self.tokenizer.decode([token_id])
        return Token(token_id, text, logprob, special)

    def _accept(self, request: _Request, token_id: int, logprob: float, top: list[Token] | None) -> None:
        """Record a sampled token, release whatever text is now safe, and finish the request if it is done."""
        now = time.perf_counter()
        if request.first_token_at is None:
            request.first_token_at = now
        else:
            request.inter_token.append(now - (request.last_token_at or now))
        request.last_token_at = now
        request.tokens.append(token_id)
        special = self.tokenizer.is_special(token_id)
        request.pending_text += "" if special else request.decoder.push(token_id)
        params = request.params
        finish = None
        if token_id == self.tokenizer.eos_id and not params.ignore_eos:
            finish = "eos_token"
        elif request.n_generated >= params.max_new_tokens or len(request.tokens) >= self.block_size:
            finish = "length"
        released = self._release(request, finish is not None)
        if released is None:
            finish, released = "stop_sequence", self._cut_at_stop(request)
        request.text += released
        token = Token(token_id, released, logprob, special)
        request.generated.append(token)
        request.top.append(top or [])
        event = TokenEvent(index=request.n_generated, token=token, top_tokens=top)
        if finish is None:
            self._deliver(request, event)
        else:
            self._finish(request, finish, last_event=event)

    def _release(self, request: _Request, final: bool) -> str | None:
        """The text that can be shown now; None when a stop string has appeared."""
        stops = request.params.stop
        if final:
            request.pending_text += request.decoder.flush()
        if stops and any(s in request.pending_text for s in stops):
            return None
        if final or not stops:
            released, request.pending_text = request.pending_text, ""
            return released
        hold = 0
        longest = min(len(request.pending_text), max(len(s) for s in stops) - 1)
        for k in range(longest, 0, -1):
            suffix = request.pending_text[-k:]
            if any(s.startswith(suffix) for s in stops):
                hold = k
                break
        cut = len(request.pending_text) - hold
        released, request.pending_text = request.pending_text[:cut], request.pending_text[cut:]
        return released

    def _cut_at_stop(self, request: _Request) -> str:
        at = min(i for i in (request.pending_text.find(s) for s in request.params.stop) if i >= 0)
        released, request.pending_text = request.pending_text[:at], ""
        return released

    def _finish(self, request: _Request, reason: str, error: str | None = None,
                last_event: TokenEvent | None = None) -> None:
        """Free the request's slot and send its last event; safe to call once per request."""
        if request in self._running:
            self._running.remove(request)
        if request.slot is not None:
            self.cache.free(request.slot)
            request.slot = None
        completion = Completion(generated_text=request.text, finish_reason=reason,
                                prompt_tokens=len(request.prompt_ids), generated_tokens=request.n_generated,
                                seed=request.sampler.seed, tokens=request.generated, top_tokens=request.top,
                                prefill=self._prefill_tokens(request), error=error)
        event = last_event or TokenEvent(index=request.n_generated, token=None, top_tokens=None)
        event.completion = completion
        self._deliver(request, event)
        if self.observer is not None:
            now = time.perf_counter()
            self.observer.on_request_done(RequestStats(
                prompt_tokens=len(request.prompt_ids), generated_tokens=request.n_generated, finish_reason=reason,
                queue_seconds=(request.admitted or now) - request.submitted,
                ttft_seconds=None if request.first_token_at is None else request.first_token_at - request.submitted,
                inter_token_seconds=request.inter_token, duration_seconds=now - request.submitted))

    @staticmethod
    def _deliver(request: _Request, event: TokenEvent) -> None:
        try:
            request.deliver(event)
        except Exception:  # noqa: BLE001 - a vanished consumer (closed event loop) must not stop the engine
            log.debug("dropping an event for a consumer that is gone", exc_info=True)


class RequestStream:
    """An async iterator over one request's events, for asyncio callers (the HTTP server).

    Events cross from the engine thread through `call_soon_threadsafe` into an asyncio.Queue.
    """

    def __init__(self, engine: Engine, prompt_ids: list[int], params: SamplingParams):
        self._loop = asyncio.get_running_loop()
        self._events: asyncio.Queue[TokenEvent] = asyncio.Queue()
        self._done = False
        self._handle = engine.submit(prompt_ids, params, self._deliver)

    def _deliver(self, event: TokenEvent) -> None:
        self._loop.call_soon_threadsafe(self._events.put_nowait, event)

    def __aiter__(self) -> AsyncIterator[TokenEvent]:
        return self

    async def __anext__(self) -> TokenEvent:
        if self._done:
            raise StopAsyncIteration
        event = await self._events.get()
        self._done = event.completion is not None
        return event

    def cancel(self) -> None:
        """Cancel the request unless it already ended (safe to call on every exit path)."""
        if not self._done:
            self._handle.cancel()
