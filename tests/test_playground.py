"""The playground at GET /: one self-contained page, driven in a real headless Chromium.

The browser is Debian's `chromium`, driven over the Chrome DevTools protocol (a websocket, with the
`websockets` package): the test types a prompt, clicks Generate with real mouse events, watches the tokens
arrive in the DOM, reads the final stats, and saves screenshots under test-artifacts/. Without Chromium
(scripts/install_test_tools.sh installs it when run as root) the browser tests skip and say so.

The served model is the tiny test GPT, with an API key configured, so the page's key field and the open
GET / are exercised too.
"""

import base64
import contextlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from tests.server_util import Server, metrics

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
API_KEY = "playground-test-key"
PROMPT = "To be, or not to be"


@pytest.fixture(scope="module")
def server(tiny_ckpt: Path, tmp_path_factory: pytest.TempPathFactory):
    with Server(tiny_ckpt, "--api-key", API_KEY, log_dir=tmp_path_factory.mktemp("playground-logs")) as s:
        yield s


# ---- without a browser --------------------------------------------------------------------------------------

def test_page_is_served_open_and_self_contained(server: Server) -> None:
    r = httpx.get(server.url + "/", timeout=10)  # no API key: the page itself is open
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/html")
    assert httpx.head(server.url + "/", timeout=10).status_code == 200
    page = r.text
    for element in ('id="prompt"', 'id="max-tokens"', 'id="temperature"', 'id="top-p"', 'id="seed"',
                    'id="api-key"', 'id="generate"', 'id="output"', 'id="stats"', 'id="error"'):
        assert element in page, f"the playground lacks {element}"
    # One file: no external scripts, styles, fonts or images, nothing fetched from another origin.
    assert not re.search(r"<script[^>]*\bsrc=", page, re.I)
    assert not re.search(r"<link[^>]*rel=[\"']?stylesheet", page, re.I)
    assert not re.search(r"(src|href)=[\"']?(https?:)?//", page, re.I)
    assert not re.search(r"@import|url\(\s*[\"']?(https?:)?//", page, re.I)
    assert "https://" not in page and "http://" not in page
    # What it needs from the API is still guarded by the key.
    assert httpx.post(server.url + "/generate", json={"inputs": "a"}, timeout=10).status_code == 401
    # The OpenAPI schema still lists POST / (TGI) next to the page's GET /.
    paths = httpx.get(server.url + "/openapi.json", timeout=10).json()["paths"]
    assert {"get", "post"} <= set(paths["/"])


# ---- a real browser ---------------------------------------------------------------------------------------

def chromium_path() -> str | None:
    for candidate in (os.environ.get("GPTSERVE_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if candidate and (found := shutil.which(candidate)):
            return found
    return None


class Browser:
    """Headless Chromium with one page, driven over the DevTools protocol."""

    FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio", "--window-size=1200,900",
             "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0"]

    def __init__(self, executable: str):
        from websockets.sync.client import connect

        self.profile = tempfile.mkdtemp(prefix="gptserve-chromium-")
        self.log = open(Path(self.profile) / "chromium.log", "wb")
        self.proc = subprocess.Popen([executable, *self.FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        self.stack = contextlib.ExitStack()
        self.ws = None
        self.next_id = 0
        self.events: list[dict] = []
        try:
            port = self._devtools_port(timeout=30)
            targets = []
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and not targets:
                targets = [t for t in httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=5).json()
                           if t.get("type") == "page"]
                time.sleep(0.1)
            assert targets, "Chromium opened no page"
            self.ws = self.stack.enter_context(connect(targets[0]["webSocketDebuggerUrl"], max_size=None,
                                                       open_timeout=15))
            self.call("Page.enable")
            self.call("Runtime.enable")
            self.call("Emulation.setDeviceMetricsOverride", width=1200, height=900, deviceScaleFactor=1,
                      mobile=False)
        except Exception:
            self.close()
            raise

    def _devtools_port(self, timeout: float) -> int:
        marker = Path(self.profile) / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"chromium exited with {self.proc.returncode}: {self.output()}")
            if marker.exists():
                first = marker.read_text().splitlines()[:1]
                if first and first[0].isdigit():
                    return int(first[0])
            time.sleep(0.05)
        raise RuntimeError(f"chromium did not open its DevTools port in {timeout} s: {self.output()}")

    def output(self) -> str:
        self.log.flush()
        return (Path(self.profile) / "chromium.log").read_text(errors="replace")[-2000:]

    def call(self, method: str, timeout: float = 30, **params) -> dict:
        self.next_id += 1
        my_id = self.next_id
        self.ws.send(json.dumps({"id": my_id, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while True:
            message = json.loads(self.ws.recv(timeout=max(0.01, deadline - time.monotonic())))
            if message.get("id") == my_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            if "method" in message:
                self.events.append(message)

    def js(self, expression: str):
        """Evaluate in the page (awaiting promises); the value comes back as JSON."""
        result = self.call("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"page script failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def goto(self, url: str) -> None:
        self.events.clear()
        self.call("Page.navigate", url=url)
        self.wait_for("document.readyState === 'complete' && !!document.getElementById('generate')")

    def wait_for(self, expression: str, timeout: float = 30, what: str = "") -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.js(f"!!({expression})"):
                return
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what or expression}; page state: {self.state()}")

    def state(self) -> dict:
        return self.js("""({output: document.getElementById('output').innerText,
                            stats: document.getElementById('stats').innerText,
                            statsState: document.getElementById('stats').dataset.state,
                            error: document.getElementById('error').innerText,
                            button: document.getElementById('generate').innerText})""")

    def fill(self, selector: str, text: str) -> None:
        """Focus a field, select what is in it, and type `text` over it (as keyboard input)."""
        self.js(f"(() => {{ const e = document.querySelector({json.dumps(selector)}); e.focus(); e.select(); }})()")
        self.call("Input.dispatchKeyEvent", type="rawKeyDown", key="Delete", code="Delete", windowsVirtualKeyCode=46)
        self.call("Input.dispatchKeyEvent", type="keyUp", key="Delete", code="Delete", windowsVirtualKeyCode=46)
        if text:
            self.call("Input.insertText", text=text)
        self.js(f"document.querySelector({json.dumps(selector)}).blur()")  # fires `change`
        assert self.js(f"document.querySelector({json.dumps(selector)}).value") == text

    def click(self, selector: str) -> None:
        """A real mouse click in the middle of the element, once it is in view and nothing covers that point
        (the error box and the model info change the layout while the page works)."""
        where = f"""(() => {{ const e = document.querySelector({json.dumps(selector)});
                             e.scrollIntoView({{block: "center"}});
                             const r = e.getBoundingClientRect(), x = r.x + r.width / 2, y = r.y + r.height / 2;
                             const hit = document.elementFromPoint(x, y);
                             return hit && e.contains(hit) ? [x, y] : null; }})()"""
        deadline = time.monotonic() + 10
        while (box := self.js(where)) is None:
            assert time.monotonic() < deadline, f"{selector} stayed covered or out of view"
            time.sleep(0.05)
        x, y = box
        self.call("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y)
        self.call("Input.dispatchMouseEvent", type="mousePressed", x=x, y=y, button="left", clickCount=1)
        self.call("Input.dispatchMouseEvent", type="mouseReleased", x=x, y=y, button="left", clickCount=1)

    def screenshot(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=False)["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        try:
            self.stack.close()  # the websocket
        except Exception:  # noqa: BLE001
            pass
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()
        shutil.rmtree(self.profile, ignore_errors=True)


@pytest.fixture(scope="module")
def browser():
    executable = chromium_path()
    if executable is None:
        pytest.skip("headless Chromium not found (Debian package `chromium`; scripts/install_test_tools.sh installs "
                    "it when run as root, or set GPTSERVE_CHROMIUM to a Chrome/Chromium binary)")
    try:
        import websockets.sync.client  # noqa: F401
    except ImportError:
        pytest.skip("the `websockets` package is missing (pip install -e '.[test]')")
    b = Browser(executable)
    try:
        yield b
    finally:
        b.close()


# Every DOM change of the output, as the user would see it: the generated text so far, and whether the run
# was still going (the final stats not yet shown).
WATCH_OUTPUT = """(() => {
  window.__snapshots = [];
  const output = document.getElementById('output'), stats = document.getElementById('stats');
  const observer = new MutationObserver(() => window.__snapshots.push({
    text: window.gptservePlayground.generatedText(),
    tokens: output.querySelectorAll('.tok').length,
    running: output.dataset.state === 'running',
    statsState: stats.dataset.state,
  }));
  observer.observe(output, {childList: true, subtree: true, characterData: true, attributes: true});
  return true;
})()"""


def enter_api_key(b: Browser, key: str) -> None:
    """Type the key, then wait for the model-info line it reloads: that line changes the layout, and a click
    computed before it settles can land beside the button."""
    b.fill("#api-key", key)
    expected = "context 128" if key else "needs the API key"
    b.wait_for(f"document.getElementById('model-info').innerText.includes({json.dumps(expected)})",
               what="the model info")


def set_parameters(b: Browser, max_tokens: str, temperature: str, top_p: str, seed: str) -> None:
    b.fill("#max-tokens", max_tokens)
    b.fill("#temperature", temperature)
    b.fill("#top-p", top_p)
    b.fill("#seed", seed)


def test_tokens_stream_into_the_page(server: Server, browser: Browser) -> None:
    b = browser
    b.goto(server.url + "/")
    enter_api_key(b, API_KEY)
    b.fill("#prompt", PROMPT)
    set_parameters(b, "48", "0.8", "0.95", "42")
    b.js(WATCH_OUTPUT)
    before = metrics(server.url).get("gptserve_generated_tokens_total", 0.0)
    b.click("#generate")
    b.wait_for("document.getElementById('stats').dataset.state === 'done'", what="the final stats")
    state = b.state()
    snapshots = b.js("window.__snapshots")
    shot = b.screenshot(ARTIFACTS / "playground.png")

    # Tokens arrived one DOM update at a time, in order, before the run ended.
    growing = [s for s in snapshots if s["running"] and s["statsState"] != "done" and s["tokens"] > 0]
    distinct = []
    for s in growing:
        if not distinct or s["text"] != distinct[-1]:
            distinct.append(s["text"])
    assert len(distinct) >= 2, f"tokens did not appear progressively: {snapshots}"
    for shorter, longer in zip(distinct, distinct[1:]):
        assert longer.startswith(shorter) and len(longer) > len(shorter)

    # The page shows exactly what the API generates for the same request (seeded sampling).
    final = b.js("window.gptservePlayground.generatedText()")
    assert final.startswith(distinct[-1])
    direct = httpx.post(server.url + "/generate", headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60,
                        json={"inputs": PROMPT, "parameters": {"max_new_tokens": 48, "temperature": 0.8,
                                                               "top_p": 0.95, "seed": 42, "details": True}})
    assert direct.status_code == 200, direct.text
    assert final == direct.json()["generated_text"]
    n = direct.json()["details"]["generated_tokens"]
    assert b.js("document.querySelectorAll('#output .tok').length") == n
    assert b.js("document.querySelector('#output .prompt').textContent") == PROMPT
    assert metrics(server.url)["gptserve_generated_tokens_total"] >= before + 2 * n  # the page's and ours

    # The final stats: time to first token and tokens/s.
    assert re.search(r"TTFT \d+(\.\d+)? m?s", state["stats"]), state
    assert re.search(r"\d+(\.\d+)? tokens/s", state["stats"]), state
    assert re.search(rf"\b{n} tokens\b", state["stats"]), state
    assert state["button"] == "Generate" and state["error"] == ""
    assert shot.stat().st_size > 5000


def test_errors_are_shown_readably(server: Server, browser: Browser) -> None:
    b = browser
    b.goto(server.url + "/")
    enter_api_key(b, "")
    b.fill("#prompt", PROMPT)
    set_parameters(b, "16", "0.8", "0.95", "")
    b.click("#generate")
    b.wait_for("document.getElementById('error').innerText.length > 0", what="the 401 error")
    error = b.state()["error"]
    assert "401" in error and "a valid API key is required" in error, error

    enter_api_key(b, API_KEY)
    b.fill("#temperature", "0")
    b.click("#generate")
    b.wait_for("document.getElementById('error').innerText.includes('422')", what="the 422 error")
    state = b.state()
    assert "parameters.temperature must be greater than 0" in state["error"], state
    assert state["button"] == "Generate" and state["statsState"] == "error"
    b.screenshot(ARTIFACTS / "playground-error.png")

    # Fixing the value clears the error.
    b.fill("#temperature", "0.8")
    b.click("#generate")
    b.wait_for("document.getElementById('stats').dataset.state === 'done'", what="a good run after the error")
    assert b.state()["error"] == ""


def test_stop_aborts_the_stream(server: Server, browser: Browser) -> None:
    b = browser
    b.goto(server.url + "/")
    enter_api_key(b, API_KEY)
    b.fill("#prompt", PROMPT)
    set_parameters(b, "100", "0.8", "0.95", "7")
    # The tiny model generates 100 tokens in well under a second; a slow network (4 KB/s, about 25 events/s)
    # keeps the stream open long enough to press Stop in the middle of it.
    b.call("Network.enable")
    b.call("Network.emulateNetworkConditions", offline=False, latency=0, downloadThroughput=4000,
           uploadThroughput=-1)
    try:
        b.click("#generate")
        b.wait_for("document.querySelectorAll('#output .tok').length >= 3", what="the first tokens")
        assert b.state()["button"] == "Stop"
        b.click("#generate")
        b.wait_for("document.getElementById('stats').dataset.state === 'stopped'", what="the stopped state")
    finally:
        b.call("Network.emulateNetworkConditions", offline=False, latency=0, downloadThroughput=-1,
               uploadThroughput=-1)
        b.call("Network.disable")
    state = b.state()
    shown = b.js("document.querySelectorAll('#output .tok').length")
    assert 3 <= shown < 100, state
    assert state["button"] == "Generate" and state["error"] == "", state
    assert "stopped" in state["stats"] and "TTFT" in state["stats"], state
    time.sleep(0.5)  # nothing more arrives after Stop
    assert b.js("document.querySelectorAll('#output .tok').length") == shown
