"""The gunicorn worker of ``ranker serve``: gthread, but a request reaches a thread only once it is read whole.

gunicorn's gthread worker reads a request's headers and body in its worker threads, with blocking reads:
a few clients that send slowly (or declare more bytes than they send) hold every thread, and nothing
else is answered. This worker reads each request in its poller instead, with non-blocking reads:
the headers within ``header_timeout``, then the body within ``body_timeout``, at most ``max_body_bytes``
of it, de-chunked. Only a complete request goes to the thread pool, as a body of known length, so a
thread never waits for a client to send. A worker holds at most ``max_connections`` connections
(gunicorn's ``worker_connections``); more wait in the kernel's accept queue.

Every error the worker answers itself is the API's error body (``ranker.core.errors.ApiError``) with its
``x-ms-error-code`` header: malformed requests 400, deadlines 408, bodies over the limit 413, a request
line over gunicorn's limit 414, headers over the limit 431.
"""

from __future__ import annotations

import errno
import selectors
import socket
import time
from collections.abc import Callable
from functools import partial

from gunicorn.http import errors as gerrors
from gunicorn.http.body import Body, ChunkedReader, LengthReader
from gunicorn.http.message import Request
from gunicorn.http.unreader import IterUnreader
from gunicorn.workers.gthread import ThreadWorker

from ..core.errors import ApiError
from ..core.settings import load_settings
from .http_framing import BARE_LF, ChunkedBody, client_error, error_bytes, http_error

# A connection closed after an answer still reads (and drops) what the client sends for this long, so
# the client gets the answer instead of a reset for unread bytes (a "lingering close", RFC 9112 9.6).
LINGER_SECONDS = 2.0
# How long a stopping worker keeps idle kept-alive connections, for a request already on its way.
STOP_LINGER_SECONDS = 2.0
# How often deadlines are checked; a deadline passes up to this much late.
SWEEP_SECONDS = 0.25
RECV_BYTES = 65536
ACCEPTS_PER_EVENT = 16


class Conn:
    """A client connection while the poller reads a request from it, or lingers before closing it."""

    __slots__ = (
        "sock", "client", "server", "buf", "scanned", "deadline", "idle", "req", "length", "chunked", "requests",
        "out", "closing", "keep",
    )  # fmt: skip

    def __init__(self, sock: socket.socket, client, server):
        self.sock = sock
        self.client = client
        self.server = server
        self.buf = bytearray()
        self.scanned = 0  # bytes of buf already searched for the end of the headers
        self.deadline = 0.0
        self.idle = False  # kept alive, no byte of the next request yet
        self.req: Request | None = None  # headers read, body still coming
        self.length = 0  # body bytes expected (Content-Length)
        self.chunked: ChunkedBody | None = None
        self.requests = 0
        self.out = b""  # error answer still to send
        self.closing = False
        self.keep = True  # while an answer is being sent: whether the connection stays open after it

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


class BufferingWorker(ThreadWorker):
    """gthread with requests read whole by the poller, under deadlines, before a thread serves them."""

    def init_process(self) -> None:
        settings = load_settings()
        self.header_timeout = settings.header_timeout
        self.body_timeout = settings.body_timeout
        self.max_body_bytes = settings.max_body_bytes
        self.max_header_bytes = settings.max_header_bytes
        self.conns: dict[Conn, None] = {}  # connections the poller watches (reading, idle or closing)
        self.keepalived_conns = {}  # idle ones; its size caps keep-alive in ThreadWorker.handle_request
        self.next_sweep = 0.0
        super().init_process()

    @classmethod
    def check_config(cls, cfg, log) -> None:
        super().check_config(cfg, log)
        if cfg.is_ssl or cfg.http_protocols != ["h1"] or cfg.proxy_protocol != "off":
            raise RuntimeError("ranker's worker serves plain HTTP/1.1; terminate TLS in a reverse proxy")

    # -- the poller's side ------------------------------------------------------------------------

    def accept(self, listener) -> None:
        for _ in range(ACCEPTS_PER_EVENT):
            if self.nr_conns >= self.worker_connections:
                return
            try:
                sock, client = listener.accept()
            except OSError as exc:
                if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK, errno.ECONNABORTED):
                    return
                raise
            sock.setblocking(False)
            self.nr_conns += 1
            conn = Conn(sock, client, listener.getsockname())
            conn.deadline = time.monotonic() + self.header_timeout
            self.watch(conn, self.on_readable)

    def watch(self, conn: Conn, callback: Callable, events: int = selectors.EVENT_READ) -> None:
        self.conns[conn] = None
        self.poller.register(conn.sock, events, partial(callback, conn))

    def unwatch(self, conn: Conn) -> None:
        self.conns.pop(conn, None)
        self.keepalived_conns.pop(conn, None)
        try:
            self.poller.unregister(conn.sock)
        except (KeyError, ValueError, OSError):
            pass

    def drop(self, conn: Conn) -> None:
        self.unwatch(conn)
        self.nr_conns -= 1
        conn.close()

    def on_readable(self, conn: Conn, _sock, _events: int = selectors.EVENT_READ) -> None:
        try:
            data = conn.sock.recv(RECV_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.drop(conn)
            return
        if not data:
            self.end_of_stream(conn)
            return
        if conn.idle:
            conn.idle = False
            self.keepalived_conns.pop(conn, None)
            conn.deadline = time.monotonic() + self.header_timeout
        conn.buf += data
        self.advance(conn)

    def end_of_stream(self, conn: Conn) -> None:
        if conn.req is not None:
            self.reject(conn, http_error(400, "the body ended before its Content-Length or last chunk"))
        elif conn.buf:
            self.reject(conn, http_error(400, "the request ended within its headers"))
        else:
            self.drop(conn)

    def advance(self, conn: Conn) -> None:
        """Read what the buffer holds of the request; hand a complete one to a thread."""
        try:
            if conn.req is None and not self.read_head(conn):
                return
            if not self.read_body(conn):
                return
        except ApiError as error:
            self.reject(conn, error)
            return
        except Exception as exc:  # gunicorn's parse errors
            error = client_error(exc)
            if error is None:
                self.log.exception("error reading a request")
                error = ApiError(500, "InternalServerError", "unexpected error; see the server log")
            self.reject(conn, error)
            return
        self.unwatch(conn)
        req, conn.req = conn.req, None
        self.dispatch(conn, req)

    def dispatch(self, conn: Conn, req: Request) -> None:
        """Hand a complete request to a thread; the poller gets the connection back after the answer."""
        future = self.tpool.submit(self.serve, conn, req)
        future.add_done_callback(lambda fut: self.method_queue.defer(self.finish_request, conn, fut))

    def read_head(self, conn: Conn) -> bool:
        buf = conn.buf
        # Only what arrived since the last look is searched (and the 3 bytes before it, which may begin
        # the blank line): a head sent a byte at a time is not scanned again for every byte.
        start = max(0, conn.scanned - 3)
        conn.scanned = len(buf)
        end = buf.find(b"\r\n\r\n", start)
        if end < 0:
            line_limit = self.cfg.limit_request_line or 8190
            if len(buf) > line_limit + 2 and buf.find(b"\r\n", 0, line_limit + 2) < 0:
                raise gerrors.LimitRequestLine(len(buf), line_limit)
            if len(buf) > self.max_header_bytes:
                raise http_error(431, f"the request line and headers are longer than {self.max_header_bytes} bytes")
            if BARE_LF.search(buf, start):
                raise http_error(400, "bare LF as line terminator")
            return False
        conn.scanned = 0
        if end + 4 > self.max_header_bytes:
            raise http_error(431, f"the request line and headers are longer than {self.max_header_bytes} bytes")
        head = bytes(buf[: end + 4])
        del buf[: end + 4]
        conn.requests += 1
        req = Request(self.cfg, IterUnreader([head]), conn.client, conn.requests)
        reader = req.body.reader
        conn.req, conn.length, conn.chunked = req, 0, None
        if isinstance(reader, ChunkedReader):
            conn.chunked = ChunkedBody(req, self.max_body_bytes, req.limit_request_field_size, self.max_header_bytes)
        elif isinstance(reader, LengthReader):
            conn.length = reader.length
            if conn.length > self.max_body_bytes:
                raise http_error(413, f"the body is larger than {self.max_body_bytes} bytes")
        if conn.chunked is not None or conn.length:
            conn.deadline = time.monotonic() + self.body_timeout
            if req._expected_100_continue:
                req._expected_100_continue = False  # answered here, not again by gunicorn
                if not buf:
                    try:
                        conn.sock.send(b"HTTP/1.1 100 Continue\r\n\r\n")
                    except OSError:
                        pass  # the connection's end shows at the next read
        return True

    def read_body(self, conn: Conn) -> bool:
        req = conn.req
        if conn.chunked is not None:
            if not conn.chunked.feed(conn.buf):
                return False
            body = bytes(conn.chunked.body)
            # The application sees a body of known length, as behind a buffering proxy.
            req.headers = [(k, v) for k, v in req.headers if k != "TRANSFER-ENCODING"]
            req.headers.append(("CONTENT-LENGTH", str(len(body))))
        else:
            if len(conn.buf) < conn.length:
                return False
            body = bytes(conn.buf[: conn.length])
            del conn.buf[: conn.length]
        req.body = Body(LengthReader(IterUnreader([body]), len(body)))
        return True

    def reject(self, conn: Conn, error: ApiError) -> None:
        """Answer an error and close the connection."""
        if error.status >= 500:
            self.log.error("%s answered %s: %s", conn.client, error.status, error.message)
        else:
            self.log.info("invalid request from %s: %s %s", conn.client, error.status, error.message)
        conn.out = error_bytes(error)
        conn.req = None
        conn.buf.clear()
        self.linger(conn)

    def nonblocking(self, conn: Conn) -> bool:
        """Put the connection back in non-blocking mode for the poller; False (and closed) when it is gone."""
        try:
            conn.sock.setblocking(False)
        except OSError:
            self.nr_conns -= 1
            conn.close()
            return False
        return True

    def linger(self, conn: Conn) -> None:
        """Send what is left to send, close the sending side, drop what the client still sends, close."""
        self.unwatch(conn)
        if not self.nonblocking(conn):
            return
        conn.closing = True
        conn.deadline = time.monotonic() + LINGER_SECONDS
        if conn.out:
            self.watch(conn, self.on_lingering, selectors.EVENT_READ | selectors.EVENT_WRITE)
            self.on_lingering(conn, None, selectors.EVENT_WRITE)
        else:
            self.shut_write(conn)

    def shut_write(self, conn: Conn) -> None:
        try:
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self.drop(conn)
            return
        self.unwatch(conn)
        self.watch(conn, self.on_lingering)

    def on_lingering(self, conn: Conn, _sock, events: int = selectors.EVENT_READ) -> None:
        if conn.out and events & selectors.EVENT_WRITE:
            try:
                sent = conn.sock.send(conn.out)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self.drop(conn)
                return
            conn.out = conn.out[sent:]
            if not conn.out:
                self.shut_write(conn)
            return
        try:
            if not conn.sock.recv(RECV_BYTES):
                self.drop(conn)
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            self.drop(conn)

    def wait_for_and_dispatch_events(self, timeout: float) -> None:
        try:
            events = self.poller.select(min(timeout, SWEEP_SECONDS))
        except InterruptedError:
            return
        for key, mask in events:
            if not isinstance(key.data, partial):  # a listener's, or the method queue's
                key.data(key.fileobj)
                continue
            try:  # a client connection's
                key.data(key.fileobj, mask)
            except Exception:  # one connection's fault, not the worker's
                self.log.exception("error on a client connection")
                conn = key.data.args[0]
                if conn in self.conns:
                    self.drop(conn)
        now = time.monotonic()
        if now >= self.next_sweep:
            self.next_sweep = now + SWEEP_SECONDS
            self.sweep(now)

    def sweep(self, now: float) -> None:
        """Close connections whose deadline passed; a request begun gets 408."""
        for conn in [c for c in self.conns if c.deadline <= now]:
            if conn.closing or conn.idle or conn.out or (conn.req is None and not conn.buf):
                self.drop(conn)
            else:
                part = "body" if conn.req is not None else "headers"
                limit = self.body_timeout if conn.req is not None else self.header_timeout
                self.reject(conn, http_error(408, f"the request's {part} did not arrive within {limit:g} s"))

    def run(self) -> None:
        """ThreadWorker.run with the deadlines of this worker's connections."""
        self.poller.register(self.method_queue.fileno(), selectors.EVENT_READ, self.method_queue.run_callbacks)
        self.set_accept_enabled(True)
        while self.alive:
            self.notify()
            can_accept = self.nr_conns < self.worker_connections
            if can_accept != self._accepting:
                self.set_accept_enabled(can_accept)
            self.wait_for_and_dispatch_events(timeout=1.0)
            if not self.is_parent_alive():
                break

        # Stopping: requests being read or answered finish within the graceful timeout; idle kept-alive
        # connections stay briefly for a request already on its way, answered with "Connection: close".
        self.set_accept_enabled(False)
        now = time.monotonic()
        for conn in self.conns:
            if conn.idle:
                conn.deadline = min(conn.deadline, now + STOP_LINGER_SECONDS)
        graceful_deadline = now + self.cfg.graceful_timeout
        while self.nr_conns > 0 and time.monotonic() < graceful_deadline:
            self.notify()
            self.wait_for_and_dispatch_events(timeout=SWEEP_SECONDS)
        for conn in list(self.conns):
            self.drop(conn)
        self.tpool.shutdown(wait=False)
        self.poller.close()
        self.method_queue.close()
        for listener in self.sockets:
            listener.close()

    # -- the threads' side ------------------------------------------------------------------------

    def serve(self, conn: Conn, req: Request) -> bool:
        """Answer a complete request in a thread; whether the connection stays open."""
        try:
            conn.sock.settimeout(self.body_timeout)  # blocking writes, bounded for a client that does not read
            return self.handle_request(req, conn)
        except StopIteration:
            return False
        except OSError as exc:
            self.log.debug("connection lost while answering: %s", exc)
            return False
        except Exception as exc:
            self.handle_error(req, conn.sock, conn.client, exc)
            return False

    def finish_request(self, conn: Conn, future) -> None:
        """Back in the poller after an answer: wait for the next request, or close."""
        keep = not future.cancelled() and future.exception() is None and future.result()
        if not keep:
            self.linger(conn)
            return
        if self.nonblocking(conn):
            self.keep_alive(conn)

    def keep_alive(self, conn: Conn) -> None:
        """An answered connection (non-blocking again) that stays open: its next request, or idle."""
        if conn.buf:  # the client sent its next request already
            conn.deadline = time.monotonic() + self.header_timeout
            self.watch(conn, self.on_readable)
            self.advance(conn)
            return
        conn.idle = True
        conn.deadline = time.monotonic() + (self.cfg.keepalive if self.alive else STOP_LINGER_SECONDS)
        self.keepalived_conns[conn] = None
        self.watch(conn, self.on_readable)

    def handle_error(self, req, client, addr, exc) -> None:
        """gunicorn's error answers, in the API's error body instead of an HTML page."""
        error = client_error(exc)
        if error is None:
            self.log.exception("error handling request")
            error = ApiError(500, "InternalServerError", "unexpected error; see the server log")
        else:
            self.log.info("invalid request from %s: %s %s", addr, error.status, error.message)
        try:
            client.sendall(error_bytes(error))
        except OSError:
            self.log.debug("could not send the error answer")
