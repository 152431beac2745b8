"""Quix Streams benchmark peer: Runnel's windowed aggregation, written the Quix Streams way.

Reads protobuf `runnel.v1.Point` records keyed by series key, aggregates them per key into
10-second tumbling event-time windows (count, sum, min, max; mean on output) and emits one
JSON record per window once the window has closed. See README.md for the contract.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from quixstreams import Application
from quixstreams.models.serializers.protobuf import ProtobufDeserializer

WINDOW_MS = 10_000

log = logging.getLogger("quix-peer")


def point_class():
    """Build the `runnel.v1.Point` message class at run time (no protoc, no generated code).

    message Point { string metric = 1; map<string, string> tags = 2;
                    int64 timestamp_ns = 3; double value = 4; }
    """
    F = descriptor_pb2.FieldDescriptorProto
    file = descriptor_pb2.FileDescriptorProto(
        name="runnel/v1/bench_point.proto", package="runnel.v1", syntax="proto3"
    )
    msg = file.message_type.add(name="Point")
    entry = msg.nested_type.add(name="TagsEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    entry.field.add(name="value", number=2, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    msg.field.add(name="metric", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    msg.field.add(
        name="tags",
        number=2,
        type=F.TYPE_MESSAGE,
        label=F.LABEL_REPEATED,
        type_name=".runnel.v1.Point.TagsEntry",
    )
    msg.field.add(name="timestamp_ns", number=3, type=F.TYPE_INT64, label=F.LABEL_OPTIONAL)
    msg.field.add(name="value", number=4, type=F.TYPE_DOUBLE, label=F.LABEL_OPTIONAL)

    pool = descriptor_pool.DescriptorPool()  # private pool: no clash with generated code
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("runnel.v1.Point"))


Point = point_class()


# --- the job -------------------------------------------------------------------------------


def event_time_ms(point, _headers, _kafka_ts, _ts_type) -> int:
    return point.timestamp_ns // 1_000_000


def init_agg(point) -> list:
    v = point.value
    return [1, v, v, v]  # count, sum, min, max: one state record per window


def reduce_agg(agg: list, point) -> list:
    v = point.value
    count, total, lo, hi = agg
    return [count + 1, total + v, v if v < lo else lo, v if v > hi else hi]


def to_output(window: dict, key: str, _ts: int, _headers) -> dict:
    count, total, lo, hi = window["value"]
    return {
        "key": key,
        "start_ms": window["start"],
        "end_ms": window["end"],
        "count": count,
        "sum": float(total),
        "mean": total / count,
        "min": float(lo),
        "max": float(hi),
    }


class LateCounter:
    """on_late callback: count records dropped for arriving after their window closed, without
    Quix's default one-warning-per-record logging (it would flood stderr in a benchmark)."""

    def __init__(self) -> None:
        self.dropped = 0

    def __call__(self, *_args) -> bool:
        self.dropped += 1
        return False  # False = don't log this record


class PeerApplication(Application):
    """Quix Streams has no public on-assign hook, so wrap the (private) rebalance callback to
    announce `running` on stdout once, after the first non-empty assignment has been applied."""

    _announced = False

    def _on_assign(self, consumer, topic_partitions):
        super()._on_assign(consumer, topic_partitions)
        if topic_partitions and not self._announced:
            self._announced = True
            log.info("assigned %d partitions", len(topic_partitions))
            print("running", flush=True)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--brokers", required=True, help="bootstrap servers, host:port[,...]")
    p.add_argument("--input", required=True, help="input topic (protobuf Points)")
    p.add_argument("--output", required=True, help="output topic (JSON window results)")
    p.add_argument("--group", required=True, help="consumer group (also the app's identity)")
    p.add_argument("--grace-ms", type=int, default=0, help="allowed lateness (default 0)")
    p.add_argument("--commit-interval-ms", type=int, default=100, help="default 100")
    p.add_argument("--state-dir", default=None, help="RocksDB state dir (default: fresh temp dir)")
    return p.parse_args(argv)


def build_app(args: argparse.Namespace, state_dir: str, late: LateCounter) -> PeerApplication:
    app = PeerApplication(
        broker_address=args.brokers,
        consumer_group=args.group,
        auto_offset_reset="earliest",
        processing_guarantee="exactly-once",
        commit_interval=args.commit_interval_ms / 1000.0,
        producer_extra_config={"compression.type": "lz4", "linger.ms": 5},
        state_dir=state_dir,
        # Internal (changelog) topics take the input topic's replication factor (1 on the
        # single dev broker); TopicManager's default replication factor is also 1.
        auto_create_topics=True,
        loglevel=None,  # keep Quix's own handler off: its records reach the root (stderr) one
    )
    log.info("state dir %s", state_dir)

    points = app.topic(
        args.input,
        key_deserializer="str",
        value_deserializer=ProtobufDeserializer(msg_type=Point, to_dict=False),
        timestamp_extractor=event_time_ms,
    )
    results = app.topic(args.output, key_serializer="str", value_serializer="json")

    sdf = app.dataframe(points)
    sdf = (
        sdf.tumbling_window(duration_ms=WINDOW_MS, grace_ms=args.grace_ms, on_late=late)
        .reduce(reducer=reduce_agg, initializer=init_agg)
        # "partition": the partition's stream time (max event time seen on it) closes the
        # windows of every key on that partition, like Runnel's per-partition watermark.
        # Quix's default ("key") would close a key's windows only on that key's own records.
        .final(closing_strategy="partition")
    )
    sdf = sdf.apply(to_output, metadata=True)
    sdf.to_topic(results)
    return app


def main(argv=None) -> int:
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    args = parse_args(argv)
    late = LateCounter()
    temp_state = None if args.state_dir else tempfile.mkdtemp(prefix="quix-peer-state-")
    try:
        app = build_app(args, args.state_dir or temp_state, late)
        app.run()  # returns after SIGTERM/SIGINT once the last checkpoint is committed
    finally:
        if temp_state:
            shutil.rmtree(temp_state, ignore_errors=True)
    log.info("stopped; %d late records dropped", late.dropped)
    return 0


if __name__ == "__main__":
    sys.exit(main())
