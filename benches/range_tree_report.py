#!/usr/bin/env python3
"""Print the BENCHMARKS.md tables (medians and ratios) of `cargo bench --bench range_tree`.

Usage: python3 benches/range_tree_report.py [CRITERION_DIR] [BASELINE]
CRITERION_DIR defaults to $CARGO_TARGET_DIR/criterion (or target/criterion); BASELINE to
"new" (the last run; pass the name given to --save-baseline otherwise).
"""
import json
import os
import sys
from pathlib import Path


def load(root: Path, baseline: str):
    out = {}
    for bench in root.rglob(f"{baseline}/benchmark.json"):
        meta = json.loads(bench.read_text())
        est = json.loads((bench.parent / "estimates.json").read_text())
        ns = est["median"]["point_estimate"]
        out[(meta["group_id"], meta["function_id"])] = ns
    return out


def fmt(ns):
    return f"{ns / 1000:.2f} µs" if ns >= 10_000 else f"{ns:.1f} ns"


def main():
    target = os.environ.get("CARGO_TARGET_DIR", "target")
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(target) / "criterion"
    baseline = sys.argv[2] if len(sys.argv) > 2 else "new"
    r = load(root, baseline)
    if not r:
        sys.exit(f"no results for baseline {baseline!r} under {root}")

    rows = ["range_tree", "svm_find", "btreemap", "btreemap_end", "rangemap"]
    print("### Lookup by address (median ns per lookup; ratio = time / btreemap)\n")
    print("| pattern | ranges | " + " | ".join(rows) + " | range_tree / btreemap "
          "| svm_find / btreemap | rangemap / btreemap |")
    print("|---" * (len(rows) + 5) + "|")
    small = {}
    for pattern in ["random", "sequential"]:
        for n in [1000, 10000, 100000, 1000000]:
            g = f"lookup/{pattern}/{n}"
            v = {k: r.get((g, k)) for k in rows}
            if v["btreemap"] is None:
                continue
            cells = [f"{v[k]:.1f}" if v[k] else "–" for k in rows]
            ratio = [v[k] / v["btreemap"] if v[k] else float("nan")
                     for k in ("range_tree", "svm_find", "rangemap")]
            print(f"| {pattern} | {n:,} | " + " | ".join(cells) + " | "
                  + " | ".join(f"{x:.2f}" for x in ratio) + " |")
            if n == 1000:
                small[pattern] = v
            if n == 1000000 and pattern in small:
                small[pattern + "_big"] = v
    print("\n### Lookup at 10^6 ranges / lookup at 10^3 ranges\n")
    print("| pattern | " + " | ".join(rows) + " |")
    print("|---" * (len(rows) + 1) + "|")
    for pattern in ["random", "sequential"]:
        a, b = small.get(pattern), small.get(pattern + "_big")
        if a and b:
            print(f"| {pattern} | " + " | ".join(
                f"{b[k] / a[k]:.2f}" if a[k] and b[k] else "–" for k in rows) + " |")

    print("\n### Overlap iteration and invalidation of 1 GiB (median ns per range)\n")
    print("| ranges | creation order | overlap range_tree | overlap btreemap | range_tree / btreemap "
          "| invalidate_clear | invalidate_unmap |")
    print("|---" * 7 + "|")
    for label, n in [("2MiB", 512), ("4KiB", 262144)]:
        for order in ["addr_order", "shuffled"]:
            ov = f"overlap/{label}/{order}"
            inv = f"invalidate/{label}/{order}"
            t, b = r.get((ov, "range_tree")), r.get((ov, "btreemap"))
            c, u = r.get((inv, "invalidate_clear")), r.get((inv, "invalidate_unmap"))
            if t is None:
                continue
            per = lambda x: f"{x / n:.1f}" if x else "–"
            ratio = f"{t / b:.2f}" if b else "–"
            print(f"| {n:,} × {label} | {order} | {per(t)} | {per(b)} | {ratio} | {per(c)} "
                  f"| {per(u)} |")


if __name__ == "__main__":
    main()
