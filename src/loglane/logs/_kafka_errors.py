"""How the Kafka log reads librdkafka's errors: which mean that partitions are moving or a
topic is missing, and the one line each is told as."""

from __future__ import annotations

import logging

import confluent_kafka as ck

from loglane.errors import BackendUnavailableError, ConfigurationError

logger = logging.getLogger("loglane.kafka")

# The partitions are moving: a commit for them is moot, the next owner commits its own.
MOVING = {
    ck.KafkaError.REBALANCE_IN_PROGRESS,
    ck.KafkaError.ILLEGAL_GENERATION,
    ck.KafkaError.UNKNOWN_MEMBER_ID,
    ck.KafkaError.FENCED_INSTANCE_ID,
    ck.KafkaError.STALE_MEMBER_EPOCH,
    ck.KafkaError.UNKNOWN_TOPIC_OR_PART,
    ck.KafkaError._NO_OFFSET,
    ck.KafkaError._STATE,
}
MISSING_TOPIC = {ck.KafkaError.UNKNOWN_TOPIC_OR_PART, ck.KafkaError._UNKNOWN_TOPIC}


def on_client_error(error: ck.KafkaError) -> None:
    """librdkafka reports broker trouble here and keeps retrying on its own.

    Each failed connection is in librdkafka's own log already (forwarded to `logger`), so
    only the summary that every broker is down and fatal errors are worth a line of their own.
    """
    if error.fatal():
        logger.error("kafka client: %s", error.str())
    elif error.code() == ck.KafkaError._ALL_BROKERS_DOWN:
        logger.warning("kafka client: %s", error.str())
    else:
        logger.debug("kafka client: %s", error.str())


def reason(exc: ck.KafkaException) -> str:
    error = error_of(exc)
    return str(exc) if error is None else error.str()


def error_of(exc: ck.KafkaException) -> ck.KafkaError | None:
    error = exc.args[0] if exc.args else None
    return error if isinstance(error, ck.KafkaError) else None


def error_code(exc: ck.KafkaException) -> int | None:
    error = error_of(exc)
    return None if error is None else error.code()


def consumer_error(error: ck.KafkaError) -> Exception:
    if error.code() in MISSING_TOPIC:
        return ConfigurationError(
            f"a consumed topic is missing: {error.str()}; start the service's workers once "
            "(they create their topics) or create it first"
        )
    if error.code() in (
        ck.KafkaError.TOPIC_AUTHORIZATION_FAILED,
        ck.KafkaError.GROUP_AUTHORIZATION_FAILED,
    ):
        return ConfigurationError(f"Kafka refused access: {error.str()}; check the ACLs")
    return BackendUnavailableError(f"Kafka consumer error: {error.str()}")
