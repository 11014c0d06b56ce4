"""The peers workload on FastStream: a batch subscriber, asyncpg `executemany`, manual ack.

Written as FastStream's docs show a Kafka batch consumer: `@broker.subscriber(..., batch=True)`
with the body typed as a list of pydantic models, a connection pool opened on startup, and
`ack_policy=AckPolicy.MANUAL` so the offsets are committed (`msg.ack()`) only after the rows
are committed and the outputs acknowledged by Kafka: at least once. Outputs are published
without waiting for each acknowledgement (`no_confirm=True`) and confirmed together. Kafka
through FastStream's aiokafka broker (`--broker aiokafka`, default) or its confluent-kafka
broker (`--broker confluent`). (No `from __future__ import annotations`: FastStream reads
the handler's annotations at run time.)

    bench/peers/.venv-faststream/bin/python bench/peers/faststream_app.py --bootstrap ... \
        [--broker confluent]
"""

import argparse
import asyncio
from typing import Any

import asyncpg
from faststream import AckPolicy, FastStream
from peer_cli import peer_args, upsert_sql
from pydantic import BaseModel


def broker_choice(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--broker", choices=("aiokafka", "confluent"), default="aiokafka")


args = peer_args(__doc__ or "", broker_choice)
if args.broker == "confluent":
    from faststream.confluent import KafkaBroker
    from faststream.confluent.annotations import KafkaMessage
else:
    from faststream.kafka import KafkaBroker
    from faststream.kafka.annotations import KafkaMessage


class Credit(BaseModel):
    key: str
    seq: int
    amount: int
    note: str


upsert = upsert_sql(args.schema, ("$1", "$2"))
broker = KafkaBroker(args.bootstrap, acks="all", enable_idempotence=True, linger_ms=5)
app = FastStream(broker)
pool: Any = None


@app.on_startup
async def open_pool() -> None:
    global pool
    pool = await asyncpg.create_pool(args.postgres_url, min_size=1, max_size=2)


@app.after_shutdown
async def close_pool() -> None:
    await pool.close()


@broker.subscriber(
    args.input,
    group_id=args.group,
    auto_offset_reset="earliest",
    batch=True,
    max_records=args.batch,
    ack_policy=AckPolicy.MANUAL,
)
async def credit(commands: list[Credit], msg: KafkaMessage) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await conn.executemany(upsert, [(c.key, c.amount) for c in commands])
    confirmations = [
        await broker.publish(
            {"key": c.key, "seq": c.seq, "amount": c.amount},
            args.output,
            key=c.key.encode(),
            no_confirm=True,
        )
        for c in commands
    ]
    await asyncio.gather(*confirmations)
    await msg.ack()


if __name__ == "__main__":
    asyncio.run(app.run())
