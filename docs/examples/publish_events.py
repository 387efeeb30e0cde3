"""Publish banking events to a Herald domain topic, as a core banking system would.

Usage: python publish_events.py BOOTSTRAP_SERVERS TOPIC EVENTS.jsonl

Each line of EVENTS.jsonl is {"key": ..., "value": {eventId, eventType, timestamp, data}}.
The producer is idempotent and waits for every replica, so a retry after a network error can
neither lose nor duplicate an event on the topic. The record key keeps one client's events in
order, and a W3C traceparent header lets Herald continue the publisher's trace.
"""

import json
import os
import sys

from confluent_kafka import Producer


def trace_header() -> bytes:
    """Returns a new W3C traceparent: version 00, random trace and span ids, sampled."""
    return f"00-{os.urandom(16).hex()}-{os.urandom(8).hex()}-01".encode()


def main() -> int:
    bootstrap_servers, topic, path = sys.argv[1:4]
    producer = Producer(
        {
            "bootstrap.servers": bootstrap_servers,
            "enable.idempotence": True,  # implies acks=all and safe retries
            "linger.ms": 5,
            "compression.type": "lz4",
        }
    )
    failures = []

    def on_delivery(error, message):
        if error is not None:
            failures.append(f"{message.key()}: {error}")

    published = 0
    with open(path, encoding="utf-8") as lines:
        for line in lines:
            record = json.loads(line)
            producer.produce(
                topic,
                key=record["key"].encode(),
                # The value is the envelope, serialized once: Herald delivers these exact bytes.
                value=json.dumps(record["value"]).encode(),
                headers=[("traceparent", trace_header())],
                on_delivery=on_delivery,
            )
            published += 1
            producer.poll(0)
    remaining = producer.flush(30)
    if remaining or failures:
        print(f"{remaining} events unsent, {len(failures)} failed: {failures[:5]}", file=sys.stderr)
        return 1
    print(f"published {published} events to {topic}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
