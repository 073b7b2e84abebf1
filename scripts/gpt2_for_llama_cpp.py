"""Write the random-weight GPT-2 124M of the benchmarks as a Hugging Face folder that llama.cpp's
convert_hf_to_gguf.py takes: the same weights gptserve is benchmarked on (seed 0), plus the tokenizer files
(vocab.json, merges.txt) rebuilt from the ranks gptserve ships, since nothing may be downloaded here.
Used by scripts/bench_llama_cpp.sh.  Usage: python scripts/gpt2_for_llama_cpp.py OUT_DIR
"""

import json
import sys
from pathlib import Path

import torch
from tiktoken.load import load_tiktoken_bpe
from transformers import GPT2Config, GPT2LMHeadModel

from model.loader import GPT2_RANKS
from model.tokenizer import unicode_to_byte


def merge_of(token: bytes, rank: int, ranks: dict[bytes, int]) -> tuple[bytes, bytes]:
    """The two parts whose merge made `token`: byte-pair encode it with the merges ranked before it."""
    parts = [bytes([b]) for b in token]
    while len(parts) > 2:
        candidates = [(ranks.get(a + b, rank), i) for i, (a, b) in enumerate(zip(parts, parts[1:]))]
        best, i = min(candidates)
        if best >= rank:
            break
        parts[i:i + 2] = [parts[i] + parts[i + 1]]
    assert len(parts) == 2, f"{token!r} is not one merge of earlier tokens"
    return parts[0], parts[1]


def main() -> None:
    out = Path(sys.argv[1])
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config()).save_pretrained(out)
    config = json.loads((out / "config.json").read_text())
    config["n_ctx"] = config["n_positions"]  # the converter reads GPT-2's older name for the context length
    (out / "config.json").write_text(json.dumps(config))

    ranks = load_tiktoken_bpe(str(GPT2_RANKS))
    spell = {b: ch for ch, b in unicode_to_byte().items()}  # GPT-2's printable stand-in for each byte
    text = lambda token: "".join(spell[b] for b in token)  # noqa: E731
    vocab = {text(token): rank for token, rank in ranks.items()} | {"<|endoftext|>": len(ranks)}
    merges = [" ".join(map(text, merge_of(token, rank, ranks)))
              for token, rank in sorted(ranks.items(), key=lambda item: item[1]) if len(token) > 1]
    (out / "vocab.json").write_text(json.dumps(vocab))
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    print(f"{out}: GPT-2 124M (random, seed 0), {len(vocab)} tokens, {len(merges)} merges")


if __name__ == "__main__":
    main()
