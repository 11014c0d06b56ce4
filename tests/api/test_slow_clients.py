"""The server `loglane api` and `loglane run` start cuts off clients that send too slowly or
not at all, while it goes on serving the others.

Each slow client below talks over a raw socket and never finishes its request: it sends a
byte whenever the server has stayed silent for a tenth of a second, until the server closes
the connection.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import pytest

from loglane.api import ApiSettings, create_app
from loglane.api.serve import listen, serve, url_of
from loglane.examples.shop import landscape
from loglane.urls import open_store
from tests.api.conftest import Stack
from tests.conftest import eventually

READ_TIMEOUT = 1.0
BOUND = 15.0  # the longest a slow client may be held: the deadline, and room for a busy machine


@dataclass
class Server:
    url: str
    address: tuple[str, int]


@pytest.fixture
def server(stack: Stack) -> Iterator[Server]:
    """`serve` itself in a thread, with a read deadline of a second."""
    app = create_app(
        landscape,
        stack.log,
        lambda name: open_store(f"sqlite:///{stack.folder}/{{service}}.db", name),
        settings=ApiSettings(),
    )
    sock = listen("127.0.0.1", 0)
    stop = threading.Event()
    thread = threading.Thread(
        target=serve,
        args=(app, sock, stop),
        kwargs={"read_timeout": READ_TIMEOUT, "idle_timeout": 2},
        daemon=True,
    )
    thread.start()
    url = url_of(sock)
    eventually(lambda: answers(url), message="the server answers")
    yield Server(url, sock.getsockname()[:2])
    stop.set()
    thread.join(60)
    sock.close()


def answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=5).status_code == 200
    except httpx.TransportError:
        return False


@dataclass
class SlowClient:
    """Opens a connection, sends `first`, then one byte of `rest` at a time while the server
    says nothing; records what the server sent and how long it held the connection."""

    address: tuple[str, int]
    first: bytes
    rest: bytes = b""
    received: bytes = b""
    held: float | None = None
    _thread: threading.Thread = field(init=False)

    def __post_init__(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        began = time.monotonic()
        with socket.create_connection(self.address, timeout=10) as sock:
            sock.settimeout(0.1)
            sock.sendall(self.first)
            rest = self.rest
            while time.monotonic() - began < 120:
                try:
                    chunk = sock.recv(4096)
                except TimeoutError:
                    if rest:
                        sock.sendall(rest[:1])
                        rest = rest[1:]
                    continue
                except ConnectionResetError:
                    break
                if not chunk:
                    break
                self.received += chunk
        self.held = time.monotonic() - began

    def join(self) -> None:
        self._thread.join(180)


HEADERS = b"POST /customers/commands/CreateCustomer HTTP/1.1\r\nhost: test\r\n"


def test_silent_and_slow_clients_are_cut_off_while_a_normal_client_is_served(
    server: Server,
) -> None:
    silent = SlowClient(server.address, b"")
    slow_headers = SlowClient(server.address, HEADERS, b"x-padding: " + b"a" * 10_000)
    slow_body = SlowClient(
        server.address,
        HEADERS + b"content-type: application/json\r\ncontent-length: 10000\r\n\r\n",
        b'{"customer_id": "c1", "name": "' + b"a" * 10_000,
    )
    slow = [silent, slow_headers, slow_body]

    served = httpx.post(
        f"{server.url}/customers/commands/CreateCustomer",
        json={"customer_id": "c2", "name": "Ada"},
        timeout=30,
    )
    assert served.status_code == 202

    for client in slow:
        client.join()
    for client in slow:
        assert client.held is not None
        assert READ_TIMEOUT * 0.9 <= client.held < BOUND
        assert client.received.startswith(b"HTTP/1.1 408 Request Timeout\r\n")


def test_a_request_that_waits_longer_than_the_read_deadline_for_its_answer_gets_it(
    server: Server,
) -> None:
    # no worker runs: the command stays pending, and the wait ends after two seconds
    answer = httpx.post(
        f"{server.url}/customers/commands/CreateCustomer",
        params={"wait": 2 * READ_TIMEOUT},
        json={"customer_id": "c3", "name": "Grace"},
        timeout=30,
    )
    assert answer.status_code == 202
    assert answer.json()["request_id"]


def test_a_connection_idle_between_requests_is_closed_after_the_idle_timeout(
    server: Server,
) -> None:
    request = b"GET /healthz HTTP/1.1\r\nhost: test\r\n\r\n"
    client = SlowClient(server.address, request)
    client.join()
    assert client.received.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"408" not in client.received
    assert client.held is not None
    assert 2 * 0.9 <= client.held < BOUND
