#!/usr/bin/env python3
"""Kills a running Flumen query (and optionally the Kafka broker) with SIGKILL again and again,
and checks what reached Kafka.

    scripts/crash_test.py BOOTSTRAP EXAMPLE_BINARY [--kills 20] [--broker-restarts N]
                          [--exactly-once] [--records N] [--rate R]

An independent producer (confluent-kafka, idempotent) keeps writing numbered records to a fresh
input topic while the `kafka_to_kafka` example copies them to a fresh output topic. The example
is killed with SIGKILL at random moments (`--kills` times) and restarted on the same checkpoint
each time; then the producer stops, the example drains what is left with `--available-now`, and
an independent `read_committed` consumer reads the output.

With `--broker-restarts N`, a second phase follows the kills (the two never overlap, so every
failure is attributed to one kind of crash): one long-running example copies while the broker
itself is killed with `scripts/kafka.sh kill` (SIGKILL), left down for a random 1-5 s, and
brought back with `scripts/kafka.sh restart` (same ports, same data), N times. After each restart
the example is either still running, and must then make progress again (commit a batch planned
after the restart within --recovery-timeout seconds, unless it has processed everything), or has
exited: its exit code and error are recorded and it is started again on the same checkpoint
(counted in `query_restarts_after_broker_crash`). The producer buffers through the outages. Only
the broker that `scripts/kafka.sh` runs (its run dir comes from FLUMEN_KAFKA_RUN, as for
kafka.sh) can be crashed: `kafka.sh status` must report it running at BOOTSTRAP.
`--kills 0 --broker-restarts 5` crashes only the broker. Choose --records/--rate so that the
producer is still writing during the broker phase: each outage is the 1-5 s plus the restart
(16-25 s on a loaded 2-core machine), and each round ~30 s, e.g. --records 30000 --rate 200 for 5.

With `--exactly-once`, every input record must appear exactly once: 0 lost, 0 duplicated.
Without it (at-least-once), 0 lost; duplicates are counted and reported. Prints one JSON line
with the counts and exits non-zero when a guarantee is broken.

With `--window-counts append|update` the query is stateful: EXAMPLE_BINARY is then the
`kafka_window_counts` example (a count per 10-second event-time window, watermark delay 0, in
that output mode), the input topic has one partition and record i carries the Kafka timestamp
base + 10 ms * i. After the kills and the drain, the same example runs once more, uninterrupted,
on a fresh checkpoint into a reference topic, and the crashed run must end with exactly its
result: every window's last count equal (and equal to the number of input records in the window),
no window missing or extra; with `--exactly-once` also no output row twice (in append mode the
output equals the reference row for row). Duplicated rows are counted without it.
"""

import argparse
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid

from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic


def create_topics(bootstrap, names_and_partitions):
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics(
        [NewTopic(name, num_partitions=p, replication_factor=1) for name, p in names_and_partitions]
    )
    for future in futures.values():
        future.result(30)


# How long the input producer keeps retrying a record (librdkafka's message.timeout.ms) and waits
# for the last ones at the end: far longer than a broker outage of this test.
DELIVERY_TIMEOUT_S = 300


class InputWriter(threading.Thread):
    """Writes records 0, 1, 2, ... (key and value the number) until stopped or `total` is reached.

    The producer is idempotent and buffers while the broker is down; a record it gives up on
    (delivery failed) is counted in `failed` and makes the run fail as a harness problem."""

    def __init__(self, bootstrap, topic, total, per_second, quiet=False, timestamps=None):
        super().__init__(daemon=True)
        # (base ms, step ms): record i gets the Kafka timestamp base + step * i.
        self.timestamps = timestamps
        config = {
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,
            "message.timeout.ms": DELIVERY_TIMEOUT_S * 1000,
        }
        if quiet:  # no "Connect ... refused" line every second while the broker is down
            config["log_level"] = 2
        self.producer = Producer(config)
        self.topic = topic
        self.total = total
        self.per_second = per_second
        self.written = 0
        self.delivered = 0
        self.failed = 0
        self.first_failure = None
        self.error = None
        self.stopping = threading.Event()

    def _on_delivery(self, error, _message):
        if error is None:
            self.delivered += 1
        else:
            self.failed += 1
            self.first_failure = self.first_failure or str(error)

    def run(self):
        try:
            self._write()
        except Exception as e:  # noqa: BLE001 - reported by main()
            self.error = repr(e)

    def _write(self):
        started = time.monotonic()
        while self.written < self.total and not self.stopping.is_set():
            due = started + self.written / self.per_second
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(min(delay, 0.05))
                continue
            n = str(self.written)
            try:
                extra = {}
                if self.timestamps:
                    extra["timestamp"] = self.timestamps[0] + self.timestamps[1] * self.written
                self.producer.produce(self.topic, key=n, value=n, on_delivery=self._on_delivery, **extra)
            except BufferError:  # the local queue is full (a long outage): wait for room
                self.producer.poll(0.1)
                continue
            self.written += 1
            if self.written % 100 == 0:
                self.producer.poll(0)
        remaining = self.producer.flush(DELIVERY_TIMEOUT_S + 30)
        if remaining != 0:
            raise RuntimeError(f"the input producer could not deliver {remaining} record(s) in time")


def read_output(bootstrap, topic, idle_seconds=5.0, limit_seconds=120.0, with_keys=False):
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "crash-test-reader-" + uuid.uuid4().hex[:8],
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    consumer.subscribe([topic])
    values = []
    last = time.monotonic()
    deadline = last + limit_seconds
    while time.monotonic() - last < idle_seconds and time.monotonic() < deadline:
        message = consumer.poll(0.5)
        if message is None:
            continue
        if message.error():
            continue
        value = message.value().decode()
        values.append((message.key().decode(), value) if with_keys else value)
        last = time.monotonic()
    consumer.close()
    return values


KAFKA_SH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "kafka.sh")


def kafka_sh(command, timeout):
    return subprocess.run(
        [KAFKA_SH, command], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=timeout
    )


def check_broker_is_ours(bootstrap):
    """Fails unless `kafka.sh status` (same FLUMEN_KAFKA_RUN) says its broker runs at `bootstrap`."""
    run_dir = os.environ.get("FLUMEN_KAFKA_RUN", "/tmp/flumen-kafka-run (kafka.sh's default)")
    status = kafka_sh("status", 60)
    said = (status.stdout + status.stderr).strip() or f"exit code {status.returncode}"
    match = re.match(r"running: Kafka on (\S+) \(pid ", status.stdout)
    if status.returncode != 0 or not match or match.group(1) != bootstrap:
        sys.exit(
            f"crash_test: --broker-restarts crashes the broker, so it must be the one scripts/kafka.sh "
            f"runs at {bootstrap} for FLUMEN_KAFKA_RUN={run_dir}; `{KAFKA_SH} status` says: {said}"
        )


def newest_batch(checkpoint, log):
    """The newest batch id in the checkpoint's `offsets` (planned) or `commits` (done) log, or -1."""
    try:
        return max((int(n) for n in os.listdir(os.path.join(checkpoint, log)) if n.isdigit()), default=-1)
    except OSError:
        return -1


def processed(checkpoint):
    """Input records the query has committed: the end offsets of the newest committed batch."""
    batch = newest_batch(checkpoint, "commits")
    if batch < 0:
        return 0
    try:
        with open(os.path.join(checkpoint, "offsets", str(batch))) as f:
            ends = json.loads(f.read().splitlines()[-1])
        return sum(sum(partitions.values()) for partitions in ends.values())
    except (OSError, ValueError, IndexError, AttributeError):
        return 0  # read while being replaced


def error_line(text):
    """The line that says why a run failed: anyhow's `Error: ...`, else the last non-empty one."""
    lines = [line for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Error:")]
    return (errors or lines or ["(no output on stderr)"])[-1][:500]


class Example:
    """The long-running example of the broker phase, its stderr in a file of `work_dir`."""

    def __init__(self, command, work_dir):
        self.command = command
        self.work_dir = work_dir
        self.runs = 0
        self.process = None
        self.stderr_path = None

    def start(self):
        self.runs += 1
        self.stderr_path = os.path.join(self.work_dir, f"example-{self.runs}.stderr")
        with open(self.stderr_path, "wb") as stderr:
            self.process = subprocess.Popen(self.command, stdout=subprocess.DEVNULL, stderr=stderr)

    def exited(self):
        """None while running, else (exit code, the error line, the last lines of stderr)."""
        code = self.process.poll()
        if code is None:
            return None
        with open(self.stderr_path, "rb") as f:
            text = f.read().decode(errors="replace")
        text = text.split("\nStack backtrace:")[0]  # with RUST_BACKTRACE set, anyhow appends one
        return code, error_line(text), "\n".join(text.splitlines()[-15:])

    def stop(self):
        """Ctrl-C (a clean stop), SIGKILL if it has not ended after 60 s; the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def crash_broker(args, rng, command, checkpoint, writer, work_dir):
    """The broker phase: kill and restart the broker `args.broker_restarts` times under one
    long-running example, restarting the example when it has exited. Returns the report's
    entries and the failures."""
    example = Example(command, work_dir)
    example.start()
    outages, crash_errors, failures = [], [], []
    query_restarts = broker_restarts = 0
    start_timeout = int(os.environ.get("FLUMEN_KAFKA_START_TIMEOUT", "90"))

    def restart_example_if_exited(outage):
        nonlocal query_restarts
        ended = example.exited()
        if ended is None:
            return
        code, line, tail = ended
        print(f"crash_test: after broker restart {len(outages) + 1} the example had exited with {code}: {line}"
              f"\n--- last lines of {example.stderr_path}\n{tail}", file=sys.stderr)
        outage["example_exits"].append({"exit_code": code, "error": line, "stderr": example.stderr_path})
        crash_errors.append(line)
        query_restarts += 1
        example.start()

    # Let it make progress before the first crash.
    time.sleep(rng.uniform(3.0, 6.0))
    for _ in range(args.broker_restarts):
        before = processed(checkpoint)
        outage = {"input_written": writer.written, "processed_before": before, "example_exits": []}
        killed_at = time.monotonic()
        result = kafka_sh("kill", 60)
        if result.returncode != 0:
            failures.append(f"kafka.sh kill failed ({result.returncode}): {result.stderr.strip()}")
            break
        down = rng.uniform(1.0, 5.0)
        time.sleep(down)
        restart_began = time.monotonic()
        result = kafka_sh("restart", start_timeout + 120)
        outage["down_s"] = round(down, 1)
        outage["restart_s"] = round(time.monotonic() - restart_began, 1)
        outage["outage_s"] = round(time.monotonic() - killed_at, 1)
        if result.returncode != 0 or result.stdout.strip() != args.bootstrap:
            failures.append(
                f"kafka.sh restart failed ({result.returncode}, printed {result.stdout.strip()!r}): "
                f"{result.stderr.strip()[-2000:]}"
            )
            outages.append(outage)
            break
        broker_restarts += 1
        broker_back = time.monotonic()
        restart_example_if_exited(outage)

        # Recovered: a batch planned after the broker came back has been committed (one that was
        # in flight during the outage does not count), or every record written is processed.
        planned_before = newest_batch(checkpoint, "offsets")
        deadline = broker_back + args.recovery_timeout
        while True:
            if newest_batch(checkpoint, "commits") > planned_before or processed(checkpoint) >= writer.written:
                outage["query_recovered_s"] = round(time.monotonic() - broker_back, 1)
                break
            if time.monotonic() >= deadline:
                outage["query_recovered_s"] = None
                failures.append(
                    f"no new batch committed {args.recovery_timeout:g} s after broker restart {len(outages) + 1} "
                    f"({processed(checkpoint)} of {writer.written} input records processed; "
                    f"stderr in {example.stderr_path})"
                )
                break
            restart_example_if_exited(outage)
            time.sleep(0.25)
        # A few seconds more of normal running before the next crash.
        time.sleep(rng.uniform(2.0, 4.0))
        restart_example_if_exited(outage)
        outage["processed_after"] = processed(checkpoint)
        outages.append(outage)

    final_exit_code = example.stop()
    if final_exit_code != 0:
        _, line, tail = example.exited()
        failures.append(f"the example did not stop cleanly on Ctrl-C (exit code {final_exit_code}): {line}\n{tail}")
    return {
        "broker_restarts": broker_restarts,
        "query_restarts_after_broker_crash": query_restarts,
        "broker_crash_errors": crash_errors,
        "broker_outages": outages,
        "broker_phase_final_exit_code": final_exit_code,
    }, failures


WINDOW_MS = 10_000
TIMESTAMP_STEP_MS = 10


def window_counts_report(args, command, output_topic, writer, base_ms, run):
    """Runs the reference (uninterrupted) query and compares the crashed run's output with it."""
    reference_topic = f"crash-ref-{run}"
    create_topics(args.bootstrap, [(reference_topic, 1)])
    reference_command = list(command)
    reference_command[reference_command.index("--output") + 1] = reference_topic
    reference_command[reference_command.index("--checkpoint") + 1] = tempfile.mkdtemp(prefix="flumen-crash-ref-")
    reference_run = subprocess.run(
        reference_command + ["--available-now"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=600
    )
    crashed = read_output(args.bootstrap, output_topic, with_keys=True)
    reference = read_output(args.bootstrap, reference_topic, with_keys=True)

    def last_counts(rows):
        # Counts only grow, so a window's last count is its largest.
        final = {}
        for key, value in rows:
            final[key] = max(final.get(key, 0), int(value))
        return final

    expected_per_window = {}
    for i in range(writer.written):
        start = (base_ms + TIMESTAMP_STEP_MS * i) // WINDOW_MS * WINDOW_MS
        expected_per_window[start] = expected_per_window.get(start, 0) + 1
    crashed_final, reference_final = last_counts(crashed), last_counts(reference)
    # The reference must itself be right: each window it wrote holds every record of it.
    expected_counts = sorted(expected_per_window.values())
    reference_wrong = [
        (key, count) for key, count in reference_final.items() if count not in expected_per_window.values()
    ]
    windows_missing = sorted(set(reference_final) - set(crashed_final))
    windows_extra = sorted(set(crashed_final) - set(reference_final))
    counts_differing = sorted(
        key for key in set(crashed_final) & set(reference_final) if crashed_final[key] != reference_final[key]
    )
    duplicated = len(crashed) - len(set(crashed))
    report = {
        "window_mode": args.window_counts,
        "windows_expected": len(expected_per_window),
        "windows_reference": len(reference_final),
        "windows_crashed_run": len(crashed_final),
        "rows_reference": len(reference),
        "rows_crashed_run": len(crashed),
        "windows_missing": len(windows_missing),
        "windows_extra": len(windows_extra),
        "window_counts_differing": len(counts_differing),
        "duplicated_rows": duplicated,
        "reference_exit_code": reference_run.returncode,
    }
    failures = []
    if reference_run.returncode != 0:
        failures.append("the reference run failed: " + reference_run.stderr.decode()[-2000:])
    if not reference_final:
        failures.append("the reference run wrote no window")
    if reference_wrong:
        failures.append(f"the reference run's counts are wrong (expected counts {expected_counts[:5]}...): {reference_wrong[:5]}")
    if windows_missing or windows_extra or counts_differing:
        failures.append(
            f"the crashed run's windows differ from the uninterrupted run's: missing {windows_missing[:5]}, "
            f"extra {windows_extra[:5]}, different counts {[(k, crashed_final[k], reference_final[k]) for k in counts_differing[:5]]}"
        )
    if args.exactly_once and duplicated:
        failures.append(f"{duplicated} output row(s) written twice with the exactly-once sink")
    if args.exactly_once and args.window_counts == "append" and sorted(crashed) != sorted(reference):
        failures.append("in append mode the exactly-once output must equal the uninterrupted run's, row for row")
    return report, failures


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bootstrap")
    parser.add_argument("example", help="path of the built kafka_to_kafka (or, with --window-counts, kafka_window_counts) example")
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument(
        "--broker-restarts", type=int, default=0,
        help="after the kills, SIGKILL and restart the broker (scripts/kafka.sh kill/restart) this many times",
    )
    parser.add_argument(
        "--recovery-timeout", type=float, default=60.0,
        help="seconds the example has to commit a batch planned after a broker restart (default 60)",
    )
    parser.add_argument("--exactly-once", action="store_true")
    parser.add_argument(
        "--window-counts", choices=["append", "update"], default=None,
        help="run the stateful kafka_window_counts example in this output mode (see above)",
    )
    parser.add_argument("--records", type=int, default=20000)
    parser.add_argument("--rate", type=int, default=1000, help="input records per second")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()

    if args.kills < 0 or args.broker_restarts < 0:
        parser.error("--kills and --broker-restarts must be >= 0")
    if args.broker_restarts:
        check_broker_is_ours(args.bootstrap)
    started = time.monotonic()
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    run = uuid.uuid4().hex[:8]
    input_topic, output_topic = f"crash-in-{run}", f"crash-out-{run}"
    # A windowed count reads one partition, so that event time only grows and no record is late
    # whatever the batches: the uninterrupted run is then the one right answer.
    create_topics(args.bootstrap, [(input_topic, 1 if args.window_counts else 3), (output_topic, 2)])
    work_dir = tempfile.mkdtemp(prefix="flumen-crash-")
    checkpoint = os.path.join(work_dir, "checkpoint")
    command = [
        args.example,
        "--bootstrap-servers", args.bootstrap,
        "--input", input_topic,
        "--output", output_topic,
        "--checkpoint", checkpoint,
        "--max-offsets-per-trigger", "500",
    ]
    if args.exactly_once:
        command.append("--exactly-once")
    timestamps = None
    if args.window_counts:
        command += ["--output-mode", args.window_counts, "--window", "10 seconds", "--watermark", "0 seconds"]
        # An hour ago, on a window boundary: Kafka refuses create times more than an hour ahead.
        base_ms = (int(time.time() * 1000) - 3_600_000) // WINDOW_MS * WINDOW_MS
        timestamps = (base_ms, TIMESTAMP_STEP_MS)

    writer = InputWriter(
        args.bootstrap, input_topic, args.records, args.rate, quiet=args.broker_restarts > 0, timestamps=timestamps
    )
    writer.start()
    kills = 0
    early_exits = []
    for _ in range(args.kills):
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(rng.uniform(0.3, 2.5))
        if process.poll() is not None:
            early_exits.append((process.returncode, process.stderr.read().decode()[-2000:]))
            continue
        process.send_signal(signal.SIGKILL)
        process.wait()
        kills += 1
    broker_report, broker_failures = {}, []
    if args.broker_restarts:
        broker_report, broker_failures = crash_broker(args, rng, command, checkpoint, writer, work_dir)
    writer.stopping.set()
    writer.join()

    drain = subprocess.run(command + ["--available-now"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=600)
    if args.window_counts:
        outcome, outcome_failures = window_counts_report(args, command, output_topic, writer, base_ms, run)
    else:
        outcome, outcome_failures = copied_records_report(args, output_topic, writer)
    report = {
        "mode": "exactly-once" if args.exactly_once else "at-least-once",
        "seed": seed,
        "kills": kills,
        "early_exits": len(early_exits),
        "input_records": writer.written,
        **outcome,
        "drain_exit_code": drain.returncode,
        **broker_report,
        "input_delivery_failures": writer.failed,
        "work_dir": work_dir,
        "seconds": round(time.monotonic() - started, 1),
    }
    print(json.dumps(report))
    failures = list(broker_failures) + common_failures(args, writer, broker_report, drain, early_exits, kills)
    failures += outcome_failures
    for failure in failures:
        print("crash_test: " + failure, file=sys.stderr)
    return 1 if failures else 0


def copied_records_report(args, output_topic, writer):
    """kafka_to_kafka: every input number must come out as `[processed] N`."""
    values = read_output(args.bootstrap, output_topic)
    prefix = "[processed] "
    numbers = [int(v[len(prefix):]) for v in values if v.startswith(prefix)]
    distinct = set(numbers)
    expected = set(range(writer.written))
    lost = len(expected - distinct)
    unexpected = len(distinct - expected) + (len(values) - len(numbers))
    duplicated = len(numbers) - len(distinct)
    report = {"output_records": len(values), "lost": lost, "duplicated": duplicated, "unexpected": unexpected}
    failures = []
    if lost or unexpected:
        failures.append(f"{lost} record(s) lost, {unexpected} unexpected")
    if args.exactly_once and duplicated:
        failures.append(f"{duplicated} duplicate(s) with the exactly-once sink")
    return report, failures


def common_failures(args, writer, broker_report, drain, early_exits, kills):
    """What breaks any run, whatever the query: the harness, the drain, the kills."""
    failures = []
    if writer.error or writer.failed:
        failures.append(
            f"the input producer failed ({writer.error or ''}; {writer.failed} record(s) not delivered, "
            f"first: {writer.first_failure}): a harness problem, the counts above are not meaningful"
        )
    if args.broker_restarts and broker_report.get("broker_restarts", 0) < args.broker_restarts:
        failures.append(f"only {broker_report.get('broker_restarts', 0)} of {args.broker_restarts} broker restarts happened")
    if drain.returncode != 0:
        failures.append("the draining run failed: " + drain.stderr.decode()[-2000:])
    if early_exits:
        failures.append(f"{len(early_exits)} run(s) ended before being killed: {early_exits[0]}")
    if kills < args.kills:
        failures.append(f"only {kills} of {args.kills} kills happened")
    return failures


if __name__ == "__main__":
    sys.exit(main())
