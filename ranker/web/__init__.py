"""The review pages at ``/review``: sign-in, the triage queue and items, every loop's view, the outbox.

Server-rendered (Flask + Jinja2); templates and the stylesheet ship in this package. :mod:`ranker.web.pages`
registers the blueprints; :mod:`ranker.web.definitions` (the ``[review]`` settings) imports no web code, so
the settings can be read without Flask.
"""
