#!/usr/bin/python3
"""The HTTP listener end to end: /metrics and the SVP frame in headless Chromium, against the real
daemon under real KVM (tests/kvm/http-daemon.sh runs it and its firmware LPARs).

  http_frame.py --direct LPARVISOR SVP FIRMWARE DAEMON-LIB --out DIR
  http_frame.py --nested NESTED-RUN LPARVISOR SVP FIRMWARE DAEMON-LIB --out DIR

--direct runs the daemon on this host (it needs /dev/kvm); --nested runs it inside the nested-KVM
harness (scripts/nested-kvm/ctest-run.sh) with one host loopback port forwarded to its listener,
and exits 77 (skipped) when the harness says the direct test runs instead. What it checks:
 - /metrics parses with the Prometheus client library's parser (Debian's python3-prometheus-client)
   and moves by exactly what was done: one MVSTOR (256 MiB copied, one pause) and one EXPAND
   (64 MiB plugged) by svp, one MVSTOR from the page; nothing for a refused request;
 - the page shows Fig. 3A, and `svp mvstor LPAR2 192` (run beside the daemon) moves LPAR2 on the
   page to 192 MiB without a reload (checked in the DOM; screenshots in DIR);
 - without the token, the page's MVSTOR is refused (HTTP 401) and nothing moves; with it, the
   page's button moves LPAR2 to 252 MiB, which the daemon's half sees through svp;
 - bad requests get a status and a reason: a wrong token, a method the page may not call, an
   unknown path, a body over the limit.
Deadlines are generous and only bound a hang: nothing here depends on the machine's speed.
"""
import argparse
import os
import queue
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

sys.path.append("/usr/lib/python3/dist-packages")  # Debian's packages, whatever python3 runs this
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "support"))
import cdp  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

MIB = 1 << 20
HERE = os.path.dirname(os.path.abspath(__file__))


def fail(message):
    print(f"FAIL: {message}", flush=True)
    sys.exit(1)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DaemonHalf:
    """http-daemon.sh, directly or in the harness; its lines are echoed and watched for markers."""

    def __init__(self, command, env):
        self.lines = queue.Queue()
        self.seen = {}
        self.process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True, errors="replace")
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self):
        for line in self.process.stdout:
            print(f"  | {line.rstrip()}", flush=True)
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def wait_marker(self, prefix, timeout_s):
        deadline = time.monotonic() + timeout_s
        while prefix not in self.seen:
            left = deadline - time.monotonic()
            if left <= 0:
                fail(f"the daemon's half never printed {prefix} ({timeout_s} s)")
            try:
                line = self.lines.get(timeout=min(left, 1.0))
            except queue.Empty:
                continue
            if line is None:
                code = self.process.wait()
                if code == 77:
                    print("*** SKIPPED: the daemon's half was skipped (see above) ***")
                    sys.exit(77)
                fail(f"the daemon's half ended with status {code} before {prefix}")
            # Anywhere in the line: in the harness, a marker can follow what another program
            # left on the serial console without a newline.
            for marker in ("HTTP-TOKEN=", "HTTP-READY", "SVP-DONE", "GUEST-CHECKS-OK", "PASS"):
                at = line.find(marker)
                if at >= 0 and marker not in self.seen:
                    self.seen[marker] = line[at + len(marker):].split()[0] if marker.endswith(
                        "=") else ""
        return self.seen[prefix]


class Listener:
    def __init__(self, base, token):
        self.base, self.token = base, token

    def request(self, path, body=None, token=None, method=None):
        """(status, body text) of one request; HTTP errors are answers too."""
        headers = {"Content-Type": "application/json"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        req = urllib.request.Request(self.base + path, data=body, headers=headers, method=method)
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(req, timeout=120) as answer:
                return answer.status, answer.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    def metrics(self):
        """{(name, ((label, value), ...)): value} of /metrics, parsed by prometheus_client."""
        status, text = self.request("/metrics")
        if status != 200:
            fail(f"/metrics answered {status}: {text}")
        samples = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return samples

    def wait_up(self, timeout_s):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if self.request("/api/lpars")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.5)
        fail(f"{self.base} did not answer within {timeout_s} s")


def value(samples, name, **labels):
    key = (name, tuple(sorted(labels.items())))
    if key not in samples:
        fail(f"/metrics has no {name}{labels}")
    return samples[key]


def expect_delta(before, after, name, expected, **labels):
    delta = value(after, name, **labels) - value(before, name, **labels)
    if delta != expected:
        fail(f"{name}{labels} moved by {delta}, expected {expected}")


def operations_unchanged_but(before, after, changed):
    """Every lparvisor_operations_total series moved by what `changed` says, the rest not at all."""
    for (name, labels), count in after.items():
        if name != "lparvisor_operations_total":
            continue
        kind_outcome = (dict(labels)["kind"], dict(labels)["outcome"])
        expected = changed.get(kind_outcome, 0)
        if count - before.get((name, labels), 0) != expected:
            fail(f"operations {kind_outcome} moved by {count - before.get((name, labels), 0)}, "
                 f"expected {expected}")


def settled_screenshot(browser, path):
    """A screenshot once the map's slides (CSS transitions) have ended."""
    browser.wait_for("document.getAnimations().every(a => !(a instanceof CSSTransition))",
                     what="the map to settle")
    browser.screenshot(path)


def lpar_js(name, attribute):
    return f"document.querySelector('[data-lpar=\"{name}\"]')?.getAttribute('{attribute}')"


def check_page(browser, listener, half, token, out, m0):
    """The page: Fig. 3A, svp's moves followed live, the refusal, the page's own MVSTOR."""
    browser.navigate(f"{listener.base}/#token={token}")
    browser.wait_for("document.querySelector('#connection')?.dataset.connected === 'true'",
                     what="the page's event stream")
    browser.wait_for(f"{lpar_js('LPAR2', 'data-origin-mib')} === '128'",
                     what="LPAR2 at 128 MiB on the page")
    if browser.evaluate("location.hash") != "":
        fail("the token stayed in the address bar")
    browser.evaluate("window.lparvisorTestMarker = 'no reload'")
    settled_screenshot(browser, os.path.join(out, "svp-frame-fig3a.png"))

    # svp mvstor LPAR2 192 and svp expand LPAR1 64 run beside the daemon.
    browser.wait_for(f"{lpar_js('LPAR2', 'data-origin-mib')} === '192'", timeout_s=1500,
                     what="LPAR2 at 192 MiB on the page after svp mvstor")
    browser.wait_for(f"{lpar_js('LPAR1', 'data-size-mib')} === '192'", timeout_s=600,
                     what="LPAR1 at 192 MiB on the page after svp expand")
    if browser.evaluate("window.lparvisorTestMarker") != "no reload":
        fail("the page was reloaded")
    settled_screenshot(browser, os.path.join(out, "svp-frame-fig4a.png"))
    half.wait_marker("SVP-DONE", 600)
    m1 = listener.metrics()
    operations_unchanged_but(m0, m1, {("mvstor", "ok"): 1, ("expand", "ok"): 1})
    expect_delta(m0, m1, "lparvisor_operation_copied_bytes_total", 256 * MIB, kind="mvstor")
    expect_delta(m0, m1, "lparvisor_pause_seconds_count", 1)
    expect_delta(m0, m1, "lparvisor_lpar_storage_origin_bytes", 64 * MIB, lpar="LPAR2")
    expect_delta(m0, m1, "lparvisor_lpar_storage_size_bytes", 64 * MIB, lpar="LPAR1")
    expect_delta(m0, m1, "lparvisor_lpar_virtio_mem_plugged_bytes", 64 * MIB, lpar="LPAR1")
    expect_delta(m0, m1, "lparvisor_main_storage_free_bytes", -64 * MIB)
    if value(m1, "lparvisor_main_storage_largest_free_gap_bytes") != 61 * MIB:
        fail("the largest free gap is not the 61 MiB above LPAR2")

    # The page's MVSTOR without the token: refused, nothing moves.
    browser.set_value("#op-kind", "mvstor")
    browser.set_value("#op-lpar", "LPAR2")
    browser.set_value("#op-origin", "252")
    browser.set_value("#op-token", "")
    browser.click("#op-submit")
    browser.wait_for("document.querySelector('#op-result')?.dataset.outcome === 'refused'",
                     what="the page's refusal without the token")
    print("page without token: " + browser.evaluate(
        "document.querySelector('#op-result').textContent"), flush=True)
    m2 = listener.metrics()
    operations_unchanged_but(m1, m2, {})
    expect_delta(m1, m2, "lparvisor_http_responses_total", 1, code="401")
    if value(m2, "lparvisor_lpar_storage_origin_bytes", lpar="LPAR2") != 192 * MIB:
        fail("a refused page request moved LPAR2")

    # With the token: the daemon carries it out, and the page shows it.
    browser.set_value("#op-token", token)
    browser.click("#op-submit")
    browser.wait_for("document.querySelector('#op-result')?.dataset.outcome === 'ok'",
                     timeout_s=600, what="the page's MVSTOR with the token")
    browser.wait_for(f"{lpar_js('LPAR2', 'data-origin-mib')} === '252'",
                     what="LPAR2 at 252 MiB on the page")
    settled_screenshot(browser, os.path.join(out, "svp-frame-page-mvstor.png"))
    m3 = listener.metrics()
    operations_unchanged_but(m2, m3, {("mvstor", "ok"): 1})
    expect_delta(m2, m3, "lparvisor_operation_copied_bytes_total", 256 * MIB, kind="mvstor")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--direct", action="store_true")
    mode.add_argument("--nested", metavar="NESTED-RUN")
    parser.add_argument("lparvisor")
    parser.add_argument("svp")
    parser.add_argument("firmware")
    parser.add_argument("daemon_lib")
    parser.add_argument("--out", required=True, help="where the screenshots go")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)

    port = free_port()
    script = os.path.join(HERE, "http-daemon.sh")
    daemon_args = [args.lparvisor, args.svp, args.firmware, args.daemon_lib]
    env = dict(os.environ)
    if args.direct:
        command = ["sh", script, *daemon_args, f"127.0.0.1:{port}"]
    else:
        env["NESTED_KVM_HOSTFWD"] = f"{port}:8080"
        command = [args.nested, "1500", args.firmware, "--", script, *daemon_args, "0.0.0.0:8080"]
    half = DaemonHalf(command, env)
    token = half.wait_marker("HTTP-TOKEN=", 1500)
    half.wait_marker("HTTP-READY", 60)
    listener = Listener(f"http://127.0.0.1:{port}", token)
    listener.wait_up(300)

    # Fig. 3A, as the counters say it.
    m0 = listener.metrics()
    if value(m0, "lparvisor_lpar_storage_origin_bytes", lpar="LPAR2") != 128 * MIB:
        fail("LPAR2 is not at 128 MiB in /metrics")
    if value(m0, "lparvisor_lpar_state", lpar="LPAR1", state="running") != 1:
        fail("LPAR1 is not running in /metrics")
    if value(m0, "lparvisor_lpar_vcpu_exits_total", lpar="LPAR1", reason="io") <= 0:
        fail("LPAR1's firmware made no port I/O exits (it prints its rounds through the UART)")

    # Bad requests: a status and a reason, and nothing changes.
    for path, body, tok, expected in [
        ("/api/call", b'{"jsonrpc":"2.0","id":1,"method":"storage.mvstor",'
                      b'"params":{"lpar":"LPAR2","origin_mib":0}}', None, 401),
        ("/api/call", b'{"jsonrpc":"2.0","id":1,"method":"storage.mvstor",'
                      b'"params":{"lpar":"LPAR2","origin_mib":0}}', "0" * 64, 401),
        ("/api/call", b'{"jsonrpc":"2.0","id":1,"method":"lpar.deactivate",'
                      b'"params":{"lpar":"LPAR2"}}', token, 403),
        ("/api/call", b'{"jsonrpc":"2.0","id":1,', token, 400),
        ("/api/call", b"x" * 20000, token, 413),
        ("/nothing-here", None, None, 404),
    ]:
        status, text = listener.request(path, body, tok)
        if status != expected or not text.strip():
            fail(f"{path} ({len(body or b'')} bytes, token {tok is not None}) answered {status} "
                 f"'{text.strip()}', expected {expected} with a reason")
        print(f"http: {path} -> {status} {text.strip()[:100]}", flush=True)
    if listener.metrics()[("lparvisor_lpar_storage_origin_bytes", (("lpar", "LPAR2"),))] \
            != 128 * MIB:
        fail("a refused request moved LPAR2")

    with cdp.Browser() as browser:
        try:
            check_page(browser, listener, half, token, args.out, m0)
        except (TimeoutError, cdp.CDPError):
            print("--- the page when it failed:", flush=True)
            print(browser.evaluate(
                "JSON.stringify({connection: document.querySelector('#connection')?.textContent,"
                " lpars: [...document.querySelectorAll('[data-lpar]')].map(e => "
                "[e.dataset.lpar, e.dataset.originMib, e.dataset.sizeMib, e.dataset.state]),"
                " operation: document.querySelector('#operation')?.textContent,"
                " result: document.querySelector('#op-result')?.textContent,"
                " summary: document.querySelector('#summary')?.textContent})"), flush=True)
            print("--- /api/lpars now: " + listener.request("/api/lpars")[1], flush=True)
            raise

    half.wait_marker("GUEST-CHECKS-OK", 1500)
    half.wait_marker("PASS", 300)
    code = half.process.wait(timeout=300)
    if code != 0:
        fail(f"the daemon's half ended with status {code}")
    print(f"PASS (screenshots in {args.out})")


if __name__ == "__main__":
    main()
