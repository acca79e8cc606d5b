"""Request framing for :mod:`ranker.server.http_worker`: a chunked body decoded as it arrives, and the API's error
answers for what a client got wrong (gunicorn's parse errors, deadlines, sizes), written as whole HTTP/1.1
answers by the poller itself."""

from __future__ import annotations

import json
import re
from http import HTTPStatus

from gunicorn.http import errors as gerrors
from gunicorn.http.body import CHUNK_EXT_RE
from gunicorn.http.message import Request
from werkzeug.exceptions import default_exceptions

from ..core.errors import ApiError

BARE_LF = re.compile(rb"(?<!\r)\n")

# Parse errors of gunicorn's request parser that are the client's: (status, message prefix)
CLIENT_ERRORS: dict[type[Exception], int] = {
    gerrors.LimitRequestLine: 414,
    gerrors.LimitRequestHeaders: 431,
    gerrors.ExpectationFailed: 417,
    gerrors.UnsupportedTransferCoding: 400,  # RFC 9112 says 501; here no input is the server's fault
    gerrors.ForbiddenProxyRequest: 403,
    gerrors.InvalidRequestLine: 400,
    gerrors.InvalidRequestMethod: 400,
    gerrors.InvalidHTTPVersion: 400,
    gerrors.InvalidHeader: 400,
    gerrors.InvalidHeaderName: 400,
    gerrors.ObsoleteFolding: 400,
    gerrors.InvalidProxyLine: 400,
    gerrors.InvalidProxyHeader: 400,
    gerrors.InvalidSchemeHeaders: 400,
    gerrors.InvalidChunkSize: 400,
    gerrors.ChunkMissingTerminator: 400,
    gerrors.InvalidChunkExtension: 400,
    gerrors.InvalidH2CPreface: 400,
}


def http_error(status: int, message: str) -> ApiError:
    """An ApiError with the code the app gives the same status (werkzeug's name without spaces)."""
    if status == 413:
        return ApiError(status, "PayloadSizeExceeded", message)
    return ApiError(status, default_exceptions[status]().name.replace(" ", ""), message)


def client_error(exc: Exception) -> ApiError | None:
    """The answer to a parse error of gunicorn's, or None when the exception is not the client's fault."""
    if isinstance(exc, gerrors.InvalidResponseHeader | gerrors.InvalidResponseHeaderName):
        return None  # the application's header, not the client's
    for kind, status in CLIENT_ERRORS.items():
        if isinstance(exc, kind):
            text = str(exc)
            return http_error(status, text if len(text) <= 200 else text[:200] + "...")
    return None


def error_bytes(error: ApiError) -> bytes:
    """The whole HTTP/1.1 answer of an error, closing the connection."""
    body = json.dumps(error.body()).encode()
    try:
        reason = HTTPStatus(error.status).phrase
    except ValueError:
        reason = "Error"
    head = (
        f"HTTP/1.1 {error.status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        f"x-ms-error-code: {error.code}\r\nConnection: close\r\n\r\n"
    )
    return head.encode("latin-1") + body


class ChunkedBody:
    """Decodes a chunked body (RFC 9112 7.1) as it arrives, within ``limit`` bytes; its syntax as gunicorn's."""

    SIZE, DATA, CRLF, TRAILERS = range(4)

    def __init__(self, req: Request, limit: int, line_limit: int, trailer_limit: int):
        self.req = req
        self.limit = limit
        self.line_limit = line_limit
        self.trailer_limit = trailer_limit
        self.body = bytearray()
        self.state = self.SIZE
        self.remaining = 0

    def feed(self, buf: bytearray) -> bool:
        """Consume what can be decoded from the front of ``buf``; True once the body has ended."""
        while True:
            if self.state == self.SIZE:
                end = buf.find(b"\r\n")
                if end < 0:
                    if len(buf) > self.line_limit:
                        raise http_error(400, f"a chunk size line is longer than {self.line_limit} bytes")
                    if b"\n" in buf:
                        raise http_error(400, "a chunk size line ends with a bare LF")
                    return False
                size = self.chunk_size(bytes(buf[:end]))
                del buf[: end + 2]
                if size == 0:
                    self.state = self.TRAILERS
                else:
                    self.remaining, self.state = size, self.DATA
            elif self.state == self.DATA:
                if not buf:
                    return False
                take = min(self.remaining, len(buf))
                self.body += buf[:take]
                del buf[:take]
                self.remaining -= take
                if self.remaining:
                    return False
                self.state = self.CRLF
            elif self.state == self.CRLF:
                end = bytes(buf[:2])
                if end != b"\r\n"[: len(end)]:
                    raise http_error(400, "a chunk does not end with CRLF where its size says")
                if len(buf) < 2:
                    return False
                del buf[:2]
                self.state = self.SIZE
            else:
                if buf[:2] == b"\r\n":
                    del buf[:2]
                    return True
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    if len(buf) > self.trailer_limit:
                        raise http_error(431, f"the trailers are longer than {self.trailer_limit} bytes")
                    return False
                trailers = bytes(buf[:end])
                del buf[: end + 4]
                self.req.parse_headers(trailers, from_trailer=True)  # checked, then dropped
                return True

    def chunk_size(self, line: bytes) -> int:
        digits, semicolon, extension = line.partition(b";")
        if semicolon:
            digits = digits.rstrip(b" \t")  # RFC 9112 7.1.1: whitespace only before an extension
        if not digits or any(c not in b"0123456789abcdefABCDEF" for c in digits):
            raise http_error(400, f"invalid chunk size {digits[:20].decode('latin-1')!r}")
        if semicolon and not CHUNK_EXT_RE.fullmatch(b";" + extension):
            raise http_error(400, "invalid chunk extension")
        size = int(digits, 16)
        if len(self.body) + size > self.limit:
            raise http_error(413, f"the body is larger than {self.limit} bytes")
        return size
