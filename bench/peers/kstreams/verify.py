#!/usr/bin/env python3
"""End-to-end check of the Kafka Streams peer against a live broker.

Creates two fresh 2-partition topics, writes 3 series x 60 s of protobuf Points (one a second, value =
series index + second), one malformed value that must be skipped, and one flush point per partition 60 s later, runs the peer's jar, and checks
that exactly the 3 x 6 = 18 expected windows arrive once each (read_committed) with the exact count,
sum, mean, min and max; then SIGTERMs the peer and checks it exits 0. Deletes its topics at the end.

    .venv/bin/python verify.py [--brokers 127.0.0.1:9092] [--jar target/runnel-kstreams-peer.jar]

Needs confluent-kafka (python3 -m venv .venv && .venv/bin/pip install confluent-kafka).
"""

import argparse
import json
import os
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time

from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

HERE = os.path.dirname(os.path.abspath(__file__))
SERIES = 3
SECONDS = 60
WINDOW_MS = 10_000
FIELDS = ["key", "start_ms", "end_ms", "count", "sum", "mean", "min", "max"]


def varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # int64 as protobuf writes it: two's complement, 10 bytes when negative
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def length_delimited(tag: int, payload: bytes) -> bytes:
    return bytes([tag]) + varint(len(payload)) + payload


def point(metric: str, tags: dict, timestamp_ns: int, value: float) -> bytes:
    """runnel.v1.Point {string metric = 1; map<string,string> tags = 2; int64 timestamp_ns = 3; double value = 4}"""
    out = length_delimited(0x0A, metric.encode())
    for k, v in tags.items():  # a map entry is a message {string key = 1; string value = 2}
        out += length_delimited(0x12, length_delimited(0x0A, k.encode()) + length_delimited(0x12, v.encode()))
    return out + bytes([0x18]) + varint(timestamp_ns) + bytes([0x21]) + struct.pack("<d", value)


def expected_windows(base_ms: int) -> dict:
    """(series key, window start) -> the window's JSON object, computed independently of the peer."""
    out = {}
    for i in range(SERIES):
        key = f"bench{{series={i}}}"
        for w in range(SECONDS * 1000 // WINDOW_MS):
            start = base_ms + w * WINDOW_MS
            values = [float(i + s) for s in range(SECONDS) if start <= base_ms + s * 1000 < start + WINDOW_MS]
            total = 0.0
            for v in values:
                total += v
            out[(key, start)] = {
                "key": key, "start_ms": start, "end_ms": start + WINDOW_MS, "count": len(values),
                "sum": total, "mean": total / len(values), "min": min(values), "max": max(values),
            }
    return out


def fail(msg: str) -> None:
    print(f"FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--brokers", default="127.0.0.1:9092")
    ap.add_argument("--jar", default=os.path.join(HERE, "target", "runnel-kstreams-peer.jar"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the output")
    ap.add_argument("--flush-delay", type=float, default=0.0, metavar="SECONDS",
                    help="produce the flush points this long after the peer runs, not before it starts")
    ap.add_argument("--keep-topics", action="store_true")
    ap.add_argument("--peer-arg", action="append", default=[], metavar="ARG",
                    help="one more argument for the peer, repeatable (e.g. --peer-arg=--grace-ms --peer-arg=500)")
    args = ap.parse_args()
    if not os.path.exists(args.jar):
        fail(f"{args.jar} is missing: build it with `mvn -q -B package -DskipTests`")

    run = f"kstreams-verify-{int(time.time() * 1000)}"
    input_topic, output_topic, app_id = f"{run}-in", f"{run}-out", f"{run}-app"
    admin = AdminClient({"bootstrap.servers": args.brokers})
    for topic, future in admin.create_topics(
        [NewTopic(t, num_partitions=2, replication_factor=1) for t in (input_topic, output_topic)]
    ).items():
        future.result(30)
    print(f"topics {input_topic}, {output_topic} (2 partitions each)")

    # Event time: 60 s starting at a multiple of 10 s, ten minutes ago.
    base_ms = (int(time.time() * 1000) - 600_000) // WINDOW_MS * WINDOW_MS
    producer = Producer({"bootstrap.servers": args.brokers, "partitioner": "murmur2_random",
                         "enable.idempotence": True, "linger.ms": 5})
    partitions_of = {}

    def delivered(err, msg):
        if err is not None:
            fail(f"delivery failed: {err}")
        partitions_of.setdefault(msg.key().decode(), set()).add(msg.partition())

    for s in range(SECONDS):
        for i in range(SERIES):
            ts_ns = (base_ms + s * 1000) * 1_000_000
            value = point("bench", {"series": str(i)}, ts_ns, float(i + s))
            producer.produce(input_topic, key=f"bench{{series={i}}}", value=value, on_delivery=delivered)
    # Not a Point (a truncated varint): the peer must log and skip it, not fail.
    producer.produce(input_topic, key="bench{series=0}", value=b"\x18\xff", on_delivery=delivered)

    def produce_flush_points():
        flush_ns = (base_ms + (SECONDS - 1) * 1000 + 60_000) * 1_000_000
        for p in range(2):
            producer.produce(input_topic, key=f"flush{{p={p}}}", value=point("flush", {}, flush_ns, 0.0),
                             partition=p, on_delivery=delivered)
        if producer.flush(30) != 0:
            fail("producer did not flush")

    if not args.flush_delay:
        produce_flush_points()
    if producer.flush(30) != 0:
        fail("producer did not flush")
    print(f"produced {SERIES * SECONDS} points from {base_ms} ms + 1 malformed"
          + (" + 2 flush points" if not args.flush_delay else "") + "; partitions by key: "
          + ", ".join(f"{k}->{sorted(v)}" for k, v in sorted(partitions_of.items())))

    expected = expected_windows(base_ms)
    state_dir = tempfile.mkdtemp(prefix="kstreams-verify-state-")
    log = tempfile.NamedTemporaryFile(prefix="kstreams-verify-", suffix=".log", delete=False)
    cmd = ["java", "-jar", args.jar, "--brokers", args.brokers, "--input", input_topic, "--output", output_topic,
           "--application-id", app_id, "--threads", str(args.threads), "--state-dir", state_dir, *args.peer_arg]
    print("running:", " ".join(cmd), f"(stderr -> {log.name})")
    started = time.monotonic()
    peer = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True)
    stdout_lines = []
    running = threading.Event()

    def read_stdout():
        for line in peer.stdout:
            stdout_lines.append(line.rstrip("\n"))
            if line.strip() == "running":
                running.set()

    threading.Thread(target=read_stdout, daemon=True).start()

    def peer_log_tail() -> str:
        with open(log.name) as f:
            return "".join(f.readlines()[-30:])

    try:
        if not running.wait(90):
            fail(f"no 'running' line within 90 s (exit {peer.poll()}); log tail:\n{peer_log_tail()}")
        print(f"peer running after {time.monotonic() - started:.1f} s")
        if args.flush_delay:
            # The peer has read, aggregated and committed the data by now: the flush points arrive alone.
            time.sleep(args.flush_delay)
            produce_flush_points()
            print(f"produced 2 flush points {args.flush_delay:g} s after the peer was running")

        consumer = Consumer({"bootstrap.servers": args.brokers, "group.id": f"{run}-reader",
                             "auto.offset.reset": "earliest", "isolation.level": "read_committed",
                             "enable.auto.commit": False})
        consumer.subscribe([output_topic])
        got = {}
        problems = []
        deadline = time.monotonic() + args.timeout
        settle_until = None
        while time.monotonic() < (settle_until or deadline):
            if peer.poll() is not None:
                fail(f"peer exited early with {peer.returncode}; log tail:\n{peer_log_tail()}")
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            if msg.error():
                fail(f"consumer: {msg.error()}")
            text = msg.value().decode()
            body = json.loads(text)
            if list(body) != FIELDS:
                problems.append(f"fields {list(body)} != {FIELDS}: {text}")
            if msg.key().decode() != body.get("key"):
                problems.append(f"record key {msg.key()!r} != JSON key in {text}")
            ident = (body.get("key"), body.get("start_ms"))
            if ident in got:
                problems.append(f"duplicate window {ident}: {text}")
            got[ident] = body
            if len(got) >= len(expected) and settle_until is None:
                print(f"{len(got)} windows after {time.monotonic() - started:.1f} s; watching 5 s more for extras")
                settle_until = time.monotonic() + 5
        consumer.close()

        for ident, want in expected.items():
            have = got.get(ident)
            if have is None:
                problems.append(f"missing window {ident}")
            elif have != want or any(type(have[f]) is not type(want[f]) for f in FIELDS):
                problems.append(f"window {ident}: got {have}, want {want}")
        for ident in got.keys() - expected.keys():
            problems.append(f"unexpected window {ident}: {got[ident]}")
        if problems:
            fail(f"{len(problems)} problem(s):\n  " + "\n  ".join(problems))
        print(f"OK: {len(got)} windows, each once, exact count/sum/mean/min/max; e.g. "
              + json.dumps(got[("bench{series=1}", base_ms + 10_000)], separators=(",", ":")))

        peer.send_signal(signal.SIGTERM)
        t = time.monotonic()
        try:
            code = peer.wait(45)
        except subprocess.TimeoutExpired:
            fail("peer did not exit within 45 s of SIGTERM")
        if code != 0:
            fail(f"peer exited {code} after SIGTERM; log tail:\n{peer_log_tail()}")
        if stdout_lines != ["running"]:
            fail(f"stdout was {stdout_lines!r}, want exactly ['running']")
        print(f"OK: SIGTERM -> exit 0 in {time.monotonic() - t:.1f} s; stdout was exactly 'running'")
        print("1 passed, 0 failed")
        os.unlink(log.name)  # kept only when something failed
        return 0
    finally:
        if peer.poll() is None:
            peer.kill()
            peer.wait()
        if not args.keep_topics:
            internal = [t for t in admin.list_topics(timeout=30).topics if t.startswith(app_id + "-")]
            for future in admin.delete_topics([input_topic, output_topic, *internal]).values():
                try:
                    future.result(30)
                except Exception as e:  # cleanup only: never mask the verdict
                    print(f"note: topic cleanup: {e}", file=sys.stderr)
            # The peer's own group is left to expire: Kafka Streams does not leave it on close.
            for future in admin.delete_consumer_groups([f"{run}-reader"]).values():
                try:
                    future.result(30)
                except Exception as e:
                    print(f"note: group cleanup: {e}", file=sys.stderr)
        subprocess.run(["rm", "-rf", state_dir], check=False)


if __name__ == "__main__":
    sys.exit(main())
