"""A prototype worker that serves Rank and the null request in its poller thread, one poll round at a time.

``BufferingWorker`` hands each complete request to a thread of its pool, and Rank's view hands its decision to
the store's writer thread and waits for the group commit: two thread switches, and GIL hand-offs, per Rank.
This worker serves instead, in its one poller thread, every complete ``POST .../rank`` (single- and multi-slot)
and ``POST /null`` that a poll round found ready, each in a greenlet:

1. every request of the round runs (gunicorn's request handling, Flask, the view) until it is answered or
   until it writes to the decision log, where ``Store.write`` suspends it with its op;
2. the round's ops are committed in one transaction, in this thread, under the store's write turn and with
   its ``synchronous`` setting (``Store.commit_batch``, the writer thread's own batch code);
3. the suspended requests resume with their results (a failed commit raises in their view: 503) and finish;
4. answers are collected in memory and sent without blocking: a client that does not read them keeps the
   rest in the poller (under ``body_timeout``), so a slow reader never holds this thread.

Other requests still go to the thread pool (and their writes to the writer thread). Only the SQLite store is
served this way; with another engine the worker behaves as ``BufferingWorker``.
"""

from __future__ import annotations

import selectors
import time

from greenlet import getcurrent, greenlet
from gunicorn.http.message import Request

from .http_worker import BufferingWorker, Conn


class RoundRequest(greenlet):
    """A request served inside a poll round."""


def suspend(op) -> bool:
    """``Store.suspend``: park the calling round request until its op is committed; False outside a round."""
    current = getcurrent()
    if type(current) is not RoundRequest:
        return False
    current.parent.switch(op)
    return True


class Sink:
    """The socket gunicorn writes an answer into: the bytes are kept, and the poller sends them."""

    __slots__ = ("data",)

    def __init__(self) -> None:
        self.data = bytearray()

    def sendall(self, data) -> None:
        self.data += data

    def send(self, data) -> int:
        self.data += data
        return len(data)

    def shutdown(self, _how) -> None:
        raise OSError("the poller closes the connection")

    def settimeout(self, _timeout) -> None:
        pass

    def close(self) -> None:
        pass


class Answering:
    """What gunicorn's ``handle_request`` reads of a connection, with the answer going into a ``Sink``."""

    __slots__ = ("sock", "client", "server")

    def __init__(self, sock: Sink, client, server) -> None:
        self.sock, self.client, self.server = sock, client, server


class InlineWorker(BufferingWorker):
    """BufferingWorker that serves Rank and /null in its poller thread, a poll round's writes in one commit."""

    def init_process(self) -> None:
        self.round: list[tuple[Conn, Request]] = []
        self.store = None
        super().init_process()

    def run(self) -> None:
        service = getattr(self.wsgi, "extensions", {}).get("ranker")
        store = getattr(service, "store", None)
        if store is not None and getattr(store, "engine", None) == "sqlite":
            store.suspend = suspend
            self.store = store
        super().run()

    def dispatch(self, conn: Conn, req: Request) -> None:
        if self.store is not None and req.method == "POST" and (req.path == "/null" or req.path.endswith("/rank")):
            self.round.append((conn, req))
        else:
            super().dispatch(conn, req)

    def wait_for_and_dispatch_events(self, timeout: float) -> None:
        super().wait_for_and_dispatch_events(timeout)
        while self.round:  # an answered connection's next request (pipelined) joins a round of its own
            self.serve_round()

    def serve_round(self) -> None:
        todo, self.round = self.round, []
        waiting: list[tuple[Conn, RoundRequest, object]] = []
        for conn, req in todo:
            request = RoundRequest(self.serve_inline)
            self.step(conn, request, request.switch(conn, req), waiting)
        while waiting:  # a request that writes again after its commit waits for the next batch
            self.store.commit_batch([op for _, _, op in waiting])
            resumed, waiting = waiting, []
            for conn, request, _ in resumed:
                self.step(conn, request, request.switch(), waiting)

    def step(self, conn: Conn, request: RoundRequest, out, waiting: list) -> None:
        if request.dead:
            keep, data = out
            self.send_answer(conn, keep, data)
        else:
            waiting.append((conn, request, out))

    def serve_inline(self, conn: Conn, req: Request) -> tuple[bool, bytes]:
        """gunicorn's request handling into a Sink: whether the connection stays open, and the answer."""
        sink = Sink()
        try:
            keep = self.handle_request(req, Answering(sink, conn.client, conn.server))
        except StopIteration:
            keep = False
        except Exception as exc:
            self.handle_error(req, sink, conn.client, exc)
            keep = False
        return keep, bytes(sink.data)

    def send_answer(self, conn: Conn, keep: bool, data: bytes) -> None:
        if not keep:
            conn.out = data
            self.linger(conn)
            return
        try:
            sent = conn.sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self.drop(conn)
            return
        if sent == len(data):
            self.keep_alive(conn)
            return
        conn.out = data[sent:]
        conn.deadline = time.monotonic() + self.body_timeout
        self.watch(conn, self.on_sending, selectors.EVENT_WRITE)

    def on_sending(self, conn: Conn, _sock, _events: int = selectors.EVENT_WRITE) -> None:
        try:
            sent = conn.sock.send(conn.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.drop(conn)
            return
        conn.out = conn.out[sent:]
        if not conn.out:
            self.unwatch(conn)
            self.keep_alive(conn)
