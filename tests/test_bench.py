"""`gptserve bench`: briefly, against a real server with a tiny model, and the engine beside transformers."""

import json
from pathlib import Path

import pytest
import torch

from model.loader import GPT2_RANKS
from model.tokenizer import BPETokenizer
from server.bench_http import WORDS, make_prompt
from tests.conftest import TINY, random_gpt, save_nanogpt
from tests.server_util import Server, run_cli

EOS = 50256


def test_bench_url_prints_the_table_and_writes_json_and_plot(tiny_ckpt: Path, tmp_path: Path) -> None:
    with Server(tiny_ckpt, "--max-batch-size", "4") as server:
        result = run_cli("bench", "--url", server.url, "--concurrency", "1,4", "--requests", "8", "--prompt-len", "16",
                         "--new-tokens", "4,8", "--json", str(tmp_path / "b.json"), "--plot", str(tmp_path / "b.png"),
                         timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:3] == ["prompt", "new", "conc"])
    assert [line.split()[1:3] for line in lines[header + 1: header + 5]] == [["4", "1"], ["4", "4"], ["8", "1"], ["8", "4"]]
    levels = json.loads((tmp_path / "b.json").read_text())
    assert [(lv["new_tokens"], lv["concurrency"]) for lv in levels] == [(4, 1), (4, 4), (8, 1), (8, 4)]
    for level in levels:
        assert level["requests"] == 8 and level["errors"] == 0
        assert level["output_tokens_per_s"] > 0 and 0 < level["ttft_p50"] <= level["ttft_p99"]
        assert 0 < level["itl_p50"] <= level["itl_p99"] and level["e2e_p50"] >= level["ttft_p50"]
    assert (tmp_path / "b.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_prompts_have_the_length_asked_and_no_common_prefix() -> None:
    tokenizer = BPETokenizer.from_ranks_file(GPT2_RANKS)
    numbers = [*range(len(WORDS) + 1), len(WORDS) ** 4 - 1]
    prompts = [tokenizer.encode(make_prompt(128, i)) for i in numbers]
    assert all(len(p) == 128 for p in prompts) and len(tokenizer.encode(make_prompt(3, 12345))) == 3
    assert len({tuple(p[:4]) for p in prompts}) == len(numbers)  # every number its own prompt


@pytest.fixture(scope="module")
def eos_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model whose most likely next token is always <|endoftext|>."""
    model = random_gpt(TINY, seed=1)
    with torch.no_grad():
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.fill_(1.0)
        model.transformer.wte.weight[EOS] = 5.0
    return save_nanogpt(model, tmp_path_factory.mktemp("eos") / "ckpt.pt")


@pytest.mark.parametrize("api", ["tgi", "openai"])
def test_bench_url_gets_every_token_through_either_api(eos_ckpt: Path, tmp_path: Path, api: str) -> None:
    """Each request ignores EOS, so a model that always wants to stop still streams all of them, and the
    OpenAI route's own usage count agrees with the chunks counted."""
    with Server(eos_ckpt) as server:
        result = run_cli("bench", "--url", server.url, "--api", api, "--concurrency", "2", "--requests", "4",
                         "--prompt-len", "8", "--new-tokens", "6", "--json", str(tmp_path / "b.json"), timeout=120)
    assert result.returncode == 0, result.stderr
    [level] = json.loads((tmp_path / "b.json").read_text())
    assert level["errors"] == 0 and round(level["output_tokens_per_s"] * level["duration_s"]) == 4 * 6
    assert 0 < level["itl_p50"]


def test_bench_engine_compares_with_transformers(tmp_path: Path) -> None:
    result = run_cli("bench", "--engine", "--preset", "tiny", "--batches", "1,2", "--repeats", "1", "--new-tokens", "4",
                     "--prompt-len", "8", "--json", str(tmp_path / "e.json"), timeout=180)
    assert result.returncode == 0, result.stderr
    rows = json.loads((tmp_path / "e.json").read_text())
    assert {(r["system"], r["batch"]) for r in rows} == {(s, b) for s in ("gptserve", "transformers") for b in (1, 2)}
    assert all(r["tokens_per_s"] > 0 for r in rows)
    assert "x" in result.stdout.splitlines()[-1]  # a ratio column


def test_bench_needs_a_target() -> None:
    result = run_cli("bench")
    assert result.returncode == 2 and "exactly one of --url URL or --engine" in result.stderr
