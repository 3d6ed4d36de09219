"""Structured logs: one JSON object per line on stderr (journald and log shippers parse them as they are).

Use ``log.info("tile done", extra={"fields": {"tile": tid, "ms": 12.3}})``; the fields are merged into the
line.
"""

from __future__ import annotations

import json
import logging
import sys
import time

LOGGER = "mosaic_edge.edge_runtime"


class JsonFormatter(logging.Formatter):
    """Format a record as ``{"ts", "level", "logger", "msg", ...fields}``."""

    def format(self, record: logging.LogRecord) -> str:
        line = {"ts": round(record.created, 3), "level": record.levelname.lower(), "logger": record.name,
                "msg": record.getMessage()}
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            line.update(fields)
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info).splitlines()[-1]
        return json.dumps(line, default=str)


def setup_logging(level: str = "info", stream=None) -> logging.Logger:
    """Send the runtime's logs as JSON lines to ``stream`` (stderr); idempotent."""
    logger = logging.getLogger(LOGGER)
    logger.setLevel(level.upper())
    logger.propagate = False
    for h in list(logger.handlers):
        if getattr(h, "_mosaic_json", False):
            logger.removeHandler(h)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler._mosaic_json = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logging.Formatter.converter = time.gmtime
    return logger


def get_logger() -> logging.Logger:
    return logging.getLogger(LOGGER)
