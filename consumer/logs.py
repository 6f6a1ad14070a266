"""structlog set-up: JSON lines in production, readable output on a terminal.

Per-record context (request id, topic, partition, offset) is bound with contextvars, so every line a
task writes while handling a record carries it without passing a logger around.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog


def configure_logging(*, format: str = "auto", level: str = "INFO") -> None:
    """Configure structlog and route stdlib logging (aiokafka, botocore) through the same renderer."""
    use_json = format == "json" or (format == "auto" and not sys.stderr.isatty())
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info if use_json else structlog.dev.set_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    # aiokafka logs every transient broker hiccup at ERROR; they surface through our own retries instead.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL if level != "DEBUG" else logging.DEBUG)


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
