"""The HTTP API against one real `gptserve serve` process (uvicorn on a loopback port), with real clients:
the openai SDK, huggingface_hub's InferenceClient, curl and httpx. No mocks.

The served model is the tiny test GPT (GPT-2 BPE) with a 1024-token context, so that streams are long
enough to watch tokens arrive and to disconnect in the middle.
"""

import json
import subprocess
import threading
import time
from dataclasses import replace
from pathlib import Path

import httpx
import openai
import pytest
from huggingface_hub import InferenceClient
from huggingface_hub.errors import ValidationError as HFValidationError

from tests.conftest import TINY, random_gpt, save_nanogpt
from tests.server_util import Server, metrics, sse_events, wait_for

CONTEXT = 1024
SPEC_METRICS = {
    "gptserve_requests_total": "counter",
    "gptserve_request_duration_seconds": "histogram",
    "gptserve_queue_duration_seconds": "histogram",
    "gptserve_time_to_first_token_seconds": "histogram",
    "gptserve_inter_token_latency_seconds": "histogram",
    "gptserve_prompt_tokens_total": "counter",
    "gptserve_generated_tokens_total": "counter",
    "gptserve_request_prompt_tokens": "histogram",
    "gptserve_request_generated_tokens": "histogram",
    "gptserve_requests_finished_total": "counter",
    "gptserve_requests_running": "gauge",
    "gptserve_requests_waiting": "gauge",
    "gptserve_kv_cache_usage_ratio": "gauge",
    "gptserve_batch_size": "histogram",
    "gptserve_model_info": "gauge",
}


@pytest.fixture(scope="module")
def long_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """TINY with a 1024-token context (a few ms per token on a CPU)."""
    return save_nanogpt(random_gpt(replace(TINY, block_size=CONTEXT), seed=4321),
                        tmp_path_factory.mktemp("long") / "ckpt.pt")


@pytest.fixture(scope="module")
def server(long_ckpt: Path, tmp_path_factory: pytest.TempPathFactory):
    with Server(long_ckpt, log_dir=tmp_path_factory.mktemp("logs")) as s:
        yield s


@pytest.fixture(scope="module")
def http(server: Server):
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def oai(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def texts_of(events: list[dict]) -> str:
    return "".join(e["token"]["text"] for e in events if "token" in e)


# ---------------------------------------------------------------- service routes


def test_health_info_models_openapi(http: httpx.Client, long_ckpt: Path):
    assert http.get("/health").json() == {"status": "ok"}
    info = http.get("/info").json()
    assert info["model_id"] == str(long_ckpt)
    assert (info["model_format"], info["n_layer"], info["n_head"], info["n_embd"]) == ("nanogpt", 2, 2, 32)
    assert (info["vocab_size"], info["context_length"]) == (50304, CONTEXT)
    assert info["n_params"] > 0 and info["model_dtype"] == "float32" and info["model_device"] == "cpu"
    assert info["max_concurrent_requests"] == 8 and info["max_queue"] == 64 and info["version"]
    models = http.get("/v1/models").json()
    assert models["object"] == "list" and [m["id"] for m in models["data"]] == [str(long_ckpt)]
    assert http.get(f"/v1/models/{long_ckpt}").json()["id"] == str(long_ckpt)
    missing = http.get("/v1/models/other")
    assert missing.status_code == 404 and missing.json()["error"]["param"] == "model"
    schema = http.get("/openapi.json").json()
    assert {"/generate", "/generate_stream", "/", "/v1/completions", "/tokenize"} <= set(schema["paths"])
    assert http.get("/docs").status_code == 200


def test_tokenize_gives_character_offsets(http: httpx.Client):
    text = "To be, or not to be: héllo"
    tokens = http.post("/tokenize", json={"inputs": text}).json()
    assert tokens[0] == {"id": 2514, "text": "To", "start": 0, "stop": 2}
    assert "".join(t["text"] for t in tokens) == text
    for t in tokens:
        assert text[t["start"]:t["stop"]] == t["text"]
    assert tokens[-1]["stop"] == len(text)


def test_request_id_is_echoed_and_logged(http: httpx.Client, server: Server):
    r = http.post("/generate", json={"inputs": "Hi", "parameters": {"max_new_tokens": 3}},
                  headers={"X-Request-Id": "req-abc-123"})
    assert r.status_code == 200 and r.headers["x-request-id"] == "req-abc-123"
    assert wait_for(lambda: "request_id=req-abc-123" in server.log(), 5)
    line = next(ln for ln in server.log().splitlines() if "request_id=req-abc-123" in ln)
    for part in ("POST /generate 200", "prompt_tokens=1", "generated_tokens=3", "ttft=", "duration="):
        assert part in line
    assert http.get("/health").headers["x-request-id"]


# ---------------------------------------------------------------- TGI routes


def test_generate_with_details(http: httpx.Client):
    body = {"inputs": "To be, or not to be", "parameters": {
        "max_new_tokens": 12, "details": True, "decoder_input_details": True, "top_n_tokens": 3, "ignore_eos": True}}
    out = http.post("/generate", json=body).json()
    d = out["details"]
    assert d["finish_reason"] == "length" and d["generated_tokens"] == 12 and d["seed"] is None
    assert [p["text"] for p in d["prefill"]] == ["To", " be", ",", " or", " not", " to", " be"]
    assert d["prefill"][0]["logprob"] is None and all(p["logprob"] < 0 for p in d["prefill"][1:])
    assert len(d["tokens"]) == 12 and "".join(t["text"] for t in d["tokens"]) == out["generated_text"]
    assert set(d["tokens"][0]) == {"id", "text", "logprob", "special"}
    assert len(d["top_tokens"]) == 12 and all(len(step) == 3 for step in d["top_tokens"])
    # greedy: the chosen token is the most likely alternative
    assert all(step[0]["id"] == tok["id"] for step, tok in zip(d["top_tokens"], d["tokens"]))
    # without details: just the text; return_full_text prepends the prompt
    plain = http.post("/generate", json={"inputs": "To be", "parameters": {"max_new_tokens": 5}}).json()
    assert set(plain) == {"generated_text"}
    full = http.post("/generate", json={"inputs": "To be", "parameters": {"max_new_tokens": 5,
                                                                          "return_full_text": True}}).json()
    assert full["generated_text"] == "To be" + plain["generated_text"]


def test_sampling_seed_and_defaults(http: httpx.Client):
    params = {"max_new_tokens": 20, "temperature": 0.9, "top_k": 50, "seed": 42, "details": True}
    a = http.post("/generate", json={"inputs": "Once upon", "parameters": params}).json()
    b = http.post("/generate", json={"inputs": "Once upon", "parameters": params}).json()
    assert a == b and a["details"]["seed"] == 42
    # the default max_new_tokens (100) is capped to the room the prompt leaves
    prompt = "hello" + " hello" * (CONTEXT - 11)  # CONTEXT - 10 tokens
    out = http.post("/generate", json={"inputs": prompt, "parameters": {"details": True, "ignore_eos": True}}).json()
    assert out["details"]["generated_tokens"] == 10
    # truncate keeps the last tokens, making room for an explicit max_new_tokens
    long = "hello " * 1100
    r = http.post("/generate", json={"inputs": long, "parameters": {"truncate": 10, "max_new_tokens": 5}})
    assert r.status_code == 200, r.text


def test_stop_sequence(http: httpx.Client):
    base = http.post("/generate", json={"inputs": "The", "parameters": {
        "max_new_tokens": 30, "details": True, "ignore_eos": True}}).json()
    tokens = [t["text"] for t in base["details"]["tokens"]]
    stop = tokens[6] + tokens[7][:1]  # spans two tokens
    assert stop
    out = http.post("/generate", json={"inputs": "The", "parameters": {
        "max_new_tokens": 30, "details": True, "stop": [stop], "ignore_eos": True}}).json()
    assert out["details"]["finish_reason"] == "stop_sequence"
    assert out["generated_text"] == base["generated_text"][:base["generated_text"].index(stop)]


@pytest.mark.parametrize("route, extra", [("/generate_stream", {}), ("/generate", {"stream": True}),
                                          ("/", {"stream": True})])
def test_stream_event_shapes(http: httpx.Client, route: str, extra: dict):
    body = {"inputs": "Hello world", "parameters": {"max_new_tokens": 8, "ignore_eos": True, "top_n_tokens": 2},
            **extra}
    with http.stream("POST", route, json=body) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = sse_events(r.read().decode())
    assert [e["index"] for e in events] == list(range(1, 9))
    for e in events[:-1]:
        assert set(e) == {"index", "token", "top_tokens", "generated_text", "details"}
        assert e["generated_text"] is None and e["details"] is None and len(e["top_tokens"]) == 2
    last = events[-1]
    assert last["generated_text"] == texts_of(events)
    assert last["details"] == {"finish_reason": "length", "generated_tokens": 8, "seed": None, "input_length": 2}


def test_post_root_is_tgi_compat(http: httpx.Client):
    out = http.post("/", json={"inputs": "Hello", "parameters": {"max_new_tokens": 4}}).json()
    assert isinstance(out, list) and len(out) == 1 and isinstance(out[0]["generated_text"], str)


def test_inference_client(server: Server):
    client = InferenceClient(base_url=server.url)
    text = client.text_generation("Hello there", max_new_tokens=6)
    assert isinstance(text, str)
    detailed = client.text_generation("Hello there", max_new_tokens=6, details=True, decoder_input_details=True,
                                      top_n_tokens=2)
    assert detailed.generated_text == text
    assert detailed.details.finish_reason in ("length", "eos_token")
    assert [t.text for t in detailed.details.prefill] == ["Hello", " there"]
    assert "".join(t.text for t in detailed.details.tokens) == text
    pieces = list(client.text_generation("Hello there", max_new_tokens=6, stream=True))
    assert "".join(pieces) == text
    events = list(client.text_generation("Hello there", max_new_tokens=6, stream=True, details=True))
    assert events[-1].generated_text == text and events[-1].details.generated_tokens == len(events)
    with pytest.raises(HFValidationError, match="max_new_tokens"):
        client.text_generation("Hello there", max_new_tokens=CONTEXT)


def test_curl_receives_one_event_per_token_as_generated(server: Server):
    n = 800
    body = json.dumps({"inputs": "Once", "parameters": {"max_new_tokens": n, "ignore_eos": True}})
    start = time.monotonic()
    proc = subprocess.Popen(["curl", "-sN", "-X", "POST", server.url + "/generate_stream", "-H",
                             "Content-Type: application/json", "-d", body], stdout=subprocess.PIPE, bufsize=0)
    arrivals, payloads = [], []
    assert proc.stdout is not None
    for line in iter(proc.stdout.readline, b""):
        if line.startswith(b"data:"):
            arrivals.append(time.monotonic() - start)
            payloads.append(json.loads(line[5:]))
    assert proc.wait(30) == 0
    assert len(payloads) == n and [p["index"] for p in payloads] == list(range(1, n + 1))
    span = arrivals[-1] - arrivals[0]
    # Tokens arrive as they are sampled: spread over the generation, not bunched at the end.
    assert span > 0.2, arrivals[:3] + arrivals[-3:]
    assert arrivals[-1] - arrivals[n // 2] > 0.25 * span
    assert len({round(t, 2) for t in arrivals}) > 20


# ---------------------------------------------------------------- OpenAI routes


def test_openai_completion(oai: openai.OpenAI, long_ckpt: Path):
    r = oai.completions.create(model="gpt2", prompt="Hello there", max_tokens=7, temperature=0)
    assert r.object == "text_completion" and r.model == str(long_ckpt)
    assert len(r.choices) == 1 and r.choices[0].finish_reason in ("length", "stop")
    assert r.usage.prompt_tokens == 2 and r.usage.completion_tokens <= 7
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    # default max_tokens is 16
    d = oai.completions.create(model="gpt2", prompt="Hello there", temperature=0, extra_body=None)
    assert d.usage.completion_tokens <= 16 and d.choices[0].text.startswith(r.choices[0].text)
    # a list of prompts, n choices each, seeded
    many = oai.completions.create(model="gpt2", prompt=["One", "Two"], n=2, max_tokens=5, seed=3)
    assert [c.index for c in many.choices] == [0, 1, 2, 3] and many.usage.prompt_tokens == 2
    again = oai.completions.create(model="gpt2", prompt=["One", "Two"], n=2, max_tokens=5, seed=3)
    assert [c.text for c in many.choices] == [c.text for c in again.choices]


def test_openai_stream_with_usage(oai: openai.OpenAI):
    full = oai.completions.create(model="m", prompt="Hello", max_tokens=10, temperature=0)
    chunks = list(oai.completions.create(model="m", prompt="Hello", max_tokens=10, temperature=0, stream=True,
                                         stream_options={"include_usage": True}))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == full.choices[0].text
    assert chunks[-2].choices[0].finish_reason == full.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == full.usage.completion_tokens
    assert chunks[-1].usage.prompt_tokens == 1


def test_openai_stream_n2_ends_with_done(server: Server):
    body = {"model": "m", "prompt": "Hi", "max_tokens": 5, "n": 2, "stream": True, "seed": 1}
    with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=30) as r:
        events = sse_events(r.read().decode())
    assert events[-1] == {"done": True}
    finishes = [e["choices"][0] for e in events[:-1] if e["choices"][0]["finish_reason"]]
    assert sorted(c["index"] for c in finishes) == [0, 1]


def test_openai_logprobs_echo_stop(oai: openai.OpenAI):
    r = oai.completions.create(model="m", prompt="To be, or", max_tokens=6, temperature=0, logprobs=3, echo=True)
    c = r.choices[0]
    assert c.text.startswith("To be, or")
    lp = c.logprobs
    assert lp.tokens[:4] == ["To", " be", ",", " or"] and lp.token_logprobs[0] is None
    assert "".join(lp.tokens) == c.text and len(lp.tokens) == len(lp.token_logprobs) == len(lp.text_offset)
    assert all(c.text[o:o + len(t)] == t for o, t in zip(lp.text_offset, lp.tokens))
    generated = lp.top_logprobs[4:]
    assert generated and all(1 <= len(top) <= 4 for top in generated)
    # greedy: each chosen token is the most likely one
    assert all(max(top.values()) == pytest.approx(v) for top, v in zip(generated, lp.token_logprobs[4:]))
    # max_tokens=0 with echo scores the prompt only
    score = oai.completions.create(model="m", prompt="To be, or", max_tokens=0, echo=True, logprobs=0)
    assert score.choices[0].text == "To be, or" and score.usage.completion_tokens == 0
    assert score.choices[0].logprobs.token_logprobs[1:] == pytest.approx(lp.token_logprobs[1:4])
    # stop as a string
    words = oai.completions.create(model="m", prompt="The", max_tokens=20, temperature=0).choices[0].text
    stop = words[3:6]
    if stop.strip():
        cut = oai.completions.create(model="m", prompt="The", max_tokens=20, temperature=0, stop=stop).choices[0]
        assert cut.text == words[:words.index(stop)] and cut.finish_reason == "stop"


# ---------------------------------------------------------------- bad requests

LONG_PROMPT = "hello " * 1100
BAD = [
    # route, body (bytes are sent raw), status, error_type, words the message must contain
    ("/generate", b"{not json", 400, "bad_request", ["JSON"]),
    ("/generate", b"", 400, "bad_request", ["empty"]),
    ("/generate", b"[1, 2]", 422, "validation", ["object"]),
    ("/generate", {"inputs": "x", "colour": "red"}, 422, "validation", ["colour"]),
    ("/generate", {"inputs": "x", "parameters": {"bogus": 1}}, 422, "validation", ["parameters.bogus"]),
    ("/generate", {"parameters": {}}, 422, "validation", ["inputs", "required"]),
    ("/generate", {"inputs": ""}, 422, "validation", ["inputs", "empty"]),
    ("/generate", {"inputs": 5}, 422, "validation", ["inputs"]),
    ("/generate", {"inputs": "x", "parameters": {"max_new_tokens": 0}}, 422, "validation", ["max_new_tokens", "1"]),
    ("/generate", {"inputs": "x", "parameters": {"temperature": 0}}, 422, "validation",
     ["temperature", "greater than 0"]),
    ("/generate", {"inputs": "x", "parameters": {"temperature": -1.5}}, 422, "validation", ["temperature"]),
    ("/generate", {"inputs": "x", "parameters": {"top_k": 0}}, 422, "validation", ["top_k", "0"]),
    ("/generate", {"inputs": "x", "parameters": {"top_p": 0}}, 422, "validation", ["top_p", "0"]),
    ("/generate", {"inputs": "x", "parameters": {"top_p": 1.01}}, 422, "validation",
     ["top_p", "less than or equal to 1"]),
    ("/generate", {"inputs": "x", "parameters": {"min_p": 1}}, 422, "validation", ["min_p", "less than 1"]),
    ("/generate", {"inputs": "x", "parameters": {"min_p": -0.1}}, 422, "validation",
     ["min_p", "greater than or equal to 0"]),
    ("/generate", {"inputs": "x", "parameters": {"typical_p": 1}}, 422, "validation", ["typical_p", "1"]),
    ("/generate", {"inputs": "x", "parameters": {"typical_p": 0}}, 422, "validation", ["typical_p", "0"]),
    ("/generate", {"inputs": "x", "parameters": {"repetition_penalty": 0}}, 422, "validation",
     ["repetition_penalty", "0"]),
    ("/generate", {"inputs": "x", "parameters": {"frequency_penalty": 2.5}}, 422, "validation",
     ["frequency_penalty", "2"]),
    ("/generate", {"inputs": "x", "parameters": {"presence_penalty": -3}}, 422, "validation",
     ["presence_penalty", "-2"]),
    ("/generate", {"inputs": "x", "parameters": {"seed": -1}}, 422, "validation", ["seed", "0"]),
    ("/generate", {"inputs": "x", "parameters": {"seed": 2**64}}, 422, "validation", ["seed", str(2**64)]),
    ("/generate", {"inputs": "x", "parameters": {"top_n_tokens": 6}}, 422, "validation", ["top_n_tokens", "5"]),
    ("/generate", {"inputs": "x", "parameters": {"truncate": 0}}, 422, "validation", ["truncate", "1"]),
    ("/generate", {"inputs": "x", "parameters": {"stop": [str(i) for i in range(9)]}}, 422, "validation",
     ["stop", "8"]),
    ("/generate", {"inputs": "x", "parameters": {"stop": ["ok", ""]}}, 422, "validation", ["stop", "empty"]),
    ("/generate", {"inputs": "x", "parameters": {"best_of": 2}}, 422, "validation", ["best_of", "not supported"]),
    ("/generate", {"inputs": "x", "parameters": {"watermark": True}}, 422, "validation",
     ["watermark", "not supported"]),
    ("/generate", {"inputs": "x", "parameters": {"grammar": {"type": "json", "value": {}}}}, 422, "validation",
     ["grammar", "not supported"]),
    ("/generate", {"inputs": "x", "parameters": {"adapter_id": "lora"}}, 422, "validation",
     ["adapter_id", "not supported"]),
    ("/generate", {"inputs": LONG_PROMPT}, 422, "validation", ["inputs", "tokens", str(CONTEXT)]),
    ("/generate", {"inputs": "hi", "parameters": {"max_new_tokens": CONTEXT}}, 422, "validation",
     ["max_new_tokens", str(CONTEXT)]),
    ("/generate_stream", {"inputs": "x", "parameters": {"temperature": 0}}, 422, "validation", ["temperature"]),
    ("/generate", {"inputs": "x", "stream": True, "parameters": {"top_k": -1}}, 422, "validation", ["top_k"]),
    ("/", {"inputs": "x", "parameters": {"best_of": 3}}, 422, "validation", ["best_of"]),
    ("/tokenize", {"inputs": ""}, 422, "validation", ["inputs"]),
    ("/generate", b"x" * ((1 << 20) + 1), 413, "payload_too_large", ["limit"]),
    ("/nowhere", {}, 404, "not_found", ["/nowhere"]),
]
BAD_OPENAI = [
    (b"{oops", 400, None, ["JSON"]),
    ({"model": "m", "prompt": ""}, 422, "prompt", ["empty"]),
    ({"model": "m", "prompt": []}, 422, "prompt", ["empty"]),
    ({"model": "m", "prompt": [1, 2, 3]}, 422, "prompt", ["string"]),
    ({"model": "m", "prompt": "x", "max_tokens": -1}, 422, "max_tokens", ["0"]),
    ({"model": "m", "prompt": "x", "max_tokens": CONTEXT}, 422, "max_tokens", [str(CONTEXT)]),
    ({"model": "m", "prompt": "x", "n": 0}, 422, "n", ["1"]),
    ({"model": "m", "prompt": "x", "logprobs": 6}, 422, "logprobs", ["5"]),
    ({"model": "m", "prompt": "x", "temperature": 2.5}, 422, "temperature", ["2"]),
    ({"model": "m", "prompt": "x", "top_p": 0}, 422, "top_p", ["0"]),
    ({"model": "m", "prompt": "x", "stop": [str(i) for i in range(9)]}, 422, "stop", ["8"]),
    ({"model": "m", "prompt": "x", "best_of": 2}, 422, "best_of", ["not supported"]),
    ({"model": "m", "prompt": "x", "stream": True, "presence_penalty": 9}, 422, "presence_penalty", ["2"]),
    ({"model": "m", "prompt": "x", "frobnicate": 1}, 422, "frobnicate", ["not a known field"]),
    ({"model": "m", "prompt": LONG_PROMPT}, 422, "prompt", [str(CONTEXT)]),
]


def post(http: httpx.Client, route: str, body: object, **kw) -> httpx.Response:
    if isinstance(body, bytes):
        return http.post(route, content=body, headers={"Content-Type": "application/json"}, **kw)
    return http.post(route, json=body, **kw)


def test_bad_requests_get_status_and_error_shape(http: httpx.Client, server: Server):
    for route, body, status, kind, words in BAD:
        r = post(http, route, body)
        assert r.status_code == status, (route, body if not isinstance(body, bytes) else body[:20], r.text)
        out = r.json()
        assert set(out) == {"error", "error_type"} and out["error_type"] == kind, out
        for word in words:
            assert word in out["error"], (word, out)
        assert "Traceback" not in r.text and "\n" not in out["error"]
    for body, status, param, words in BAD_OPENAI:
        r = post(http, "/v1/completions", body)
        assert r.status_code == status, (body, r.text)
        err = r.json()["error"]
        assert set(err) == {"message", "type", "param", "code"} and err["param"] == param, err
        for word in words:
            assert word in err["message"], (word, err)
    # a body without Content-Length (chunked) is counted as it arrives
    r = http.post("/generate", content=(b"x" * 65536 for _ in range(20)))
    assert r.status_code == 413 and r.json()["error_type"] == "payload_too_large"
    # curl's default form content type is still read as JSON
    r = http.post("/generate", content=b'{"inputs": "Hi", "parameters": {"max_new_tokens": 2}}',
                  headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 200
    # the SDKs raise their own typed errors
    with pytest.raises(openai.UnprocessableEntityError):
        openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0).completions.create(
            model="m", prompt="x", n=0)
    # ...and the server still serves normally, with nothing left in the KV cache
    assert http.get("/health").status_code == 200
    assert http.post("/generate", json={"inputs": "Still", "parameters": {"max_new_tokens": 3}}).status_code == 200
    m = metrics(server.url)
    assert m["gptserve_requests_running"] == 0 and m["gptserve_kv_cache_usage_ratio"] == 0
    assert m['gptserve_requests_total{route="/generate",status="422"}'] >= 20
    assert m['gptserve_requests_total{route="/generate",status="413"}'] == 2


# ---------------------------------------------------------------- cancellation and metrics


def test_disconnecting_clients_free_their_slots(server: Server):
    before = metrics(server.url)['gptserve_requests_finished_total{finish_reason="cancelled"}']
    errors: list[BaseException] = []

    def client(i: int) -> None:
        try:
            body = {"inputs": f"Client {i} says", "parameters": {"max_new_tokens": 1000, "ignore_eos": True}}
            with httpx.stream("POST", server.url + "/generate_stream", json=body, timeout=60) as r:
                seen = 0
                for line in r.iter_lines():
                    if line.startswith("data:"):
                        seen += 1
                        if seen == 3:
                            return  # leaving the block closes the connection mid-stream
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors

    def settled() -> bool:
        m = metrics(server.url)
        return (m["gptserve_requests_running"] == 0 and m["gptserve_requests_waiting"] == 0
                and m["gptserve_kv_cache_usage_ratio"] == 0
                and m['gptserve_requests_finished_total{finish_reason="cancelled"}'] - before == 24)

    assert wait_for(settled, 10), metrics(server.url)


def test_non_streaming_disconnect_cancels(server: Server):
    before = metrics(server.url)['gptserve_requests_finished_total{finish_reason="cancelled"}']
    body = {"inputs": "Patience", "parameters": {"max_new_tokens": 1000, "ignore_eos": True}}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.url + "/generate", json=body, timeout=httpx.Timeout(5, read=0.3))
    assert wait_for(lambda: metrics(server.url)['gptserve_requests_finished_total{finish_reason="cancelled"}']
                    - before == 1, 10)
    assert metrics(server.url)["gptserve_kv_cache_usage_ratio"] == 0


def test_metrics_exposition(http: httpx.Client, server: Server, long_ckpt: Path):
    http.post("/generate", json={"inputs": "Count me", "parameters": {"max_new_tokens": 4, "ignore_eos": True}})
    r = http.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    types = dict(line.split()[2:4] for line in r.text.splitlines() if line.startswith("# TYPE"))
    for name, kind in SPEC_METRICS.items():
        found = types.get(name) or types.get(name.removesuffix("_total"))  # older clients drop the suffix
        assert found == kind, (name, found)
    m = metrics(server.url)
    info = [(k, v) for k, v in m.items() if k.startswith("gptserve_model_info{")]
    assert len(info) == 1 and info[0][1] == 1
    for label in (f'model="{long_ckpt}"', 'dtype="float32"', 'device="cpu"'):
        assert label in info[0][0]
    assert m["gptserve_generated_tokens_total"] >= 4 and m["gptserve_prompt_tokens_total"] >= 2
    assert m['gptserve_time_to_first_token_seconds_bucket{le="0.001"}'] >= 0
    assert 'gptserve_inter_token_latency_seconds_bucket{le="0.01"}' in m
    assert m['gptserve_requests_finished_total{finish_reason="length"}'] >= 1
    assert m["gptserve_batch_size_count"] > 0 and m["gptserve_time_to_first_token_seconds_count"] > 0
    assert m['gptserve_request_duration_seconds_count{route="/generate"}'] > 0
    assert not any(k.endswith("_created") for k in m)
