"""Worker processes that each get a synchronized store (built on ``multiprocess``)."""
