"""Restore a GPT from any checkpoint form users have (SPEC §3), safely.

Nothing here unpickles arbitrary objects: torch files load with `weights_only=True`, Hugging Face
weights through safetensors when present, and nanoGPT's `meta.pkl` through an unpickler that refuses
every class. Every failure becomes a `ModelLoadError` whose message is one line naming the file.
"""

import json
import pickle
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file as load_safetensors
from tqdm import tqdm

from model.config import GPTConfig
from model.gpt import GPT
from model.tokenizer import BPETokenizer, CharTokenizer, Tokenizer

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
GPT2_RANKS = WEIGHTS_DIR / "gpt2.tiktoken"
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# gptserve and Hugging Face's Conv1D store these [in, out]; nanoGPT's nn.Linear stores them [out, in].
CONV1D_SUFFIXES = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
HF_ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu_fast": "gelu_tanh", "gelu": "gelu"}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ModelLoadError(Exception):
    """A checkpoint, device or dtype that cannot be used; the message is one readable line."""


@dataclass(frozen=True)
class ModelInfo:
    model_id: str
    format: str  # "nanogpt", "huggingface" or "hub"
    n_layer: int
    n_head: int
    n_embd: int
    vocab_size: int
    context_length: int
    n_params: int
    dtype: str
    device: str
    tokenizer: str


@dataclass
class LoadedModel:
    model: GPT
    tokenizer: Tokenizer
    info: ModelInfo


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if re.fullmatch(r"cuda(:\d+)?", name):
        if not torch.cuda.is_available():
            raise ModelLoadError(f"--device {name}: CUDA is not available on this machine")
        device = torch.device(name)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ModelLoadError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) present")
        return device
    raise ModelLoadError(f"--device {name!r} is not one of auto, cpu, cuda, cuda:N")


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if name not in DTYPES:
        raise ModelLoadError(f"--dtype {name!r} is not one of auto, float32, bfloat16, float16")
    return DTYPES[name]


def load_model(spec: str | None = None, device: str = "auto", dtype: str = "auto",
               progress: bool | None = None) -> LoadedModel:
    """Load `spec` (a nanoGPT ckpt.pt, a Hugging Face GPT-2 folder, a hub id, or None for the bundled model)."""
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    show = sys.stderr.isatty() if progress is None else progress
    if spec is None:
        path, fmt, model_id = WEIGHTS_DIR, "huggingface", "gptserve-shakespeare"
        if not (path / "config.json").exists():
            raise ModelLoadError(f"{path}: the bundled default model is missing (train it with weights/train.py)")
    else:
        path, fmt, model_id = Path(spec).expanduser(), None, spec
        if not path.exists():
            if not HUB_ID.match(spec):
                raise ModelLoadError(f"{spec}: no such file or directory")
            path, fmt = _download(spec), "hub"
    if path.is_dir():
        if (path / "config.json").exists():
            config, state, tokenizer = _read_hf_folder(path)
            fmt = fmt or "huggingface"
        elif (path / "ckpt.pt").exists():
            config, state, tokenizer = _read_nanogpt(path / "ckpt.pt")
            fmt = "nanogpt"
        else:
            raise ModelLoadError(f"{path}: neither a Hugging Face folder (config.json) nor a nanoGPT folder (ckpt.pt)")
    else:
        config, state, tokenizer = _read_nanogpt(path)
        fmt = "nanogpt"
    model = _build(config, state, tokenizer, path, dev, dt, show)
    info = ModelInfo(model_id=model_id, format=fmt, n_layer=config.n_layer, n_head=config.n_head,
                     n_embd=config.n_embd, vocab_size=config.vocab_size, context_length=config.block_size,
                     n_params=model.num_params(), dtype=str(dt).removeprefix("torch."), device=str(dev),
                     tokenizer=tokenizer.name)
    return LoadedModel(model=model, tokenizer=tokenizer, info=info)


def _download(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, allow_patterns=["config.json", "*.safetensors", "*.safetensors.index.json",
                                                               "vocab.json", "merges.txt"]))
    except Exception as e:  # noqa: BLE001 - any hub failure becomes one clear line
        raise ModelLoadError(f"{repo_id}: could not download it from the Hugging Face Hub (offline, or no such "
                             f"model?): {_first_line(e)}") from None


def _torch_load(path: Path) -> object:
    """torch.load that never runs code from the file, memory-mapped when the file allows it."""
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ModelLoadError(f"{path}: refused: the file holds Python objects other than tensors and plain data, "
                             f"and gptserve never unpickles code ({_first_line(e)})") from None
    except Exception as e:  # noqa: BLE001
        raise ModelLoadError(f"{path}: not a readable PyTorch checkpoint (truncated or corrupt?): {_first_line(e)}") from None


def _read_nanogpt(path: Path) -> tuple[GPTConfig, dict[str, torch.Tensor], Tokenizer]:
    ckpt = _torch_load(path)
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model_args"), dict) or not isinstance(ckpt.get("model"), dict):
        raise ModelLoadError(f"{path}: not a nanoGPT checkpoint (expected a dict with 'model_args' and 'model')")
    args = ckpt["model_args"]
    try:
        config = GPTConfig(n_layer=int(args["n_layer"]), n_head=int(args["n_head"]), n_embd=int(args["n_embd"]),
                           block_size=int(args["block_size"]), vocab_size=int(args["vocab_size"]),
                           bias=bool(args.get("bias", True)), activation="gelu")
    except (KeyError, TypeError, ValueError) as e:
        raise ModelLoadError(f"{path}: bad model_args in the checkpoint: {_first_line(e)}") from None
    state = {}
    for key, tensor in ckpt["model"].items():
        key = key.removeprefix("_orig_mod.")
        if key.endswith(".attn.bias"):  # nanoGPT's causal-mask buffer (only without flash attention)
            continue
        state[key] = tensor.t() if key.endswith(CONV1D_SUFFIXES) and tensor.dim() == 2 else tensor
    dataset = ckpt.get("config", {}).get("dataset") if isinstance(ckpt.get("config"), dict) else None
    meta = _find_meta(path, dataset)
    return config, state, _read_meta(meta) if meta else _gpt2_tokenizer()


def _find_meta(ckpt_path: Path, dataset: object) -> Path | None:
    """nanoGPT's char vocabulary: beside the checkpoint, or in `data/<dataset>/` as its sample.py expects."""
    candidates = [ckpt_path.parent / "meta.pkl"]
    if isinstance(dataset, str) and re.fullmatch(r"[\w.-]+", dataset) and dataset not in (".", ".."):
        for root in (ckpt_path.parent.parent, Path.cwd()):
            candidates.append(root / "data" / dataset / "meta.pkl")
    return next((c for c in candidates if c.is_file()), None)


class _PlainDataUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, strings and numbers only; any class or function reference is refused."""

    def find_class(self, module: str, name: str) -> object:
        raise pickle.UnpicklingError(f"it references {module}.{name}")


def _read_meta(path: Path) -> CharTokenizer:
    try:
        with open(path, "rb") as f:
            meta = _PlainDataUnpickler(f).load()
    except pickle.UnpicklingError as e:
        raise ModelLoadError(f"{path}: refused: meta.pkl must hold plain data only ({_first_line(e)})") from None
    except Exception as e:  # noqa: BLE001
        raise ModelLoadError(f"{path}: unreadable meta.pkl: {_first_line(e)}") from None
    stoi, itos = (meta.get("stoi"), meta.get("itos")) if isinstance(meta, dict) else (None, None)
    if not (isinstance(stoi, dict) and isinstance(itos, dict) and itos
            and all(isinstance(k, int) and isinstance(v, str) for k, v in itos.items())
            and all(isinstance(k, str) and isinstance(v, int) for k, v in stoi.items())):
        raise ModelLoadError(f"{path}: meta.pkl needs 'stoi' (str -> int) and 'itos' (int -> str) dicts")
    return CharTokenizer(stoi, itos)


def _gpt2_tokenizer() -> BPETokenizer:
    try:
        return BPETokenizer.from_ranks_file(GPT2_RANKS)
    except Exception as e:  # noqa: BLE001
        raise ModelLoadError(f"{GPT2_RANKS}: the GPT-2 tokenizer ranks are missing or corrupt: {_first_line(e)}") from None


def _read_hf_folder(path: Path) -> tuple[GPTConfig, dict[str, torch.Tensor], Tokenizer]:
    config_path = path / "config.json"
    try:
        raw = json.loads(config_path.read_text(encoding="utf-8"))
    except Exception as e:  # noqa: BLE001
        raise ModelLoadError(f"{config_path}: not valid JSON: {_first_line(e)}") from None
    if not isinstance(raw, dict) or raw.get("model_type") != "gpt2":
        kind = raw.get("model_type") if isinstance(raw, dict) else None
        raise ModelLoadError(f"{config_path}: model_type {kind!r} is not supported (only 'gpt2')")
    if raw.get("scale_attn_by_inverse_layer_idx"):
        raise ModelLoadError(f"{config_path}: scale_attn_by_inverse_layer_idx is not supported")
    activation = raw.get("activation_function", "gelu_new")
    if activation not in HF_ACTIVATIONS:
        raise ModelLoadError(f"{config_path}: activation_function {activation!r} is not supported")
    try:
        config = GPTConfig(n_layer=int(raw["n_layer"]), n_head=int(raw["n_head"]), n_embd=int(raw["n_embd"]),
                           block_size=int(raw["n_positions"]), vocab_size=int(raw["vocab_size"]), bias=True,
                           activation=HF_ACTIVATIONS[activation],
                           layer_norm_eps=float(raw.get("layer_norm_epsilon", 1e-5)),
                           n_inner=int(raw["n_inner"]) if raw.get("n_inner") else None)
    except (KeyError, TypeError, ValueError) as e:
        raise ModelLoadError(f"{config_path}: incomplete GPT-2 config: {_first_line(e)}") from None
    state = {}
    for key, tensor in _read_hf_weights(path).items():
        if key.endswith((".attn.bias", ".attn.masked_bias")):
            continue
        if not key.startswith(("transformer.", "lm_head.")):
            key = "transformer." + key  # GPT2Model (no LM head) saves keys without the prefix
        state[key] = tensor
    vocab = path / "vocab.json"
    try:
        tokenizer = BPETokenizer.from_vocab_json(vocab) if vocab.is_file() else _gpt2_tokenizer()
    except ModelLoadError:
        raise
    except Exception as e:  # noqa: BLE001
        raise ModelLoadError(f"{vocab}: unreadable tokenizer vocabulary: {_first_line(e)}") from None
    return config, state, tokenizer


def _read_hf_weights(path: Path) -> dict[str, torch.Tensor]:
    index = path / "model.safetensors.index.json"
    if (path / "model.safetensors").is_file():
        files = [path / "model.safetensors"]
    elif index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except Exception as e:  # noqa: BLE001
            raise ModelLoadError(f"{index}: unreadable shard index: {_first_line(e)}") from None
        files = [path / Path(s).name for s in shards]
    elif (path / "pytorch_model.bin").is_file():
        state = _torch_load(path / "pytorch_model.bin")
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise ModelLoadError(f"{path / 'pytorch_model.bin'}: not a state dict of tensors")
        return state
    else:
        raise ModelLoadError(f"{path}: no model.safetensors or pytorch_model.bin")
    state = {}
    for file in files:
        try:
            state.update(load_safetensors(str(file)))
        except Exception as e:  # noqa: BLE001
            raise ModelLoadError(f"{file}: not a readable safetensors file (truncated or corrupt?): {_first_line(e)}") from None
    return state


def _build(config: GPTConfig, state: dict[str, torch.Tensor], tokenizer: Tokenizer, source: Path,
           device: torch.device, dtype: torch.dtype, progress: bool) -> GPT:
    """Check the weights against the config, then place them into a model built on the meta device."""
    with torch.device("meta"):
        model = GPT(config)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state and k != "lm_head.weight"]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        what = f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}"
        raise ModelLoadError(f"{source}: the weights do not match a GPT of this config ({what}, "
                             f"{len(missing)} missing, {len(unexpected)} unexpected)")
    for key, tensor in state.items():
        if tuple(tensor.shape) != tuple(expected[key].shape):
            raise ModelLoadError(f"{source}: {key} has shape {tuple(tensor.shape)} but the config implies "
                                 f"{tuple(expected[key].shape)}")
    if tokenizer.n_vocab > config.vocab_size:
        raise ModelLoadError(f"{source}: the tokenizer has {tokenizer.n_vocab} tokens but the model only {config.vocab_size}")
    untied = "lm_head.weight" in state and not torch.equal(state["lm_head.weight"], state["transformer.wte.weight"])
    placed = {}
    for key, tensor in tqdm(state.items(), desc="loading weights", unit="tensor", disable=not progress, leave=False):
        if key == "lm_head.weight" and not untied:
            continue
        placed[key] = tensor.to(device=device, dtype=dtype if tensor.is_floating_point() else tensor.dtype).contiguous()
    model.load_state_dict(placed, strict=False, assign=True)
    if not untied:
        model.lm_head.weight = model.transformer.wte.weight
    return model.freeze(tokenizer.n_vocab)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__
