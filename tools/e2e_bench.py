#!/usr/bin/env python3
"""End to end: drain the same queued backlog with three drainers, in one run.

    cargo build --release
    pip install paho-mqtt pyarrow        # for the Python baseline
    tools/e2e_bench.py --messages 200000 [--binary target/release/v2x-collector]
    tools/e2e_bench.py --smoke           # 2,000 messages: checks the script still works
    tools/e2e_bench.py --tls --messages 100000   # both drainers over TLS (mqtts://)

It starts its own mosquitto on a free loopback port. For each drainer it creates the drainer's
persistent session, queues the backlog (simulated BSMs, a tenth of them RSMs) while the drainer
is away, then starts it and times the drain to the last message:
  1. mosquitto_sub writing to /dev/null (the broker's own limit);
  2. v2x-collector (acks after the WAL fsync, Parquet committed at shutdown);
  3. tools/baseline_collector.py (paho-mqtt + pyarrow, acks on receipt).
Prints msg/s, CPU seconds and peak RSS of each, the ratios to mosquitto_sub, and the size of
the collector's Parquet against the raw JSON. No figure is asserted.
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from benchlib import publish, start_mosquitto, start_mosquitto_tls, stats

HERE = os.path.dirname(os.path.abspath(__file__))
TOPIC_BSM = "v2x/v1/obu/car-{}/bsm/up/float"
TOPIC_RSM = "V2X/RSU/RSU{:04}/RSM/UP"


def backlog(n):
    """(topic, payload) pairs: BSMs from 100 vehicles, every tenth an RSM with 20 participants."""
    t0 = int(time.time() * 1000) - 60_000
    out = []
    for i in range(n):
        if i % 10 == 9:
            parts = [{"ptcType": 1, "ptcId": k, "secMark": (t0 + i) % 60000,
                      "pos": {"lat": 397850000 + k * 10, "lon": 1165050000 + i % 1000},
                      "speed": 500 + k, "heading": 7200, "size": {"width": 180, "length": 460, "height": 30}}
                     for k in range(20)]
            out.append((TOPIC_RSM.format(i % 20), {"content": {"rsms": [{"refPos": {"lat": 397850000, "lon": 1165050000}, "participants": parts}]}}))
        else:
            out.append((TOPIC_BSM.format(i % 100), {"msgCnt": (i // 100) % 128, "id": f"car-{i % 100}", "timeStamp": t0 + i,
                                                     "pos": {"lat": 39.78 + (i % 1000) * 1e-6, "lon": 116.5}, "speed": 12.5, "heading": 90.0}))
    return [(t, json.dumps(p, separators=(",", ":")).encode()) for t, p in out]


def timed(cmd, done, stderr_path=None, limit=600):
    """Starts cmd, waits until done() (or the process exits), stops it with SIGTERM, returns
    (seconds to done, CPU seconds, peak RSS MiB)."""
    err = open(stderr_path, "w") if stderr_path else subprocess.DEVNULL
    t0 = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
    end = t0 + limit
    peak_kib = 0
    while time.time() < end:
        peak_kib = max(peak_kib, hwm_kib(proc.pid))
        # wait4 rather than poll(): it also gives the child's CPU time.
        pid, _, ru = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            return time.time() - t0, ru.ru_utime + ru.ru_stime, peak_kib / 1024
        if done():
            break
        time.sleep(0.02)
    elapsed = time.time() - t0
    peak_kib = max(peak_kib, hwm_kib(proc.pid))
    os.kill(proc.pid, signal.SIGTERM)
    _, _, ru = os.wait4(proc.pid, 0)
    return elapsed, ru.ru_utime + ru.ru_stime, peak_kib / 1024


def hwm_kib(pid):
    """Peak resident memory so far (VmHWM), 0 once the process is gone."""
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=200_000)
    ap.add_argument("--binary", default="target/release/v2x-collector")
    ap.add_argument("--smoke", action="store_true", help="2,000 messages, to check the script runs")
    ap.add_argument("--tls", action="store_true",
                    help="mosquitto_sub and the collector drain over TLS (a CA made with openssl); "
                         "no Python baseline")
    args = ap.parse_args()
    n = 2000 if args.smoke else args.messages
    binary = os.path.abspath(args.binary)
    if not os.path.exists(binary):
        sys.exit(f"{binary} missing: run `cargo build --release` (or pass --binary)")
    work = tempfile.mkdtemp(prefix="v2x-e2e-")
    if args.tls:
        broker, port, drain_port, ca = start_mosquitto_tls(work)
    else:
        broker, port = start_mosquitto(work)
        drain_port, ca = port, None
    results = {}
    try:
        items = backlog(n)
        raw_bytes = sum(len(p) for _, p in items)
        print(f"backlog: {n} messages, {raw_bytes} bytes of JSON, mosquitto on port {port}")

        # 1. mosquitto_sub to /dev/null.
        sub = ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(drain_port), "-q", "1", "-c", "-i", "bench-sub",
               "-t", "V2X/#", "-t", "v2x/#"] + (["--cafile", ca] if ca else [])
        subprocess.run(sub + ["-W", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        publish(port, items)
        results["mosquitto_sub"] = timed(sub + ["-C", str(n)], lambda: False)

        # 2. v2x-collector.
        ccfg = os.path.join(work, "collector.toml")
        open(ccfg, "w").write(f'collector_id = "bench"\ndata_dir = "{work}/data"\nwal_dir = "{work}/wal"\n'
                              f'stats_interval_s = 0.05\n[mqtt]\nbroker = "{"mqtts" if ca else "mqtt"}://127.0.0.1:{drain_port}"\n'
                              f'client_id = "bench-collector"\n' + (f'[mqtt.tls]\nca_file = "{ca}"\n' if ca else ""))
        log = os.path.join(work, "collector.log")

        def collector():
            return subprocess.Popen([binary, "--log-format", "json", "run", "--config", ccfg],
                                    stdout=subprocess.DEVNULL, stderr=open(log, "w"))
        p = collector()
        end = time.time() + 30
        while time.time() < end and "subscriptions acknowledged" not in open(log).read():
            time.sleep(0.05)
        p.terminate()
        p.wait(timeout=30)
        publish(port, items)
        log = os.path.join(work, "collector-drain.log")
        results["v2x-collector"] = timed([binary, "--log-format", "json", "run", "--config", ccfg],
                                         lambda: stats(log).get("acked", 0) >= n, stderr_path=log)
        parquet = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(os.path.join(work, "data"))
                      for f in fs if f.endswith(".parquet"))

        # 3. The Python baseline.
        base = [sys.executable, os.path.join(HERE, "baseline_collector.py"), "--port", str(port),
                "--topic", "#", "--client-id", "bench-baseline", "--out", os.path.join(work, "baseline")]
        try:
            import paho.mqtt.client  # noqa: F401
            import pyarrow  # noqa: F401
            have_python = not args.tls
        except ImportError:
            have_python = False
            print("baseline skipped: pip install paho-mqtt pyarrow")
        if have_python:
            # Create the session: connect once and leave after a moment.
            pre = subprocess.Popen(base + ["--count", str(n + 1)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1.5)
            pre.terminate()
            pre.wait(timeout=10)
            publish(port, items)
            results["python baseline"] = timed(base + ["--count", str(n)], lambda: False)

        ref = results["mosquitto_sub"][0]
        print(f"{'drainer':16} {'msg/s':>10} {'x mosquitto_sub':>16} {'CPU s':>7} {'peak RSS MiB':>13}")
        for name, (secs, cpu, rss) in results.items():
            print(f"{name:16} {n / secs:10.0f} {ref / secs:16.2f} {cpu:7.2f} {rss:13.1f}")
        print(f"v2x-collector Parquet: {parquet} bytes = {100 * parquet / raw_bytes:.1f} % of the raw JSON")
    finally:
        broker.kill()
        broker.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
