"""Keys land where Kafka's Java client puts them."""

from __future__ import annotations

import pytest

from loglane.partitioner import murmur2, partition_for

# values published in Kafka's own client tests and librdkafka's
KAFKA_VECTORS = {
    "21": -973932308,
    "foobar": -790332482,
    "a-little-bit-long-string": -985981536,
    "a-little-bit-longer-string": -1486304829,
    "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    "abc": 479470107,
    "kafka": -798503068,
}


@pytest.mark.parametrize(("key", "expected"), KAFKA_VECTORS.items())
def test_murmur2_matches_kafkas_java_client(key: str, expected: int) -> None:
    assert murmur2(key.encode()) == expected


def test_a_partition_is_the_positive_hash_modulo_the_partition_count() -> None:
    assert partition_for(b"kafka", 6) == (-798503068 & 0x7FFFFFFF) % 6
    assert {partition_for(f"k{i}".encode(), 4) for i in range(100)} == {0, 1, 2, 3}
