#!/usr/bin/env python3
"""Smoke-test a real Kafka broker (such as the one scripts/kafka.sh starts) with
confluent-kafka (librdkafka), a client independent of Flumen.

    python3 scripts/kafka_smoke.py BOOTSTRAP        e.g. 127.0.0.1:29092

Checks, each printed as it passes:
  1. metadata: the broker answers and lists itself;
  2. create a topic (AdminClient, 2 partitions), produce keyed records with
     given timestamps, consume them back (keys, values, timestamps, partitions);
  3. auto topic creation: produce to a topic that does not exist yet;
  4. transactions: a transactional producer commits one transaction and aborts
     another; a read_committed consumer sees only the committed records, a
     read_uncommitted one sees both;
  5. offsets_for_times: timestamp lookups give the first offset at or after the
     timestamp, and -1 (end) past the last record;
  6. a consumer group commits an offset and reads it back.

Exit code: 0 if every check passed, 1 at the first failure, 2 on a usage error.
Needs `pip install confluent-kafka`.
"""

import sys
import time
import uuid

try:
    from confluent_kafka import (
        OFFSET_BEGINNING,
        TIMESTAMP_CREATE_TIME,
        Consumer,
        KafkaError,
        KafkaException,
        Producer,
        TopicPartition,
    )
    from confluent_kafka.admin import AdminClient, NewTopic
except ImportError:
    print("kafka_smoke: confluent-kafka is missing (pip install confluent-kafka)", file=sys.stderr)
    sys.exit(2)

TIMEOUT = 30.0


class CheckFailed(Exception):
    pass


def check(cond, msg):
    if not cond:
        raise CheckFailed(msg)


def ok(msg):
    print(f"ok   {msg}", flush=True)


def base_conf(bootstrap):
    # librdkafka logs every failed reconnect; real failures surface as errors.
    return {"bootstrap.servers": bootstrap, "log_level": 3}


def produce_all(producer, records, topic):
    """records: list of (partition, key, value, timestamp_ms). Returns delivery offsets."""
    delivered, errors = [], []

    def on_delivery(err, msg):
        if err is not None:
            errors.append(err)
        else:
            delivered.append((msg.partition(), msg.offset()))

    for partition, key, value, ts in records:
        kwargs = {"key": key, "value": value, "on_delivery": on_delivery}
        if partition is not None:
            kwargs["partition"] = partition
        if ts is not None:
            kwargs["timestamp"] = ts
        producer.produce(topic, **kwargs)
    left = producer.flush(TIMEOUT)
    check(left == 0 and not errors, f"produce to {topic}: {left} undelivered, errors {errors}")
    check(len(delivered) == len(records), f"produce to {topic}: {len(delivered)}/{len(records)} delivered")
    return delivered


def consume_to_end(bootstrap, topic, partitions, isolation="read_uncommitted"):
    """Read every partition of topic from the beginning to its end (as seen by
    this isolation level) with assign(); returns the messages."""
    conf = base_conf(bootstrap)
    conf.update({
        "group.id": f"smoke-reader-{uuid.uuid4().hex[:8]}",
        "enable.auto.commit": False,
        "enable.partition.eof": True,
        "isolation.level": isolation,
    })
    consumer = Consumer(conf)
    try:
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
        at_eof, out = set(), []
        deadline = time.monotonic() + TIMEOUT
        while len(at_eof) < partitions:
            check(time.monotonic() < deadline,
                  f"consume {topic} ({isolation}): no end of partitions after {TIMEOUT}s; got {len(out)} records")
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    at_eof.add(msg.partition())
                    continue
                raise CheckFailed(f"consume {topic} ({isolation}): {msg.error()}")
            at_eof.discard(msg.partition())
            out.append(msg)
        return out
    finally:
        consumer.close()


def wait_topic(admin, topic, partitions):
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        md = admin.list_topics(topic=topic, timeout=5)
        t = md.topics.get(topic)
        if t is not None and t.error is None and len(t.partitions) == partitions \
                and all(p.leader >= 0 for p in t.partitions.values()):
            return
        time.sleep(0.2)
    raise CheckFailed(f"topic {topic} did not get {partitions} partitions with leaders")


def check_metadata(admin):
    md = admin.list_topics(timeout=TIMEOUT)
    brokers = {b.id: f"{b.host}:{b.port}" for b in md.brokers.values()}
    check(len(brokers) >= 1, "metadata lists no broker")
    ok(f"metadata: cluster {md.cluster_id}, controller {md.controller_id}, brokers {brokers}")


def check_produce_consume(bootstrap, admin, run):
    topic = f"smoke-plain-{run}"
    fs = admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])
    fs[topic].result(TIMEOUT)
    wait_topic(admin, topic, 2)
    ok(f"create topic {topic} with 2 partitions")

    t0 = int(time.time() * 1000) - 60_000
    records = [(i % 2, f"k{i}".encode(), f"v{i}".encode(), t0 + i * 1000) for i in range(10)]
    producer = Producer({**base_conf(bootstrap), "acks": "all", "enable.idempotence": True})
    delivered = produce_all(producer, records, topic)
    ok(f"produce {len(delivered)} keyed records with explicit timestamps (idempotent producer, acks=all)")

    got = consume_to_end(bootstrap, topic, 2)
    seen = sorted((m.partition(), m.key(), m.value(), m.timestamp()) for m in got)
    want = sorted((p, k, v, (TIMESTAMP_CREATE_TIME, ts)) for p, k, v, ts in records)
    check(seen == want, f"consume {topic}: got {seen}, want {want}")
    for p in (0, 1):
        offs = [m.offset() for m in got if m.partition() == p]
        check(offs == list(range(len(offs))), f"partition {p} offsets {offs} are not 0..n-1")
    ok(f"consume {len(got)} records back: keys, values, partitions, CreateTime timestamps and offsets match")
    return topic, t0


def check_auto_create(bootstrap, run):
    topic = f"smoke-auto-{run}"
    producer = Producer(base_conf(bootstrap))
    produce_all(producer, [(None, b"a", b"auto", None)], topic)
    got = consume_to_end(bootstrap, topic, 1)
    check([m.value() for m in got] == [b"auto"], f"auto-created {topic}: got {[m.value() for m in got]}")
    ok(f"auto topic creation: producing to missing topic {topic} created it (1 partition) and the record reads back")


def check_transactions(bootstrap, admin, run):
    topic = f"smoke-txn-{run}"
    admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])[topic].result(TIMEOUT)
    wait_topic(admin, topic, 1)

    producer = Producer({**base_conf(bootstrap), "transactional.id": f"smoke-txn-{run}"})
    producer.init_transactions(TIMEOUT)
    ok("transactions: init_transactions")

    committed = [b"c1", b"c2", b"c3"]
    aborted = [b"a1", b"a2"]
    producer.begin_transaction()
    for v in committed:
        producer.produce(topic, value=v)
    producer.commit_transaction(TIMEOUT)
    ok(f"transactions: committed a transaction of {len(committed)} records")

    producer.begin_transaction()
    for v in aborted:
        producer.produce(topic, value=v)
    producer.flush(TIMEOUT)  # make sure they are in the log before the abort
    producer.abort_transaction(TIMEOUT)
    ok(f"transactions: aborted a transaction of {len(aborted)} records (written to the log first)")

    # One more committed transaction after the aborted one: read_committed must
    # skip the aborted records in the middle of the log, not just stop before them.
    tail = [b"c4"]
    producer.begin_transaction()
    for v in tail:
        producer.produce(topic, value=v)
    producer.commit_transaction(TIMEOUT)

    rc = [m.value() for m in consume_to_end(bootstrap, topic, 1, "read_committed")]
    check(rc == committed + tail, f"read_committed saw {rc}, want {committed + tail}")
    ok(f"transactions: read_committed consumer sees only committed records {rc}")

    ru = [m.value() for m in consume_to_end(bootstrap, topic, 1, "read_uncommitted")]
    check(ru == committed + aborted + tail, f"read_uncommitted saw {ru}, want {committed + aborted + tail}")
    ok(f"transactions: read_uncommitted consumer sees committed and aborted records {ru}")


def check_offsets_for_times(bootstrap, topic, t0):
    # Partition 0 holds records i = 0, 2, 4, 6, 8 at offsets 0..4 with timestamps t0 + i*1000.
    conf = {**base_conf(bootstrap), "group.id": f"smoke-times-{uuid.uuid4().hex[:8]}"}
    consumer = Consumer(conf)
    try:
        cases = [
            (t0 - 5000, 0),          # before everything: the first offset
            (t0, 0),                 # exact timestamp of offset 0
            (t0 + 2000, 1),          # exact timestamp of offset 1
            (t0 + 2500, 2),          # between offsets 1 and 2: the later one
            (t0 + 8000, 4),          # the last record
            (t0 + 100_000, -1),      # after everything: end (-1)
        ]
        for ts, want in cases:
            res = consumer.offsets_for_times([TopicPartition(topic, 0, ts)], TIMEOUT)
            check(len(res) == 1 and res[0].error is None, f"offsets_for_times({ts}): {res}")
            check(res[0].offset == want, f"offsets_for_times(t0{ts - t0:+d} ms) = {res[0].offset}, want {want}")
        ok(f"offsets_for_times: {len(cases)} timestamp lookups on {topic}[0] give the expected offsets (incl. -1 past the end)")
    finally:
        consumer.close()


def check_group_commit(bootstrap, topic):
    group = f"smoke-group-{uuid.uuid4().hex[:8]}"
    consumer = Consumer({**base_conf(bootstrap), "group.id": group, "enable.auto.commit": False,
                         "auto.offset.reset": "earliest"})
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + TIMEOUT
        msg = None
        while msg is None or msg.error():
            check(time.monotonic() < deadline, f"group {group}: no record from {topic} after {TIMEOUT}s")
            msg = consumer.poll(0.5)
        tp = TopicPartition(topic, msg.partition(), msg.offset() + 1)
        consumer.commit(offsets=[tp], asynchronous=False)
        got = consumer.committed([TopicPartition(topic, msg.partition())], TIMEOUT)
        check(got[0].offset == msg.offset() + 1, f"group {group}: committed {got[0].offset}, want {msg.offset() + 1}")
        ok(f"consumer group {group}: subscribe, commit offset {tp.offset} on {topic}[{tp.partition}], read it back")
    finally:
        consumer.close()


def main(argv):
    if len(argv) != 2 or argv[1].startswith("-"):
        print("usage: python3 scripts/kafka_smoke.py BOOTSTRAP", file=sys.stderr)
        return 2
    bootstrap = argv[1]
    run = uuid.uuid4().hex[:8]
    admin = AdminClient(base_conf(bootstrap))
    started = time.monotonic()
    try:
        check_metadata(admin)
        topic, t0 = check_produce_consume(bootstrap, admin, run)
        check_auto_create(bootstrap, run)
        check_transactions(bootstrap, admin, run)
        check_offsets_for_times(bootstrap, topic, t0)
        check_group_commit(bootstrap, topic)
    except (CheckFailed, KafkaException) as e:
        print(f"FAIL {e}", file=sys.stderr)
        return 1
    print(f"all checks passed against {bootstrap} in {time.monotonic() - started:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
