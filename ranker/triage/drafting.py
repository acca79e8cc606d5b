"""The draft email of a risk item: the chosen playbook action's subject and template rendered with the account,
the pattern and the talking points, or what a drafter endpoint writes from the same context.

Templates are Jinja2 in a sandboxed environment (a template in the settings cannot reach Python's internals),
with ``StrictUndefined`` off: a value the account lacks renders empty, as a mail merge does. The template's
draft is deterministic: the same item renders the same text.

A drafter (``[triage.drafter] url``), e.g. a self-hosted language model behind a small HTTP shim, is POSTed the
context as JSON and answers ``{"subject": "...", "body": "..."}``. On any failure (refused connection, timeout,
an error status, an answer without both texts) the template's draft is used, and the item says why.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from jinja2 import TemplateError
from jinja2.sandbox import SandboxedEnvironment

from .definitions import PlaybookAction, TriageSettings

MAX_ANSWER_BYTES = 1_000_000  # of a drafter's answer
MAX_TEXT = 100_000  # characters of a drafted subject or body


@dataclass
class Draft:
    subject: str
    body: str
    drafted_by: str  # "template" or "drafter"
    note: str | None = None  # why the template's draft was used although a drafter is set


@lru_cache(maxsize=1)
def _environment() -> SandboxedEnvironment:
    return SandboxedEnvironment(autoescape=False, keep_trailing_newline=False)


def render(source: str, context: dict[str, Any]) -> str:
    """A template rendered in the sandbox; a ValueError naming the problem when it cannot be."""
    try:
        return _environment().from_string(source).render(**context)
    except TemplateError as exc:
        raise ValueError(f"the template cannot be rendered: {exc}") from exc


def context_of(
    action: PlaybookAction, account: dict[str, Any], pattern: dict[str, Any], settings: TriageSettings
) -> dict[str, Any]:
    """What a template (and a drafter) sees: ``account`` (its values), ``pattern`` (name, description, figures,
    what matched), ``action`` (id and features) and ``talking_points`` (by product area)."""
    return {
        "account": account,
        "pattern": pattern,
        "action": {"id": action.id, "features": action.features},
        "talking_points": settings.talking_points,
    }


def template_draft(action: PlaybookAction, context: dict[str, Any]) -> Draft:
    return Draft(render(action.subject, context).strip(), render(action.template, context), "template")


def draft(action: PlaybookAction, context: dict[str, Any], settings: TriageSettings) -> Draft:
    """The item's draft: the drafter's when one is set and answers well, else the template's (with a note)."""
    try:
        fallback = template_draft(action, context)
    except ValueError as exc:
        fallback = Draft("", "", "template", str(exc))
    url = settings.drafter.url
    if not url:
        return fallback
    try:
        subject, body = ask(url, context, settings.drafter.timeout)
    except DrafterError as exc:
        note = f"the drafter failed ({exc}); the template's draft is used"
        fallback.note = note if fallback.note is None else f"{note}; {fallback.note}"
        return fallback
    return Draft(subject, body, "drafter")


class DrafterError(Exception):
    pass


def ask(url: str, context: dict[str, Any], timeout: float) -> tuple[str, str]:
    """POST the context to the drafter; its ``(subject, body)``. ``DrafterError`` saying what went wrong."""
    data = json.dumps(context, default=str).encode()
    request = urllib.request.Request(url, data, {"Content-Type": "application/json"}, method="POST")
    try:
        deadline = time.monotonic() + timeout  # for the whole answer: a drafter that drips its bytes is late too
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 (an http(s) URL setting)
            raw = bytearray()
            while len(raw) <= MAX_ANSWER_BYTES:
                if time.monotonic() > deadline:
                    raise TimeoutError
                chunk = response.read1(65536)  # what has arrived (each read also waits at most ``timeout``)
                if not chunk:
                    break
                raw += chunk
    except urllib.error.HTTPError as exc:
        raise DrafterError(f"HTTP {exc.code}") from None
    except TimeoutError:
        raise DrafterError(f"no answer within {timeout} s") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, TimeoutError):
            raise DrafterError(f"no answer within {timeout} s") from None
        raise DrafterError(str(reason) or type(reason).__name__) from None
    if len(raw) > MAX_ANSWER_BYTES:
        raise DrafterError(f"the answer is larger than {MAX_ANSWER_BYTES} bytes")
    try:
        answer = json.loads(raw)
    except ValueError:
        raise DrafterError("the answer is not JSON") from None
    if not isinstance(answer, dict):
        raise DrafterError("the answer is not a JSON object")
    subject, body = answer.get("subject"), answer.get("body")
    if not isinstance(subject, str) or not isinstance(body, str) or not subject.strip() or not body.strip():
        raise DrafterError('the answer has no "subject" and "body" texts')
    if len(subject) > MAX_TEXT or len(body) > MAX_TEXT:
        raise DrafterError(f"the subject or body is longer than {MAX_TEXT} characters")
    return subject.strip(), body
