"""`gptserve bench`: briefly, against a real server with a tiny model, and the engine beside transformers."""

import json
from pathlib import Path

from tests.server_util import Server, run_cli


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
