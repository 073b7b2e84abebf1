"""What one server process holds: settings, the loaded model, the engine, the metrics, and its lifecycle.

Lifecycle: loading → ready → draining (SIGTERM: new requests get 503, in-flight ones finish) → stopped.
"""

import asyncio
import logging
import time
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version

from model.engine import Engine, EngineClosedError, QueueFullError, RequestStream
from model.loader import LoadedModel, ModelLoadError, load_model
from model.sampling import SamplingParams
from server.config import Settings
from server.errors import APIError
from server.metrics import Metrics

log = logging.getLogger("gptserve.server")

try:
    VERSION = version("gptserve")
except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
    VERSION = "0.0.0"


@dataclass
class RequestRecord:
    """Filled in by a route, read by the access log when the response ends."""

    request_id: str
    started: float
    prompt_tokens: int | None = None
    generated_tokens: int | None = None
    first_token_at: float | None = None
    finish_reason: str | None = None

    def token_seen(self) -> None:
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()

    @property
    def ttft(self) -> float | None:
        return None if self.first_token_at is None else self.first_token_at - self.started


@dataclass
class Runtime:
    settings: Settings
    loaded: LoadedModel | None = None
    engine: Engine | None = None
    metrics: Metrics = field(default_factory=Metrics)
    status: str = "loading"  # loading | ready | failed | draining | stopped
    load_error: str | None = None
    in_flight: int = 0  # HTTP requests being answered (the drain waits for 0)
    drain_started: float | None = None
    created: int = field(default_factory=lambda: int(time.time()))

    # ---- set-up ----

    def attach(self, loaded: LoadedModel) -> None:
        """Take a loaded model: build the metrics and the engine (started later, on the event loop)."""
        info = loaded.info
        self.loaded = loaded
        self.metrics = Metrics(context_length=info.context_length, max_batch_size=self.settings.max_batch_size)
        self.metrics.set_model(info.model_id, info.dtype, info.device)
        self.engine = Engine(loaded.model, loaded.tokenizer, max_batch_size=self.settings.max_batch_size,
                             max_queue=self.settings.max_queue, observer=self.metrics)
        self.metrics.bind_engine(self.engine.stats)

    def start(self) -> None:
        assert self.engine is not None
        self.engine.start()
        if self.status == "loading":
            self.status = "ready"
        log.info("serving %s (%s, %s, %s params) with up to %d concurrent sequences",
                 self.loaded.info.model_id if self.loaded else "?", self.loaded.info.device if self.loaded else "?",
                 self.loaded.info.dtype if self.loaded else "?",
                 f"{self.loaded.info.n_params:,}" if self.loaded else "?", self.settings.max_batch_size)

    async def load_in_background(self) -> None:
        """Used when the app was created without a model: /health answers 503 until this is done."""
        s = self.settings
        try:
            loaded = await asyncio.to_thread(load_model, s.model, s.device, s.dtype)
            self.attach(loaded)
            self.start()
        except ModelLoadError as e:
            self.status, self.load_error = "failed", str(e)
            log.error("%s", e)
        except Exception as e:  # noqa: BLE001
            self.status, self.load_error = "failed", f"loading the model failed: {e}"
            log.exception("loading the model failed")

    async def shutdown(self) -> None:
        if self.engine is not None:
            await asyncio.to_thread(self.engine.stop, 10.0)
        self.status = "stopped"

    # ---- draining (SIGTERM) ----

    def begin_drain(self) -> None:
        """Safe to call from a signal handler: only sets flags."""
        if self.drain_started is None:
            self.drain_started = time.monotonic()
            self.status = "draining"

    @property
    def draining(self) -> bool:
        return self.drain_started is not None

    # ---- for routes ----

    @property
    def ready(self) -> bool:
        return self.status == "ready" and self.engine is not None and self.engine.is_alive()

    def require_ready(self) -> LoadedModel:
        if self.draining:
            raise APIError("unavailable", "the server is shutting down and accepts no new requests")
        if self.status == "failed":
            raise APIError("unavailable", f"the model failed to load: {self.load_error}")
        if self.status == "loading" or self.loaded is None:
            raise APIError("unavailable", "the model is still loading; retry shortly")
        if self.engine is None or not self.engine.is_alive():
            raise APIError("unavailable", "the generation engine is not running")
        return self.loaded

    def open_stream(self, prompt_ids: list[int], params: SamplingParams) -> RequestStream:
        """Submit to the engine; a full queue is a 429 answered at once."""
        assert self.engine is not None
        try:
            return self.engine.stream(prompt_ids, params)
        except QueueFullError:
            raise APIError("overloaded", f"the server is at capacity ({self.settings.max_batch_size} running, "
                                         f"{self.settings.max_queue} waiting); retry later") from None
        except EngineClosedError:
            raise APIError("unavailable", "the generation engine is not running") from None
        except ValueError as e:
            raise APIError("validation", str(e)) from None
