"""The HTTP edge of a real server: slow clients, malformed framing and gunicorn's own errors.

Every answer here is the API's error body with its x-ms-error-code header, nothing of a bad request
is stored, nothing is logged as a crash, and clients that send slowly do not keep others waiting.
"""

from __future__ import annotations

import json
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from ranker.harness import Server

RANK = "/personalizer/v1.0/rank"
JSON = {"Content-Type": "application/json"}
TOO_LARGE = "RequestHeaderFieldsTooLarge"
BODY = json.dumps(
    {"contextFeatures": [{"plan": "pro"}], "actions": [{"id": "a", "features": [{"x": 1}]}, {"id": "b"}]}
).encode()


def head(method: str = "POST", path: str = RANK, **headers: str) -> bytes:
    fields = {"Host": "127.0.0.1", "Content-Type": "application/json", **headers}
    lines = "".join(f"{name.replace('_', '-')}: {value}\r\n" for name, value in fields.items())
    return f"{method} {path} HTTP/1.1\r\n{lines}\r\n".encode()


def chunked(body: bytes) -> bytes:
    return head(Transfer_Encoding="chunked") + body


def rank_request(body: bytes = BODY) -> bytes:
    return head(Content_Length=str(len(body))) + body


class Answer:
    def __init__(self, status: int, headers: dict[str, str], body: bytes):
        self.status, self.headers, self.body = status, headers, body

    def json(self):
        return json.loads(self.body)


def read_answer(sock: socket.socket, buf: bytearray) -> Answer:
    """One HTTP/1.1 answer from ``sock`` (bytes already read in ``buf``; what follows it stays there)."""
    while b"\r\n\r\n" not in buf:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError(f"closed before an answer: {bytes(buf)!r}")
        buf += data
    end = buf.index(b"\r\n\r\n")
    lines = bytes(buf[:end]).decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    length = int(headers.get("content-length", 0))
    while len(buf) < end + 4 + length:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("closed within an answer")
        buf += data
    body = bytes(buf[end + 4 : end + 4 + length])
    del buf[: end + 4 + length]
    return Answer(int(lines[0].split()[1]), headers, body)


def exchange(port: int, data: bytes, shut: bool = False, timeout: float = 5) -> Answer:
    """Send ``data`` on a new connection (then end the stream when ``shut``), read one answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        if shut:
            sock.shutdown(socket.SHUT_WR)
        return read_answer(sock, bytearray())


def assert_error(answer: Answer, status: int, code: str) -> None:
    assert answer.status == status, answer.body
    assert answer.headers["content-type"] == "application/json"
    assert answer.headers["x-ms-error-code"] == code
    body = answer.json()
    assert set(body) == {"error"} and body["error"]["code"] == code and body["error"]["message"]


def decisions(server: Server) -> int:
    with sqlite3.connect(server.data_dir / "ranker.db") as conn:
        return conn.execute("SELECT count(*) FROM decisions").fetchone()[0]


def assert_no_crash_logged(server: Server) -> None:
    log = (server.data_dir / "server.log").read_text()
    assert "Traceback" not in log and "[ERROR]" not in log and "[CRITICAL]" not in log, log[-3000:]


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[Server]:
    """One server for the module's quick cases: deadlines of 1 s, bodies up to 4096 bytes."""
    data_dir = tmp_path_factory.mktemp("edge")
    server = Server(data_dir, header_timeout="1", body_timeout="1", max_body_bytes="4096")
    yield server
    server.stop()


MALFORMED_CHUNKED = [
    ("size-not-hex", b"zz\r\nabc\r\n0\r\n\r\n"),
    ("size-negative", b"-5\r\nabcde\r\n0\r\n\r\n"),
    ("size-after-a-space", b" 5\r\nabcde\r\n0\r\n\r\n"),
    ("size-empty", b"\r\nabcde\r\n0\r\n\r\n"),
    ("size-hex-prefix", b"0x5\r\nabcde\r\n0\r\n\r\n"),
    ("chunk-without-terminator", b"5\r\nabcdeXY0\r\n\r\n"),
    ("chunk-longer-than-its-size", b"3\r\nabcde\r\n0\r\n\r\n"),
    ("extension-without-name", b"5;=x\r\nabcde\r\n0\r\n\r\n"),
    ("extension-with-a-space-in-its-name", b"5;a b\r\nabcde\r\n0\r\n\r\n"),
    ("size-line-with-bare-lf", b"5\nabcde\r\n0\r\n\r\n"),
    ("size-line-without-end", b"5" * 9000),
    ("trailer-forbidden-field", b"5\r\nabcde\r\n0\r\nContent-Length: 5\r\n\r\n"),
    ("trailer-without-colon", b"5\r\nabcde\r\n0\r\nnot a field\r\n\r\n"),
]


@pytest.mark.parametrize("body", [body for _, body in MALFORMED_CHUNKED], ids=[i for i, _ in MALFORMED_CHUNKED])
def test_a_malformed_chunked_body_gets_400_and_is_not_stored(server, body):
    before = decisions(server)
    assert_error(exchange(server.port, chunked(body)), 400, "BadRequest")
    assert decisions(server) == before
    assert_no_crash_logged(server)


@pytest.mark.parametrize("ending", [b"", b"5\r\nab", b"5\r\nabcde", b"5\r\nabcde\r\n", b"5\r\nabcde\r\n0\r\n"])
def test_a_chunked_body_cut_short_by_the_end_of_the_stream_gets_400(server, ending):
    before = decisions(server)
    assert_error(exchange(server.port, chunked(ending), shut=True), 400, "BadRequest")
    assert decisions(server) == before
    assert_no_crash_logged(server)


@pytest.mark.parametrize("size", [1 << 70, 4097], ids=["2^70", "limit+1"])
def test_a_chunk_larger_than_max_body_bytes_gets_413_at_once(server, size):
    started = time.monotonic()
    answer = exchange(server.port, chunked(b"%x\r\nabc" % size), timeout=3)
    assert_error(answer, 413, "PayloadSizeExceeded")
    assert time.monotonic() - started < 0.5  # not when the body deadline passes
    assert_no_crash_logged(server)


def test_a_body_shorter_than_its_content_length_gets_400_and_is_not_stored(server):
    before = decisions(server)
    answer = exchange(server.port, head(Content_Length=str(len(BODY) + 10)) + BODY, shut=True)
    assert_error(answer, 400, "BadRequest")
    assert decisions(server) == before
    assert_no_crash_logged(server)


def test_a_content_length_over_max_body_bytes_gets_413_before_the_body(server):
    answer = exchange(server.port, head(Content_Length=str(1 << 40)), timeout=3)
    assert_error(answer, 413, "PayloadSizeExceeded")


@pytest.mark.parametrize(
    "request_bytes, status, code",
    [
        (b"GET /healthz HTTP/1.1\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n", 431, TOO_LARGE),
        (b"GET /healthz HTTP/1.1\r\n" + b"X-Many: a\r\n" * 150 + b"\r\n", 431, TOO_LARGE),
        (b"GET /healthz HTTP/1.1\r\n" + b"X-Many: a\r\n" * 8000 + b"\r\n", 431, TOO_LARGE),
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, "RequestURITooLong"),
        (b"GARBAGE\r\n\r\n", 400, "BadRequest"),
        (b"GET /healthz HTTP/7.0\r\nHost: x\r\n\r\n", 400, "BadRequest"),
        (b"GET /healthz HTTP/1.1\r\nBad Name: x\r\n\r\n", 400, "BadRequest"),
        (b"GET /healthz HTTP/1.1\nHost: x\n\n", 400, "BadRequest"),
        (head(Content_Length="5", Transfer_Encoding="chunked") + b"0\r\n\r\n", 400, "BadRequest"),
        (head(Content_Length="5", content_length="6") + b"abcdef", 400, "BadRequest"),
        (head(Content_Length="-1"), 400, "BadRequest"),
        (head(Transfer_Encoding="chunked, gzip") + b"0\r\n\r\n", 400, "BadRequest"),
        (head(Transfer_Encoding="br") + b"0\r\n\r\n", 400, "BadRequest"),
        (head(Expect="magic", Content_Length="2") + b"{}", 417, "ExpectationFailed"),
    ],
    ids=[
        "header-too-large", "too-many-headers", "headers-over-max-header-bytes", "uri-too-long",
        "request-line-garbage", "http-version", "header-name-with-space", "bare-lf", "content-length-and-chunked",
        "two-content-lengths", "negative-content-length", "chunked-not-last", "unknown-transfer-coding",
        "unknown-expectation",
    ],
)  # fmt: skip
def test_what_the_server_refuses_before_the_app_gets_the_error_body(server, request_bytes, status, code):
    assert_error(exchange(server.port, request_bytes), status, code)
    assert_no_crash_logged(server)


def test_a_valid_chunked_rank_is_answered_and_the_connection_kept(server):
    pieces = [BODY[:10], BODY[10:11], BODY[11:]]
    body = b"".join(b"%x;ext=1\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\nX-Trailer: yes\r\n\r\n"
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        buf = bytearray()
        sock.sendall(chunked(body))
        first = read_answer(sock, buf)
        sock.sendall(rank_request())
        second = read_answer(sock, buf)
    assert first.status == second.status == 201
    assert first.json()["rewardActionId"] in ("a", "b")


def test_a_request_sent_in_small_pieces_within_the_deadlines_is_answered(server):
    data = rank_request()
    cut = data.index(b"\r\n\r\n") + 2  # the blank line that ends the headers split over two sends
    pieces = [data[i : min(i + 7, cut)] for i in range(0, cut, 7)] + [data[cut : cut + 1], data[cut + 1 :]]
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        for piece in pieces:
            sock.sendall(piece)
            time.sleep(0.005)
        assert read_answer(sock, bytearray()).status == 201


def test_pipelined_requests_are_answered_in_order(server):
    body = json.dumps({"eventId": "pipelined", **json.loads(BODY)}).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(rank_request(body) + b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" + rank_request(body))
        buf = bytearray()
        answers = [read_answer(sock, buf) for _ in range(3)]
    assert [a.status for a in answers] == [201, 200, 409]
    assert answers[0].json()["eventId"] == "pipelined"


def test_a_client_that_expects_100_continue_gets_it_before_sending_the_body(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(head(Content_Length=str(len(BODY)), Expect="100-continue"))
        buf = bytearray()
        assert read_answer(sock, buf).status == 100
        sock.sendall(BODY)
        assert read_answer(sock, buf).status == 201


@pytest.mark.parametrize(
    "sent, part",
    [(b"POST /personalizer/v1.0/rank HTTP/1.1\r\nHost:", "headers"), (head(Content_Length="100") + b"{", "body")],
    ids=["headers", "body"],
)
def test_a_request_not_sent_within_its_deadline_gets_408(server, sent, part):
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(sent)
        answer = read_answer(sock, bytearray())
        assert sock.recv(100) == b""  # and the connection is closed
    assert_error(answer, 408, "RequestTimeout")
    assert part in answer.json()["error"]["message"]
    assert 0.9 < time.monotonic() - started < 2.5  # the deadline is 1 s


def test_a_connection_that_never_sends_is_closed_at_the_deadline(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        started = time.monotonic()
        assert sock.recv(100) == b""
    assert 0.9 < time.monotonic() - started < 2.5


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def test_200_slow_clients_do_not_delay_rank(tmp_path: Path):
    """100 connections send their headers a byte every 2 s, 100 send headers and then their body a byte
    every 2 s; meanwhile 4 clients Rank back to back and 99 % of them are answered within 100 ms."""
    server = Server(tmp_path, header_timeout="60", body_timeout="60")  # the slow ones stay for the whole test
    slow: list[socket.socket] = []
    stop = threading.Event()
    try:
        for i in range(200):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
            sock.sendall(b"P" if i % 2 else head(Content_Length="100000"))
            slow.append(sock)

        def drip() -> None:
            while not stop.wait(2):
                for i, sock in enumerate(slow):
                    sock.send(b"O" if i % 2 else b"{")

        dripper = threading.Thread(target=drip)
        dripper.start()
        latencies: list[float] = []
        errors: list[str] = []

        def rank_client(seconds: float) -> None:
            with requests.Session() as session:
                end = time.monotonic() + seconds
                while time.monotonic() < end:
                    started = time.monotonic()
                    try:
                        response = session.post(server.url + RANK, data=BODY, timeout=5, headers=JSON)
                    except requests.RequestException as exc:
                        errors.append(repr(exc))
                        continue
                    latencies.append(time.monotonic() - started)
                    if response.status_code != 201:
                        errors.append(response.text)

        clients = [threading.Thread(target=rank_client, args=(6,)) for _ in range(4)]
        for client in clients:
            client.start()
        for client in clients:
            client.join()
        stop.set()
        dripper.join()
        # the slow connections were all still open: the server answered Rank while holding them
        for sock in slow:
            sock.setblocking(False)
            with pytest.raises(BlockingIOError):
                sock.recv(1)
        assert not errors, errors[:3]
        assert len(latencies) > 200
        assert percentile(latencies, 0.99) < 0.1, (percentile(latencies, 0.5), percentile(latencies, 0.99))
        assert decisions(server) == len(latencies)
    finally:
        stop.set()
        for sock in slow:
            sock.close()
        server.stop()
    assert_no_crash_logged(server)


def test_a_client_that_reads_no_answers_does_not_delay_rank(tmp_path: Path):
    """One connection sends 300 Ranks at once (pipelined, 400 actions each, about 5 MB of answers) and reads
    nothing for a while: the worker stops at the answer the socket cannot take, and meanwhile another
    client of the same worker Ranks back to back, answered at once. Then the first reads every answer, each the
    201 of its own Rank, in order."""
    server = Server(tmp_path, workers="1", body_timeout="60")
    actions = [{"id": f"action-{i:04d}"} for i in range(400)]
    pipelined = b"".join(
        rank_request(json.dumps({"eventId": f"unread-{n}", "contextFeatures": [{"n": n}], "actions": actions}).encode())
        for n in range(300)
    )
    reader = socket.socket()
    reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        reader.connect(("127.0.0.1", server.port))
        reader.settimeout(30)
        sender = threading.Thread(target=reader.sendall, args=(pipelined,))
        sender.start()
        deadline = time.monotonic() + 30
        served = -1
        while time.monotonic() < deadline:  # until the worker waits for the reader
            time.sleep(0.5)
            served, served_before = decisions(server), served
            if served == served_before:
                break
        assert 0 < served < 300, served

        latencies = []
        with requests.Session() as session:
            for _ in range(100):
                started = time.monotonic()
                response = session.post(server.url + RANK, data=BODY, timeout=5, headers=JSON)
                latencies.append(time.monotonic() - started)
                assert response.status_code == 201, response.text
        assert percentile(latencies, 0.99) < 0.1, (percentile(latencies, 0.5), percentile(latencies, 0.99))

        buf = bytearray()
        for n in range(300):
            answer = read_answer(reader, buf)
            assert answer.status == 201, answer.body[:300]
            assert answer.json()["eventId"] == f"unread-{n}"
        sender.join()
        assert decisions(server) == 300 + 100

        # An answer of a request that closes the connection (Connection: close) arrives whole, then the end.
        closing = socket.socket()
        closing.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        closing.connect(("127.0.0.1", server.port))
        closing.settimeout(30)
        body = json.dumps({"eventId": "closing", "contextFeatures": [{"n": 1}], "actions": actions}).encode()
        closing.sendall(head(Content_Length=str(len(body)), Connection="close") + body)
        buf = bytearray()
        answer = read_answer(closing, buf)
        assert answer.status == 201 and len(answer.json()["ranking"]) == len(actions)
        assert closing.recv(100) == b""
        closing.close()
    finally:
        reader.close()
        server.stop()
    assert_no_crash_logged(server)
