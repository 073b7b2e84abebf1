"""Train gptserve's bundled default model: a small GPT-2 on Shakespeare, exported as a Hugging Face folder.

The model is gptserve's own `model.gpt.GPT` (GPT-2 architecture, tanh GELU, tied embeddings), trained
from scratch on the Shakespeare corpus with GPT-2's BPE so that it works with the server's tokenizer.
Whole plays are held out for validation, so the reported loss measures text the model never saw.
At the end the weights are written in float16 as `config.json` + `model.safetensors` in the layout of
Hugging Face's `GPT2LMHeadModel`, which both `transformers` and `model.loader.load_model(None)` read.

Reproduce the bundled weights (CPU, about 50 minutes on 2 cores):

    .venv/bin/python weights/train.py
"""

import argparse
import contextlib
import ctypes
import json
import math
import sys
import time
from dataclasses import asdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a script from anywhere: `model` is a top-level package of the repo

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from tqdm import tqdm  # noqa: E402

from model.config import GPTConfig  # noqa: E402
from model.gpt import GPT  # noqa: E402
from model.loader import load_model  # noqa: E402
from model.tokenizer import BPETokenizer  # noqa: E402

WEIGHTS_DIR = REPO / "weights"
# Held out for validation, chosen by name (a tragedy, a comedy and a Roman play, none of them tiny).
HELDOUT_PLAYS = ("julius_caesar_gut", "macbeth_gut", "twelfth_night_gut")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data" / "shakespeare")
    p.add_argument("--out-dir", type=Path, default=WEIGHTS_DIR, help="where config.json and model.safetensors go")
    p.add_argument("--ckpt-dir", type=Path, default=WEIGHTS_DIR / "ckpt", help="resumable checkpoints (git-ignored)")
    p.add_argument("--n-layer", type=int, default=6)
    p.add_argument("--n-head", type=int, default=8)
    p.add_argument("--n-embd", type=int, default=256)
    p.add_argument("--block-size", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=2500)
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate")
    p.add_argument("--min-lr", type=float, default=1e-4, help="learning rate at the end of the cosine decay")
    p.add_argument("--warmup", type=int, default=100, help="linear warm-up steps")
    p.add_argument("--weight-decay", type=float, default=0.1, help="applied to 2-D weights only")
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--eval-windows", type=int, default=64, help="validation windows for periodic evals (0 = all)")
    p.add_argument("--save-every", type=int, default=250)
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda, cuda:N")
    p.add_argument("--resume", action="store_true", help="continue from <ckpt-dir>/ckpt.pt")
    return p.parse_args()


def keep_freed_memory() -> None:
    """Stop glibc from handing large freed blocks back to the OS.

    Each step allocates and frees about a gigabyte of logits and their gradients; by default glibc
    unmaps those blocks, so the next step page-faults all of it in again, which doubles a CPU step.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: nothing to tune
        return
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3
    libc.mallopt(m_mmap_threshold, 1 << 30)
    libc.mallopt(m_trim_threshold, (1 << 31) - 1)
    libc.mallopt(m_top_pad, 1 << 30)


def load_corpus(data_dir: Path, tokenizer: BPETokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    """Train and validation token streams: plays in name order, `<|endoftext|>` between plays."""
    files = sorted(data_dir.glob("*.txt"))
    if not files:
        raise SystemExit(f"{data_dir}: no .txt files (pass --data-dir)")
    missing = set(HELDOUT_PLAYS) - {f.stem for f in files}
    if missing:
        raise SystemExit(f"{data_dir}: held-out plays not found: {sorted(missing)}")
    train: list[int] = []
    val: list[int] = []
    for f in files:
        split = val if f.stem in HELDOUT_PLAYS else train
        if split:
            split.append(tokenizer.eos_id)
        split.extend(tokenizer.encode(f.read_text(encoding="utf-8")))
    return torch.tensor(train, dtype=torch.long), torch.tensor(val, dtype=torch.long)


def lr_at(step: int, args: argparse.Namespace) -> float:
    """Linear warm-up to `lr`, then cosine decay to `min_lr` at the last step."""
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    progress = (step - args.warmup) / max(1, args.steps - args.warmup)
    return args.min_lr + 0.5 * (args.lr - args.min_lr) * (1 + math.cos(math.pi * min(1.0, progress)))


def init_weights(model: GPT, n_layer: int) -> None:
    """GPT-2's initialisation: N(0, 0.02), residual projections scaled by 1/sqrt(2 * n_layer)."""
    for name, p in model.named_parameters():
        if name.endswith("c_proj.weight"):
            torch.nn.init.normal_(p, std=0.02 / math.sqrt(2 * n_layer))
        elif p.dim() == 2:
            torch.nn.init.normal_(p, std=0.02)
        elif name.endswith("bias"):
            torch.nn.init.zeros_(p)
        else:  # LayerNorm gains
            torch.nn.init.ones_(p)


def make_optimizer(model: GPT, args: argparse.Namespace, fused: bool) -> torch.optim.AdamW:
    """AdamW decaying matrices (and the tied embedding) only; biases and LayerNorm gains are not decayed."""
    params = {id(p): p for p in model.parameters()}.values()
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": args.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.95), fused=fused)


def get_batch(data: torch.Tensor, block: int, batch: int, gen: torch.Generator, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    starts = torch.randint(len(data) - block - 1, (batch,), generator=gen)
    x = torch.stack([data[s:s + block] for s in starts.tolist()])
    y = torch.stack([data[s + 1:s + 1 + block] for s in starts.tolist()])
    return x.to(device), y.to(device)


@torch.no_grad()
def evaluate(model: GPT, data: torch.Tensor, block: int, batch: int, windows: int, device: torch.device,
             autocast: contextlib.AbstractContextManager) -> float:
    """Mean cross-entropy (nats/token) over non-overlapping windows of the stream; the first `windows` (0 = all)."""
    was_training = model.training
    model.eval()
    n = (len(data) - 1) // block
    if windows:
        n = min(n, windows)
    total, count = 0.0, 0
    for i in range(0, n, batch):
        rows = range(i, min(n, i + batch))
        x = torch.stack([data[r * block:(r + 1) * block] for r in rows]).to(device)
        y = torch.stack([data[r * block + 1:(r + 1) * block + 1] for r in rows]).to(device)
        with autocast:
            logits = model.forward_full(x)
        total += F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="sum").item()
        count += y.numel()
    model.train(was_training)
    return total / count


def hf_config(config: GPTConfig) -> dict:
    """A standard Hugging Face GPT-2 config for this model."""
    return {
        "model_type": "gpt2",
        "architectures": ["GPT2LMHeadModel"],
        "vocab_size": config.vocab_size,
        "n_positions": config.block_size,
        "n_ctx": config.block_size,
        "n_embd": config.n_embd,
        "n_layer": config.n_layer,
        "n_head": config.n_head,
        "n_inner": None,
        "activation_function": "gelu_new",
        "resid_pdrop": 0.0,
        "embd_pdrop": 0.0,
        "attn_pdrop": 0.0,
        "layer_norm_epsilon": config.layer_norm_eps,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "tie_word_embeddings": True,
        "use_cache": True,
        "bos_token_id": 50256,
        "eos_token_id": 50256,
        "torch_dtype": "float16",
    }


def export(model: GPT, out_dir: Path) -> Path:
    """Write config.json and a float16 model.safetensors with Hugging Face key names and Conv1D layout.

    gptserve's GPT already keeps projection matrices [in, out] under GPT-2's names, as Hugging Face does,
    so the state dict is written as it is.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {}
    for key, tensor in model.state_dict().items():
        if key == "lm_head.weight":  # tied to transformer.wte.weight; transformers re-ties it on load
            continue
        state[key] = tensor.detach().to("cpu", torch.float16).contiguous()
    (out_dir / "config.json").write_text(json.dumps(hf_config(model.config), indent=2) + "\n", encoding="utf-8")
    path = out_dir / "model.safetensors"
    save_file(state, str(path), metadata={"format": "pt"})
    return path


def main() -> None:
    args = parse_args()
    keep_freed_memory()
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    # bf16 autocast: tensor cores on a GPU, AMX on recent Xeons; weights and optimizer state stay float32.
    autocast = torch.autocast(device.type, dtype=torch.bfloat16)
    torch.manual_seed(args.seed)
    tokenizer = BPETokenizer.from_ranks_file(WEIGHTS_DIR / "gpt2.tiktoken")
    train, val = load_corpus(args.data_dir, tokenizer)
    print(f"train {len(train):,} tokens, validation {len(val):,} tokens ({', '.join(HELDOUT_PLAYS)})")

    config = GPTConfig(n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd, block_size=args.block_size,
                       vocab_size=tokenizer.n_vocab, bias=True, activation="gelu_tanh")
    model = GPT(config)
    init_weights(model, config.n_layer)
    model.to(device)
    print(f"{model.num_params():,} parameters")
    optimizer = make_optimizer(model, args, fused=device.type == "cuda")
    gen = torch.Generator().manual_seed(args.seed)
    step = 0
    ckpt_path = args.ckpt_dir / "ckpt.pt"
    if args.resume:
        ckpt = torch.load(ckpt_path, map_location=device, weights_only=True)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        gen.set_state(ckpt["generator"])
        step = ckpt["step"]
        print(f"resumed from {ckpt_path} at step {step}")

    def save(at: int) -> None:
        args.ckpt_dir.mkdir(parents=True, exist_ok=True)
        tmp = ckpt_path.with_suffix(".tmp")
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "generator": gen.get_state(),
                    "step": at, "config": asdict(config)}, tmp)
        tmp.replace(ckpt_path)  # a crash mid-save never leaves a truncated checkpoint

    model.train()
    start_step = step
    started = time.time()
    bar = tqdm(range(step, args.steps), initial=step, total=args.steps, unit="step", mininterval=5)
    smooth = None
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, args)
        x, y = get_batch(train, args.block_size, args.batch_size, gen, device)
        with autocast:
            logits = model.forward_full(x)
        loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        optimizer.step()
        smooth = loss.item() if smooth is None else 0.95 * smooth + 0.05 * loss.item()
        bar.set_postfix(loss=f"{smooth:.3f}", lr=f"{lr_at(step, args):.2e}", refresh=False)
        done = step + 1
        if done % args.eval_every == 0 and done < args.steps:
            v = evaluate(model, val, args.block_size, args.batch_size, args.eval_windows, device, autocast)
            tqdm.write(f"step {done}: train loss {smooth:.3f}, val loss ({args.eval_windows or 'all'} windows) {v:.3f}")
        if done % args.save_every == 0 or done == args.steps:
            save(done)
    elapsed = time.time() - started

    print(f"trained {args.steps - start_step} steps in {elapsed / 60:.1f} min")
    path = export(model, args.out_dir)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB) and {args.out_dir / 'config.json'}")
    # Measure what ships: the float16 file read back by gptserve's loader, evaluated in float32.
    shipped = load_model(str(args.out_dir), device=str(device), dtype="float32", progress=False).model
    windows = (len(val) - 1) // args.block_size
    fp32 = contextlib.nullcontext()
    train_loss = evaluate(shipped, train, args.block_size, args.batch_size, windows, device, fp32)
    val_loss = evaluate(shipped, val, args.block_size, args.batch_size, 0, device, fp32)
    print(f"exported model: loss {train_loss:.3f} on the first {windows} train windows, "
          f"{val_loss:.3f} on all {windows} validation windows")


if __name__ == "__main__":
    main()
