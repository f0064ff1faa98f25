#!/usr/bin/env python3
"""A tiny headless-Chromium driver over the DevTools protocol (CDP), for browser tests.

    with Browser() as b:
        b.navigate("http://127.0.0.1:18080/")
        b.click("#start")
        b.wait_for("document.querySelector('#state').textContent === 'running'", what="LPAR running")

Standard library plus Debian's python3-websocket (websocket-client). Chromium is /usr/bin/chromium
or $CHROMIUM. Self-test: python3 tests/support/cdp.py --selftest [--out PNG].
"""
import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

try:
    import websocket
except ImportError:
    # A python3 that is not Debian's (pyenv, a venv) does not see Debian's packages; this one is
    # pure Python, so borrow it from there.
    if not os.path.isdir("/usr/lib/python3/dist-packages/websocket"):
        raise ImportError("cdp.py needs websocket-client: apt-get install python3-websocket") from None
    sys.path.append("/usr/lib/python3/dist-packages")
    import websocket

# Generous on purpose: tests must not depend on speed (the daemon may run under TCG emulation),
# so they fail only after a long wait.
DEFAULT_TIMEOUT_S = 120.0


class CDPError(RuntimeError):
    """A CDP command failed, or JavaScript threw."""


class Browser:
    def __init__(self, start_timeout_s=30.0):
        self.exe = os.environ.get("CHROMIUM", "/usr/bin/chromium")
        self.start_timeout_s = start_timeout_s
        self.proc = self.ws = self.tmpdir = None
        self._id = 0
        self._events = []  # events read while waiting for a reply; navigate() looks in here
        # Our requests to 127.0.0.1 must not go through an http_proxy from the environment.
        self._http = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def __enter__(self):
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc):
        self.close()

    def _start(self):
        exe = shutil.which(self.exe)
        if not exe:
            raise FileNotFoundError(f"chromium not found at {self.exe!r}: apt-get install chromium, or set CHROMIUM")
        self.tmpdir = tempfile.mkdtemp(prefix="cdp-chromium-")
        log_path = os.path.join(self.tmpdir, "chromium.log")
        args = [exe, "--headless=new", "--no-sandbox",  # --no-sandbox: CI runs as root
                "--disable-gpu", "--no-first-run", "--no-default-browser-check",
                "--remote-debugging-port=0", f"--user-data-dir={self.tmpdir}", "--window-size=1280,800",
                "about:blank"]
        # Output to a file, not a pipe that nobody drains; a session of its own so that close() kills
        # Chromium's helper processes (zygotes, renderers) too.
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        deadline = time.monotonic() + self.start_timeout_s
        while True:
            exited = self.proc.poll() is not None
            if exited or time.monotonic() > deadline:
                with open(log_path, errors="replace") as f:
                    tail = "".join(f.readlines()[-20:]) or "(no output)\n"
                why = f"exited with {self.proc.returncode}" if exited else f"did not start within {self.start_timeout_s:g} s"
                raise RuntimeError(f"chromium {why}; the end of its output:\n{tail}")
            try:  # DevToolsActivePort: the port on its first line, written once Chromium listens
                with open(os.path.join(self.tmpdir, "DevToolsActivePort")) as f:
                    port = int(f.readline())
                with self._http.open(f"http://127.0.0.1:{port}/json/list", timeout=5) as r:
                    pages = [t for t in json.load(r) if t.get("type") == "page"]
                if pages:
                    break
            except (OSError, ValueError):
                pass
            time.sleep(0.1)
        # suppress_origin: Chromium refuses DevTools websockets that send an Origin header (unless
        # --remote-allow-origins allows it), and websocket-client sends one by default.
        self.ws = websocket.create_connection(pages[0]["webSocketDebuggerUrl"], timeout=30, suppress_origin=True)
        self.send("Page.enable")
        # New headless takes window decorations off --window-size: make the viewport 1280x800.
        self.send("Emulation.setDeviceMetricsOverride", {"width": 1280, "height": 800, "deviceScaleFactor": 1,
                                                         "mobile": False})

    def close(self):
        if self.ws:
            self.ws.close()
            self.ws = None
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if self.tmpdir:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
            self.tmpdir = None

    def _recv(self, deadline, what):
        self.ws.settimeout(max(deadline - time.monotonic(), 0.001))
        try:
            return json.loads(self.ws.recv())
        except websocket.WebSocketTimeoutException:
            raise TimeoutError(f"no {what} from chromium") from None

    def send(self, method, params=None, timeout_s=DEFAULT_TIMEOUT_S):
        """Run one CDP command and return its result; events that arrive meanwhile are kept."""
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params or {}}))
        deadline = time.monotonic() + timeout_s
        while True:
            msg = self._recv(deadline, f"reply to {method}")
            if msg.get("id") == self._id:
                if "error" in msg:
                    err = msg["error"]
                    raise CDPError(f"{method}: {err.get('message')} ({err.get('code')}) {err.get('data', '')}".rstrip())
                return msg.get("result", {})
            if "method" in msg:
                self._events = self._events[-999:] + [msg]  # bounded: most events nobody reads

    def navigate(self, url, timeout_s=DEFAULT_TIMEOUT_S):
        """Load url and wait for its load event."""
        self._events.clear()
        result = self.send("Page.navigate", {"url": url}, timeout_s)
        if result.get("errorText"):
            raise CDPError(f"navigate {url}: {result['errorText']}")
        if "loaderId" not in result:
            return  # same-document navigation (a #fragment): no load event
        deadline = time.monotonic() + timeout_s
        while not any(e["method"] == "Page.loadEventFired" for e in self._events):
            msg = self._recv(deadline, f"load event for {url} in {timeout_s:g} s")
            if "method" in msg:
                self._events.append(msg)

    def evaluate(self, js, timeout_s=DEFAULT_TIMEOUT_S):
        """The value of a JavaScript expression (a promise is awaited); CDPError if it throws."""
        r = self.send("Runtime.evaluate", {"expression": js, "returnByValue": True, "awaitPromise": True}, timeout_s)
        if "exceptionDetails" in r:
            d = r["exceptionDetails"]
            raise CDPError(f"JavaScript error: {d.get('exception', {}).get('description') or d.get('text')}\n  in: {js}")
        return r["result"].get("value")

    def wait_for(self, js, timeout_s=DEFAULT_TIMEOUT_S, what=None):
        """Evaluate js every 0.1 s until it is truthy and return that value; a js that throws counts as falsy."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                last = self.evaluate(js, timeout_s)
                if last:
                    return last
            except CDPError as e:
                last = e
            if time.monotonic() > deadline:
                raise TimeoutError(f"waited {timeout_s:g} s for {what or js}; last value {last!r}")
            time.sleep(0.1)

    def _on_element(self, selector, body):
        sel = json.dumps(selector)
        return self.evaluate(f"(() => {{ const e = document.querySelector({sel});"
                             f" if (!e) throw new Error('no element matches ' + {sel}); {body} }})()")

    def click(self, selector):
        self._on_element(selector, "e.scrollIntoView({block: 'center'}); e.click(); return true;")

    def set_value(self, selector, value):
        # Through the prototype's setter, so frameworks that track .value see it; then the events that
        # typing fires.
        self._on_element(selector, "Object.getOwnPropertyDescriptor(Object.getPrototypeOf(e), 'value')"
                                   f".set.call(e, {json.dumps(value)});"
                                   " for (const t of ['input', 'change']) e.dispatchEvent(new Event(t, {bubbles: true}));"
                                   " return true;")

    def screenshot(self, path):
        with open(path, "wb") as f:
            f.write(base64.b64decode(self.send("Page.captureScreenshot", {"format": "png"})["data"]))
        return path


SELFTEST_PAGE = b"""<!doctype html><title>cdp selftest</title>
<h1>cdp selftest</h1><input id="name"> <button id="go">Greet</button><p id="out">waiting</p>
<script>document.getElementById('go').onclick = () => setTimeout(() => {
  document.getElementById('out').textContent = 'hello, ' + document.getElementById('name').value;
}, 300);</script>"""


def selftest(out):
    import http.server
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(SELFTEST_PAGE)

        def log_message(self, *args):
            pass

    def expect_error(fn, exc, text):
        try:
            fn()
        except exc as e:
            assert text in str(e), e
        else:
            raise AssertionError(f"no {exc.__name__} ({text})")

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with Browser() as b:
            b.navigate(f"http://127.0.0.1:{server.server_port}/")
            assert b.evaluate("document.title") == "cdp selftest"
            b.set_value("#name", "lparvisor")
            b.click("#go")
            b.wait_for("document.getElementById('out').textContent === 'hello, lparvisor'", 30, "the greeting")
            expect_error(lambda: b.evaluate("nosuch.x"), CDPError, "nosuch is not defined")
            expect_error(lambda: b.click("#missing"), CDPError, "no element matches #missing")
            expect_error(lambda: b.send("No.such"), CDPError, "No.such: ")
            expect_error(lambda: b.wait_for("false", 0.5, "nothing"), TimeoutError,
                         "waited 0.5 s for nothing; last value False")
            b.screenshot(out)
    finally:
        server.shutdown()
    print(f"cdp selftest: ok (screenshot {out})")


if __name__ == "__main__":
    import argparse
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--selftest", action="store_true", help="drive a local page end to end")
    p.add_argument("--out", default="/tmp/cdp-selftest.png", help="where the selftest puts its screenshot")
    a = p.parse_args()
    if not a.selftest:
        p.error("nothing to do (try --selftest)")
    selftest(a.out)
