"""The ``localsync`` command: demo, coordinator, hub, serve and inspect."""

from localsync.cli.main import UsageError, main

__all__ = ["UsageError", "main"]
