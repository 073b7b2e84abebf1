"""Helpers for the server tests: real `gptserve serve` processes on free loopback ports, and small parsers."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
GPTSERVE = Path(sys.executable).parent / "gptserve"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`gptserve serve --model <ckpt> --port N [args]` as a subprocess; stderr goes to a file."""

    def __init__(self, model: Path | str | None, *args: str, env: dict[str, str] | None = None,
                 log_dir: Path | None = None, port: int | None = None):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [str(GPTSERVE), "serve", "--port", str(self.port)]
        if model is not None:
            cmd += ["--model", str(model)]
        cmd += list(args)
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("GPTSERVE_")}
        full_env.update(env or {})
        full_env.setdefault("OMP_NUM_THREADS", "1")
        log_dir = log_dir or Path("/tmp")
        self.log_path = log_dir / f"gptserve-{self.port}.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=full_env, cwd=ROOT)

    def wait_ready(self, timeout: float = 60.0) -> "Server":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self.log()}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"server not ready after {timeout} s: {self.log()}")

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def terminate(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, then SIGKILL if it does not exit; returns the exit status."""
        self.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()
        return self.proc.returncode

    def __enter__(self) -> "Server":
        return self.wait_ready()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60.0) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("GPTSERVE_")}
    full_env.update(env or {})
    return subprocess.run([str(GPTSERVE), *args], capture_output=True, text=True, env=full_env, cwd=ROOT,
                          timeout=timeout)


def sse_events(text: str) -> list[dict]:
    """The JSON payloads of `data:` lines (a `[DONE]` line becomes {"done": True})."""
    out = []
    for line in text.splitlines():
        if line.startswith("data:"):
            data = line[5:].strip()
            out.append({"done": True} if data == "[DONE]" else json.loads(data))
    return out


METRIC_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$")


def metrics(url: str) -> dict[str, float]:
    """`name{labels}` → value, from /metrics."""
    text = httpx.get(url + "/metrics", timeout=10).text
    out = {}
    for line in text.splitlines():
        m = METRIC_LINE.match(line)
        if m:
            out[m.group(1) + (m.group(2) or "")] = float(m.group(3))
    return out


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
