"""Capture the runtime's structured log lines in a test without touching the logger's own set-up."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable, Iterator

from mosaic_edge.edge_runtime.logs import LOGGER, JsonFormatter


class _JsonLines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.setFormatter(JsonFormatter())
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@contextlib.contextmanager
def runtime_log() -> Iterator[Callable[[], list[dict]]]:
    """Yields a function returning the JSON lines logged so far, parsed (as the daemon prints them)."""
    handler, logger = _JsonLines(), logging.getLogger(LOGGER)
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield lambda: [json.loads(line) for line in handler.lines]
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
