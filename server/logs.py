"""Logging for the server: plain text or one JSON object per line (`--log-format json`).

The access log (`gptserve.access`) writes one line per request with method, route, status, prompt and
generated tokens, time to first token, duration and request id; its fields travel in `extra={"fields": ...}`
so that the JSON formatter can emit them as keys.
"""

import json
import logging
import sys
import time

ACCESS = logging.getLogger("gptserve.access")


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        # Keep every log record on one line (a traceback becomes an escaped tail).
        return text.replace("\n", "\\n")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            out.update(fields)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)


def configure_logging(level: str = "info", fmt: str = "text") -> None:
    """Route every logger (ours, uvicorn's, the engine's) to stderr in the chosen format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    # uvicorn's own access log is replaced by ours.
    logging.getLogger("uvicorn.access").disabled = True


def log_access(method: str, route: str, path: str, status: int, prompt_tokens: int | None,
               generated_tokens: int | None, ttft: float | None, duration: float, request_id: str,
               finish_reason: str | None = None) -> None:
    if not ACCESS.isEnabledFor(logging.INFO):
        return
    fields = {
        "method": method, "route": route, "path": path, "status": status, "prompt_tokens": prompt_tokens,
        "generated_tokens": generated_tokens,
        "ttft_seconds": None if ttft is None else round(ttft, 6),
        "duration_seconds": round(duration, 6), "request_id": request_id,
    }
    if finish_reason is not None:
        fields["finish_reason"] = finish_reason

    def show(value: object) -> str:
        return "-" if value is None else str(value)

    message = (f"{method} {route} {status} prompt_tokens={show(prompt_tokens)} "
               f"generated_tokens={show(generated_tokens)} "
               f"ttft={'-' if ttft is None else f'{ttft:.3f}s'} duration={duration:.3f}s "
               f"request_id={request_id}" + (f" finish_reason={finish_reason}" if finish_reason else ""))
    ACCESS.info(message, extra={"fields": fields})
