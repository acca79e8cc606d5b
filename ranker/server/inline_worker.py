"""The gunicorn worker of ``ranker serve``: Rank, Reward and Activate served in the poller thread, round by round.

``BufferingWorker`` (ranker/server/http_worker.py) reads each request whole in its poller and hands it to a
thread of its pool; a Rank's view then hands its decision to the store's writer thread and waits for the
group commit. That is four thread switches per Rank, each a GIL hand-off, and they cost a Rank more CPU
than its validation (docs/performance.md, "Where a Rank's CPU goes"). This worker serves the requests that
write one decision or reward, and the null request, in its poller thread instead, each in a greenlet:

1. every such request that a poll round completed runs (gunicorn's request handling, Flask, the view) until
   it is answered, or until it writes to the decision log: ``Store.write`` parks it there with its op (on
   PostgreSQL a read parks it too, and a reader thread runs it: see ``PostgresStore._read``);
2. the round's ops go to the store's writer thread together, which commits them in its group commit
   (``synchronous`` as configured, under the write turn) while the poller goes on reading and serving;
3. once the writer has finished an op it tells the poller (a byte on a pipe for any number of ops), which
   resumes the parked request: it answers, or raises the store's error (503) when the commit failed;
4. a parked request whose op the writer has not taken by its deadline (``commit_timeout``) is given up by
   the poller's sweep: its op is never written, and it answers 503, as a thread's request does;
5. answers are sent without blocking: a client that does not read its answer keeps the rest of it in the
   poller (under ``body_timeout``), so a slow reader never holds the worker.

No 201 or 204 leaves before its commit. Every other request (admin, signals, triage, web pages, evaluations)
still goes to the thread pool, as in ``BufferingWorker``, so a slow one does not hold the poll rounds.
"""

from __future__ import annotations

import os
import selectors
import time
from collections import deque

from greenlet import getcurrent, greenlet
from gunicorn.http.message import Request

from .http_worker import BufferingWorker, Conn

# POST paths served in the poller: each writes at most one decision, reward or activation.
INLINE_ENDINGS = ("/rank", "/reward", "/activate")


class RoundRequest(greenlet):
    """A request served in the poller thread."""


def suspend(op) -> bool:
    """``Store.suspend``: park the calling request with its op until the poller resumes it; False (at once) when
    the caller is not a request served in the poller."""
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
    """BufferingWorker that serves Rank, Reward, Activate and /null in its poller thread."""

    def init_process(self) -> None:
        self.round: list[tuple[Conn, Request]] = []  # complete requests to serve in the poller
        self.parked: dict = {}  # op -> (connection, request) waiting for the writer
        self.finished: deque = deque()  # ops the writer has finished, for the poller to resume
        self.woken = False  # a wake-up byte is on its way for what ``finished`` holds
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        self.store = None
        super().init_process()

    def run(self) -> None:
        service = getattr(self.wsgi, "extensions", {}).get("ranker")
        self.store = getattr(service, "store", None)
        if self.store is not None:
            self.store.suspend = suspend
        self.poller.register(self.wake_r, selectors.EVENT_READ, self.on_finished)
        super().run()

    def dispatch(self, conn: Conn, req: Request) -> None:
        path = req.path
        if self.store is not None and req.method == "POST" and (path == "/null" or path.endswith(INLINE_ENDINGS)):
            self.round.append((conn, req))
        else:
            super().dispatch(conn, req)

    def wait_for_and_dispatch_events(self, timeout: float) -> None:
        super().wait_for_and_dispatch_events(timeout)
        self.serve_round()

    def serve_round(self) -> None:
        """Serve the complete requests of the round, and queue the writes they park on."""
        while self.round:  # an answered connection's next request (pipelined) is served too
            todo, self.round = self.round, []
            ops: list = []
            for conn, req in todo:
                self.run_request(conn, RoundRequest(self.serve_inline), ops, conn, req)
            if ops:
                self.store.enqueue(ops)

    def step(self, conn: Conn, request: RoundRequest, out, ops: list) -> None:
        """After a request ran: send its answer, or park it with the op it waits for."""
        if request.dead:
            keep, data = out
            self.send_answer(conn, keep, data)
        else:
            out.notify = self.committed
            self.parked[out] = (conn, request)
            ops.append(out)

    def committed(self, op) -> None:
        """In the writer thread: ``op`` is finished; wake the poller unless a wake-up is on its way."""
        self.finished.append(op)
        if not self.woken:
            self.woken = True
            try:
                os.write(self.wake_w, b"\0")
            except OSError:  # a full pipe holds a wake-up already
                pass

    def on_finished(self, _fileobj) -> None:
        try:
            os.read(self.wake_r, 4096)
        except OSError:
            pass
        self.woken = False  # before the ops are taken: one finished later writes a byte again
        ops: list = []
        while self.finished:
            self.resume(self.finished.popleft(), ops)
        if ops:
            self.store.enqueue(ops)

    def resume(self, op, ops: list) -> None:
        parked = self.parked.pop(op, None)
        if parked is None:
            return
        conn, request = parked
        self.run_request(conn, request, ops)

    def run_request(self, conn: Conn, request: RoundRequest, ops: list, *args) -> None:
        """Run a request (or resume it) until it is answered or parks again."""
        try:
            self.step(conn, request, request.switch(*args), ops)
        except Exception:  # one connection's fault, not the worker's (as in BufferingWorker's events)
            self.log.exception("error on a client connection")
            self.drop(conn)

    def sweep(self, now: float) -> None:
        """BufferingWorker's deadlines, and the parked requests whose op was not taken by its deadline: 503."""
        super().sweep(now)
        expired = [op for op in self.parked if op.deadline <= now and self.store.give_up(op)]
        ops: list = []
        for op in expired:
            self.resume(op, ops)
        if ops:
            self.store.enqueue(ops)

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
        """Send an answer without blocking; what the client does not take yet is sent as it reads, under
        ``body_timeout`` from its last progress. Then the connection waits for its next request, or closes."""
        try:
            sent = conn.sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self.drop(conn)
            return
        if sent < len(data):
            conn.out, conn.keep = data[sent:], keep
            conn.deadline = time.monotonic() + self.body_timeout
            self.watch(conn, self.on_sending, selectors.EVENT_WRITE)
        elif keep:
            self.keep_alive(conn)
        else:
            self.linger(conn)

    def on_sending(self, conn: Conn, _sock, _events: int = selectors.EVENT_WRITE) -> None:
        try:
            sent = conn.sock.send(conn.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.drop(conn)
            return
        conn.out = conn.out[sent:]
        conn.deadline = time.monotonic() + self.body_timeout
        if not conn.out:
            self.unwatch(conn)
            if conn.keep:
                self.keep_alive(conn)
            else:
                self.linger(conn)
