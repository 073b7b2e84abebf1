"""Every checkpoint form of SPEC §3, and every way a checkpoint can be bad."""

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from model.config import GPTConfig
from model.loader import ModelLoadError, load_model, resolve_device, resolve_dtype
from tests.conftest import TINY, random_gpt, save_nanogpt

GPTSERVE = [sys.executable, "-m", "server.cli"]


class WritesAFile:
    """An object whose unpickling would create `path`: the payload a malicious checkpoint carries."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self) -> tuple:
        return (open, (str(self.path), "w"))


def test_padded_vocab_is_cut_to_the_tokenizer(tiny_ckpt: Path) -> None:
    loaded = load_model(str(tiny_ckpt), device="cpu", dtype="float32")
    assert loaded.info.vocab_size == 50304 and loaded.model.n_logits == 50257 == loaded.tokenizer.n_vocab
    assert loaded.info.format == "nanogpt" and loaded.info.context_length == TINY.block_size
    logits = loaded.model.forward_full(torch.tensor([[1, 2, 3]]))
    assert logits.shape[-1] == 50257


def test_nanogpt_folder_and_char_vocabulary(tmp_path: Path) -> None:
    chars = sorted(set("First Citizen:\nBefore we proceed any further, hear me speak."))
    meta = {"vocab_size": len(chars), "stoi": {c: i for i, c in enumerate(chars)}, "itos": dict(enumerate(chars))}
    config = GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=32, vocab_size=len(chars), bias=False)
    # nanoGPT's layout: out/ckpt.pt, with the vocabulary in data/<dataset>/meta.pkl
    ckpt = save_nanogpt(random_gpt(config), tmp_path / "out" / "ckpt.pt", dataset="shakespeare_char")
    (tmp_path / "data" / "shakespeare_char").mkdir(parents=True)
    (tmp_path / "data" / "shakespeare_char" / "meta.pkl").write_bytes(pickle.dumps(meta))
    loaded = load_model(str(ckpt.parent), device="cpu", dtype="float32")
    assert loaded.info.tokenizer == "char" and loaded.tokenizer.eos_id is None
    ids = loaded.tokenizer.encode("hear me")
    assert loaded.tokenizer.decode(ids) == "hear me"


def test_dtype_and_device_flags(tiny_ckpt: Path) -> None:
    loaded = load_model(str(tiny_ckpt), device="cpu", dtype="bfloat16")
    assert next(loaded.model.parameters()).dtype == torch.bfloat16 and loaded.info.dtype == "bfloat16"
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_device("cpu") == torch.device("cpu")
    for bad in [lambda: resolve_device("tpu"), lambda: resolve_dtype("int8", torch.device("cpu"))]:
        with pytest.raises(ModelLoadError):
            bad()
    if not torch.cuda.is_available():
        with pytest.raises(ModelLoadError, match="CUDA is not available"):
            resolve_device("cuda:0")


def test_checkpoint_carrying_code_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    ckpt = {"model_args": dict(n_layer=1, n_head=1, n_embd=8, block_size=8, vocab_size=10, bias=True),
            "model": {}, "payload": WritesAFile(marker)}
    torch.save(ckpt, tmp_path / "ckpt.pt")
    with pytest.raises(ModelLoadError, match="refused"):
        load_model(str(tmp_path / "ckpt.pt"), device="cpu")
    assert not marker.exists()


def test_meta_pkl_carrying_code_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    config = GPTConfig(n_layer=1, n_head=1, n_embd=8, block_size=8, vocab_size=10)
    save_nanogpt(random_gpt(config), tmp_path / "ckpt.pt")
    (tmp_path / "meta.pkl").write_bytes(pickle.dumps({"stoi": {}, "itos": WritesAFile(marker)}))
    with pytest.raises(ModelLoadError, match="refused"):
        load_model(str(tmp_path / "ckpt.pt"), device="cpu")
    assert not marker.exists()


def test_pytorch_model_bin_carrying_code_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    (tmp_path / "config.json").write_text(json.dumps(dict(model_type="gpt2", n_layer=1, n_head=1, n_embd=8,
                                                          n_positions=8, vocab_size=50257)))
    torch.save({"transformer.wte.weight": torch.zeros(2), "x": WritesAFile(marker)}, tmp_path / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match="refused"):
        load_model(str(tmp_path), device="cpu")
    assert not marker.exists()


def _truncated(tmp_path: Path, tiny_ckpt: Path) -> str:
    data = tiny_ckpt.read_bytes()
    (tmp_path / "half.pt").write_bytes(data[: len(data) // 2])
    return str(tmp_path / "half.pt")


def _wrong_shapes(tmp_path: Path, tiny_ckpt: Path) -> str:
    ckpt = torch.load(tiny_ckpt, weights_only=True)
    ckpt["model_args"]["n_embd"] = 48
    ckpt["model_args"]["n_head"] = 3
    torch.save(ckpt, tmp_path / "wrong.pt")
    return str(tmp_path / "wrong.pt")


def _unknown_format(tmp_path: Path, tiny_ckpt: Path) -> str:
    (tmp_path / "notes.txt").write_text("these are not weights")
    return str(tmp_path / "notes.txt")


def _not_gpt2(tmp_path: Path, tiny_ckpt: Path) -> str:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    return str(tmp_path)


def _empty_folder(tmp_path: Path, tiny_ckpt: Path) -> str:
    return str(tmp_path)


def _missing(tmp_path: Path, tiny_ckpt: Path) -> str:
    return str(tmp_path / "nope" / "ckpt.pt")


def _corrupt_safetensors(tmp_path: Path, tiny_ckpt: Path) -> str:
    (tmp_path / "config.json").write_text(json.dumps(dict(model_type="gpt2", n_layer=1, n_head=1, n_embd=8,
                                                          n_positions=8, vocab_size=50257)))
    (tmp_path / "model.safetensors").write_bytes(b"\x10\x00\x00\x00garbage")
    return str(tmp_path)


BAD = {
    "truncated": (_truncated, "truncated or corrupt"),
    "wrong shapes": (_wrong_shapes, "has shape"),
    "unknown format": (_unknown_format, "not a readable PyTorch checkpoint"),
    "not gpt2": (_not_gpt2, "model_type 'llama' is not supported"),
    "empty folder": (_empty_folder, "neither a Hugging Face folder"),
    "missing": (_missing, "no such file or directory"),
    "corrupt safetensors": (_corrupt_safetensors, "not a readable safetensors file"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_checkpoints_give_one_clear_error(tmp_path: Path, tiny_ckpt: Path, case: str) -> None:
    make, message = BAD[case]
    spec = make(tmp_path, tiny_ckpt)
    with pytest.raises(ModelLoadError, match=message) as info:
        load_model(spec, device="cpu")
    assert "\n" not in str(info.value)


def test_hub_id_offline_names_the_id(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="some-org/no-such-model: could not download"):
        load_model("some-org/no-such-model", device="cpu")


@pytest.mark.parametrize("argv", [
    ["generate", "--model", "/no/such/ckpt.pt", "hi"],
    ["generate", "--device", "tpu", "hi"],
    ["generate", "--max-new-tokens", "many", "hi"],
    ["frobnicate"],
])
def test_cli_start_up_errors_are_one_line_and_exit_2(tmp_path: Path, argv: list[str]) -> None:
    result = subprocess.run(GPTSERVE + argv, capture_output=True, text=True, timeout=120, cwd=Path(__file__).parent.parent)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "error" in lines[0] and "Traceback" not in result.stderr


def test_cli_generate_streams_a_completion(tiny_ckpt: Path) -> None:
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    result = subprocess.run(GPTSERVE + ["generate", "--model", str(tiny_ckpt), "--max-new-tokens", "12", "--seed", "1",
                                        "To be"], capture_output=True, text=True, timeout=120, env=env,
                            cwd=Path(__file__).parent.parent)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("To be") and len(result.stdout) > len("To be\n")
