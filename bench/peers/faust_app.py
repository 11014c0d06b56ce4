"""The peers workload on faust-streaming: an agent over `stream.take(...)`, asyncpg `executemany`.

Written as faust's docs show: records as `faust.Record` models, an agent iterating
`stream.take(batch, within=0.1)`, outputs sent with `topic.send` (acknowledged by Kafka
asynchronously), offsets of acknowledged events committed by faust itself every
`broker_commit_interval` (0.5 s here, 2.8 s by default, so the end of the drain shows up
promptly): at least once. No tables, no web server, no leader topic. (No `from __future__
import annotations`: faust reads the models' annotations at run time.)

    bench/peers/.venv-faust/bin/python bench/peers/faust_app.py --bootstrap ... (see peer_cli)
"""

import logging
from typing import Any

import asyncpg
import faust
from peer_cli import peer_args, upsert_sql

args = peer_args(__doc__ or "")


class Credit(faust.Record, serializer="json"):
    key: str
    seq: int
    amount: int
    note: str


class Credited(faust.Record, serializer="json", include_metadata=False):
    key: str
    seq: int
    amount: int


app = faust.App(
    args.group,
    broker=f"kafka://{args.bootstrap}",
    store="memory://",
    web_enabled=False,
    topic_disable_leader=True,
    consumer_auto_offset_reset="earliest",
    broker_commit_interval=0.5,
    producer_acks=-1,
    producer_linger=0.005,
)
commands = app.topic(args.input, key_type=bytes, value_type=Credit)
outputs = app.topic(args.output, key_type=bytes, value_type=Credited)
upsert = upsert_sql(args.schema, ("$1", "$2"))
pool: Any = None


@app.agent(commands)
async def credit(stream: faust.StreamT[Credit]) -> None:
    global pool
    if pool is None:
        pool = await asyncpg.create_pool(args.postgres_url, min_size=1, max_size=2)
    async for batch in stream.take(args.batch, within=0.1):
        async with pool.acquire() as conn, conn.transaction():
            await conn.executemany(upsert, [(c.key, c.amount) for c in batch])
        for c in batch:
            await outputs.send(
                key=c.key.encode(), value=Credited(key=c.key, seq=c.seq, amount=c.amount)
            )


if __name__ == "__main__":
    faust.Worker(app, loglevel=logging.WARNING).execute_from_commandline()
