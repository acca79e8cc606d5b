"""The application factory: ``gunicorn 'ranker.app:create_app()'``."""

from __future__ import annotations

import json
import logging
from typing import Any

from flask import Flask, Response
from werkzeug.exceptions import HTTPException

from .core.errors import ApiError, StoreUnavailable
from .core.settings import Settings, load_settings
from .server import admin, api, evaluations, events, meta, metrics
from .serving.service import Service
from .signals import api as signals_api
from .triage import api as triage_api
from .web import pages as review_pages

log = logging.getLogger("ranker")

API_PREFIXES = {
    "api_v1_0": "/personalizer/v1.0",
    "api_v1_1_preview_3": "/personalizer/v1.1-preview.3",
    "api": "/personalizer",
}


def create_app(settings: Settings | dict[str, Any] | None = None, create_database: bool = True) -> Flask:
    """Build the app from ``settings`` (a Settings, or overrides on top of file and environment).

    ``ranker serve`` runs ``create_app(create_database=False)`` in its workers: it created the decision log
    at start-up, and a worker started later must not create an empty one where the log was deleted.
    """
    if not isinstance(settings, Settings):
        settings = load_settings(overrides=settings)
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    service = app.extensions["ranker"] = Service(settings, create_database)
    metrics.Metrics(service).install(app)  # first: its hooks run first before and last after the others
    app.url_map.converters["id"] = api.IdConverter
    app.url_map.converters["event_id"] = api.EventIdConverter
    for name, prefix in API_PREFIXES.items():
        app.register_blueprint(api.bp, url_prefix=prefix, name=name)
        app.register_blueprint(admin.bp, url_prefix=prefix, name=f"admin_{name}")
        app.register_blueprint(evaluations.bp, url_prefix=prefix, name=f"evaluations_{name}")
        app.register_blueprint(events.bp, url_prefix=prefix, name=f"events_{name}")
    app.register_blueprint(meta.bp)
    app.register_blueprint(signals_api.bp)  # OTLP's /v1/logs and /entities, at the root
    review_pages.register(app, settings.review.proxy_hops)  # the review pages (HTML) at /review
    app.register_blueprint(triage_api.bp)  # /triage/items, /triage/report, /triage/patterns, at the root
    if settings.null_endpoint:
        app.add_url_rule("/null", "null", meta.null, methods=["POST"])

    @app.errorhandler(ApiError)
    def api_error(exc: ApiError) -> Response:
        return error_response(exc)

    @app.errorhandler(StoreUnavailable)
    def store_unavailable(exc: StoreUnavailable) -> Response:
        log.error("decision log unavailable: %s", exc)
        return error_response(ApiError(503, "StoreUnavailable", str(exc)))

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        code = {413: "PayloadSizeExceeded", 404: "ResourceNotFound"}.get(exc.code or 500, exc.name.replace(" ", ""))
        response = error_response(ApiError(exc.code or 500, code, exc.description or exc.name))
        for name, value in exc.get_headers():  # e.g. Allow on a 405
            if name.lower() != "content-type":
                response.headers[name] = value
        return response

    @app.errorhandler(Exception)
    def internal_error(exc: Exception) -> Response:
        log.exception("unexpected error")
        return error_response(ApiError(500, "InternalServerError", "unexpected error; see the server log"))

    return app


def error_response(exc: ApiError) -> Response:
    response = Response(json.dumps(exc.body()), status=exc.status, mimetype="application/json")
    response.headers["x-ms-error-code"] = exc.code
    return response
