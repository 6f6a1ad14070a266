"""Smoke check of a Kafka broker with aiokafka: what the tests need from Apache Kafka, in ~2 seconds.

    .venv/bin/python scripts/kafka/check.py 127.0.0.1:PORT

Creates a topic with the admin client, produces with the idempotent producer, commits one transaction
and aborts another, reads back with `read_committed` (only the committed records), commits the group's
offset and reads it back, then deletes the topic. Exit status 0 and one line "ok ..." on success.
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic


async def check(bootstrap: str) -> str:
    started = time.monotonic()
    topic = f"klein-edit-check-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True, acks="all")
        await producer.start()
        try:
            await producer.send_and_wait(topic, b"plain", key=b"k", partition=0)
        finally:
            await producer.stop()
        txn = AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id=f"{topic}-txn")
        await txn.start()
        try:
            async with txn.transaction():
                await txn.send_and_wait(topic, b"committed", key=b"k", partition=0)
            await txn.begin_transaction()
            await txn.send_and_wait(topic, b"aborted", key=b"k", partition=0)
            await txn.abort_transaction()
        finally:
            await txn.stop()

        consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap,
            group_id=f"{topic}-group",
            isolation_level="read_committed",
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        await consumer.start()
        try:
            tp = TopicPartition(topic, 0)
            consumer.assign([tp])
            values: list[bytes] = []
            deadline = time.monotonic() + 20
            while len(values) < 2 and time.monotonic() < deadline:
                batch = await consumer.getmany(tp, timeout_ms=500)
                values += [record.value for record in batch.get(tp, []) if record.value is not None]
            if values != [b"plain", b"committed"]:
                raise AssertionError(f"read_committed gave {values!r}, want [b'plain', b'committed']")
            await consumer.commit()
            committed = await consumer.committed(tp)
            if committed is None or committed < 2:
                raise AssertionError(f"committed offset {committed!r}")
        finally:
            await consumer.stop()
        await admin.delete_topics([topic])
    finally:
        await admin.close()
    took = time.monotonic() - started
    return f"ok {bootstrap}: admin, idempotent producer, transactions, read_committed, commits ({took:.1f} s)"


def main() -> int:
    if len(sys.argv) != 2:
        print(f"usage: {sys.argv[0]} HOST:PORT", file=sys.stderr)
        return 2
    print(asyncio.run(check(sys.argv[1])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
