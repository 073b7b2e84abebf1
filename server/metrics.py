"""Every metric of SPEC §6, in one CollectorRegistry per app.

Request-level measurements come from the engine thread through the `EngineObserver` protocol; the
running/waiting/KV-cache gauges read `engine.stats()` when Prometheus scrapes.
"""

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import CONTENT_TYPE_LATEST

from model.engine import FINISH_REASONS, EngineStats, RequestStats

# vLLM's buckets: time to first token from 1 ms, inter-token latency from 10 ms, end-to-end latency.
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
               40.0, 80.0)
E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
               480.0, 960.0, 1920.0, 7680.0)
# vLLM's end-to-end buckets start at 300 ms; HTTP requests (health, tokenize) and queue waits are often far
# shorter, so those two histograms get finer buckets below it.
SHORT_PREFIX = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2)
DURATION_BUCKETS = SHORT_PREFIX + E2E_BUCKETS

CONTENT_TYPE = CONTENT_TYPE_LATEST


def one_two_five_buckets(limit: int) -> tuple[float, ...]:
    """vLLM's 1-2-5 token-count buckets up to `limit` (1, 2, 5, 10, 20, 50, ...)."""
    out: list[float] = []
    exponent = 0
    while True:
        for m in (1, 2, 5):
            value = m * 10**exponent
            if value > limit:
                return tuple(out)
            out.append(float(value))
        exponent += 1


def batch_buckets(max_batch: int) -> tuple[float, ...]:
    sizes = {1, max_batch}
    b = 2
    while b < max_batch:
        sizes.add(b)
        b *= 2
    return tuple(float(s) for s in sorted(sizes))


class Metrics:
    """The instruments; also the engine's observer."""

    def __init__(self, context_length: int = 1024, max_batch_size: int = 8):
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.requests = Counter("gptserve_requests", "HTTP requests answered, by route and status code",
                                ["route", "status"], registry=r)
        self.request_duration = Histogram("gptserve_request_duration_seconds",
                                          "HTTP request duration, from arrival to the last byte",
                                          ["route"], buckets=DURATION_BUCKETS, registry=r)
        self.queue_duration = Histogram("gptserve_queue_duration_seconds",
                                        "Time a generation request waited for a KV-cache slot",
                                        buckets=DURATION_BUCKETS, registry=r)
        self.ttft = Histogram("gptserve_time_to_first_token_seconds", "Time from submission to the first token",
                              buckets=TTFT_BUCKETS, registry=r)
        self.itl = Histogram("gptserve_inter_token_latency_seconds", "Time between consecutive tokens of a request",
                             buckets=ITL_BUCKETS, registry=r)
        self.prompt_tokens = Counter("gptserve_prompt_tokens", "Prompt tokens processed", registry=r)
        self.generated_tokens = Counter("gptserve_generated_tokens", "Tokens generated", registry=r)
        token_buckets = one_two_five_buckets(max(context_length, 1))
        self.request_prompt_tokens = Histogram("gptserve_request_prompt_tokens", "Prompt tokens per request",
                                               buckets=token_buckets, registry=r)
        self.request_generated_tokens = Histogram("gptserve_request_generated_tokens",
                                                  "Generated tokens per request", buckets=token_buckets, registry=r)
        self.finished = Counter("gptserve_requests_finished", "Generation requests finished, by finish reason",
                                ["finish_reason"], registry=r)
        for reason in FINISH_REASONS:
            self.finished.labels(finish_reason=reason)
        self.running = Gauge("gptserve_requests_running", "Requests holding a KV-cache slot", registry=r)
        self.waiting = Gauge("gptserve_requests_waiting", "Requests waiting for a KV-cache slot", registry=r)
        self.kv_usage = Gauge("gptserve_kv_cache_usage_ratio", "Fraction of the KV cache in use (0 to 1)",
                              registry=r)
        self.batch_size = Histogram("gptserve_batch_size", "Sequences per decode step",
                                    buckets=batch_buckets(max_batch_size), registry=r)
        self.model_info = Gauge("gptserve_model_info", "The served model (always 1)", ["model", "dtype", "device"],
                                registry=r)
        self._stats: Callable[[], EngineStats] | None = None

    def bind_engine(self, stats: Callable[[], EngineStats]) -> None:
        """Read running/waiting/KV usage from the engine at scrape time."""
        self._stats = stats
        self.running.set_function(lambda: self._stat("running"))
        self.waiting.set_function(lambda: self._stat("waiting"))
        self.kv_usage.set_function(lambda: self._stat("kv_cache_usage"))

    def _stat(self, name: str) -> float:
        if self._stats is None:
            return 0.0
        try:
            return float(getattr(self._stats(), name))
        except Exception:  # noqa: BLE001 - a scrape must never fail
            return 0.0

    def set_model(self, model: str, dtype: str, device: str) -> None:
        self.model_info.labels(model=model, dtype=dtype, device=device).set(1)

    # ---- EngineObserver (called on the engine thread) ----

    def on_step(self, batch_size: int) -> None:
        self.batch_size.observe(batch_size)

    def on_request_done(self, stats: RequestStats) -> None:
        self.finished.labels(finish_reason=stats.finish_reason).inc()
        self.queue_duration.observe(stats.queue_seconds)
        if stats.ttft_seconds is not None:
            self.ttft.observe(stats.ttft_seconds)
        for gap in stats.inter_token_seconds:
            self.itl.observe(gap)
        self.prompt_tokens.inc(stats.prompt_tokens)
        self.generated_tokens.inc(stats.generated_tokens)
        self.request_prompt_tokens.observe(stats.prompt_tokens)
        self.request_generated_tokens.observe(stats.generated_tokens)

    # ---- HTTP ----

    def observe_http(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route=route, status=str(status)).inc()
        self.request_duration.labels(route=route).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
