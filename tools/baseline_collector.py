#!/usr/bin/env python3
"""The "what you would write yourself" baseline: paho-mqtt + pyarrow.

Subscribes with a persistent session at QoS 1 (paho acknowledges on receipt), parses each JSON
payload, buffers rows and writes zstd Parquet every --batch rows. Exits after --count messages
(flushing what it holds). Used by tools/e2e_bench.py as the third drainer.
"""

import argparse
import json
import os
import sys

import paho.mqtt.client as mqtt
import pyarrow as pa
import pyarrow.parquet as pq


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=1883)
    ap.add_argument("--topic", default="#")
    ap.add_argument("--client-id", default="baseline-collector")
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--batch", type=int, default=50_000)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    state = {"rows": [], "seen": 0, "files": 0}

    def flush():
        if not state["rows"]:
            return
        table = pa.Table.from_pylist(state["rows"])
        pq.write_table(table, os.path.join(args.out, f"part-{state['files']:05}.parquet"), compression="zstd")
        state["files"] += 1
        state["rows"] = []

    def on_message(client, userdata, msg):
        try:
            row = json.loads(msg.payload)
        except ValueError:
            row = {}
        row = {k: (json.dumps(v) if isinstance(v, (dict, list)) else v) for k, v in row.items()}
        row["topic"] = msg.topic
        state["rows"].append(row)
        state["seen"] += 1
        if len(state["rows"]) >= args.batch:
            flush()
        if state["seen"] >= args.count:
            client.disconnect()

    def on_connect(client, userdata, flags, reason_code, properties=None):
        client.subscribe(args.topic, qos=1)

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=args.client_id, clean_session=False)
    client.max_inflight_messages_set(1000)
    client.on_message = on_message
    client.on_connect = on_connect
    client.connect(args.host, args.port, keepalive=30)
    client.loop_forever()
    flush()
    print(f"baseline: {state['seen']} messages, {state['files']} files", file=sys.stderr)


if __name__ == "__main__":
    main()
