"""Entity attributes: validation, replace and merge-patch with each value's update time, and the rows of a
CSV or JSON-lines import. Pure functions; storage is :mod:`ranker.store.signals`."""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterator
from typing import Any

from ..core.schemas import ID_RULE, check_features, is_id

MAX_ATTRIBUTE_BYTES = 65_536


def check_id(entity_id: Any, what: str = "an entity id") -> str:
    """A ValueError unless the id is a string that meets the one id rule (:data:`ranker.core.schemas.Id`)."""
    if type(entity_id) is not str:
        raise ValueError(f"{what} must be a string, not {type(entity_id).__name__}")
    if not is_id(entity_id):
        raise ValueError(f"{what}: {ID_RULE}")
    return entity_id


def check_attributes(attributes: Any, patch: bool = False) -> dict[str, Any]:
    """Attributes as Rank enriches a context with them: VW-readable features (names not starting with '_',
    no arrays of strings, ...), names without '.', at most 64 KiB of JSON. A patch may hold nulls (removals)."""
    if not isinstance(attributes, dict):
        raise ValueError("attributes must be a JSON object")
    if len(json.dumps(attributes)) > MAX_ATTRIBUTE_BYTES:
        raise ValueError(f"attributes take more than {MAX_ATTRIBUTE_BYTES} bytes of JSON")
    _check_names(attributes, "attributes", patch)
    check_features(attributes, "attributes")
    return attributes


def _check_names(obj: dict[str, Any], where: str, patch: bool) -> None:
    for key, value in obj.items():
        if "." in key:
            raise ValueError(f"{where}: the name {key!r} holds '.', which paths use between names; nest objects")
        if value is None and not patch:
            raise ValueError(f"{where}.{key}: null is only for removing a value in PATCH")
        if isinstance(value, dict):
            _check_names(value, f"{where}.{key}", patch)


def leaves(obj: dict[str, Any], prefix: str = "") -> Iterator[str]:
    """Dotted paths of the values that are not objects (arrays and empty objects are values)."""
    for key, value in obj.items():
        path = prefix + key
        if isinstance(value, dict) and value:
            yield from leaves(value, path + ".")
        else:
            yield path


def replace(new: dict[str, Any], at: str):
    """The change of a PUT: these attributes, every value updated ``at``."""

    def change(attributes: dict[str, Any], times: dict[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
        return new, dict.fromkeys(leaves(new), at)

    return change


def merge_patch(patch: dict[str, Any], at: str):
    """The change of a PATCH (JSON merge patch, RFC 7396: objects merge, null removes); the values it sends
    are updated ``at``, the others keep their times."""

    def change(attributes: dict[str, Any], times: dict[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
        merged = _merge(attributes, patch)
        kept = set(leaves(merged))
        sent = set(leaves({k: v for k, v in _without_nulls(patch).items()}))
        new_times = {path: t for path, t in times.items() if path in kept and path not in sent}
        new_times.update({path: at for path in sent if path in kept})
        return merged, new_times

    return change


def _merge(target: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    out = dict(target)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict):
            base = out.get(key)
            out[key] = _merge(base if isinstance(base, dict) else {}, value)
        else:
            out[key] = value
    return out


def _without_nulls(obj: dict[str, Any]) -> dict[str, Any]:
    return {k: _without_nulls(v) if isinstance(v, dict) else v for k, v in obj.items() if v is not None}


def nest(flat: dict[str, Any]) -> dict[str, Any]:
    """``{"contract.renewalDate": x}`` as ``{"contract": {"renewalDate": x}}``."""
    out: dict[str, Any] = {}
    for path, value in flat.items():
        parts = path.split(".")
        node = out
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ValueError(f"column {path!r} nests under {part!r}, which is a value of its own")
            node = child
        if isinstance(node.get(parts[-1]), dict):
            raise ValueError(f"column {path!r} is also the object of another column")
        node[parts[-1]] = value
    return out


def _cell(text: str) -> Any:
    """A CSV cell: a JSON number or true/false is taken as that, anything else as text; empty is absent."""
    if text in ("true", "false"):
        return text == "true"
    if re.fullmatch(r"-?(0|[1-9]\d{0,14})(\.\d+)?([eE][-+]?\d+)?", text):
        number = float(text) if any(c in text for c in ".eE") else int(text)
        return number if abs(number) <= 1e15 else text
    return text


def import_rows(text: str, kind: str) -> Iterator[tuple[int, str | None, dict[str, Any] | None, str | None]]:
    """``(line number, id, attributes, error)`` for each row of a CSV file (a header row with ``id`` and one
    column per attribute, dotted names nest) or JSON lines (``{"id": ..., "attributes": {...}}``)."""
    if kind == "csv":
        reader = csv.DictReader(io.StringIO(text, newline=""))
        if reader.fieldnames is None or "id" not in reader.fieldnames:
            raise ValueError("the CSV file needs a header row with an 'id' column")
        if len(set(reader.fieldnames)) != len(reader.fieldnames):
            raise ValueError("the CSV header names a column twice")
        for row in reader:
            line = reader.line_num
            if None in row or any(value is None for value in row.values()):
                yield line, None, None, "the row does not have as many cells as the header"
                continue
            try:
                entity_id = check_id(row.pop("id"))
                attributes = nest({k: _cell(v) for k, v in row.items() if v != ""})
                yield line, entity_id, check_attributes(attributes), None
            except ValueError as exc:
                yield line, None, None, str(exc)
        return
    for line, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
            if not isinstance(obj, dict) or set(obj) - {"id", "attributes"} or "attributes" not in obj:
                raise ValueError('a line is {"id": ..., "attributes": {...}}')
            yield line, check_id(obj.get("id")), check_attributes(obj["attributes"]), None
        except (ValueError, RecursionError) as exc:
            yield line, None, None, str(exc)
