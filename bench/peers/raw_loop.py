"""The raw loop, the baseline of the peers comparison: confluent-kafka and psycopg 3, no framework.

Per batch of up to `--batch` records: one PostgreSQL transaction upserts every command's row
(pipelined `executemany`) and stores the input offsets; then the outputs are produced and
flushed (idempotent, acks=all), then the consumer offsets are committed. On assignment a
partition is sought to its stored offset, so a replay never applies a command twice to the
table; the outputs of a batch whose produce or commit was cut short are produced again.

    bench/peers/.venv-raw/bin/python bench/peers/raw_loop.py --bootstrap ... (see peer_cli)
"""

from __future__ import annotations

import json
import signal

import confluent_kafka as ck
import psycopg
from peer_cli import output_body, peer_args, upsert_sql


def main() -> None:
    args = peer_args(__doc__ or "")
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
    while running:
        messages = consumer.consume(args.batch, 0.1)
        if not messages:
            continue
        rows: list[tuple[str, int]] = []
        outputs: list[tuple[bytes, bytes]] = []
        offsets: dict[int, int] = {}
        for message in messages:
            if message.error() is not None:
                continue
            command = json.loads(message.value() or b"{}")
            rows.append((command["key"], command["amount"]))
            outputs.append((command["key"].encode(), output_body(command)))
            offsets[message.partition() or 0] = (message.offset() or 0) + 1
        with conn.transaction(), conn.cursor() as cursor:
            cursor.executemany(upsert, rows)
            cursor.executemany(
                store_offset, [(args.input, p, offset) for p, offset in offsets.items()]
            )
        for key, body in outputs:
            producer.produce(args.output, body, key)
        producer.flush()
        consumer.commit(
            offsets=[ck.TopicPartition(args.input, p, o) for p, o in offsets.items()],
            asynchronous=False,
        )
    consumer.close()
    conn.close()


if __name__ == "__main__":
    main()
