"""Registers the review pages at ``/review`` on the app (:func:`register`)."""

from __future__ import annotations

from flask import Flask
from werkzeug.middleware.proxy_fix import ProxyFix

from . import auth, loops, outbox, queue

PREFIX = "/review"


def register(app: Flask, proxy_hops: int = 0) -> None:
    """The review blueprints; with ``proxy_hops``, the forwarded scheme and client address of that many
    trusted proxies are believed (so a cookie is Secure when the browser came over HTTPS)."""
    for blueprint in (auth.bp, loops.bp, outbox.bp, queue.bp):
        app.register_blueprint(blueprint, url_prefix=PREFIX)
    if proxy_hops:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=proxy_hops, x_proto=proxy_hops)  # type: ignore[method-assign]
