"""Summarise benches/compare runs: per benchmark, the median over rounds of base and new,
new/base, and the range of per-round ratios. Usage: compare.py <runs-dir> <base> <new>."""
import glob
import json
import os
import statistics
import sys


def fmt(ns):
    if ns >= 1e6:
        return f"{ns / 1e6:.2f} ms"
    if ns >= 1e3:
        return f"{ns / 1e3:.2f} µs"
    return f"{ns:.1f} ns"


def main():
    runs, base, new = sys.argv[1], sys.argv[2], sys.argv[3]
    rounds = {}
    for path in glob.glob(os.path.join(runs, "*.json")):
        side, r = os.path.basename(path)[:-5].split("-")
        rounds.setdefault(int(r), {})[side] = json.load(open(path))
    names = sorted({n for r in rounds.values() for n in r.get("new", {})})
    print(f"| benchmark | base ({base}) | new ({new}) | ratio | per-round |")
    print("|---|---|---|---|---|")
    for n in names:
        b = [r["base"][n] for r in rounds.values() if n in r.get("base", {}) and n in r.get("new", {})]
        w = [r["new"][n] for r in rounds.values() if n in r.get("base", {}) and n in r.get("new", {})]
        if not b:
            continue
        per = [y / x for x, y in zip(b, w)]
        mb, mw = statistics.median(b), statistics.median(w)
        print(f"| `{n}` | {fmt(mb)} | {fmt(mw)} | {mw / mb:.3f} | {min(per):.2f}–{max(per):.2f} |")
    print(f"\n{len(rounds)} rounds.")


main()
