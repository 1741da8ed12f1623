#!/usr/bin/env python3
"""Paired wall-clock A/B of two builds of `benches/hot_path.rs`, for a noisy shared machine.

    cargo bench --bench hot_path --no-run        # in each checkout; copy the binary it names
    tools/hot_path_ab.py --base /tmp/hot_path-base --new /tmp/hot_path-new \\
        [--base-dir ../base-checkout] [--iterations 8] [--measurement-time 3]

Runs every benchmark of the bench once per build, back to back, --iterations times, with the
order of the two builds alternating between iterations so that a drift of the machine's speed
falls on both. Each pair gives one ratio, new / base, of criterion's median throughput; the
script prints per benchmark the median of those ratios, their range and how many are >= 1.
Pairs are seconds apart, so they share the machine's state, which rounds of minutes do not.
Each build runs in its own directory (--base-dir, --new-dir: its checkout, where its bench
finds its inputs and keeps its criterion data). Nothing is compiled here; run nothing else
while it measures. No figure is asserted.
"""

import argparse
import os
import re
import statistics
import subprocess
import sys

BENCHES = [
    "decode/bsm_messages",
    "decode/rsm_participant_rows",
    "decode_to_parquet/bsm_messages",
    "wal_decode_parquet/bsm_messages",
]
UNITS = {"elem/s": 1e-3, "Kelem/s": 1.0, "Melem/s": 1e3, "Gelem/s": 1e6}
THRPT = re.compile(r"thrpt:\s+\[\S+ \S+ (\S+) (\S+)")


def median_thrpt(binary, cwd, bench, args):
    """Criterion's median throughput of one benchmark, in thousands per second."""
    out = subprocess.run(
        [binary, "--bench", "--noplot", "--warm-up-time", str(args.warm_up_time),
         "--measurement-time", str(args.measurement_time), bench],
        cwd=cwd, capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        sys.exit(f"{binary} {bench} failed ({out.returncode}):\n{out.stderr[-2000:]}")
    # The first throughput line is this run's; a second one ("change:") compares with the last.
    for line in out.stdout.splitlines():
        m = THRPT.search(line)
        if m and m.group(2) in UNITS:
            return float(m.group(1)) * UNITS[m.group(2)]
    sys.exit(f"{binary} {bench}: no throughput in its output:\n{out.stdout[-2000:]}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True, help="hot_path bench binary of the reference build")
    ap.add_argument("--new", required=True, help="hot_path bench binary of the build measured")
    ap.add_argument("--base-dir", default=".", help="directory the base binary runs in")
    ap.add_argument("--new-dir", default=".", help="directory the new binary runs in")
    ap.add_argument("--iterations", type=int, default=8)
    ap.add_argument("--warm-up-time", type=float, default=1)
    ap.add_argument("--measurement-time", type=float, default=3)
    ap.add_argument("--bench", action="append", help="only these benchmarks (repeatable)")
    args = ap.parse_args()
    if not 1 <= args.iterations <= 100:
        sys.exit("--iterations must be 1-100")
    builds = {"base": (os.path.abspath(args.base), args.base_dir),
              "new": (os.path.abspath(args.new), args.new_dir)}
    benches = args.bench or BENCHES
    ratios = {b: [] for b in benches}
    for it in range(args.iterations):
        order = ["base", "new"] if it % 2 == 0 else ["new", "base"]
        for bench in benches:
            got = {v: median_thrpt(*builds[v], bench, args) for v in order}
            ratios[bench].append(got["new"] / got["base"])
            print(f"iteration {it + 1} {bench}: new {got['new']:.1f} / base {got['base']:.1f} "
                  f"k/s = {ratios[bench][-1]:.2f}", flush=True)
    print(f"\n{'benchmark':34} {'median new/base':>15} {'min':>5} {'max':>5} {'pairs >= 1':>10}")
    for bench, rs in ratios.items():
        above = sum(r >= 1 for r in rs)
        print(f"{bench:34} {statistics.median(rs):15.2f} {min(rs):5.2f} {max(rs):5.2f} "
              f"{above:>5} of {len(rs)}")


if __name__ == "__main__":
    main()
