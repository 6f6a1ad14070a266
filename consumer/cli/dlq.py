"""`klein-edit dlq replay`: send dead-lettered requests back to the topic they came from.

Run it after the cause is fixed (a bug deployed away, an outage over). Replayed records get new
offsets, so the attempt count starts again; the idempotent output means a request whose output was
written after all is answered from S3, not edited twice.

What a replay covers is fixed when it starts: the end offset of every DLQ partition is read once, and
records written after that (a DLQ that is still filling) are neither replayed nor committed; the next
run picks them up.

Progress with `--group G` is kept per error code, because a replay filtered by code must not mark the
other codes as done. Kafka keeps one committed offset per group and partition, so the tool uses one
group per code and one for all codes:
- `G.<CODE>` (e.g. `G.STORAGE_UNAVAILABLE`): every record of that code below its committed offset has
  been replayed. `--code X --group G` commits `G.X` at the snapshot end of each partition.
- `G`: every record below its committed offset has been replayed, whatever its code. A run without
  `--code` commits `G` at the snapshot end.
A record is done when it lies below the offset of `G` or of `G.<its code>`; a run replays the records
of its codes that are not done and commits only the groups of the codes it replayed. So
`--code X --group G` followed by `--code Y --group G` replays every X and every Y record once, and a
later run with no `--code` replays only what neither of them did.

aiokafka and the Kafka clients are imported in the functions that use them, not with this module: the
parser is built from it on every `klein-edit --help`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from consumer.cli.command import NO_S3, HelpFormatter, add_command, configured, kafka_unreachable

if TYPE_CHECKING:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition

    from consumer.kafka.settings import KafkaSettings

REPLAYED_FROM_OFFSET = "klein-edit.replayed-from-offset"


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = add_command(subparsers, "dlq", "dead-letter topic tools")
    parser.set_defaults(run=run)
    dlq = parser.add_subparsers(dest="subcommand", required=True, metavar="DLQ_COMMAND")
    replay = dlq.add_parser(
        "replay",
        help="re-publish dead-lettered requests to their original topics",
        description="Re-publish dead-lettered requests (KLEIN_EDIT_KAFKA__DLQ_TOPIC) to their original "
        "topics.",
        formatter_class=HelpFormatter,
    )
    replay.add_argument(
        "--code",
        action="append",
        default=[],
        metavar="CODE",
        help="only records with this error code, e.g. STORAGE_UNAVAILABLE; repeatable (default: all codes)",
    )
    replay.add_argument(
        "--dry-run",
        action="store_true",
        help="list what would be replayed; publish and commit nothing (default: off)",
    )
    replay.add_argument(
        "--group",
        default=None,
        metavar="NAME",
        help="remember what was replayed, per error code (groups NAME and NAME.<CODE>), so a rerun "
        "replays nothing twice (default: none, every record in the DLQ is replayed)",
    )


def run(args: argparse.Namespace) -> int:
    """`dlq replay`, the one dlq command: prints the summary as one JSON line."""
    from aiokafka.errors import KafkaError

    settings = configured(args, **NO_S3)
    try:
        summary = asyncio.run(
            replay_dead_letters(
                settings.kafka, codes=set(args.code), dry_run=args.dry_run, group_id=args.group
            )
        )
    except KafkaError as exc:
        raise kafka_unreachable(settings, exc) from exc
    print(json.dumps(summary))
    return 0


def progress_group(group_id: str, code: str | None) -> str:
    """The consumer group that holds replay progress for one error code (None: for all codes)."""
    return group_id if code is None else f"{group_id}.{code or 'NO_CODE'}"


def replay_headers(record: ConsumerRecord[bytes, bytes]) -> list[tuple[str, bytes]]:
    """The record's original headers (without the dead-letter ones), plus where it was replayed from."""
    from consumer.kafka import clients as kafka_io

    # The headers the worker adds when it dead-letters a record; a replayed request carries the rest of
    # its original headers, as its producer sent them.
    dead_letter_headers = kafka_io.DLQ_HEADERS | {REPLAYED_FROM_OFFSET}
    kept = [(key, bytes(value)) for key, value in record.headers or () if key not in dead_letter_headers]
    return [*kept, (REPLAYED_FROM_OFFSET, f"{record.partition}:{record.offset}".encode())]


@dataclass
class _Progress:
    """Committed positions of the progress groups, fetched on first use; one consumer per group."""

    kafka: KafkaSettings
    group_id: str
    partitions: list[TopicPartition]
    consumers: dict[str, AIOKafkaConsumer] = field(default_factory=dict)
    marks: dict[str, dict[TopicPartition, int]] = field(default_factory=dict)

    async def mark(self, code: str | None) -> dict[TopicPartition, int]:
        """Per partition, the offset below which this group's records are replayed (0: none yet)."""
        from consumer.kafka import clients as kafka_io

        group = progress_group(self.group_id, code)
        if group not in self.marks:
            consumer = kafka_io.make_consumer(self.kafka, group_id=group)
            await consumer.start()
            self.consumers[group] = consumer
            consumer.assign(self.partitions)
            self.marks[group] = {tp: await consumer.committed(tp) or 0 for tp in self.partitions}
        return self.marks[group]

    async def done_below(self, code: str) -> dict[TopicPartition, int]:
        everything, this_code = await self.mark(None), await self.mark(code)
        return {tp: max(everything[tp], this_code[tp]) for tp in self.partitions}

    async def commit(self, code: str | None, ends: dict[TopicPartition, int]) -> dict[str, int]:
        group = progress_group(self.group_id, code)
        await self.mark(code)
        await self.consumers[group].commit(dict(ends))
        return {f"{tp.topic}-{tp.partition}": offset for tp, offset in sorted(ends.items())}

    async def close(self) -> None:
        for consumer in self.consumers.values():
            await consumer.stop()


# A string inside: aiokafka is imported only when a replay runs (see `run`).
OnReplayed = Callable[["ConsumerRecord[bytes, bytes]"], Awaitable[None]]


async def replay_dead_letters(
    kafka: KafkaSettings,
    *,
    codes: set[str],
    dry_run: bool,
    group_id: str | None,
    on_replayed: OnReplayed | None = None,
) -> dict[str, Any]:
    """Replay the records now in the DLQ (only those with an error code in `codes`, when given).

    Returns a JSON-able summary: `replayed` (count per code), `already_replayed` (records a previous
    run of `group_id` did), `not_selected` (count per code left for another run), `unroutable`
    (records without the original-topic header, never replayed), `committed`
    (group -> partition -> offset; nothing without `group_id` or with `dry_run`) and, with `dry_run`,
    `records`: what would be replayed (nothing is published or committed). `on_replayed` is awaited
    after each record is replayed (or listed), e.g. to report progress. Raises aiokafka's
    `KafkaError` when the brokers cannot be reached.
    """
    from aiokafka import TopicPartition

    from consumer.kafka import clients as kafka_io

    reader = kafka_io.make_consumer(kafka, group_id=None)
    producer = None if dry_run else kafka_io.make_producer(kafka)
    try:
        await reader.start()
        if producer is not None:
            await producer.start()
    except BaseException:
        # A client whose start() failed still holds its connections: close both, or asyncio reports
        # "Unclosed AIOKafkaConsumer" on stderr after the one line that says what to do.
        await reader.stop()
        if producer is not None:
            await producer.stop()
        raise
    summary: dict[str, Any] = {
        "replayed": {},
        "already_replayed": 0,
        "not_selected": {},
        "unroutable": 0,
        "committed": {},
        "dry_run": dry_run,
    }
    if dry_run:
        summary["records"] = []
    progress: _Progress | None = None
    try:
        partitions = sorted(await kafka_io.topic_partitions(reader, kafka.dlq_topic))
        tps = [TopicPartition(kafka.dlq_topic, p) for p in partitions]
        if not tps:
            return {**summary, "note": f"topic {kafka.dlq_topic} does not exist"}
        reader.assign(tps)
        ends = await reader.end_offsets(tps)  # the snapshot: later records are the next run's
        if group_id is not None:
            progress = _Progress(kafka, group_id, tps)
        starts = await _starts(progress, codes, tps)
        for tp in tps:
            reader.seek(tp, min(starts[tp], ends[tp]))
        remaining = {tp for tp in tps if starts[tp] < ends[tp]}
        while remaining:
            batches = await reader.getmany(*remaining, timeout_ms=1000)
            for tp, records in batches.items():
                for record in records:
                    if record.offset >= ends[tp]:
                        continue
                    if await _handle(record, tp, codes, progress, producer, summary) and on_replayed:
                        await on_replayed(record)
            for tp in list(remaining):
                if await reader.position(tp) >= ends[tp]:
                    remaining.discard(tp)
        if progress is not None and not dry_run:
            for code in sorted(codes) if codes else [None]:
                group = progress_group(group_id or "", code)
                summary["committed"][group] = await progress.commit(code, ends)
    finally:
        if progress is not None:
            await progress.close()
        await reader.stop()
        if producer is not None:
            await producer.stop()
    return summary


async def _starts(
    progress: _Progress | None, codes: set[str], tps: list[TopicPartition]
) -> dict[TopicPartition, int]:
    """Where to read from: the lowest offset any selected code may still have work at."""
    if progress is None:
        return dict.fromkeys(tps, 0)
    if not codes:
        return dict(await progress.mark(None))
    marks = [await progress.done_below(code) for code in codes]
    return {tp: min(mark[tp] for mark in marks) for tp in tps}


async def _handle(
    record: ConsumerRecord[bytes, bytes],
    tp: TopicPartition,
    codes: set[str],
    progress: _Progress | None,
    producer: AIOKafkaProducer | None,
    summary: dict[str, Any],
) -> bool:
    """Replay (or list) one record when it is selected and not done yet; returns whether it was."""
    from consumer.kafka import clients as kafka_io

    code = kafka_io.header(record.headers, kafka_io.DLQ_ERROR_CODE) or ""
    topic = kafka_io.header(record.headers, kafka_io.DLQ_ORIGINAL_TOPIC)
    if codes and code not in codes:
        summary["not_selected"][code] = summary["not_selected"].get(code, 0) + 1
        return False
    if topic is None:
        summary["unroutable"] += 1  # no original-topic header: not ours to send anywhere
        return False
    if progress is not None and record.offset < (await progress.done_below(code))[tp]:
        summary["already_replayed"] += 1
        return False
    if producer is None:
        summary["records"].append(
            {
                "partition": tp.partition,
                "offset": record.offset,
                "code": code,
                "to_topic": topic,
                "key": record.key.decode("utf-8", "replace") if record.key is not None else None,
                "error": kafka_io.header(record.headers, kafka_io.DLQ_ERROR_MESSAGE),
                "attempts": kafka_io.header(record.headers, kafka_io.DLQ_ATTEMPTS),
            }
        )
    else:
        await producer.send_and_wait(
            topic, value=record.value, key=record.key, headers=replay_headers(record)
        )
    summary["replayed"][code] = summary["replayed"].get(code, 0) + 1
    return True
