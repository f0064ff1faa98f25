#!/usr/bin/env python3
"""Merge the results of lparvisor-bench and qemu_migration.py into one JSON, and draw the pause
of every case as an SVG (stdlib only, the SVG written by hand).

  chart.py --lparvisor L.json --qemu Q.json --out latest.json --svg pause.svg

Chart: one group per (size, rate); in it one bar per system (stop-and-copy, live, QEMU default,
QEMU tuned) whose height is the largest pause of that case, with a dark tick at the median (p50)
stop; log-scale y axis in milliseconds. A hatched (lighter) bar marks a case whose guest did not
verify afterwards or a QEMU migration that had to be forced (did not converge).
"""
import argparse
import json
import math
import os
import time

SYSTEMS = [("stop-and-copy", "lparvisor stop-and-copy", "#1f77b4"),
           ("live", "lparvisor live", "#2ca02c"),
           ("qemu-default", "QEMU migration, defaults", "#ff7f0e"),
           ("qemu-tuned", "QEMU migration, 1 ms / unlimited", "#d62728")]


def system_key(case):
    return case["mode"] if case.get("system") == "lparvisor" else case["system"]


def rate_order(rate):
    return {"idle": -1, "max": 10**12}.get(rate, int(rate) if str(rate).isdigit() else 10**11)


def esc(s):
    return str(s).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def draw(cases, title, subtitle):
    groups = sorted({(c["size_mib"], c["rate"]) for c in cases}, key=lambda g: (g[0], rate_order(g[1])))
    by = {(c["size_mib"], c["rate"], system_key(c)): c for c in cases}
    values = [c["pause_us"][k] / 1e3 for c in cases if "pause_us" in c for k in ("p50", "max")
              if c["pause_us"][k] > 0]
    lo = 10 ** math.floor(math.log10(min(values))) if values else 0.01
    hi = 10 ** math.ceil(math.log10(max(values))) if values else 1000
    if hi <= lo:
        hi = lo * 10
    bar_w, gap = 16, 22
    group_w = bar_w * len(SYSTEMS) + gap
    left, top, plot_h = 70, 70, 320
    width = left + group_w * max(1, len(groups)) + 30
    height = top + plot_h + 150
    y = lambda ms: top + plot_h - (math.log10(ms) - math.log10(lo)) / (math.log10(hi) - math.log10(lo)) * plot_h
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'font-family="sans-serif" font-size="11">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="{left}" y="22" font-size="15" font-weight="bold">{esc(title)}</text>',
           f'<text x="{left}" y="40" fill="#555">{esc(subtitle)}</text>']
    # Axis and decades.
    d = lo
    while d <= hi * 1.0001:
        yy = y(d)
        out.append(f'<line x1="{left}" x2="{width - 20}" y1="{yy:.1f}" y2="{yy:.1f}" stroke="#ddd"/>')
        label = f"{d:g}"
        out.append(f'<text x="{left - 6}" y="{yy + 4:.1f}" text-anchor="end">{label}</text>')
        d *= 10
    out.append(f'<text transform="translate(18,{top + plot_h / 2}) rotate(-90)" text-anchor="middle">'
               f'pause per stop, ms (log)</text>')
    out.append(f'<line x1="{left}" x2="{left}" y1="{top}" y2="{top + plot_h}" stroke="black"/>')
    out.append(f'<line x1="{left}" x2="{width - 20}" y1="{top + plot_h}" y2="{top + plot_h}" stroke="black"/>')
    for gi, (size, rate) in enumerate(groups):
        gx = left + gap / 2 + gi * group_w
        for si, (key, _, color) in enumerate(SYSTEMS):
            c = by.get((size, rate, key))
            x = gx + si * bar_w
            if not c or "pause_us" not in c or c.get("stops", 0) == 0:
                if c:  # ran but failed
                    out.append(f'<text x="{x + bar_w / 2}" y="{top + plot_h - 4}" text-anchor="middle" '
                               f'fill="{color}">x</text>')
                continue
            mx, p50 = c["pause_us"]["max"] / 1e3, c["pause_us"]["p50"] / 1e3
            weak = (not c.get("verified_after", True)) or (c.get("converged") is False)
            yy = y(max(mx, lo))
            out.append(f'<rect x="{x + 1}" y="{yy:.1f}" width="{bar_w - 2}" height="{top + plot_h - yy:.1f}" '
                       f'fill="{color}" fill-opacity="{0.35 if weak else 0.85}">'
                       f'<title>{esc(key)} {size} MiB rate={esc(rate)}: max {mx:.3f} ms, p50 {p50:.3f} ms, '
                       f'{c["stops"]} stops{", shmem backing" if c.get("backing") == "shmem" else ""}</title></rect>')
            yp = y(max(p50, lo))
            out.append(f'<line x1="{x + 1}" x2="{x + bar_w - 1}" y1="{yp:.1f}" y2="{yp:.1f}" '
                       f'stroke="black" stroke-width="2"/>')
        cx = gx + len(SYSTEMS) * bar_w / 2
        out.append(f'<text x="{cx}" y="{top + plot_h + 16}" text-anchor="middle">{size} MiB</text>')
        out.append(f'<text x="{cx}" y="{top + plot_h + 30}" text-anchor="middle" fill="#555">'
                   f'{esc(rate if rate in ("idle", "max") else f"{int(rate) // 1000}k pg/s")}</text>')
    ly = top + plot_h + 52
    for si, (_, label, color) in enumerate(SYSTEMS):
        lx = left + (si % 2) * 300
        yy = ly + (si // 2) * 18
        out.append(f'<rect x="{lx}" y="{yy - 10}" width="12" height="12" fill="{color}"/>')
        out.append(f'<text x="{lx + 18}" y="{yy}">{esc(label)}</text>')
    out.append(f'<text x="{left}" y="{ly + 44}" fill="#555">bar = max pause, black tick = p50; pale bar = '
               f'guest not verified after, or QEMU migration forced (did not converge); x = case failed</text>')
    out.append('</svg>')
    return "\n".join(out) + "\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lparvisor", required=True)
    ap.add_argument("--qemu")
    ap.add_argument("--out", required=True)
    ap.add_argument("--svg", required=True)
    args = ap.parse_args()
    with open(args.lparvisor) as f:
        lpv = json.load(f)
    qemu = {"cases": []}
    if args.qemu:
        try:
            with open(args.qemu) as f:
                qemu = json.load(f)
        except (OSError, ValueError):
            pass
    doc = {"generated": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
           "source": os.environ.get("BENCH_SOURCE", "unknown"),
           "lparvisor": {k: v for k, v in lpv.items() if k != "cases"},
           "qemu": {k: v for k, v in qemu.items() if k != "cases"},
           "memmove": lpv.get("memmove", []),
           "cases": lpv.get("cases", []) + qemu.get("cases", [])}
    with open(args.out, "w") as f:
        json.dump(doc, f, indent=2)
    kinds = {"nested-tcg": "nested KVM under QEMU TCG", "pvm": "PVM", "hardware": "hardware KVM",
             "nested": "KVM in a VM"}
    kind = lpv.get("environment", {}).get("kvm_kind")
    if kind is None:  # results from before the bench reported its environment
        kind = "nested-tcg" if "cloud" in lpv.get("host", "") else "KVM"
    shmem = sum(1 for c in lpv.get("cases", []) if c.get("backing") == "shmem")
    sub = (f"lparvisor: {lpv.get('host', '?')} ({kinds.get(kind, kind)}"
           f"{f'; {shmem} case(s) on 4 KiB shmem, not hugetlb' if shmem else ''}); "
           f"QEMU: {qemu.get('qemu', 'not run')} {qemu.get('accel', '')}")
    with open(args.svg, "w") as f:
        f.write(draw(doc["cases"], "Pause per stop: lparvisor MVSTOR vs QEMU local live migration", sub))


if __name__ == "__main__":
    main()
