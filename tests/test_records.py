"""Messages and records as the stores keep them in a column (MessagePack)."""

from __future__ import annotations

import msgpack

from loglane.records import Message, decode_messages, encode_headers, encode_messages

HEADERS = (("ce_id", b"e1"), ("ce_type", b"Credited"), ("empty", b""))


def test_messages_read_back_as_they_were_written() -> None:
    messages = (Message("bank.out", b"k", b'{"a":1}', HEADERS), Message("bank.out", None, b"{}"))
    assert decode_messages(encode_messages(messages)) == messages


def test_messages_keep_headers_packed_already_as_they_are_for_the_log_to_take() -> None:
    message = Message("bank.out", b"k", b"{}", HEADERS)
    message.packed_headers()  # as a worker on a log that keeps headers packed does
    blob = encode_messages([message])
    assert blob == msgpack.packb([("bank.out", b"k", b"{}", encode_headers(HEADERS))])
    (read,) = decode_messages(blob)
    assert read == message
    assert read.packed_headers() == encode_headers(HEADERS)


def test_messages_pack_headers_not_packed_yet_inline() -> None:
    blob = encode_messages([Message("bank.out", b"k", b"{}", HEADERS)])
    assert blob == msgpack.packb([("bank.out", b"k", b"{}", [list(pair) for pair in HEADERS])])
    assert decode_messages(blob) == (Message("bank.out", b"k", b"{}", HEADERS),)


def test_no_messages_are_no_bytes() -> None:
    assert encode_messages([]) is None
    assert decode_messages(None) == ()
