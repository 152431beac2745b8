"""End-to-end check of peer.py against a real broker.

Creates fresh (timestamped) input and output topics with 2 partitions, produces 3 series x 60 s
of points plus one sentinel per partition, runs peer.py, and checks that exactly the 18 expected
windows come out (read_committed), each once and with exact aggregates, and that the peer exits 0
on SIGTERM. Exit status 0 when everything holds. Deletes its topics afterwards (unless --keep).

    .venv/bin/python verify.py [--brokers 127.0.0.1:9092] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from peer import Point  # noqa: E402  (the same runtime-built protobuf class)

SERIES = 3
SECONDS = 60
PARTITIONS = 2
WINDOW_MS = 10_000


def series_key(i: int) -> str:
    return f"bench{{series={i}}}"


def create_topics(admin: AdminClient, names: list[str]) -> None:
    futures = admin.create_topics(
        [NewTopic(n, num_partitions=PARTITIONS, replication_factor=1) for n in names]
    )
    for name, f in futures.items():
        f.result(timeout=30)
        print(f"created topic {name} ({PARTITIONS} partitions)")


def produce_input(brokers: str, topic: str, t0_ms: int) -> dict:
    """Produce the points and sentinels; return the expected windows, computed here."""
    producer = Producer({"bootstrap.servers": brokers, "enable.idempotence": True})
    expected: dict[tuple[str, int], dict] = {}
    for s in range(SECONDS):  # interleaved by time, like a live feed
        for i in range(SERIES):
            ts_ms = t0_ms + s * 1000
            value = float(i + s)
            point = Point(
                metric="bench", tags={"series": str(i)}, timestamp_ns=ts_ms * 1_000_000, value=value
            )
            producer.produce(topic, key=series_key(i), value=point.SerializeToString())
            start = ts_ms - ts_ms % WINDOW_MS
            w = expected.setdefault(
                (series_key(i), start),
                {"count": 0, "sum": 0.0, "min": float("inf"), "max": float("-inf")},
            )
            w["count"] += 1
            w["sum"] += value
            w["min"] = min(w["min"], value)
            w["max"] = max(w["max"], value)
    producer.flush(30)

    # One sentinel per partition, 60 s after the last point: it advances each partition's stream
    # time past the end of every data window (its own window stays open and is never emitted).
    last_ms = t0_ms + (SECONDS - 1) * 1000
    sentinel_ms = last_ms + 60_000
    for p in range(PARTITIONS):
        point = Point(metric="flush", timestamp_ns=sentinel_ms * 1_000_000, value=0.0)
        producer.produce(topic, key=f"flush{{p={p}}}", value=point.SerializeToString(), partition=p)
    if producer.flush(30):
        raise RuntimeError("input not fully delivered")
    print(
        f"produced {SERIES * SECONDS} points (t0={t0_ms}) + {PARTITIONS} sentinels at {sentinel_ms}"
    )

    out = {}
    for (key, start), w in expected.items():
        out[(key, start)] = {
            "key": key,
            "start_ms": start,
            "end_ms": start + WINDOW_MS,
            "count": w["count"],
            "sum": w["sum"],
            "mean": w["sum"] / w["count"],
            "min": w["min"],
            "max": w["max"],
        }
    return out


def partition_of_keys(brokers: str, topic: str) -> dict[str, int]:
    """Which partition each key landed on (for the report), by reading the input back."""
    c = Consumer(
        {"bootstrap.servers": brokers, "group.id": f"{topic}-probe", "enable.auto.commit": False}
    )
    c.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
    seen: dict[str, int] = {}
    total = SERIES * SECONDS + PARTITIONS
    n, deadline = 0, time.time() + 30
    while n < total and time.time() < deadline:
        m = c.poll(1.0)
        if m is None or m.error():
            continue
        n += 1
        seen[m.key().decode()] = m.partition()
    c.close()
    return seen


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--brokers", default="127.0.0.1:9092")
    ap.add_argument("--grace-ms", type=int, default=0)
    ap.add_argument("--keep", action="store_true", help="keep the topics afterwards")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for output")
    args = ap.parse_args()

    stamp = time.strftime("%Y%m%d-%H%M%S") + f"-{os.getpid()}"
    in_topic, out_topic, group = f"quix-verify-in-{stamp}", f"quix-verify-out-{stamp}", f"quix-verify-{stamp}"
    admin = AdminClient({"bootstrap.servers": args.brokers})
    create_topics(admin, [in_topic, out_topic])

    now_ms = int(time.time() * 1000)
    t0_ms = (now_ms - 10 * 60_000) // WINDOW_MS * WINDOW_MS  # aligned, 10 minutes ago
    expected = produce_input(args.brokers, in_topic, t0_ms)
    print("key -> partition:", partition_of_keys(args.brokers, in_topic))

    failures: list[str] = []
    workdir = Path(tempfile.mkdtemp(prefix="quix-verify-"))
    stderr_path = workdir / "peer.stderr"
    cmd = [
        sys.executable, str(HERE / "peer.py"),
        "--brokers", args.brokers, "--input", in_topic, "--output", out_topic, "--group", group,
        "--grace-ms", str(args.grace_ms), "--commit-interval-ms", "100",
        "--state-dir", str(workdir / "state"),
    ]  # fmt: skip
    print("running:", " ".join(cmd))
    started = time.time()
    with open(stderr_path, "wb") as err:
        peer = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True)
    stdout_lines: list[str] = []
    running_at: list[float] = []

    def read_stdout() -> None:
        for line in peer.stdout:
            stdout_lines.append(line.rstrip("\n"))
            if line.strip() == "running" and not running_at:
                running_at.append(time.time())

    reader = threading.Thread(target=read_stdout, daemon=True)
    reader.start()

    consumer = Consumer(
        {
            "bootstrap.servers": args.brokers,
            "group.id": f"{group}-reader",
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([out_topic])
    got: dict[tuple[str, int], list] = {}
    raw: list[tuple[str, bytes]] = []
    deadline = time.time() + args.timeout
    first_at = None
    while time.time() < deadline and len(raw) < len(expected):
        if peer.poll() is not None:
            failures.append(f"peer exited early with {peer.returncode}")
            break
        m = consumer.poll(0.5)
        if m is None:
            continue
        if m.error():
            raise KafkaException(m.error())
        first_at = first_at or time.time()
        raw.append((m.key().decode(), m.value()))
    all_at = time.time()
    # Linger a little: anything more (a duplicate, a sentinel window) would be a failure.
    linger_until = time.time() + 5
    while time.time() < linger_until:
        m = consumer.poll(0.5)
        if m is not None and not m.error():
            raw.append((m.key().decode(), m.value()))
    consumer.close()

    # Stop the peer as the harness would.
    if peer.poll() is None:
        peer.send_signal(signal.SIGTERM)
        t_term = time.time()
        try:
            rc = peer.wait(timeout=60)
        except subprocess.TimeoutExpired:
            peer.kill()
            rc = peer.wait()
            failures.append("peer did not stop within 60 s of SIGTERM (killed)")
        print(f"peer exited with {rc} {time.time() - t_term:.1f} s after SIGTERM")
        if rc != 0:
            failures.append(f"exit code {rc} after SIGTERM, expected 0")
    reader.join(timeout=5)

    # --- checks ---
    if stdout_lines != ["running"]:
        failures.append(f"stdout was {stdout_lines!r}, expected exactly ['running']")
    else:
        print(f"'running' printed {running_at[0] - started:.1f} s after start")
    for key, value in raw:
        doc = json.loads(value)
        wk = (doc.get("key"), doc.get("start_ms"))
        got.setdefault(wk, []).append(doc)
        if key != doc.get("key"):
            failures.append(f"record key {key!r} != JSON key {doc.get('key')!r}")
        exp = expected.get(wk)
        if exp is None:
            failures.append(f"unexpected window {value!r}")
            continue
        # Byte-exact: compact JSON, this field order, floats as floats (55.0).
        want = json.dumps(exp, separators=(",", ":")).encode()
        if value != want:
            failures.append(f"window {wk}: got {value!r}, want {want!r}")
    for wk in expected:
        n = len(got.get(wk, []))
        if n != 1:
            failures.append(f"window {wk} arrived {n} times, expected once")
    print(
        f"output: {len(raw)} records, {len(got)} distinct windows "
        f"(expected {len(expected)} = {SERIES} series x {SECONDS * 1000 // WINDOW_MS} windows)"
    )
    if first_at:
        print(f"first window {first_at - started:.1f} s, all {all_at - started:.1f} s after start")
    if raw:
        print("sample:", raw[0][1].decode())

    if not args.keep:
        topics = [t for t in admin.list_topics(timeout=10).topics if group in t or t in (in_topic, out_topic)]
        for t, f in admin.delete_topics(topics).items():
            try:
                f.result(timeout=30)
            except KafkaException as e:
                print(f"could not delete {t}: {e}")
        print("deleted topics:", ", ".join(sorted(topics)))

    if failures:
        print(f"FAILED ({len(failures)}):")
        for f in failures[:40]:
            print("  -", f)
        print(f"peer stderr: {stderr_path}")
        print(stderr_path.read_text()[-4000:])
        return 1
    shutil.rmtree(workdir, ignore_errors=True)
    print(f"OK: {len(expected)} windows, each once, byte-exact; peer exited 0 on SIGTERM")
    return 0


if __name__ == "__main__":
    sys.exit(main())
