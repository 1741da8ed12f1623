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


def _mosquitto(work, max_inflight, extra=""):
    """mosquitto with unlimited queues and no persistence on a plain loopback port, plus the
    `extra` configuration lines; returns (process, port)."""
    port = free_port()
    conf = os.path.join(work, "mosquitto.conf")
    with open(conf, "w") as f:
        f.write(f"per_listener_settings false\nallow_anonymous true\npersistence false\n"
                f"max_queued_messages 0\nmax_inflight_messages {max_inflight}\nlog_dest none\n"
                f"listener {port} 127.0.0.1\n{extra}")
    proc = subprocess.Popen(["mosquitto", "-c", conf], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    return proc, port


def start_mosquitto(work, max_inflight=1000):
    """A mosquitto with unlimited queues and no persistence; returns (process, port)."""
    return _mosquitto(work, max_inflight)


def make_tls(work):
    """A CA and a server certificate for 127.0.0.1 made with the openssl command; returns the
    paths (ca.pem, server.pem, server.key)."""
    d = os.path.join(work, "tls")
    os.makedirs(d, exist_ok=True)
    # mosquitto started as root reads these after dropping to its own user.
    os.chmod(work, 0o755)
    os.chmod(d, 0o755)
    ca, ca_key = os.path.join(d, "ca.pem"), os.path.join(d, "ca.key")
    crt, key, csr = (os.path.join(d, n) for n in ("server.pem", "server.key", "server.csr"))
    ext = os.path.join(d, "san.cnf")
    with open(ext, "w") as f:
        f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run = lambda *a: subprocess.run(list(a), check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run("openssl", "req", "-x509", *ec, "-keyout", ca_key, "-out", ca, "-days", "2", "-subj", "/CN=bench CA")
    run("openssl", "req", *ec, "-keyout", key, "-out", csr, "-subj", "/CN=localhost")
    run("openssl", "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
        "-out", crt, "-days", "2", "-extfile", ext)
    os.chmod(key, 0o644)  # mosquitto may read it after dropping root
    return ca, crt, key


def start_mosquitto_tls(work, max_inflight=1000):
    """As start_mosquitto, plus a TLS listener: returns (process, plain port, TLS port, CA file).
    Publishers use the plain port; the drainers under test the TLS one."""
    ca, crt, key = make_tls(work)
    tls_port = free_port()
    proc, port = _mosquitto(work, max_inflight,
                            f"listener {tls_port} 127.0.0.1\ncafile {ca}\ncertfile {crt}\nkeyfile {key}\n")
    wait_port(tls_port)
    return proc, port, tls_port, ca


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
