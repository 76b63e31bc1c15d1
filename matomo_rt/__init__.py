"""matomo-rt: web-server logs into Matomo, every request exactly once."""

__version__ = "0.1.0"
