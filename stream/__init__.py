"""riskstream: an event-driven streaming risk scorer (the online worker and its CLI)."""

__version__ = "0.1.0"
