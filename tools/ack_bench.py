#!/usr/bin/env python3
"""What durability costs: drain the same queued backlog with acks after the WAL fsync
(the default) and with the fsync turned off (acks as soon as the message is written, as
peers ack on receipt), in one run, on one machine.

    cargo build --release
    tools/ack_bench.py [--messages 100000] [--binary target/release/v2x-collector]

It starts its own mosquitto on a free loopback port, queues the backlog for the collector's
persistent session while the collector is stopped, then times the drain. Prints msg/s per mode
and the ratio. Every wait is bounded.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from benchlib import publish, start_mosquitto, stats, wait_log


def run_collector(binary, work, port, fsync, name, receive_maximum):
    conf = os.path.join(work, f"{name}.toml")
    with open(conf, "w") as f:
        f.write(
            f'collector_id = "bench"\ndata_dir = "{work}/data-{name}"\nwal_dir = "{work}/wal-{name}"\n'
            f"stats_interval_s = 0.1\n[mqtt]\nbroker = \"mqtt://127.0.0.1:{port}\"\n"
            f'client_id = "bench-{name}"\nreceive_maximum = {receive_maximum}\n'
            f'[wal]\nfsync = {"true" if fsync else "false"}\n'
        )
    log = os.path.join(work, f"{name}-{time.time_ns()}.log")
    proc = subprocess.Popen(
        [binary, "--log-format", "json", "run", "--config", conf],
        stdout=subprocess.DEVNULL,
        stderr=open(log, "w"),
    )
    wait_log(log, "subscriptions acknowledged")
    return proc, log


def stop(proc):
    proc.terminate()
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=100_000)
    ap.add_argument("--binary", default="target/release/v2x-collector")
    ap.add_argument("--receive-maximum", type=int, default=2000,
                    help="MQTT 5 Receive Maximum the collector asks for")
    args = ap.parse_args()
    binary = os.path.abspath(args.binary)
    if not os.path.exists(binary):
        sys.exit(f"{binary} missing: run `cargo build --release` first")
    work = tempfile.mkdtemp(prefix="v2x-ackbench-")
    print(f"work dir {work}")
    broker, port = start_mosquitto(work, max_inflight=65535)
    try:
        payloads = [
            json.dumps(
                {"msgCnt": i % 128, "id": f"m{i}", "timeStamp": 1764320444000 + i,
                 "pos": {"lat": 39.9, "lon": 116.5}, "speed": 12.5, "heading": 90.0},
                separators=(",", ":"),
            ).encode()
            for i in range(args.messages)
        ]
        results = {}
        for name, fsync in (("durable", True), ("receipt", False)):
            # Create the session, stop, queue the backlog, then time the drain.
            proc, _ = run_collector(binary, work, port, fsync, name, args.receive_maximum)
            stop(proc)
            publish(port, [("v2x/v1/obu/car-1/bsm/up/float", p) for p in payloads])
            t0 = time.time()
            proc, log = run_collector(binary, work, port, fsync, name, args.receive_maximum)
            end = time.time() + 300
            while time.time() < end:
                s = stats(log)
                if s.get("acked", 0) >= args.messages:
                    break
                time.sleep(0.05)
            elapsed = time.time() - t0
            if stats(log).get("acked", 0) < args.messages:
                keep = log + ".kept"
                shutil.copy(log, keep)
                print(f"{name}: drain incomplete after {elapsed:.0f} s; log kept at {keep}")
            stop(proc)
            s = stats(log)
            results[name] = args.messages / elapsed
            print(f"{name:8} acks after {'WAL fsync' if fsync else 'WAL write (no fsync)':22} "
                  f"{args.messages} msgs in {elapsed:6.2f} s = {results[name]:9.0f} msg/s "
                  f"(acked {s.get('acked')}, rows {s.get('rows')})")
        print(f"receive maximum {args.receive_maximum}: ratio durable/receipt = "
              f"{results['durable'] / results['receipt']:.2f}")
    finally:
        broker.kill()
        broker.wait()
        if os.environ.get("V2X_BENCH_KEEP") is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
