#!/usr/bin/env python3
"""Memory of the embedded broker under a device flood: many devices publish QoS 1 faster than
the collector drains, for a bounded time, on loopback only.

    cargo build --release
    tools/embedded_flood.py [--binary target/release/v2x-collector] [--connections 200]
                            [--seconds 20] [--segment-bytes N --segment-count N]
    tools/embedded_flood.py --smoke      # 4 connections for 2 s: checks the script still works

It starts `v2x-collector run` with no broker (so the embedded one) on a free loopback port,
opens --connections device connections to it (half MQTT 5, half MQTT 3.1.1, as a zone mixes
them), and has each send the real radar frames of ../shared/data/openv2x-radar/track.json at
QoS 1 with up to --inflight unacknowledged, as fast as the broker takes them, for --seconds (and
at most --max-messages per connection). Then it lets the collector drain, reads its peak
resident memory (VmHWM), stops it with SIGTERM and prints:
  - peak RSS of the collector process (broker, pipeline and all);
  - PUBACKs the devices got, messages the collector received, and the difference: what rumqttd
    dropped when the collector fell behind the oldest segment of its in-memory log.
The devices are one Python process with raw sockets (paho would be the bottleneck); MQTT
packets are encoded here by hand, which is all a load generator needs. No figure is asserted.
"""

import argparse
import json
import os
import selectors
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time

from benchlib import free_port, stats, wait_log

HERE = os.path.dirname(os.path.abspath(__file__))
TOPIC = b"V2X/RADAR/FLOOD%04d/TRACK/UP"


def varint(n):
    out = bytearray()
    while True:
        b = n % 128
        n //= 128
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def connect_packet(client_id, v5):
    vh = b"\x00\x04MQTT" + bytes([5 if v5 else 4, 0x02]) + struct.pack(">H", 30)
    if v5:
        vh += b"\x00"  # no properties
    body = vh + struct.pack(">H", len(client_id)) + client_id
    return b"\x10" + varint(len(body)) + body


class Device:
    def __init__(self, i, port, v5, frames, inflight, max_messages):
        self.v5, self.frames, self.inflight, self.left = v5, frames, inflight, max_messages
        self.topic = TOPIC % i
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.sendall(connect_packet(b"flood-%d" % i, v5))
        self.sock.setblocking(False)
        self.rx = bytearray()
        self.tx = bytearray()
        self.connected = False
        self.next_pkid, self.unacked, self.sent, self.acked = 1, 0, 0, 0
        self.frame = i % len(frames)

    def publish(self):
        payload = self.frames[self.frame]
        self.frame = (self.frame + 1) % len(self.frames)
        vh = struct.pack(">H", len(self.topic)) + self.topic + struct.pack(">H", self.next_pkid)
        if self.v5:
            vh += b"\x00"
        self.tx += b"\x32" + varint(len(vh) + len(payload)) + vh + payload
        self.next_pkid = self.next_pkid % 65535 + 1
        self.unacked += 1
        self.sent += 1
        self.left -= 1

    def fill(self, sending):
        while sending and self.connected and self.left > 0 and self.unacked < self.inflight and len(self.tx) < 256 * 1024:
            self.publish()

    def on_readable(self):
        try:
            data = self.sock.recv(65536)
        except BlockingIOError:
            return True
        if not data:
            return False
        self.rx += data
        while len(self.rx) >= 2:
            n, mult, i = 0, 1, 1
            while i < len(self.rx) and i <= 4:
                b = self.rx[i]
                n += (b & 0x7F) * mult
                mult *= 128
                i += 1
                if not b & 0x80:
                    break
            else:
                return True
            if len(self.rx) < i + n:
                return True
            kind = self.rx[0] >> 4
            if kind == 2:
                self.connected = True
            elif kind == 4:
                self.unacked -= 1
                self.acked += 1
            del self.rx[:i + n]
        return True

    def on_writable(self):
        if self.tx:
            try:
                n = self.sock.send(self.tx)
            except BlockingIOError:
                return
            del self.tx[:n]


def rss_kib(pid, field):
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def flood(port, args, frames, pid):
    sel = selectors.DefaultSelector()
    devices = [Device(i, port, i % 2 == 0, frames, args.inflight, args.max_messages) for i in range(args.connections)]
    for d in devices:
        sel.register(d.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, d)
    t0 = time.time()
    stop_at = t0 + args.seconds
    drain_until = stop_at + 10
    timeline, next_sample = [], t0
    while True:
        now = time.time()
        sending = now < stop_at
        if now >= next_sample:
            timeline.append((round(now - t0), rss_kib(pid, "VmRSS") // 1024))
            next_sample += 1
        if not sending and (all(d.unacked == 0 for d in devices) or now > drain_until):
            break
        for d in devices:
            d.fill(sending)
        for key, mask in sel.select(timeout=0.05):
            d = key.data
            if mask & selectors.EVENT_READ and not d.on_readable():
                sys.exit(f"the broker closed a device connection ({d.sent} sent, {d.acked} acked)")
            if mask & selectors.EVENT_WRITE:
                d.on_writable()
    for d in devices:
        try:
            d.sock.setblocking(True)
            d.sock.sendall(b"\xe0\x00")
        except OSError:
            pass
        d.sock.close()
    return sum(d.sent for d in devices), sum(d.acked for d in devices), time.time() - t0, timeline


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", default="target/release/v2x-collector")
    ap.add_argument("--connections", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--inflight", type=int, default=100, help="unacknowledged QoS 1 messages per device")
    ap.add_argument("--max-messages", type=int, default=200_000, help="cap per device")
    ap.add_argument("--segment-bytes", type=int, help="embedded.segment_bytes (default: the collector's)")
    ap.add_argument("--segment-count", type=int, help="embedded.segment_count")
    ap.add_argument("--writer-max-age-s", type=float,
                    help="writer.max_age_s: commit open files this often, so buffered rows do not hide the broker's share")
    ap.add_argument("--smoke", action="store_true", help="4 connections for 2 s, to check the script runs")
    args = ap.parse_args()
    if args.smoke:
        args.connections, args.seconds = 4, 2
    binary = os.path.abspath(args.binary)
    if not os.path.exists(binary):
        sys.exit(f"{binary} missing: run `cargo build --release` (or pass --binary)")
    track = os.path.join(HERE, "../../shared/data/openv2x-radar/track.json")
    frames = [json.dumps(f, separators=(",", ":")).encode() for f in json.load(open(track, encoding="utf-8-sig"))]

    work = tempfile.mkdtemp(prefix="v2x-flood-")
    port = free_port()
    embedded = "".join(f"{k} = {v}\n" for k, v in
                       (("segment_bytes", args.segment_bytes), ("segment_count", args.segment_count)) if v)
    cfg = os.path.join(work, "collector.toml")
    with open(cfg, "w") as f:
        f.write(f'collector_id = "flood"\ndata_dir = "{work}/data"\nwal_dir = "{work}/wal"\n'
                f'stats_interval_s = 0.5\n[http]\nlisten = "127.0.0.1:0"\n'
                + (f"[writer]\nmax_age_s = {args.writer_max_age_s}\n" if args.writer_max_age_s else "")
                + f'[embedded]\nlisten = "127.0.0.1:{port}"\n{embedded}')
    log = os.path.join(work, "collector.log")
    proc = subprocess.Popen([binary, "--log-format", "json", "run", "--config", cfg],
                            stdout=subprocess.DEVNULL, stderr=open(log, "w"), env={**os.environ, "RUST_LOG": "info"})
    try:
        wait_log(log, "subscriptions acknowledged")
        idle = rss_kib(proc.pid, "VmRSS") // 1024
        sent, acked, secs, timeline = flood(port, args, frames, proc.pid)
        # Let the collector take what the broker still holds: until `received` stands for 3 s.
        last, since, end = -1, time.time(), time.time() + 300
        drain = []
        while time.time() < end:
            drain.append(rss_kib(proc.pid, "VmRSS") // 1024)
            got = stats(log).get("received", 0)
            if got != last:
                last, since = got, time.time()
            elif time.time() - since > 3:
                break
            time.sleep(0.25)
        peak = rss_kib(proc.pid, "VmHWM") // 1024
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
        s = stats(log)
        print(f"{args.connections} connections (half MQTT 5, half 3.1.1), QoS 1, radar frames "
              f"(avg {sum(map(len, frames)) // len(frames)} bytes), {args.seconds:g} s of flood, inflight {args.inflight}")
        print(f"embedded: {' '.join(embedded.split()) or 'defaults (segment_bytes 16 MiB x segment_count 4)'}"
              + (f"; writer.max_age_s = {args.writer_max_age_s}" if args.writer_max_age_s else ""))
        print(f"devices: {sent} sent, {acked} PUBACKs, {acked / secs:.0f} msg/s acked by the broker")
        print(f"collector: {s.get('received', 0)} received, {s.get('decoded', 0)} decoded; "
              f"{acked - s.get('received', 0)} acknowledged by the broker but never delivered (skipped ahead)")
        skips = open(log).read().count("embedded broker skipped a subscriber ahead")
        print(f"skip-ahead warnings in the collector's log: {skips}")
        print(f"collector RSS: {idle} MiB idle, peak {peak} MiB (VmHWM)")
        print("RSS while flooding (s:MiB): " + " ".join(f"{t}:{m}" for t, m in timeline))
        print("RSS while draining (MiB, every 0.25 s): " + " ".join(map(str, drain[::4])))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


if __name__ == "__main__":
    main()
