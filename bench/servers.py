"""Where the benchmarks on Kafka and PostgreSQL find their servers, and how they clean up."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from confluent_kafka.admin import AdminClient

from loglane import Service


def postgres_url() -> str:
    """LOGLANE_PG, else what `scripts/postgres url` prints (it starts nothing: run
    `scripts/postgres start`)."""
    if os.environ.get("LOGLANE_PG"):
        return os.environ["LOGLANE_PG"]
    script = Path(__file__).resolve().parent.parent / "scripts" / "postgres"
    return subprocess.run(
        [str(script), "url"], capture_output=True, text=True, check=True
    ).stdout.strip()


def delete_topics(bootstrap: str, service: Service) -> None:
    """Delete the service's input, output and DLQ topics."""
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})  # kept until done
    topics = [service.input_topic, service.output_topic, service.dlq_topic]
    for future in admin.delete_topics(topics, operation_timeout=30).values():
        future.result()
