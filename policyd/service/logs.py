"""Diagnostic logging on stderr, as text or one JSON object per line.

The configuration is a `logging.config.dictConfig` dict handed to uvicorn, which applies it in the
serving process and in every worker it spawns, so policyd's and uvicorn's own lines share one
format. Decision lines are not diagnostics: they go through `policyd.service.decisionlog`.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import orjson

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def utc_timestamp(created: float) -> str:
    """ISO 8601 in UTC with microseconds, as the decision log writes its times."""
    return datetime.fromtimestamp(created, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class TextFormatter(logging.Formatter):
    """TEXT_FORMAT with the time in ISO 8601 UTC (`2025-01-01T12:00:00.123456Z`), not local time."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return utc_timestamp(record.created)


class JsonFormatter(logging.Formatter):
    """`{"time", "level", "logger", "message"}` (plus `exception` when there is one) per line."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": utc_timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(doc, option=orjson.OPT_UTC_Z).decode()


def logging_config(level: str, fmt: str) -> dict[str, Any]:
    """dictConfig for policyd's and uvicorn's loggers; uvicorn's access log stays off."""
    formatter: dict[str, Any] = {"()": f"{__name__}.{'JsonFormatter' if fmt == 'json' else 'TextFormatter'}"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": formatter},
        "handlers": {
            "stderr": {"class": "logging.StreamHandler", "formatter": "default", "stream": "ext://sys.stderr"}
        },
        "root": {"handlers": ["stderr"], "level": level.upper()},
        "loggers": {
            # uvicorn's default config gives these handlers of their own; here they propagate to root.
            "uvicorn": {"handlers": [], "level": level.upper(), "propagate": True},
            "uvicorn.error": {"handlers": [], "propagate": True},
            "uvicorn.access": {"handlers": [], "propagate": False},
        },
    }
