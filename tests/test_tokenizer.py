"""GPT-2 BPE from the shipped ranks, and the streaming detokenizer's UTF-8 handling."""

import hashlib
from pathlib import Path

import pytest

from model.loader import GPT2_RANKS
from model.tokenizer import GPT2_RANKS_SHA256, BPETokenizer, CharTokenizer, StreamDecoder, TokenizerError


@pytest.fixture(scope="module")
def gpt2() -> BPETokenizer:
    return BPETokenizer.from_ranks_file(GPT2_RANKS)


def test_shipped_ranks_are_r50k_base() -> None:
    assert hashlib.sha256(GPT2_RANKS.read_bytes()).hexdigest() == GPT2_RANKS_SHA256


def test_a_tampered_ranks_file_is_refused(tmp_path: Path) -> None:
    tampered = tmp_path / "gpt2.tiktoken"
    tampered.write_bytes(GPT2_RANKS.read_bytes().replace(b" 0\n", b" 1\n", 1))
    with pytest.raises(ValueError, match="[Hh]ash"):
        BPETokenizer.from_ranks_file(tampered)


def test_known_gpt2_ids(gpt2: BPETokenizer) -> None:
    assert gpt2.encode("To be, or not to be") == [2514, 307, 11, 393, 407, 284, 307]
    assert gpt2.encode("Hello world<|endoftext|>") == [15496, 995, 50256]
    assert gpt2.n_vocab == 50257 and gpt2.eos_id == 50256 and gpt2.is_special(50256)


def test_vocab_json_gives_the_same_tokenizer(gpt2: BPETokenizer, tmp_path: Path) -> None:
    import json

    from model.tokenizer import unicode_to_byte

    to_char = {b: ch for ch, b in unicode_to_byte().items()}
    vocab = {"".join(to_char[b] for b in gpt2.token_bytes(i)): i for i in range(50256)}
    vocab["<|endoftext|>"] = 50256
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    other = BPETokenizer.from_vocab_json(tmp_path / "vocab.json")
    text = "Ünïcödé, emoji 🎉 and <|endoftext|> with 1234 numbers"
    assert other.encode(text) == gpt2.encode(text)


@pytest.mark.parametrize("text", ["héllo wörld", "日本語のテキスト", "emoji 🎉🧪 mix", "plain ascii"])
def test_stream_decoder_never_yields_half_a_character(gpt2: BPETokenizer, text: str) -> None:
    decoder = StreamDecoder(gpt2)
    pieces = [decoder.push(i) for i in gpt2.encode(text)] + [decoder.flush()]
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)


def test_stream_decoder_flushes_a_broken_tail_with_replacement(gpt2: BPETokenizer) -> None:
    emoji = gpt2.encode("🎉")
    assert len(emoji) > 1
    decoder = StreamDecoder(gpt2)
    assert decoder.push(emoji[0]) == ""
    assert decoder.flush() == "\ufffd"


def test_char_tokenizer_rejects_unknown_characters() -> None:
    tok = CharTokenizer({"a": 0, "b": 1}, {0: "a", 1: "b"})
    assert tok.encode("abba") == [0, 1, 1, 0] and tok.decode([1, 0]) == "ba"
    with pytest.raises(TokenizerError, match="'z'"):
        tok.encode("abz")
