"""`klein-edit dlq replay`: send dead-lettered requests back to the topic they came from.

Run it after the cause is fixed (a bug deployed away, an outage over). Replayed records get new
offsets, so the attempt count starts again; the idempotent output means a request whose output was
written after all is answered from S3, not edited twice.
"""

from __future__ import annotations

from typing import Any

from aiokafka import TopicPartition

from consumer import kafka as kafka_io
from consumer.settings import KafkaSettings

REPLAYED_FROM_OFFSET = "klein-edit.replayed-from-offset"


async def replay_dead_letters(
    kafka: KafkaSettings, *, codes: set[str], dry_run: bool, group_id: str | None
) -> dict[str, Any]:
    """Replay every record now in the DLQ (optionally only some error codes); returns a summary.

    With `group_id` the replay commits its progress, so running it twice replays nothing twice.
    """
    consumer = kafka_io.make_consumer(kafka, group_id=group_id)
    producer = kafka_io.make_producer(kafka)
    await consumer.start()
    await producer.start()
    replayed: dict[str, int] = {}
    skipped = 0
    try:
        partitions = consumer.partitions_for_topic(kafka.dlq_topic) or set()
        if not partitions:
            await consumer.topics()
            partitions = consumer.partitions_for_topic(kafka.dlq_topic) or set()
        tps = [TopicPartition(kafka.dlq_topic, p) for p in sorted(partitions)]
        if not tps:
            return {"replayed": {}, "skipped": 0, "note": f"topic {kafka.dlq_topic} does not exist"}
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        if group_id is None:
            await consumer.seek_to_beginning(*tps)
        remaining = {tp for tp in tps if await consumer.position(tp) < ends[tp]}
        while remaining:
            batches = await consumer.getmany(*remaining, timeout_ms=1000)
            for tp, records in batches.items():
                for record in records:
                    if record.offset >= ends[tp]:
                        continue
                    topic = kafka_io.header(record.headers, kafka_io.DLQ_ORIGINAL_TOPIC)
                    code = kafka_io.header(record.headers, kafka_io.DLQ_ERROR_CODE) or ""
                    if topic is None or (codes and code not in codes):
                        skipped += 1
                        continue
                    if not dry_run:
                        await producer.send_and_wait(
                            topic,
                            value=record.value,
                            key=record.key,
                            headers=[(REPLAYED_FROM_OFFSET, f"{tp.partition}:{record.offset}".encode())],
                        )
                    replayed[code] = replayed.get(code, 0) + 1
            for tp in list(remaining):
                if await consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)
        if group_id is not None and not dry_run:
            await consumer.commit()
    finally:
        await consumer.stop()
        await producer.stop()
    return {"replayed": replayed, "skipped": skipped, "dry_run": dry_run}
