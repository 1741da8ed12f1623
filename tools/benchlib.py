"""Helpers shared by the benchmark scripts in tools/: a private mosquitto on a free loopback
port, publishing a backlog, and reading the collector's `ingest stats` log lines."""

import json
import os
import socket
import subprocess
import sys
import time


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, limit=10):
    end = time.time() + limit
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"mosquitto did not listen on {port}")


def start_mosquitto(work, max_inflight=1000):
    """A mosquitto with unlimited queues and no persistence; returns (process, port)."""
    port = free_port()
    conf = os.path.join(work, "mosquitto.conf")
    with open(conf, "w") as f:
        f.write(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                f"max_queued_messages 0\nmax_inflight_messages {max_inflight}\nlog_dest none\n")
    proc = subprocess.Popen(["mosquitto", "-c", conf], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    return proc, port


def publish(port, items):
    """Publishes (topic, payload bytes) pairs at QoS 1 with mosquitto_pub, per topic in calls of
    at most 1,000 lines (mosquitto_pub 2.0.11 -l can exit before a longer input is delivered)."""
    by_topic = {}
    for t, p in items:
        by_topic.setdefault(t, []).append(p)
    for t, ps in by_topic.items():
        for s in range(0, len(ps), 1000):
            subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-q", "1", "-t", t, "-l"],
                           input=b"\n".join(ps[s:s + 1000]) + b"\n", check=True)


def stats(log):
    """The collector's last `ingest stats` fields ({} before the first)."""
    last = {}
    try:
        with open(log) as f:
            for line in f:
                try:
                    v = json.loads(line)
                except ValueError:
                    continue
                if v.get("fields", {}).get("message") == "ingest stats":
                    last = v["fields"]
    except FileNotFoundError:
        pass
    return last


def wait_log(log, needle, limit=30):
    end = time.time() + limit
    while time.time() < end:
        if os.path.exists(log) and needle in open(log).read():
            return
        time.sleep(0.05)
    sys.exit(f"collector never logged {needle!r}; see {log}")
