"""The SDK's version, sent in ``User-Agent`` (pyproject.toml reads it from here)."""

__version__ = "0.1.0"
