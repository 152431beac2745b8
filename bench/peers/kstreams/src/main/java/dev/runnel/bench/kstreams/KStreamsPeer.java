package dev.runnel.bench.kstreams;

import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.Comparator;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Optional;
import java.util.Properties;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.TimeoutException;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.stream.Stream;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.NewTopic;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.common.errors.TopicExistsException;
import org.apache.kafka.common.errors.UnknownTopicOrPartitionException;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.StreamsConfig;
import org.apache.kafka.streams.errors.LogAndContinueExceptionHandler;
import org.apache.kafka.streams.errors.StreamsUncaughtExceptionHandler.StreamThreadExceptionResponse;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * Runs {@link WindowJob} on a Kafka cluster until SIGTERM (or SIGINT). Prints the single line
 * {@code running} on stdout once Kafka Streams first reaches RUNNING; everything else goes to stderr.
 * Exit codes: 0 after a clean close on a signal, 1 on failure (Kafka Streams in ERROR, a close that
 * timed out, an unreachable broker, a missing input topic), 2 on bad arguments.
 */
public final class KStreamsPeer {
    private static final Logger log = LoggerFactory.getLogger(KStreamsPeer.class);
    private static final Duration CLOSE_TIMEOUT = Duration.ofSeconds(30);

    static final String USAGE = """
        usage: java -jar runnel-kstreams-peer.jar --brokers HOST:PORT --input TOPIC --output TOPIC
                 --application-id ID [--threads 2] [--grace-ms 0] [--commit-interval-ms 100]
                 [--state-dir DIR] [--cache-bytes 10485760] [--emit-interval-ms 0]
                 [--retention-ms WINDOW+GRACE+120000]""";

    /** The command line. */
    record Options(String brokers, String input, String output, String applicationId, int threads,
                   long graceMs, long commitIntervalMs, Path stateDir, long cacheBytes, long emitIntervalMs,
                   long retentionMs) {

        static Options parse(String[] args) {
            Map<String, String> given = new HashMap<>();
            List<String> known = List.of("--brokers", "--input", "--output", "--application-id", "--threads",
                "--grace-ms", "--commit-interval-ms", "--state-dir", "--cache-bytes", "--emit-interval-ms",
                "--retention-ms");
            for (int i = 0; i < args.length; i++) {
                String flag = args[i];
                String value = null;
                int eq = flag.indexOf('=');
                if (flag.startsWith("--") && eq > 0) {
                    value = flag.substring(eq + 1);
                    flag = flag.substring(0, eq);
                }
                if (!known.contains(flag)) {
                    throw new IllegalArgumentException("unknown argument " + args[i]);
                }
                if (value == null) {
                    if (i + 1 >= args.length) {
                        throw new IllegalArgumentException(flag + " needs a value");
                    }
                    value = args[++i];
                }
                if (given.put(flag, value) != null) {
                    throw new IllegalArgumentException(flag + " given twice");
                }
            }
            long graceMs = number(given, "--grace-ms", 0, 0, Long.MAX_VALUE / 4);
            long minRetention = WindowJob.WINDOW.toMillis() + graceMs;
            return new Options(
                required(given, "--brokers"), required(given, "--input"), required(given, "--output"),
                required(given, "--application-id"),
                (int) number(given, "--threads", 2, 1, 1024),
                graceMs,
                number(given, "--commit-interval-ms", 100, 0, Long.MAX_VALUE),
                given.containsKey("--state-dir") ? Path.of(given.get("--state-dir")) : null,
                number(given, "--cache-bytes", 10L * 1024 * 1024, 0, Long.MAX_VALUE),
                number(given, "--emit-interval-ms", 0, 0, Long.MAX_VALUE),
                number(given, "--retention-ms", minRetention + 120_000, minRetention, Long.MAX_VALUE));
        }

        private static String required(Map<String, String> given, String flag) {
            String value = given.get(flag);
            if (value == null || value.isBlank()) {
                throw new IllegalArgumentException(flag + " is required");
            }
            return value;
        }

        private static long number(Map<String, String> given, String flag, long dflt, long min, long max) {
            String text = given.get(flag);
            if (text == null) {
                return dflt;
            }
            try {
                long n = Long.parseLong(text.strip());
                if (n < min || n > max) {
                    throw new IllegalArgumentException(flag + " must be within [" + min + ", " + max + "], got " + n);
                }
                return n;
            } catch (NumberFormatException e) {
                throw new IllegalArgumentException(flag + " takes a whole number, got '" + text + "'");
            }
        }
    }

    public static void main(String[] args) {
        Options o;
        try {
            o = Options.parse(args);
        } catch (IllegalArgumentException e) {
            System.err.println("runnel-kstreams-peer: " + e.getMessage());
            System.err.println(USAGE);
            System.exit(2);
            return;
        }
        try {
            System.exit(run(o));
        } catch (IllegalStateException e) {
            System.err.println("runnel-kstreams-peer: " + e.getMessage());
            System.exit(1);
        } catch (Exception e) {
            log.error("failed: {}", e.toString(), e);
            System.exit(1);
        }
    }

    private static int run(Options o) throws Exception {
        ensureOutputTopic(o);
        boolean ownStateDir = o.stateDir() == null;
        Path stateDir = ownStateDir ? Files.createTempDirectory("runnel-kstreams-") : o.stateDir();

        KafkaStreams streams = new KafkaStreams(
            WindowJob.topology(o.input(), o.output(), Duration.ofMillis(o.graceMs()), Duration.ofMillis(o.retentionMs())),
            config(o, stateDir));
        AtomicBoolean announced = new AtomicBoolean();
        CountDownLatch failed = new CountDownLatch(1);
        streams.setStateListener((now, before) -> {
            log.info("state {} -> {}", before, now);
            if (now == KafkaStreams.State.RUNNING && announced.compareAndSet(false, true)) {
                System.out.println("running");
                System.out.flush();
            } else if (now == KafkaStreams.State.ERROR) {
                failed.countDown();
            }
        });
        streams.setUncaughtExceptionHandler(e -> {
            log.error("a stream thread failed; shutting down", e);
            return StreamThreadExceptionResponse.SHUTDOWN_CLIENT;
        });

        // Whoever sets this first closes the streams: the shutdown hook (on a signal) or main (on ERROR).
        AtomicBoolean closing = new AtomicBoolean();
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            if (!closing.compareAndSet(false, true)) {
                return;
            }
            log.info("signal received: closing (timeout {})", CLOSE_TIMEOUT);
            boolean clean = streams.close(CLOSE_TIMEOUT);
            if (!clean) {
                System.err.println("runnel-kstreams-peer: Kafka Streams did not close within " + CLOSE_TIMEOUT);
            }
            boolean ok = clean && streams.state() != KafkaStreams.State.ERROR;
            if (ownStateDir) {
                deleteTree(stateDir);
            }
            System.err.flush();
            // A JVM ended by a signal exits 128+N whatever its hooks do; the contract asks 0 for a clean stop.
            Runtime.getRuntime().halt(ok ? 0 : 1);
        }, "runnel-kstreams-shutdown"));

        streams.start();
        failed.await();
        if (!closing.compareAndSet(false, true)) {
            Thread.sleep(Long.MAX_VALUE); // a signal's close is under way: the hook ends the process
        }
        System.err.println("runnel-kstreams-peer: Kafka Streams went to ERROR (see the log above); exiting");
        streams.close(CLOSE_TIMEOUT);
        if (ownStateDir) {
            deleteTree(stateDir);
        }
        return 1;
    }

    static Properties config(Options o, Path stateDir) {
        Properties p = new Properties();
        p.put(StreamsConfig.APPLICATION_ID_CONFIG, o.applicationId());
        p.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, o.brokers());
        p.put(StreamsConfig.PROCESSING_GUARANTEE_CONFIG, StreamsConfig.EXACTLY_ONCE_V2);
        p.put(StreamsConfig.COMMIT_INTERVAL_MS_CONFIG, o.commitIntervalMs());
        p.put(StreamsConfig.NUM_STREAM_THREADS_CONFIG, o.threads());
        p.put(StreamsConfig.STATE_DIR_CONFIG, stateDir.toString());
        p.put(StreamsConfig.STATESTORE_CACHE_MAX_BYTES_CONFIG, o.cacheBytes());
        p.put(StreamsConfig.REPLICATION_FACTOR_CONFIG, 1);
        // A value that is not a Point is logged and skipped, as Runnel's processor dead-letters it.
        p.put(StreamsConfig.DESERIALIZATION_EXCEPTION_HANDLER_CLASS_CONFIG, LogAndContinueExceptionHandler.class);
        // With emitStrategy(onWindowClose) Kafka Streams checks for closed windows at most once per
        // this interval of wall-clock time (default 1000 ms), and only when a record arrives: a
        // record that closes windows within the interval would leave them unemitted until the next
        // record after it. 0 checks at every record (a comparison; the store is read only when a
        // window boundary was crossed), which is what makes a final flush record work.
        p.put(StreamsConfig.InternalConfig.EMIT_INTERVAL_MS_KSTREAMS_WINDOWED_AGGREGATION, o.emitIntervalMs());
        p.put(StreamsConfig.producerPrefix(ProducerConfig.COMPRESSION_TYPE_CONFIG), "lz4");
        p.put(StreamsConfig.producerPrefix(ProducerConfig.LINGER_MS_CONFIG), 5);
        p.put(StreamsConfig.producerPrefix(ProducerConfig.ACKS_CONFIG), "all");
        p.put(StreamsConfig.consumerPrefix(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG), "earliest");
        // exactly_once_v2 already reads with isolation.level=read_committed.
        return p;
    }

    /** Creates the output topic, with the input's partition count, unless it exists. */
    private static void ensureOutputTopic(Options o) throws InterruptedException, ExecutionException {
        Properties p = new Properties();
        p.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, o.brokers());
        try (Admin admin = Admin.create(p)) {
            int partitions;
            try {
                partitions = admin.describeTopics(List.of(o.input())).allTopicNames()
                    .get(30, TimeUnit.SECONDS).get(o.input()).partitions().size();
            } catch (ExecutionException e) {
                if (e.getCause() instanceof UnknownTopicOrPartitionException) {
                    throw new IllegalStateException("input topic " + o.input() + " does not exist");
                }
                throw e;
            } catch (TimeoutException e) {
                throw new IllegalStateException("no answer from the brokers at " + o.brokers() + " in 30 s");
            }
            try {
                admin.createTopics(List.of(new NewTopic(o.output(), Optional.of(partitions), Optional.empty())))
                    .all().get(30, TimeUnit.SECONDS);
                log.info("created output topic {} with {} partitions", o.output(), partitions);
            } catch (ExecutionException e) {
                if (!(e.getCause() instanceof TopicExistsException)) {
                    throw e;
                }
            } catch (TimeoutException e) {
                throw new IllegalStateException("could not create output topic " + o.output() + " in 30 s");
            }
        }
    }

    private static void deleteTree(Path root) {
        try (Stream<Path> paths = Files.walk(root)) {
            paths.sorted(Comparator.reverseOrder()).forEach(path -> {
                try {
                    Files.deleteIfExists(path);
                } catch (IOException e) {
                    throw new UncheckedIOException(e);
                }
            });
        } catch (IOException | UncheckedIOException e) {
            log.warn("could not delete state dir {}: {}", root, e.toString());
        }
    }
}
