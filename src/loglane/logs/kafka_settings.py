"""Settings of the Kafka log, read from a `kafka://` URL.

    kafka://127.0.0.1:9092                       one broker, topics created as services need them
    kafka://k1:9092,k2:9092?replication_factor=3&retention_ms=604800000
    kafka://k1:9093?security_protocol=SASL_SSL&sasl_mechanism=SCRAM-SHA-512
        &sasl_username=app&sasl_password=secret&ssl_ca_location=/etc/ssl/ca.pem

Options: `partitions` (new topics get this many instead of the service's own count),
`replication_factor` (default: 3 on a cluster of three or more brokers, else the cluster's
`default.replication.factor`; a factor of 3 or more also sets the topic's
`min.insync.replicas` to 2, and asking for less than 3 on three or more brokers logs a
warning), `retention_ms`, `create_topics` (default true; false makes a missing topic a
`ConfigurationError`), `connect_timeout` (seconds the first metadata request may take,
default 10), `request_timeout` (seconds for any later request to the cluster, default 30),
the security options above, and any librdkafka setting by its dotted name:
`session.timeout.ms=6000` goes to every client, `consumer.session.timeout.ms=6000` only to
consumers, `producer.linger.ms=20` only to the producer.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from loglane.errors import BadURLError

_NAMED_OPTIONS = {
    "security_protocol": "security.protocol",
    "sasl_mechanism": "sasl.mechanism",
    "sasl_username": "sasl.username",
    "sasl_password": "sasl.password",
    "ssl_ca_location": "ssl.ca.location",
}
_INTS = ("partitions", "replication_factor", "retention_ms")
_SECONDS = ("connect_timeout", "request_timeout")
_TRUE = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


@dataclass(frozen=True, slots=True, kw_only=True)
class KafkaSettings:
    """Where the brokers are, how topics are created, and extra librdkafka settings."""

    bootstrap_servers: str
    partitions: int | None = None
    replication_factor: int | None = None  # None: chosen from the cluster's size
    retention_ms: int | None = None
    create_topics: bool = True
    connect_timeout: float = 10.0
    request_timeout: float = 30.0
    client: Mapping[str, str] = field(default_factory=dict)
    producer: Mapping[str, str] = field(default_factory=dict)
    consumer: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_url(cls, url: str) -> KafkaSettings:
        """Settings from a `kafka://` URL; `BadURLError` names the part that is wrong."""
        parts = urlsplit(url)
        servers = unquote(parts.netloc)
        if parts.scheme != "kafka" or not servers or parts.path not in ("", "/"):
            raise BadURLError(f"{url!r}: write kafka://host:port[,host:port][?option=value&...]")
        for server in servers.split(","):
            host, _, port = server.rpartition(":")
            if not host or not port.isdigit():
                raise BadURLError(f"{url!r}: {server!r} is not host:port")
        typed: dict[str, Any] = {}
        client: dict[str, str] = {}
        producer: dict[str, str] = {}
        consumer: dict[str, str] = {}
        for name, value in parse_qsl(parts.query, keep_blank_values=True):
            if name in _INTS:
                typed[name] = _positive_int(url, name, value)
            elif name in _SECONDS:
                typed[name] = _positive_float(url, name, value)
            elif name == "create_topics":
                if value.lower() not in _TRUE:
                    raise BadURLError(f"{url!r}: create_topics must be true or false")
                typed[name] = _TRUE[value.lower()]
            elif name in _NAMED_OPTIONS:
                client[_NAMED_OPTIONS[name]] = value
            elif name.startswith("producer.") and "." in name[9:]:
                producer[name.removeprefix("producer.")] = value
            elif name.startswith("consumer.") and "." in name[9:]:
                consumer[name.removeprefix("consumer.")] = value
            elif "." in name:
                client[name] = value
            else:
                known = ", ".join([*_INTS, *_SECONDS, "create_topics", *_NAMED_OPTIONS])
                raise BadURLError(
                    f"{url!r}: unknown option {name!r}; known: {known}, or any librdkafka "
                    "setting by its dotted name (optionally prefixed producer. or consumer.)"
                )
        return cls(
            bootstrap_servers=servers,
            client=client,
            producer=producer,
            consumer=consumer,
            **typed,
        )


def _positive_int(url: str, name: str, value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise BadURLError(f"{url!r}: {name}={value!r} must be a positive whole number")
    return int(value)


def _positive_float(url: str, name: str, value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = 0.0
    if number <= 0:
        raise BadURLError(f"{url!r}: {name}={value!r} must be a positive number of seconds")
    return number
