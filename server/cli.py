"""The `gptserve` command: `serve`, `generate` and `bench`.

Start-up problems (a bad flag, an unreadable checkpoint) print one line and exit with code 2.
"""

import argparse
import sys
from collections.abc import Sequence

import torch

from model.engine import Engine
from model.loader import ModelLoadError, load_model
from model.sampling import SamplingParams
from model.tokenizer import TokenizerError


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is a single line (then exit 2), not usage text plus the error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def fail(message: str) -> None:
    print(f"gptserve: error: {message}", file=sys.stderr)
    sys.exit(2)


def add_model_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="nanoGPT ckpt.pt, Hugging Face GPT-2 folder or hub id "
                                                      "(default: the bundled Shakespeare model)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--dtype", default="auto", help="auto, float32, bfloat16 or float16")


def cmd_generate(args: argparse.Namespace) -> None:
    """Stream one completion to stdout, through the same engine the server uses."""
    try:
        loaded = load_model(args.model, args.device, args.dtype)
    except ModelLoadError as e:
        fail(str(e))
    try:
        prompt_ids = loaded.tokenizer.encode(args.prompt)
    except TokenizerError as e:
        fail(str(e))
    if not prompt_ids:
        fail("the prompt is empty")
    room = loaded.info.context_length - len(prompt_ids)
    if room < 1:
        fail(f"the prompt has {len(prompt_ids)} tokens; the model's context holds {loaded.info.context_length}")
    params = SamplingParams(max_new_tokens=min(args.max_new_tokens, room), do_sample=not args.greedy,
                            temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed,
                            stop=args.stop or [])
    engine = Engine(loaded.model, loaded.tokenizer, max_batch_size=1, max_queue=0)
    engine.start()
    try:
        sys.stdout.write(args.prompt)
        for event in engine.generate(prompt_ids, params):
            if event.token is not None:
                sys.stdout.write(event.token.text)
                sys.stdout.flush()
        sys.stdout.write("\n")
    except KeyboardInterrupt:
        sys.stdout.write("\n")
    finally:
        engine.stop()


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="gptserve", description="Serve GPT-2 and nanoGPT checkpoints.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)

    gen = sub.add_parser("generate", help="complete one prompt in the terminal, without a server")
    add_model_flags(gen)
    gen.add_argument("prompt")
    gen.add_argument("--max-new-tokens", type=int, default=100)
    gen.add_argument("--temperature", type=float, default=0.8)
    gen.add_argument("--top-k", type=int, default=50)
    gen.add_argument("--top-p", type=float, default=None)
    gen.add_argument("--seed", type=int, default=None)
    gen.add_argument("--stop", action="append", help="a stop string (repeatable)")
    gen.add_argument("--greedy", action="store_true", help="always take the most likely token")
    gen.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    gen.set_defaults(func=cmd_generate)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    args.func(args)


if __name__ == "__main__":
    main()
