package dev.runnel.bench.kstreams;

import com.google.protobuf.CodedInputStream;
import com.google.protobuf.WireFormat;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.time.Duration;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.common.errors.SerializationException;
import org.apache.kafka.common.serialization.Serde;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.common.utils.Bytes;
import org.apache.kafka.streams.KeyValue;
import org.apache.kafka.streams.StreamsBuilder;
import org.apache.kafka.streams.Topology;
import org.apache.kafka.streams.kstream.Consumed;
import org.apache.kafka.streams.kstream.EmitStrategy;
import org.apache.kafka.streams.kstream.Grouped;
import org.apache.kafka.streams.kstream.Materialized;
import org.apache.kafka.streams.kstream.Produced;
import org.apache.kafka.streams.kstream.TimeWindows;
import org.apache.kafka.streams.kstream.Windowed;
import org.apache.kafka.streams.processor.TimestampExtractor;
import org.apache.kafka.streams.state.WindowStore;

/**
 * The benchmark job, the same as Runnel's processor: per series key, 10-second tumbling event-time
 * windows aligned to the epoch, aggregating count, sum, min and max, emitted once when each window
 * closes, as one JSON object per window.
 */
final class WindowJob {
    static final Duration WINDOW = Duration.ofSeconds(10);

    private WindowJob() {}

    /**
     * @param retention how long windows stay in the store: at least WINDOW + grace. Kafka Streams
     *     writes a record (dropping store segments older than stream time - retention) before it
     *     emits the windows that record closed, so a window whose start is more than retention
     *     before the record that closes it can be dropped unemitted (when the write reaches RocksDB
     *     at once: no record cache, or a full one). The margin above WINDOW + grace is the stream
     *     time jump, e.g. to a final flush record, that is safe.
     */
    static Topology topology(String input, String output, Duration grace, Duration retention) {
        Serde<String> keys = Serdes.String();
        Serde<Point> points = Serdes.serdeFrom((topic, p) -> {
            throw new UnsupportedOperationException("points are only read");
        }, Point::decode);
        Serde<Agg> aggs = Serdes.serdeFrom((topic, a) -> a.encode(), (topic, bytes) -> Agg.decode(bytes));

        StreamsBuilder builder = new StreamsBuilder();
        builder.stream(input, Consumed.with(keys, points).withTimestampExtractor(new EventTime()))
            // As Runnel's processor, which dead-letters them, leave out values that would poison sums.
            .filter((key, point) -> point != null && Double.isFinite(point.value()))
            // The input is already keyed by series: no repartition topic.
            .groupByKey(Grouped.with(keys, points))
            .windowedBy(TimeWindows.ofSizeAndGrace(WINDOW, grace))
            .emitStrategy(EmitStrategy.onWindowClose())
            .aggregate(Agg::empty, (key, point, agg) -> agg.add(point.value()),
                Materialized.<String, Agg, WindowStore<Bytes, byte[]>>as("windows") // APP-windows-changelog
                    .withKeySerde(keys).withValueSerde(aggs).withRetention(retention))
            .toStream()
            .map((Windowed<String> w, Agg agg) -> KeyValue.pair(w.key(), agg.json(w)))
            .to(output, Produced.with(keys, Serdes.String()));
        return builder.build();
    }

    /** The two fields of {@code runnel.v1.Point} that the job reads; metric and tags are skipped. */
    record Point(long timestampNs, double value) {
        private static final int TIMESTAMP_NS = 3 << 3 | WireFormat.WIRETYPE_VARINT; // 0x18
        private static final int VALUE = 4 << 3 | WireFormat.WIRETYPE_FIXED64; // 0x21

        static Point decode(String topic, byte[] bytes) {
            if (bytes == null) {
                return null;
            }
            long timestampNs = 0;
            double value = 0;
            try {
                CodedInputStream in = CodedInputStream.newInstance(bytes);
                for (int tag = in.readTag(); tag != 0; tag = in.readTag()) {
                    if (tag == TIMESTAMP_NS) {
                        timestampNs = in.readInt64();
                    } else if (tag == VALUE) {
                        value = in.readDouble();
                    } else if (!in.skipField(tag)) {
                        break; // an end-group tag: nothing more belongs to this message
                    }
                }
            } catch (IOException e) {
                throw new SerializationException("not a runnel.v1.Point", e);
            }
            return new Point(timestampNs, value);
        }
    }

    /** Event time: the point's own timestamp_ns, in milliseconds. */
    static final class EventTime implements TimestampExtractor {
        @Override
        public long extract(ConsumerRecord<Object, Object> record, long partitionTime) {
            // A negative timestamp makes Kafka Streams skip the record (with a warning): a null value.
            return record.value() instanceof Point p ? Math.floorDiv(p.timestampNs(), 1_000_000L) : -1L;
        }
    }

    /** The running aggregate of one window; kept in the window store as 32 bytes. */
    record Agg(long count, double sum, double min, double max) {
        static Agg empty() {
            return new Agg(0, 0.0, Double.POSITIVE_INFINITY, Double.NEGATIVE_INFINITY);
        }

        Agg add(double v) {
            return new Agg(count + 1, sum + v, Math.min(min, v), Math.max(max, v));
        }

        byte[] encode() {
            return ByteBuffer.allocate(32).putLong(count).putDouble(sum).putDouble(min).putDouble(max).array();
        }

        static Agg decode(byte[] bytes) {
            if (bytes == null) {
                return null;
            }
            ByteBuffer b = ByteBuffer.wrap(bytes);
            return new Agg(b.getLong(), b.getDouble(), b.getDouble(), b.getDouble());
        }

        String json(Windowed<String> window) {
            StringBuilder s = new StringBuilder(160).append("{\"key\":");
            quote(s, window.key());
            s.append(",\"start_ms\":").append(window.window().start())
                .append(",\"end_ms\":").append(window.window().end())
                .append(",\"count\":").append(count);
            number(s.append(",\"sum\":"), sum);
            number(s.append(",\"mean\":"), sum / count);
            number(s.append(",\"min\":"), min);
            number(s.append(",\"max\":"), max);
            return s.append('}').toString();
        }

        /** A JSON number (Double.toString: 55.0, 1.0E21); null for an overflowed sum, not valid JSON. */
        private static void number(StringBuilder s, double v) {
            s.append(Double.isFinite(v) ? Double.toString(v) : "null");
        }

        private static void quote(StringBuilder s, String text) {
            s.append('"');
            for (int i = 0; i < text.length(); i++) {
                char c = text.charAt(i);
                switch (c) {
                    case '"' -> s.append("\\\"");
                    case '\\' -> s.append("\\\\");
                    case '\n' -> s.append("\\n");
                    case '\r' -> s.append("\\r");
                    case '\t' -> s.append("\\t");
                    default -> {
                        if (c < 0x20) {
                            s.append(String.format("\\u%04x", (int) c));
                        } else {
                            s.append(c);
                        }
                    }
                }
            }
            s.append('"');
        }
    }
}
