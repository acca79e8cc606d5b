"""The HTTP server: Personalizer's API blueprints, health, metrics, the OpenAPI document, and gunicorn's
worker and configuration. The application factory that mounts them is :mod:`ranker.app`.
"""
