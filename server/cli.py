"""The `gptserve` command: `serve`, `generate` and `bench`.

Start-up problems (a bad flag, an unreadable checkpoint) print one line and exit with code 2.
torch and the model code are imported only by the commands that need them, so a bad flag is
reported at once.
"""

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path


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
    from model.engine import Engine
    from model.loader import ModelLoadError, load_model
    from model.sampling import SamplingParams
    from model.tokenizer import TokenizerError

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


SERVE_FLAGS = {
    # flag name: (metavar, help)
    "model": ("SPEC", "nanoGPT ckpt.pt, Hugging Face GPT-2 folder or hub id (default: the bundled model)"),
    "device": ("DEVICE", "auto, cpu, cuda or cuda:N (default auto)"),
    "dtype": ("DTYPE", "auto, float32, bfloat16 or float16 (default auto)"),
    "host": ("HOST", "address to listen on (default 127.0.0.1)"),
    "port": ("PORT", "port to listen on (default 8000)"),
    "max_batch_size": ("N", "sequences decoded together, i.e. KV-cache slots (default 8)"),
    "max_queue": ("N", "requests that may wait for a slot; beyond that, 429 (default 64)"),
    "max_body_bytes": ("BYTES", "largest request body; beyond that, 413 (default 1048576)"),
    "api_key": ("KEY", "require 'Authorization: Bearer KEY' (except /health and /metrics)"),
    "shutdown_timeout": ("SECONDS", "after SIGTERM, how long in-flight requests may take (default 30)"),
    "log_level": ("LEVEL", "debug, info, warning, error or critical (default info)"),
    "log_format": ("FORMAT", "text or json (default text)"),
}


def cmd_serve(args: argparse.Namespace) -> None:
    """Load the model first (a bad checkpoint: one line, exit 2), then serve until SIGTERM or Ctrl-C."""
    from pydantic import ValidationError

    from server.config import Settings, describe_validation_error

    overrides = {name: getattr(args, name) for name in SERVE_FLAGS if getattr(args, name) is not None}
    try:
        settings = Settings(**overrides)
    except ValidationError as e:
        fail(describe_validation_error(e))

    import uvicorn

    from model.loader import ModelLoadError, load_model
    from server.app import create_app
    from server.logs import configure_logging
    from server.serving import DrainingServer

    configure_logging(settings.log_level, settings.log_format)
    try:
        loaded = load_model(settings.model, settings.device, settings.dtype)
    except ModelLoadError as e:
        fail(str(e))
    try:
        app = create_app(settings, loaded)
    except Exception as e:  # noqa: BLE001 - e.g. no memory for the KV cache
        fail(f"could not set up the engine: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_config=None, access_log=False,
                            log_level=settings.log_level, lifespan="on", timeout_graceful_shutdown=5,
                            server_header=False)
    server = DrainingServer(config, app.state.runtime, settings.shutdown_timeout)
    server.run()


def cmd_bench(args: argparse.Namespace) -> None:
    """Load a running server (--url), or the engine in-process beside transformers (--engine)."""
    if args.engine == (args.url is not None):
        fail("bench needs exactly one of --url URL or --engine")
    if args.engine:
        from server.bench_engine import PRESETS, main_engine

        if args.preset not in PRESETS:
            fail(f"--preset {args.preset!r} is not one of {', '.join(PRESETS)}")
        try:
            args.prompt_len, args.new_tokens = int(args.prompt_len), int(args.new_tokens)
        except ValueError:
            fail("--engine takes one --prompt-len and one --new-tokens")
        main_engine(args)
    else:
        from server.bench_http import main_http

        main_http(args)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="gptserve", description="Serve GPT-2 and nanoGPT checkpoints.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)

    serve = sub.add_parser("serve", help="run the HTTP server (each flag also reads GPTSERVE_<FLAG>)")
    for name, (metavar, text) in SERVE_FLAGS.items():
        serve.add_argument("--" + name.replace("_", "-"), dest=name, default=None, metavar=metavar,
                           help=f"{text} [env GPTSERVE_{name.upper()}]")
    serve.set_defaults(func=cmd_serve)

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

    bench = sub.add_parser("bench", help="measure throughput and latency (--url URL, or --engine)")
    bench.add_argument("--prompt-len", default="128", help="prompt tokens per request (--url: a comma list sweeps)")
    bench.add_argument("--new-tokens", default="64", help="generated tokens per request, EOS ignored (--url: a comma "
                                                          "list sweeps)")
    bench.add_argument("--json", type=Path, default=None, help="also write the results as JSON here")
    http = bench.add_argument_group("against a running server")
    http.add_argument("--url", help="the server to load, e.g. http://127.0.0.1:8000")
    http.add_argument("--concurrency", default="1,2,4,8,16,32", help="comma-separated levels")
    http.add_argument("--requests", type=int, default=None, help="requests per level (default 2 x level, at least 8)")
    http.add_argument("--api", choices=["tgi", "openai"], default="tgi",
                      help="the protocol: TGI's /generate_stream, or OpenAI's /v1/completions (to load other servers)")
    http.add_argument("--api-key", default=None)
    http.add_argument("--plot", type=Path, default=None, help="write a PNG of throughput and latency here")
    engine = bench.add_argument_group("in-process engine, beside transformers")
    engine.add_argument("--engine", action="store_true", help="benchmark the engine instead of a server")
    engine.add_argument("--preset", default="gpt2", help="random-weight GPT-2 size: gpt2, gpt2-medium, gpt2-large, "
                                                         "gpt2-xl or tiny")
    engine.add_argument("--batches", default="1,8", help="comma-separated numbers of concurrent sequences")
    engine.add_argument("--repeats", type=int, default=3, help="runs per point; the median is reported")
    engine.add_argument("--dtype", default="float32")
    engine.add_argument("--device", default="cpu")
    engine.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    engine.add_argument("--compare", choices=["transformers", "none"], default="transformers")
    bench.set_defaults(func=cmd_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    # Before torch loads OpenMP: idle OpenMP threads sleep instead of spinning. On a small CPU the spinning
    # starves the HTTP thread and the engine's own Python work (HTTP throughput +19-35% measured at 1 and 8
    # streams, docs/BENCHMARKS.md). A value the user set wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    args = build_parser().parse_args(argv)
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)
    args.func(args)


if __name__ == "__main__":
    main()
