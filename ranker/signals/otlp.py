"""OTLP/HTTP logs, as the OpenTelemetry specification defines them: decoding and answers.

Requests come as ``application/x-protobuf`` or ``application/json`` (protobuf's JSON mapping with OTLP's
exceptions: trace and span ids in hex, not base64), optionally gzip-compressed. The answer is an
``ExportLogsServiceResponse`` in the request's encoding, with ``partialSuccess`` when records were refused;
a malformed request gets a ``google.rpc.Status``. No HTTP framework here: the blueprint is a thin shell.
"""

from __future__ import annotations

import base64
import json
import re
import zlib
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
_HEX = {"traceId": re.compile(r"^[0-9a-fA-F]{32}$"), "spanId": re.compile(r"^[0-9a-fA-F]{16}$")}

# google.rpc.Code of a Status body, by HTTP status (google/rpc/code.proto)
INVALID_ARGUMENT, PERMISSION_DENIED, UNAVAILABLE, UNAUTHENTICATED = 3, 7, 14, 16
CODES = {401: UNAUTHENTICATED, 403: PERMISSION_DENIED, 503: UNAVAILABLE}


class OtlpError(Exception):
    """A request refused as a whole: HTTP ``status`` and a ``google.rpc.Status`` message."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def decompress(body: bytes, encoding: str, limit: int) -> bytes:
    """The body after ``Content-Encoding`` (none or gzip); 413 when it would inflate beyond ``limit`` bytes,
    found without ever holding more than ``limit + 1`` bytes of it."""
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        if len(body) > limit:
            raise OtlpError(413, f"the body is larger than {limit} bytes")
        return body
    if encoding != "gzip":
        raise OtlpError(415, f"Content-Encoding {encoding!r} is not supported: send gzip or nothing")
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        data = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise OtlpError(400, f"the body is not valid gzip: {exc}") from None
    if len(data) > limit or inflater.unconsumed_tail:
        raise OtlpError(413, f"the body is larger than {limit} bytes once decompressed")
    if not inflater.eof:
        raise OtlpError(400, "the gzip stream is cut short")
    if inflater.unused_data:
        raise OtlpError(400, "bytes follow the gzip stream")
    return data


def parse(data: bytes, content_type: str) -> ExportLogsServiceRequest:
    """An ``ExportLogsServiceRequest`` from a decompressed body of the given content type."""
    if content_type == PROTOBUF:
        try:
            return ExportLogsServiceRequest.FromString(data)
        except DecodeError as exc:
            raise OtlpError(400, f"the body is not an ExportLogsServiceRequest in protobuf: {exc}") from None
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise OtlpError(400, f"the body is not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise OtlpError(400, "the body must be a JSON object (ExportLogsServiceRequest)")
    _hex_ids_to_base64(obj)
    try:
        return json_format.ParseDict(obj, ExportLogsServiceRequest(), ignore_unknown_fields=True)
    except (json_format.ParseError, ValueError, TypeError, RecursionError) as exc:
        raise OtlpError(400, f"the body is not an ExportLogsServiceRequest in OTLP/JSON: {exc}") from None


def _hex_ids_to_base64(obj: dict[str, Any]) -> None:
    """OTLP/JSON writes trace and span ids in hex where protobuf's JSON mapping expects base64: convert them
    in place (a base64 or malformed id is a 400 naming it)."""
    for r, resource_logs in enumerate(_list(obj, "resourceLogs")):
        for s, scope_logs in enumerate(_list(resource_logs, "scopeLogs")):
            for i, record in enumerate(_list(scope_logs, "logRecords")):
                if not isinstance(record, dict):
                    continue
                for name, pattern in _HEX.items():
                    value = record.get(name)
                    if value is None or value == "":
                        continue
                    if not isinstance(value, str) or not pattern.match(value):
                        where = f"resourceLogs[{r}].scopeLogs[{s}].logRecords[{i}].{name}"
                        digits = 32 if name == "traceId" else 16
                        raise OtlpError(400, f"{where} must be {digits} hex digits (OTLP/JSON ids are hex, not base64)")
                    record[name] = base64.b64encode(bytes.fromhex(value)).decode()


def _list(obj: Any, key: str) -> list:
    value = obj.get(key) if isinstance(obj, dict) else None
    return value if isinstance(value, list) else []


def value_of(any_value) -> Any:
    """An ``AnyValue`` as a JSON value (bytes as base64 text; a non-finite double as None)."""
    kind = any_value.WhichOneof("value")
    if kind == "string_value":
        return any_value.string_value
    if kind == "int_value":
        return any_value.int_value
    if kind == "double_value":
        value = any_value.double_value
        return value if value - value == 0 else None
    if kind == "bool_value":
        return any_value.bool_value
    if kind == "array_value":
        return [value_of(v) for v in any_value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: value_of(kv.value) for kv in any_value.kvlist_value.values}
    if kind == "bytes_value":
        return base64.b64encode(any_value.bytes_value).decode()
    return None


def attributes_of(key_values) -> dict[str, Any]:
    """Attributes as a dict (the strings and integers most attributes hold, without a call each)."""
    out = {}
    for kv in key_values:
        value = kv.value
        kind = value.WhichOneof("value")
        if kind == "string_value":
            out[kv.key] = value.string_value
        elif kind == "int_value":
            out[kv.key] = value.int_value
        else:
            out[kv.key] = value_of(value)
    return out


def response(content_type: str, rejected: int = 0, message: str = "") -> bytes:
    """An ``ExportLogsServiceResponse``: ``partialSuccess`` only when records were refused (the spec leaves it
    unset on full success)."""
    if content_type == JSON:
        if not rejected and not message:
            return b"{}"
        # int64 as a string, per protobuf's JSON mapping
        body = {"partialSuccess": {"rejectedLogRecords": str(rejected), "errorMessage": message}}
        return json.dumps(body).encode()
    answer = ExportLogsServiceResponse()
    if rejected or message:
        answer.partial_success.rejected_log_records = rejected
        answer.partial_success.error_message = message
    return answer.SerializeToString()


def status(content_type: str, http_status: int, message: str) -> bytes:
    """A ``google.rpc.Status`` (code, message) in the request's encoding."""
    code = CODES.get(http_status, INVALID_ARGUMENT)
    if content_type == JSON:
        return json.dumps({"code": code, "message": message}).encode()
    text = message.encode()
    # field 1 (code, varint) and field 2 (message, length-delimited): google.rpc.Status needs no more
    return b"\x08" + _varint(code) + b"\x12" + _varint(len(text)) + text


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)
