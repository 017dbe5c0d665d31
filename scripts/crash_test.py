#!/usr/bin/env python3
"""Kills a running Flumen query with SIGKILL again and again, and checks what reached Kafka.

    scripts/crash_test.py BOOTSTRAP EXAMPLE_BINARY [--kills 20] [--exactly-once] [--records N]

An independent producer (confluent-kafka) keeps writing numbered records to a fresh input topic
while the `kafka_to_kafka` example copies them to a fresh output topic. The example is killed
with SIGKILL at random moments (`--kills` times) and restarted on the same checkpoint each
time; then the producer stops, the example drains what is left with `--available-now`, and an
independent `read_committed` consumer reads the output.

With `--exactly-once`, every input record must appear exactly once: 0 lost, 0 duplicated.
Without it (at-least-once), 0 lost; duplicates are counted and reported. Prints one JSON line
with the counts and exits non-zero when a guarantee is broken.
"""

import argparse
import json
import os
import random
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


class InputWriter(threading.Thread):
    """Writes records 0, 1, 2, ... (key and value the number) until stopped or `total` is reached."""

    def __init__(self, bootstrap, topic, total, per_second):
        super().__init__(daemon=True)
        self.producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
        self.topic = topic
        self.total = total
        self.per_second = per_second
        self.written = 0
        self.stopping = threading.Event()

    def run(self):
        started = time.monotonic()
        while self.written < self.total and not self.stopping.is_set():
            due = started + self.written / self.per_second
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(min(delay, 0.05))
                continue
            n = str(self.written)
            self.producer.produce(self.topic, key=n, value=n)
            self.written += 1
            if self.written % 100 == 0:
                self.producer.poll(0)
        if self.producer.flush(60) != 0:
            raise RuntimeError("the input producer could not deliver every record")


def read_output(bootstrap, topic, idle_seconds=5.0, limit_seconds=120.0):
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
        values.append(message.value().decode())
        last = time.monotonic()
    consumer.close()
    return values


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bootstrap")
    parser.add_argument("example", help="path of the built kafka_to_kafka example")
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--exactly-once", action="store_true")
    parser.add_argument("--records", type=int, default=20000)
    parser.add_argument("--rate", type=int, default=1000, help="input records per second")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()

    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    run = uuid.uuid4().hex[:8]
    input_topic, output_topic = f"crash-in-{run}", f"crash-out-{run}"
    create_topics(args.bootstrap, [(input_topic, 3), (output_topic, 2)])
    checkpoint = os.path.join(tempfile.mkdtemp(prefix="flumen-crash-"), "checkpoint")
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

    writer = InputWriter(args.bootstrap, input_topic, args.records, args.rate)
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
    writer.stopping.set()
    writer.join()

    drain = subprocess.run(command + ["--available-now"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=600)
    values = read_output(args.bootstrap, output_topic)
    prefix = "[processed] "
    numbers = [int(v[len(prefix):]) for v in values if v.startswith(prefix)]
    distinct = set(numbers)
    expected = set(range(writer.written))
    lost = len(expected - distinct)
    unexpected = len(distinct - expected) + (len(values) - len(numbers))
    duplicated = len(numbers) - len(distinct)
    report = {
        "mode": "exactly-once" if args.exactly_once else "at-least-once",
        "seed": seed,
        "kills": kills,
        "early_exits": len(early_exits),
        "input_records": writer.written,
        "output_records": len(values),
        "lost": lost,
        "duplicated": duplicated,
        "unexpected": unexpected,
        "drain_exit_code": drain.returncode,
    }
    print(json.dumps(report))
    failures = []
    if drain.returncode != 0:
        failures.append("the draining run failed: " + drain.stderr.decode()[-2000:])
    if early_exits:
        failures.append(f"{len(early_exits)} run(s) ended before being killed: {early_exits[0]}")
    if kills < args.kills:
        failures.append(f"only {kills} of {args.kills} kills happened")
    if lost or unexpected:
        failures.append(f"{lost} record(s) lost, {unexpected} unexpected")
    if args.exactly_once and duplicated:
        failures.append(f"{duplicated} duplicate(s) with the exactly-once sink")
    for failure in failures:
        print("crash_test: " + failure, file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
