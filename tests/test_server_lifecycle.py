"""The server's life: configuration (flags beat GPTSERVE_* variables), start-up failures (one line, exit 2),
the API key, JSON logs, a full queue (429), and SIGTERM (503 for newcomers, in-flight requests drain,
exit 0; past the grace period they are cancelled). Real `gptserve serve` processes, real clients."""

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import httpx
import openai
import pytest
from fastapi.testclient import TestClient
from huggingface_hub import InferenceClient

from server.app import create_app
from server.config import Settings
from tests.conftest import TINY, random_gpt, save_nanogpt
from tests.server_util import Server, metrics, run_cli, wait_for


@pytest.fixture(scope="module")
def long_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_nanogpt(random_gpt(replace(TINY, block_size=1024), seed=99), tmp_path_factory.mktemp("l") / "ckpt.pt")


class Reader(threading.Thread):
    """Streams one /generate_stream request in the background, keeping every event."""

    def __init__(self, url: str, body: dict, headers: dict | None = None):
        super().__init__(daemon=True)
        self.url, self.body, self.headers = url, body, headers or {}
        self.events: list[dict] = []
        self.status: int | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with httpx.stream("POST", self.url + "/generate_stream", json=self.body, headers=self.headers,
                              timeout=60) as r:
                self.status = r.status_code
                for line in r.iter_lines():
                    if line.startswith("data:"):
                        self.events.append(json.loads(line[5:]))
        except BaseException as e:  # noqa: BLE001
            self.error = e


def long_body(n: int) -> dict:
    return {"inputs": "Once upon a time", "parameters": {"max_new_tokens": n, "ignore_eos": True}}


# ---------------------------------------------------------------- configuration


def test_flag_beats_environment(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("GPTSERVE_PORT", "9001")
    monkeypatch.setenv("GPTSERVE_MAX_QUEUE", "3")
    monkeypatch.setenv("GPTSERVE_LOG_FORMAT", "JSON")
    s = Settings()
    assert (s.port, s.max_queue, s.log_format, s.host, s.max_batch_size) == (9001, 3, "json", "127.0.0.1", 8)
    assert (s.max_body_bytes, s.api_key, s.shutdown_timeout) == (1 << 20, None, 30.0)
    assert Settings(port="9002").port == 9002


def test_startup_problems_print_one_line_and_exit_2(tiny_ckpt: Path, tmp_path: Path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a checkpoint" * 10)
    cases = [
        (["serve", "--model", str(tmp_path / "missing.pt")], {}, "missing.pt"),
        (["serve", "--model", str(garbage)], {}, "garbage.pt"),
        (["serve", "--model", str(tiny_ckpt), "--port", "eighty"], {}, "--port"),
        (["serve", "--model", str(tiny_ckpt)], {"GPTSERVE_MAX_BATCH_SIZE": "0"}, "GPTSERVE_MAX_BATCH_SIZE"),
        (["serve", "--model", str(tiny_ckpt), "--log-format", "xml"], {}, "--log-format"),
        (["serve", "--bogus-flag"], {}, "--bogus-flag"),
    ]
    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(lambda c: run_cli(*c[0], env=c[1]), cases))
    for (args, env, word), r in zip(cases, results):
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2, (args, env, r.stderr)
        assert len(lines) == 1 and word in lines[0], (args, env, r.stderr)
        assert "Traceback" not in r.stderr


def test_model_that_fails_to_load_in_the_app_gives_503():
    app = create_app(Settings(model="/nonexistent/ckpt.pt"))
    with TestClient(app) as client:
        assert wait_for(lambda: client.get("/health").json()["status"] == "failed", 10)
        r = client.get("/health")
        assert r.status_code == 503 and r.json()["error_type"] == "unavailable"
        r = client.post("/generate", json={"inputs": "x"})
        assert r.status_code == 503 and "/nonexistent/ckpt.pt" in r.json()["error"]
        assert r.headers["retry-after"]
        assert client.get("/metrics").status_code == 200


def test_an_unexpected_failure_is_a_500_without_traceback():
    app = create_app(Settings(model="/nonexistent/ckpt.pt"))

    async def boom() -> None:
        raise RuntimeError("secret internals")

    app.add_api_route("/boom", boom, methods=["POST"])
    with TestClient(app) as client:
        r = client.post("/boom", json={})
        assert r.status_code == 500 and r.json()["error_type"] == "generation"
        assert "secret" not in r.text and "Traceback" not in r.text
        assert client.get("/metrics").status_code == 200


# ---------------------------------------------------------------- API key, JSON logs, grace period


def test_api_key_json_logs_and_grace_period(long_ckpt: Path, tmp_path: Path):
    env = {"GPTSERVE_API_KEY": "env-key", "GPTSERVE_MAX_QUEUE": "5", "GPTSERVE_LOG_FORMAT": "json",
           "GPTSERVE_SHUTDOWN_TIMEOUT": "30"}
    server = Server(long_ckpt, "--api-key", "flag-key", "--shutdown-timeout", "0.3", env=env, log_dir=tmp_path)
    try:
        server.wait_ready()
        url, good = server.url, {"Authorization": "Bearer flag-key"}
        body = {"inputs": "Hi", "parameters": {"max_new_tokens": 3}}
        assert httpx.get(url + "/health").status_code == 200
        assert httpx.get(url + "/metrics").status_code == 200
        for headers in ({}, {"Authorization": "Bearer env-key"}, {"Authorization": "flag-key"}):
            r = httpx.post(url + "/generate", json=body, headers=headers)
            assert r.status_code == 401 and r.json()["error_type"] == "unauthorized", r.text
            assert r.headers["www-authenticate"] == "Bearer"
        r = httpx.post(url + "/v1/completions", json={"model": "m", "prompt": "Hi"})
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
        r = httpx.post(url + "/generate", json=body, headers=good, params={}, timeout=30)
        assert r.status_code == 200
        assert httpx.get(url + "/info", headers=good).json()["max_queue"] == 5  # from the environment
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0).completions.create(
                model="m", prompt="Hi", max_tokens=2)
        ok = openai.OpenAI(base_url=url + "/v1", api_key="flag-key", max_retries=0).completions.create(
            model="m", prompt="Hi", max_tokens=2)
        assert ok.usage.prompt_tokens == 1
        assert isinstance(InferenceClient(base_url=url, api_key="flag-key").text_generation("Hi", max_new_tokens=2),
                          str)

        # one JSON object per line; the access lines carry the request's fields
        assert wait_for(lambda: '"status": 401' in server.log(), 5)
        records = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
        access = [r for r in records if r["logger"] == "gptserve.access"]
        generated = next(r for r in access if r["route"] == "/generate" and r["status"] == 200)
        assert generated["method"] == "POST" and generated["prompt_tokens"] == 1
        assert generated["generated_tokens"] == 3 and generated["ttft_seconds"] > 0
        assert generated["duration_seconds"] > 0 and len(generated["request_id"]) >= 8
        assert any(r["status"] == 401 for r in access)

        # past the grace period, what is still running is cancelled and the stream ends with an error event
        reader = Reader(url, long_body(1000), headers=good)
        reader.start()
        assert wait_for(lambda: len(reader.events) >= 1, 10)
        server.terminate()
        reader.join(30)
        assert server.proc.wait(30) == 0
        assert reader.error is None and reader.status == 200
        assert 1 <= len(reader.events) < 1001
        assert reader.events[-1].get("error_type") == "unavailable", reader.events[-1]
    finally:
        server.stop()


# ---------------------------------------------------------------- full queue and draining


def test_full_queue_429_then_sigterm_drains(long_ckpt: Path, tmp_path: Path):
    server = Server(long_ckpt, "--max-batch-size", "1", "--max-queue", "1", "--shutdown-timeout", "60",
                    log_dir=tmp_path)
    try:
        server.wait_ready()
        url = server.url
        first = Reader(url, long_body(1000))
        first.start()
        assert wait_for(lambda: len(first.events) >= 1, 10)
        second = Reader(url, long_body(300))
        second.start()
        assert wait_for(lambda: metrics(url)["gptserve_requests_waiting"] == 1, 10)

        r = httpx.post(url + "/generate_stream", json=long_body(5))
        assert r.status_code == 429 and r.headers["retry-after"].isdigit()
        assert r.json()["error_type"] == "overloaded"
        r = httpx.post(url + "/v1/completions", json={"model": "m", "prompt": "Hi"})
        assert r.status_code == 429 and r.json()["error"]["type"] == "rate_limit_error"
        assert r.headers["retry-after"]

        # SIGTERM: newcomers get 503, the running and the waiting request both finish, then exit 0
        server.terminate()
        signalled_at = len(first.events)
        assert wait_for(lambda: httpx.get(url + "/health").status_code == 503, 5)
        r = httpx.post(url + "/generate", json={"inputs": "late"})
        assert r.status_code == 503 and r.json()["error_type"] == "unavailable"
        first.join(60)
        second.join(60)
        assert server.proc.wait(30) == 0
        assert signalled_at < 1000, "the stream ended before SIGTERM; nothing was drained"
        for reader, n in ((first, 1000), (second, 300)):
            assert reader.error is None and reader.status == 200
            assert len(reader.events) == n and reader.events[-1]["details"]["finish_reason"] == "length"
            assert reader.events[-1]["generated_text"] == "".join(e["token"]["text"] for e in reader.events)
        assert "shutting down" in server.log()
    finally:
        server.stop()
