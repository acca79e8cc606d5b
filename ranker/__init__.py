"""ranker: a self-hosted Signal-to-Action ranking service speaking Personalizer's REST API."""

__version__ = "0.1.0"
