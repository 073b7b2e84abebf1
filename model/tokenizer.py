"""Tokenizers: GPT-2 byte-level BPE through tiktoken, or a nanoGPT character vocabulary.

Both expose token ids as raw bytes so that streaming can hold back a character split across tokens.
"""

import codecs
import json
from pathlib import Path

import tiktoken
from tiktoken.load import load_tiktoken_bpe

GPT2_RANKS_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
ENDOFTEXT = "<|endoftext|>"
# tiktoken's r50k_base pattern (GPT-2's original split, written to run faster).
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""


class TokenizerError(ValueError):
    """Text the tokenizer cannot encode (a character outside a char vocabulary)."""


class Tokenizer:
    """The interface every tokenizer provides."""

    name: str
    n_vocab: int  # ids 0 .. n_vocab-1 decode; a model may have more rows, which are never sampled
    eos_id: int | None

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def token_bytes(self, token_id: int) -> bytes:
        raise NotImplementedError

    def is_special(self, token_id: int) -> bool:
        return token_id == self.eos_id

    def decode(self, ids: list[int]) -> str:
        return b"".join(self.token_bytes(i) for i in ids).decode("utf-8", errors="replace")


class BPETokenizer(Tokenizer):
    """GPT-2 BPE; `<|endoftext|>` in text is read as the special token, as Hugging Face's tokenizer does."""

    def __init__(self, ranks: dict[bytes, int], special: dict[str, int], name: str = "gpt2"):
        self.name = name
        self._enc = tiktoken.Encoding(name=name, pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens=special)
        self.n_vocab = self._enc.n_vocab
        self.eos_id = special.get(ENDOFTEXT)
        self._special_ids = set(special.values())

    @classmethod
    def from_ranks_file(cls, path: Path) -> "BPETokenizer":
        """GPT-2's ranks file as tiktoken ships it, checked against its known sha256."""
        ranks = load_tiktoken_bpe(str(path), expected_hash=GPT2_RANKS_SHA256)
        return cls(ranks, {ENDOFTEXT: len(ranks)})

    @classmethod
    def from_vocab_json(cls, path: Path) -> "BPETokenizer":
        """A Hugging Face `vocab.json` (byte-level BPE). Ids are merge ranks, as GPT-2's trainer assigns them."""
        vocab: dict[str, int] = json.loads(path.read_text(encoding="utf-8"))
        decoder = unicode_to_byte()
        ranks, special = {}, {}
        for token, idx in vocab.items():
            if token.startswith("<|") and token.endswith("|>"):
                special[token] = idx
            else:
                ranks[bytes(decoder[ch] for ch in token)] = idx
        return cls(ranks, special, name=path.parent.name or "vocab")

    def encode(self, text: str) -> list[int]:
        return self._enc.encode(text, allowed_special="all")

    def token_bytes(self, token_id: int) -> bytes:
        return self._enc.decode_single_token_bytes(token_id)

    def is_special(self, token_id: int) -> bool:
        return token_id in self._special_ids


class CharTokenizer(Tokenizer):
    """nanoGPT's character vocabulary from `meta.pkl` (`stoi`, `itos`); it has no end-of-sequence token."""

    def __init__(self, stoi: dict[str, int], itos: dict[int, str]):
        self.name = "char"
        self._stoi = stoi
        self._itos = itos
        self.n_vocab = max(itos) + 1
        self.eos_id = None

    def encode(self, text: str) -> list[int]:
        try:
            return [self._stoi[ch] for ch in text]
        except KeyError as e:
            raise TokenizerError(f"the character {e.args[0]!r} is not in the model's vocabulary") from None

    def token_bytes(self, token_id: int) -> bytes:
        return self._itos.get(token_id, "").encode("utf-8")


class StreamDecoder:
    """Turns a stream of token ids into text that never ends inside a UTF-8 character.

    Bytes of a character split across tokens are held back until it is complete; `flush` releases
    whatever is left, with U+FFFD for an incomplete tail.
    """

    def __init__(self, tokenizer: Tokenizer):
        self._tokenizer = tokenizer
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        return self._utf8.decode(self._tokenizer.token_bytes(token_id))

    def flush(self) -> str:
        return self._utf8.decode(b"", final=True)


def unicode_to_byte() -> dict[str, int]:
    """Inverse of GPT-2's byte-to-printable-character table used in `vocab.json`."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return {ch: b for b, ch in mapping.items()}
