#!/usr/bin/env python3
"""Pulling data from a simulator-built dataset: `query` and `export` of one source's hour,
against DuckDB over the same files and against a full scan, in one run.

    cargo build --release
    pip install duckdb
    tools/dataset_bench.py --rows 10000000      # builds the dataset, then times the pulls
    tools/dataset_bench.py --smoke              # 200,000 rows: checks the script still works

It starts its own mosquitto on a free loopback port and the collector, publishes the simulated
zone with `simulate --max` in chunks (each chunk its own `--id-prefix`, so new sources, over the
same event-time span that starts 30 hours ago, at `--hz 0.5` so the span covers several hours)
until the collector has filed --rows rows, stops the collector (its files are committed), then
times each pull as its own process (wall seconds and peak RSS from wait4). The collector rotates
files every --max-age seconds (2 by default: many small files, as hours of real-time traffic
make); after the first round the script runs `compact` and times the pulls again, checking that
every query gives the same answer. No figure is asserted.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from benchlib import start_mosquitto, stats

# Radar tracks carry epoch-ms times; RSM participants carry only secMark, which the collector
# places in the minute nearest the receive time (DOMAIN.md), so simulated RSMs land in the
# current hour whatever --start says.
KIND = "radar_target"


def timed(cmd):
    """Runs cmd; returns (wall seconds, its own peak RSS in MiB from wait4, stdout text)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.time()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err)
        _, status, ru = os.wait4(proc.pid, 0)
        wall = time.time() - t0
        out.seek(0)
        err.seek(0)
        if os.waitstatus_to_exitcode(status) != 0:
            sys.exit(f"{cmd[:3]} failed: {err.read().decode(errors='replace')[-2000:]}")
        return wall, ru.ru_maxrss / 1024, out.read().decode(errors="replace")


def duckdb_cmd(sql):
    return [sys.executable, "-c",
            "import duckdb,sys,json; r=duckdb.sql(sys.argv[1]).fetchall(); print(json.dumps(r, default=str))", sql]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--chunk", type=int, default=1_000_000, help="messages per simulate run")
    ap.add_argument("--binary", default="target/release/v2x-collector")
    ap.add_argument("--keep", help="keep the dataset in this directory")
    ap.add_argument("--max-age", type=float, default=2.0, help="the collector's writer.max_age_s")
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args()
    if args.smoke:
        args.rows, args.chunk = 200_000, 50_000
    binary = os.path.abspath(args.binary)
    if not os.path.exists(binary):
        sys.exit(f"{binary} missing: run `cargo build --release` (or pass --binary)")
    try:
        import duckdb  # noqa: F401
    except ImportError:
        sys.exit("pip install duckdb")
    work = args.keep or tempfile.mkdtemp(prefix="v2x-dataset-")
    os.makedirs(work, exist_ok=True)
    data = os.path.join(work, "data")
    broker, port = start_mosquitto(work)
    start_s = (int(time.time()) // 3600 - 30) * 3600
    try:
        cfg = os.path.join(work, "collector.toml")
        with open(cfg, "w") as f:
            f.write(f'collector_id = "bench"\ndata_dir = "{data}"\nwal_dir = "{work}/wal"\n'
                    f'stats_interval_s = 0.5\n[http]\nenabled = false\n'
                    f'[writer]\nmax_age_s = {args.max_age}\n'
                    f'[mqtt]\nbroker = "mqtt://127.0.0.1:{port}"\nclient_id = "bench-collector"\n')
        log = os.path.join(work, "collector.log")
        collector = subprocess.Popen([binary, "--log-format", "json", "run", "--config", cfg],
                                     stdout=subprocess.DEVNULL, stderr=open(log, "w"))
        end = time.time() + 30
        while "subscriptions acknowledged" not in open(log).read():
            if time.time() > end:
                sys.exit("the collector did not subscribe")
            time.sleep(0.1)
        t0 = time.time()
        sent, chunk = 0, 0
        while stats(log).get("rows", 0) < args.rows and chunk < 100:
            subprocess.run([binary, "simulate", "--broker", f"mqtt://127.0.0.1:{port}", "--max",
                            "--rsus", "20", "--vehicles", "100", "--hz", "0.5", "--qos", "1",
                            "--connections", "2", "--count", str(args.chunk),
                            "--start", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(start_s)),
                            "--id-prefix", f"c{chunk}-"],
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            sent += args.chunk
            chunk += 1
            end = time.time() + 120
            while stats(log).get("acked", 0) < sent and time.time() < end:
                time.sleep(0.2)
        collector.terminate()
        collector.wait(timeout=120)
        s = stats(log)
        print(f"dataset: {s.get('rows')} rows from {sent} messages in {time.time() - t0:.0f} s "
              f"({s.get('quarantined')} quarantined), {data}")
        def summary(title):
            listing = json.loads(subprocess.run([binary, "ls", "--data", data, "--json"], check=True,
                                                capture_output=True).stdout)
            print(title)
            for k in listing["kinds"]:
                if k["rows"]:
                    print(f"  {k['kind']:16} {k['rows']:>10} rows {k['files']:>6} files {k['bytes']:>12} bytes")

        summary("files written by the collector:")
        source = "c0-RSU0003R"
        lo = start_s + 3600
        hi = lo + 3600
        iso = lambda t: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))  # noqa: E731
        window = f"event_ts >= TIMESTAMP '{iso(lo)}' AND event_ts < TIMESTAMP '{iso(hi)}'"
        agg = "count(*) AS n, min(speed_mps) AS lo, max(speed_mps) AS hi, count(DISTINCT target_id) AS ids"
        glob = f"read_parquet('{data}/{KIND}/**/*.parquet', hive_partitioning=true)"
        pulls = [
            ("query, one source, one hour", [binary, "query", "--data", data, "--format", "csv",
                                             f"SELECT {agg} FROM {KIND} WHERE source_id = '{source}' AND {window}"]),
            ("DuckDB, same query", duckdb_cmd(f"SELECT {agg} FROM {glob} WHERE source_id = '{source}' AND {window}")),
            ("query, full scan (all hours)", [binary, "query", "--data", data, "--format", "csv",
                                              f"SELECT {agg} FROM {KIND} WHERE source_id = '{source}'"]),
            ("DuckDB, full scan", duckdb_cmd(f"SELECT {agg} FROM {glob} WHERE source_id = '{source}'")),
            ("export, one source, one hour", [binary, "export", "--data", data, "--kind", KIND,
                                              "--from", iso(lo), "--to", iso(hi), "--source", source,
                                              "--out", os.path.join(work, "window.parquet")]),
            ("DuckDB, same export (COPY)", duckdb_cmd(
                f"COPY (SELECT * EXCLUDE (date, hour) FROM {glob} WHERE source_id = '{source}' AND {window} "
                f"ORDER BY source_id, event_ts) TO '{work}/window-duckdb.parquet' (FORMAT parquet)")),
            ("export, whole kind", [binary, "export", "--data", data, "--kind", KIND,
                                    "--out", os.path.join(work, "all.parquet")]),
        ]
        def round_of_pulls(title):
            print(f"\n{title}\n{'pull':32} {'wall s':>8} {'peak RSS MiB':>13}  result")
            results = []
            for name, cmd in pulls:
                wall, rss, out = timed(cmd)
                last = out.strip().splitlines()[-1][:60] if out.strip() else ""
                results.append(last)
                print(f"{name:32} {wall:8.2f} {rss:13.0f}  {last}")
            return results

        before = round_of_pulls("before compaction")
        wall, rss, out = timed([binary, "compact", "--data", data, "--quiet-secs", "0", "--min-age-hours", "1"])
        print(f"\ncompact: {wall:.1f} s, peak RSS {rss:.0f} MiB")
        summary("files after compaction:")
        after = round_of_pulls("after compaction")
        same = [b == a for b, a in zip(before, after) if b or a]
        print(f"\nsame results before and after compaction: {all(same)}")
        if not all(same):
            sys.exit("compaction changed a query result")
    finally:
        broker.kill()
        broker.wait()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
