#!/usr/bin/env python3
"""QEMU's answer to relocation: local live migration of the same firmware guest to a second
QEMU process over a Unix socket, measured the way lparvisor-bench measures MVSTOR.

Python (stdlib only) rather than C++: QMP is line-delimited JSON over a socket and the work is
process and file plumbing (two QEMUs, their serial logs, async events); that is a screenful of
Python and would be several hundred lines of C++ with nothing gained in accuracy, because the
pause is taken from QEMU's own event timestamps, not from this script's clock.

Per case (size x rate x setting, N runs): boot the firmware by Multiboot in a source QEMU,
start a destination with -incoming unix:..., wait until the guest has written all its storage
(its second `verify ok`), measure its rounds/s, `migrate`, and take
  pause = destination RESUME event timestamp - source STOP event timestamp
(both are QEMU's host real-time stamps), plus query-migrate's downtime/total-time/transferred.
Then read the destination's serial output: the guest must verify two more rounds there.

Settings: "default" (QEMU's defaults: downtime-limit 300 ms, max-bandwidth 128 MiB/s in 7.2) and
"tuned" (downtime-limit 1 ms, max-bandwidth unlimited). A migration that has not converged
after --converge-timeout seconds is forced to finish by raising downtime-limit to 60 s; it is
reported with converged=false (its pause is then a stop-and-copy of what was left).
"""
import argparse
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

VERIFY = re.compile(rb"verify ok round=(\d+) cpu=0")


class Qmp:
    def __init__(self, path, timeout=30):
        deadline = time.time() + timeout
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.connect(path)
                break
            except OSError:
                self.sock.close()
                if time.time() > deadline:
                    raise
                time.sleep(0.02)
        self.file = self.sock.makefile("rb")
        self.events = []
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)
        self.replies = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        greeting = json.loads(self.file.readline())
        assert "QMP" in greeting, greeting
        self.reader.start()
        self.cmd("qmp_capabilities")

    def _read(self):
        for line in self.file:
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            with self.cond:
                if "event" in msg:
                    self.events.append(msg)
                else:
                    self.replies.append(msg)
                self.cond.notify_all()

    def cmd(self, name, **args):
        msg = {"execute": name}
        if args:
            msg["arguments"] = args
        with self.cond:
            self.replies.clear()
        self.sock.sendall(json.dumps(msg).encode() + b"\n")
        with self.cond:
            if not self.cond.wait_for(lambda: self.replies, timeout=30):
                raise RuntimeError(f"QMP {name}: no reply")
            reply = self.replies.pop(0)
        if "error" in reply:
            raise RuntimeError(f"QMP {name}: {reply['error']}")
        return reply.get("return")

    def wait_event(self, name, timeout):
        with self.cond:
            ok = self.cond.wait_for(lambda: any(e["event"] == name for e in self.events), timeout)
            if not ok:
                return None
            return next(e for e in self.events if e["event"] == name)

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


class SerialRounds:
    """Tails a serial log file and timestamps each new `verify ok round=N cpu=0`."""

    def __init__(self, path):
        self.path = path
        self.events = []  # (round, time.time())
        self.failure = None
        self.stop = False
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self):
        pos = 0
        buf = b""
        while not self.stop:
            try:
                with open(self.path, "rb") as f:
                    f.seek(pos)
                    data = f.read()
                    pos += len(data)
            except FileNotFoundError:
                data = b""
            now = time.time()
            buf += data
            *lines, buf = buf.split(b"\n")
            for line in lines:
                m = VERIFY.search(line)
                if m:
                    self.events.append((int(m.group(1)), now))
                if b"FAIL" in line and self.failure is None:
                    self.failure = line.decode(errors="replace")
            time.sleep(0.005)

    def round(self):
        return self.events[-1][0] if self.events else 0

    def wait_round(self, target, timeout):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.round() >= target:
                return True
            if self.failure:
                return False
            time.sleep(0.01)
        return self.round() >= target

    def rate(self, t0, t1):
        n = sum(1 for _, t in self.events if t0 <= t <= t1)
        return (n / (t1 - t0) if t1 > t0 else 0.0), n

    def close(self):
        self.stop = True
        self.thread.join()


def parse_rate(s, ws_mib):
    if s == "idle":
        return {"label": s, "pages_per_sec": 256, "working_set_mib": 1}
    if s == "max":
        return {"label": s, "pages_per_sec": 0, "working_set_mib": ws_mib}
    return {"label": s, "pages_per_sec": int(s), "working_set_mib": ws_mib}


def throughput(rounds_per_s, n, window, area_bytes, ws_bytes):
    return {"rounds_per_s": rounds_per_s, "rounds": n, "window_s": window,
            "verified_MBps": rounds_per_s * area_bytes / 1e6,
            "rewritten_pages_per_s": rounds_per_s * (ws_bytes // 4096)}


def qemu_cmd(qemu, fw, size, work, serial, qmp, incoming=None):
    append = f"name=Q pages_per_sec={work['pages_per_sec']} working_set_mib={work['working_set_mib']}"
    cmd = [qemu, "-M", "pc", "-accel", "tcg", "-m", f"{size}M", "-kernel", fw, "-append", append,
           "-display", "none", "-nodefaults", "-no-user-config", "-serial", f"file:{serial}",
           "-qmp", f"unix:{qmp},server=on,wait=off"]
    if incoming:
        cmd += ["-incoming", f"unix:{incoming}"]
    return cmd


def run_once(args, size, work, setting, tmp, run_index):
    mib = 1024 * 1024
    area_bytes = size * mib - 2 * mib
    ws_bytes = min(work["working_set_mib"] * mib, area_bytes)
    d = tempfile.mkdtemp(dir=tmp, prefix=f"m{size}-{work['label']}-{setting}-{run_index}-")
    src_log, dst_log = os.path.join(d, "src.log"), os.path.join(d, "dst.log")
    src_qmp, dst_qmp, mig = (os.path.join(d, n) for n in ("src.qmp", "dst.qmp", "mig.sock"))
    out = {"run": run_index}
    procs = []
    qmps = []
    tails = []
    try:
        procs.append(subprocess.Popen(qemu_cmd(args.qemu, args.firmware, size, work, src_log, src_qmp),
                                      stdout=subprocess.DEVNULL, stderr=open(os.path.join(d, "src.err"), "w")))
        procs.append(subprocess.Popen(qemu_cmd(args.qemu, args.firmware, size, work, dst_log, dst_qmp, mig),
                                      stdout=subprocess.DEVNULL, stderr=open(os.path.join(d, "dst.err"), "w")))
        src_t, dst_t = SerialRounds(src_log), SerialRounds(dst_log)
        tails += [src_t, dst_t]
        src, dst = Qmp(src_qmp), Qmp(dst_qmp)
        qmps += [src, dst]
        t_boot = time.time()
        if not src_t.wait_round(2, 600):
            raise RuntimeError(f"source firmware did not verify round 2: {src_t.failure}")
        out["setup_s"] = time.time() - t_boot
        t0 = time.time()
        time.sleep(args.window)
        while src_t.rate(t0, time.time())[1] < 2 and time.time() < t0 + 30:
            time.sleep(0.02)
        t1 = time.time()
        r, n = src_t.rate(t0, t1)
        out["throughput"] = {"before": throughput(r, n, t1 - t0, area_bytes, ws_bytes)}

        if setting == "tuned":
            src.cmd("migrate-set-parameters", **{"downtime-limit": 1, "max-bandwidth": 1 << 62})
        params = src.cmd("query-migrate-parameters")
        out["downtime_limit_ms"] = params.get("downtime-limit")
        out["max_bandwidth"] = params.get("max-bandwidth")
        t_mig = time.time()
        src.cmd("migrate", uri=f"unix:{mig}")
        converged = True
        stop = src.wait_event("STOP", args.converge_timeout)
        if stop is None:
            converged = False
            info = src.cmd("query-migrate")
            out["at_timeout"] = {k: info.get(k) for k in ("status", "expected-downtime")}
            out["at_timeout"]["ram"] = info.get("ram")
            src.cmd("migrate-set-parameters", **{"downtime-limit": 60000})
            stop = src.wait_event("STOP", 120)
            if stop is None:
                raise RuntimeError("migration did not stop the source even when forced")
        resume = dst.wait_event("RESUME", 120)
        if resume is None:
            raise RuntimeError("no RESUME on the destination")
        t_done = time.time()
        deadline = time.time() + 30
        while True:
            info = src.cmd("query-migrate")
            if info.get("status") in ("completed", "failed", "cancelled") or time.time() > deadline:
                break
            time.sleep(0.02)
        ts = lambda e: e["timestamp"]["seconds"] + e["timestamp"]["microseconds"] / 1e6
        pause_us = int(round((ts(resume) - ts(stop)) * 1e6))
        out.update({"converged": converged, "status": info.get("status"),
                    "pause_us": pause_us, "stops_us": [pause_us],
                    "downtime_ms": info.get("downtime"), "total_ms": info.get("total-time"),
                    "setup_ms": info.get("setup-time"),
                    "bytes_transferred": (info.get("ram") or {}).get("transferred"),
                    "dirty_sync_count": (info.get("ram") or {}).get("dirty-sync-count"),
                    "ram": info.get("ram")})
        r, n = src_t.rate(t_mig, t_done)
        r2, n2 = dst_t.rate(t_mig, t_done)
        out["throughput"]["during"] = throughput((n + n2) / (t_done - t_mig), n + n2, t_done - t_mig,
                                                 area_bytes, ws_bytes)
        # The witness on the destination: two more clean rounds there.
        first = dst_t.round()
        ok = dst_t.wait_round(max(first, src_t.round()) + 2, 120) and dst_t.failure is None
        out["verified_after"] = bool(ok)
        if dst_t.failure:
            out["failure"] = dst_t.failure
        t0 = time.time()
        time.sleep(args.window)
        while dst_t.rate(t0, time.time())[1] < 2 and time.time() < t0 + 30:
            time.sleep(0.02)
        t1 = time.time()
        r, n = dst_t.rate(t0, t1)
        out["throughput"]["after"] = throughput(r, n, t1 - t0, area_bytes, ws_bytes)
    except Exception as e:  # report and go on with the next run
        out["error"] = str(e)
    finally:
        for q in qmps:
            q.close()
        for p in procs:
            p.kill()
            p.wait()
        for t in tails:
            t.close()
        if not args.keep:
            shutil.rmtree(d, ignore_errors=True)
    return out


def memmove_bound(size_mib, repeats=5):
    """The host's memmove over the same bytes (overlapping by the same delta as lparvisor-bench,
    both directions, best of N), so QEMU's pause can be set beside this machine's copy speed."""
    import ctypes
    mib = 1 << 20
    delta = min(64, size_mib // 4) * mib
    buf = (ctypes.c_char * (size_mib * mib + delta))()
    ctypes.memset(buf, 0x5A, len(buf))  # populated
    base = ctypes.addressof(buf)
    best = {}
    for name, dst, src in (("up", base + delta, base), ("down", base, base + delta)):
        b = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            ctypes.memmove(dst, src, size_mib * mib)
            b = min(b, time.perf_counter() - t0)
        best[name + "_ms"] = b * 1e3
    del buf
    return {"size_mib": size_mib, "delta_mib": delta // mib, **best}


def percentile(values, p):
    if not values:
        return 0
    v = sorted(values)
    import math
    rank = max(1, min(len(v), math.ceil(p / 100 * len(v))))
    return v[rank - 1]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="64,256,1024")
    ap.add_argument("--rates", default="idle,25000,200000")
    ap.add_argument("--settings", default="default,tuned")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--working-set", type=int, default=64)
    ap.add_argument("--window", type=float, default=2.0)
    ap.add_argument("--converge-timeout", type=float, default=30.0)
    ap.add_argument("--firmware", default=os.environ.get("LPARVISOR_FIRMWARE", "build/guest-firmware/lparvisor-firmware"))
    ap.add_argument("--qemu", default="qemu-system-x86_64")
    ap.add_argument("--json", default="")
    ap.add_argument("--quick", action="store_true", help="64 and 256 MiB, 2 runs, 1 s windows")
    ap.add_argument("--keep", action="store_true", help="keep the serial logs")
    args = ap.parse_args()
    # Killed: still run the finally blocks, which kill the two QEMUs.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.quick:
        sizes = [s for s in sizes if s <= 256]
        args.runs = min(args.runs, 2)
        args.window = min(args.window, 1.0)
        args.converge_timeout = min(args.converge_timeout, 20.0)
    version = subprocess.run([args.qemu, "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    doc = {"tool": "qemu_migration.py", "qemu": version, "host": " ".join(platform.uname()),
           "accel": "tcg", "runs_per_case": args.runs, "cases": []}
    tmp = tempfile.mkdtemp(prefix="qemu-mig-")
    started = time.time()
    doc["memmove"] = []
    for size in sizes:
        bound = memmove_bound(size)
        doc["memmove"].append(bound)
        overlap_ms = min(bound["up_ms"], bound["down_ms"])
        print(f"host memmove {size} MiB: up {bound['up_ms']:.2f} ms, down {bound['down_ms']:.2f} ms",
              file=sys.stderr, flush=True)
        for rate in args.rates.split(","):
            work = parse_rate(rate, args.working_set)
            for setting in args.settings.split(","):
                print(f"== qemu-{setting} {size} MiB rate={rate}", file=sys.stderr, flush=True)
                runs = []
                for i in range(args.runs):
                    r = run_once(args, size, work, setting, tmp, i)
                    runs.append(r)
                    if "error" in r:
                        print(f"   run {i}: ERROR {r['error']}", file=sys.stderr, flush=True)
                    else:
                        print(f"   run {i}: pause {r['pause_us'] / 1e3:.2f} ms (downtime {r['downtime_ms']} ms), "
                              f"total {r['total_ms']} ms, converged={r['converged']}, "
                              f"verified={r['verified_after']}", file=sys.stderr, flush=True)
                good = [r for r in runs if "error" not in r]
                stops = [r["pause_us"] for r in good]
                avg = lambda key, w: (sum(r["throughput"][w]["rounds_per_s"] for r in good
                                          if w in r.get("throughput", {})) / max(1, len(good)))
                case = {"system": f"qemu-{setting}", "size_mib": size, "rate": work["label"],
                        "pages_per_sec": work["pages_per_sec"], "working_set_mib": work["working_set_mib"],
                        "mode": setting, "runs": runs, "stops": len(stops),
                        "pause_us": {"p50": percentile(stops, 50), "p99": percentile(stops, 99),
                                     "max": percentile(stops, 100), "sum": sum(stops)},
                        "total_ms": sum(r["total_ms"] or 0 for r in good),
                        "bytes_copied": sum(r["bytes_transferred"] or 0 for r in good),
                        "memmove_overlap_ms": overlap_ms,
                        "pause_max_over_memmove": percentile(stops, 100) / 1e3 / overlap_ms,
                        "converged": all(r["converged"] for r in good) if good else False,
                        "verified_after": bool(good) and all(r["verified_after"] for r in good),
                        "throughput": {w: {"rounds_per_s": avg("rounds_per_s", w)}
                                       for w in ("before", "during", "after")}}
                if len(good) < len(runs):
                    case["error"] = f"{len(runs) - len(good)} of {len(runs)} runs failed"
                doc["cases"].append(case)
    doc["elapsed_s"] = time.time() - started
    shutil.rmtree(tmp, ignore_errors=True)
    print(f"\nQEMU local live migration (pause = dst RESUME - src STOP, per migration)")
    print(f"{'size':>6} {'rate':>7} {'setting':<14} {'runs':>4} {'p50 ms':>9} {'max ms':>9} "
          f"{'total ms':>10} {'max/mm':>7} {'MB sent':>9} {'rounds/s b/d/a':<20} conv/check")
    for c in doc["cases"]:
        p = c["pause_us"]
        tp = "/".join(f"{c['throughput'][w]['rounds_per_s']:.2f}" for w in ("before", "during", "after"))
        print(f"{c['size_mib']:>5}M {c['rate']:>7} {c['system']:<14} {c['stops']:>4} {p['p50'] / 1e3:>9.2f} "
              f"{p['max'] / 1e3:>9.2f} {c['total_ms']:>10} {c.get('pause_max_over_memmove', 0):>7.2f} {c['bytes_copied'] / 1e6:>9.1f} {tp:<20} "
              f"{'converged' if c['converged'] else 'FORCED'} / {'ok' if c['verified_after'] else 'NOT VERIFIED'}"
              + (f" ({c['error']})" if "error" in c else ""))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=2)


if __name__ == "__main__":
    main()
