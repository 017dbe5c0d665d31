#!/usr/bin/env python3
"""Independent Kafka client for cross-checking Flumen against a real broker.

Flumen speaks the Kafka protocol with its own Rust code; this script uses
confluent-kafka (librdkafka) instead, so a test can write with one
implementation and read with the other. CI uses it against the Apache Kafka
broker started by scripts/kafka.sh; it needs `pip install confluent-kafka`.

Subcommands (BOOTSTRAP is host:port):
  metadata     BOOTSTRAP [--timeout S]
      Print cluster metadata as JSON; exit non-zero if the broker does not
      answer.
  create-topic BOOTSTRAP TOPIC --partitions P [--if-not-exists] [--timeout S]
      Create TOPIC via the AdminClient (replication factor 1) and wait until
      metadata shows all P partitions.
  produce      BOOTSTRAP TOPIC [--keyed] [--partition P] [--timeout S]
      Each stdin line (trailing newline removed) becomes one record value.
      With --keyed a line is "key<TAB>value" (split at the first tab).
      Prints one JSON line {"partition","offset"} per delivered record.
  consume      BOOTSTRAP TOPIC --count N --timeout S [--meta]
      Reads all partitions from the earliest offset with assign() (no group
      subscription: no rebalance wait, no committed offsets involved) and
      prints each record as one JSON line {"partition","offset","key","value"},
      key and value decoded as UTF-8 with replacement (null stays null).
      --meta adds "timestamp" and "headers". Stops after N records; exits 1
      if fewer than N arrive within S seconds.

Exit codes: 0 success, 1 the check failed, 2 usage error.
"""

import argparse
import json
import sys
import time
import uuid

from confluent_kafka import (
    OFFSET_BEGINNING,
    TIMESTAMP_CREATE_TIME,
    TIMESTAMP_LOG_APPEND_TIME,
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic


def fail(msg):
    print(f"kafka_check: {msg}", file=sys.stderr)
    sys.exit(1)


def base_conf(bootstrap):
    return {
        "bootstrap.servers": bootstrap,
        # librdkafka logs every failed reconnect at error level (20 lines a
        # second while the broker is down), which buries the one message that
        # matters; real failures still surface as exceptions/delivery errors.
        "log_level": 2,
    }


def decode(b):
    return None if b is None else b.decode("utf-8", errors="replace")


def partitions_of(handle, topic, timeout):
    """Partition ids of TOPIC, or None if the broker does not (yet) know it."""
    md = handle.list_topics(topic=topic, timeout=timeout)
    tm = md.topics.get(topic)
    if tm is None or tm.error is not None or not tm.partitions:
        return None
    return sorted(tm.partitions)


def cmd_metadata(args):
    admin = AdminClient(base_conf(args.bootstrap))
    try:
        md = admin.list_topics(timeout=args.timeout)
    except KafkaException as e:
        fail(f"metadata request to {args.bootstrap} failed: {e}")
    if not md.brokers:
        fail(f"metadata from {args.bootstrap} lists no brokers")
    print(json.dumps({
        "cluster_id": md.cluster_id,
        "controller_id": md.controller_id,
        "brokers": {str(b.id): f"{b.host}:{b.port}" for b in md.brokers.values()},
        "topics": {name: len(t.partitions) for name, t in sorted(md.topics.items())},
    }))


def cmd_create_topic(args):
    admin = AdminClient(base_conf(args.bootstrap))
    futures = admin.create_topics(
        [NewTopic(args.topic, num_partitions=args.partitions, replication_factor=1)],
        operation_timeout=args.timeout,
        request_timeout=args.timeout,
    )
    try:
        futures[args.topic].result()
    except KafkaException as e:
        err = e.args[0]
        if not (args.if_not_exists and err.code() == KafkaError.TOPIC_ALREADY_EXISTS):
            fail(f"create-topic {args.topic}: {err}")
    # CreateTopics returning is not a promise that metadata already shows the
    # topic; wait so the caller can produce/consume right away.
    deadline = time.monotonic() + args.timeout
    while True:
        parts = partitions_of(admin, args.topic, timeout=max(1.0, args.timeout / 4))
        if parts is not None and (args.if_not_exists or len(parts) == args.partitions):
            break
        if time.monotonic() > deadline:
            fail(f"topic {args.topic} created but metadata shows partitions={parts}")
        time.sleep(0.1)
    print(json.dumps({"topic": args.topic, "partitions": len(parts)}))


def cmd_produce(args):
    producer = Producer({
        **base_conf(args.bootstrap),
        "acks": "all",
        # Fail instead of retrying forever if the broker is gone.
        "message.timeout.ms": int(args.timeout * 1000),
    })
    errors = []
    delivered = 0

    def on_delivery(err, msg):
        nonlocal delivered
        if err is not None:
            errors.append(str(err))
            return
        delivered += 1
        print(json.dumps({"partition": msg.partition(), "offset": msg.offset()}), flush=True)

    sent = 0
    for lineno, raw in enumerate(sys.stdin.buffer, start=1):
        line = raw.rstrip(b"\n")
        key = None
        if args.keyed:
            if b"\t" not in line:
                print(f"kafka_check: stdin line {lineno} has no TAB (--keyed)", file=sys.stderr)
                sys.exit(2)
            key, line = line.split(b"\t", 1)
        kwargs = {"key": key, "value": line, "on_delivery": on_delivery}
        if args.partition is not None:
            kwargs["partition"] = args.partition
        while True:
            try:
                producer.produce(args.topic, **kwargs)
                break
            except BufferError:  # local queue full: let deliveries drain
                producer.poll(0.1)
        producer.poll(0)
        sent += 1
    remaining = producer.flush(args.timeout)
    if errors or remaining or delivered != sent:
        fail(f"produce to {args.topic}: sent {sent}, delivered {delivered}, "
             f"undelivered {remaining}, errors {errors[:5]}")
    print(f"kafka_check: produced {delivered} record(s) to {args.topic}", file=sys.stderr)


def cmd_consume(args):
    consumer = Consumer({
        **base_conf(args.bootstrap),
        # librdkafka insists on a group.id, but with assign() the group is
        # never joined and nothing is committed; a unique id keeps runs apart.
        "group.id": f"kafka-check-{uuid.uuid4()}",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        # Never let this checker create the topic it is asked to read.
        "allow.auto.create.topics": False,
    })
    deadline = time.monotonic() + args.timeout
    try:
        # The topic may not exist yet when the check starts; wait for it
        # within the same overall timeout.
        while True:
            parts = partitions_of(consumer, args.topic, timeout=max(0.5, min(5.0, deadline - time.monotonic())))
            if parts is not None:
                break
            if time.monotonic() > deadline:
                fail(f"topic {args.topic} not found within {args.timeout}s")
            time.sleep(0.2)
        consumer.assign([TopicPartition(args.topic, p, OFFSET_BEGINNING) for p in parts])

        got = 0
        while got < args.count:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            msg = consumer.poll(min(left, 1.0))
            if msg is None:
                continue
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    continue
                fail(f"consume {args.topic}: {msg.error()}")
            rec = {
                "partition": msg.partition(),
                "offset": msg.offset(),
                "key": decode(msg.key()),
                "value": decode(msg.value()),
            }
            if args.meta:
                ts_type, ts = msg.timestamp()
                rec["timestamp"] = {
                    "type": {TIMESTAMP_CREATE_TIME: "CreateTime",
                             TIMESTAMP_LOG_APPEND_TIME: "LogAppendTime"}.get(ts_type, "NotAvailable"),
                    "ms": ts,
                }
                rec["headers"] = [[k, decode(v)] for k, v in (msg.headers() or [])]
            print(json.dumps(rec), flush=True)
            got += 1
    finally:
        consumer.close()
    if got < args.count:
        fail(f"consume {args.topic}: got {got} of {args.count} record(s) within {args.timeout}s")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("metadata", help="print cluster metadata as JSON")
    p.add_argument("bootstrap")
    p.add_argument("--timeout", type=float, default=5.0)
    p.set_defaults(fn=cmd_metadata)

    p = sub.add_parser("create-topic", help="create a topic with the AdminClient")
    p.add_argument("bootstrap")
    p.add_argument("topic")
    p.add_argument("--partitions", type=int, required=True)
    p.add_argument("--if-not-exists", action="store_true", help="an existing topic is not an error")
    p.add_argument("--timeout", type=float, default=10.0)
    p.set_defaults(fn=cmd_create_topic)

    p = sub.add_parser("produce", help="produce stdin lines as records")
    p.add_argument("bootstrap")
    p.add_argument("topic")
    p.add_argument("--keyed", action="store_true", help='lines are "key<TAB>value"')
    p.add_argument("--partition", type=int, default=None, help="send every record to this partition")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for delivery")
    p.set_defaults(fn=cmd_produce)

    p = sub.add_parser("consume", help="read N records from the earliest offset")
    p.add_argument("bootstrap")
    p.add_argument("topic")
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--timeout", type=float, required=True)
    p.add_argument("--meta", action="store_true", help="also print timestamp and headers")
    p.set_defaults(fn=cmd_consume)

    args = ap.parse_args()
    args.fn(args)


if __name__ == "__main__":
    main()
