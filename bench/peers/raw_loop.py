"""The raw loop, the baseline of the peers comparison: confluent-kafka and psycopg 3, no framework.

Per batch of up to `--batch` records: one PostgreSQL transaction upserts every command's row
(pipelined `executemany`) and stores the input offsets; then the outputs are produced and
flushed (idempotent, acks=all), then the consumer offsets are committed. On assignment a
partition is sought to its stored offset, so a replay never applies a command twice to the
table; the outputs of a batch whose produce or commit was cut short are produced again.

With `--outbox`, the loop also does by hand the per-event work that Loglane's guarantees and
wire format take, so the gap between the two raw loops is their cost without a framework:
it reads each command's CloudEvents headers, and gives each output CloudEvents headers, with
an id derived from the command's so a re-run emits the same one. Each output is written to
an outbox table in the batch's transaction (COPY) and deleted by the next one, once Kafka
has acknowledged it. Crash recovery is not written: republishing the outbox on start would
cost nothing while draining.

    bench/peers/.venv-raw/bin/python bench/peers/raw_loop.py --bootstrap ... (see peer_cli)
"""

from __future__ import annotations

import argparse
import json
import signal
import uuid
from datetime import UTC, datetime

import confluent_kafka as ck
import psycopg
from peer_cli import output_body, peer_args, upsert_sql

OUTPUT_IDS = uuid.UUID("0b6f1e9c-2d4a-4c57-8f3e-7a1d5c9b2e60")  # this loop's uuid5 namespace


def with_outbox(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--outbox",
        action="store_true",
        help="also CloudEvents headers in and out, and an outbox table (see above)",
    )


def main() -> None:
    args = peer_args(__doc__ or "", with_outbox)
    conn = psycopg.connect(args.postgres_url, autocommit=True)
    upsert = upsert_sql(args.schema, ("%s", "%s"))
    store_offset = (
        f'INSERT INTO "{args.schema}".offsets AS o (topic, partition, next) VALUES (%s, %s, %s) '
        "ON CONFLICT (topic, partition) DO UPDATE SET next = excluded.next"
    )

    def seek_to_stored(consumer: ck.Consumer, partitions: list[ck.TopicPartition]) -> None:
        stored = dict(
            conn.execute(
                f'SELECT partition, next FROM "{args.schema}".offsets WHERE topic = %s',
                (args.input,),
            ).fetchall()
        )
        for tp in partitions:
            tp.offset = stored.get(tp.partition, ck.OFFSET_BEGINNING)
        consumer.assign(partitions)

    consumer = ck.Consumer(
        {
            "bootstrap.servers": args.bootstrap,
            "group.id": args.group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    producer = ck.Producer(
        {
            "bootstrap.servers": args.bootstrap,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "partitioner": "murmur2_random",
        }
    )
    running = True

    def stop(signum: int, frame: object) -> None:
        nonlocal running
        running = False

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    consumer.subscribe([args.input], on_assign=seek_to_stored)
    outbox = f'"{args.schema}".outbox'
    source = args.group.encode()  # ce_source of the outputs: this service
    while running:
        messages = consumer.consume(args.batch, 0.1)
        if not messages:
            continue
        rows: list[tuple[str, int]] = []
        outputs: list[tuple[bytes, bytes, list[tuple[str, bytes]] | None]] = []
        offsets: dict[int, int] = {}
        unpublished: list[tuple[bytes, bytes, str, str, str]] = []  # the outbox rows
        now = datetime.now(UTC).isoformat().encode()
        for message in messages:
            if message.error() is not None:
                continue
            command = json.loads(message.value() or b"{}")
            rows.append((command["key"], command["amount"]))
            key, body = command["key"].encode(), output_body(command)
            headers = None
            if args.outbox:
                cause = dict(message.headers() or ())
                cause_id = cause["ce_id"].decode()
                request_id = (cause.get("ce_correlationid") or cause["ce_id"]).decode()
                output_id = str(uuid.uuid5(OUTPUT_IDS, f"{args.group}/{cause_id}/0"))
                headers = [
                    ("ce_specversion", b"1.0"),
                    ("ce_id", output_id.encode()),
                    ("ce_source", source),
                    ("ce_type", b"Credited"),
                    ("ce_time", now),
                    ("content-type", b"application/json"),
                    ("ce_correlationid", request_id.encode()),
                    ("ce_causationid", cause_id.encode()),
                ]
                unpublished.append((key, body, output_id, request_id, cause_id))
            outputs.append((key, body, headers))
            offsets[message.partition() or 0] = (message.offset() or 0) + 1
        with conn.transaction(), conn.cursor() as cursor:
            cursor.executemany(upsert, rows)
            cursor.executemany(
                store_offset, [(args.input, p, offset) for p, offset in offsets.items()]
            )
            if args.outbox:  # the last batch's outputs are in Kafka: forget them, keep these
                cursor.execute(f"DELETE FROM {outbox}")  # type: ignore[arg-type]
                columns = "key, value, id, correlation_id, causation_id"
                copy_sql = f"COPY {outbox} ({columns}) FROM STDIN"
                with cursor.copy(copy_sql) as copy:  # type: ignore[arg-type]
                    for row in unpublished:
                        copy.write_row(row)
        for key, body, headers in outputs:
            producer.produce(args.output, body, key, headers=headers)
        producer.flush()
        consumer.commit(
            offsets=[ck.TopicPartition(args.input, p, o) for p, o in offsets.items()],
            asynchronous=False,
        )
    consumer.close()
    conn.close()


if __name__ == "__main__":
    main()
