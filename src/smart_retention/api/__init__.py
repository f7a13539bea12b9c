"""The HTTP API (FastAPI): owner monitoring and readers' live metrics."""

from smart_retention.api.app import create_app

__all__ = ["create_app"]
