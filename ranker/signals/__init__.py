"""Signals: OpenTelemetry events and entity attributes, per-entity features, and Rank-time enrichment.

``otlp`` decodes OTLP/HTTP logs, ``ingest`` turns records into events, ``entities`` checks and merges
attributes, ``definitions`` holds the feature settings, ``features`` computes values from time buckets,
``store`` is the one place with their SQL, ``enrich`` adds values to a Rank's context, ``service`` ties them
together as library calls and ``api`` is the HTTP blueprint.
"""
