"""Warnings the user must see: logged at once (stderr) and kept for the JSON report.

Long commands learn things worth telling before they finish (too little data, a layer
losing much of its activation mass). They go to the ``zapopt`` logger the moment they are
known, which the CLI prints as ``warning: ...`` lines; :func:`collect_warnings` keeps them
for the report.
"""
from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

LOGGER = logging.getLogger("zapopt")


def warn(message: str) -> None:
    """Tell the user now (``zapopt`` logger, level WARNING); :func:`collect_warnings` keeps it."""
    LOGGER.warning(message)


class _Collector(logging.Handler):
    def __init__(self, messages: list[str]) -> None:
        super().__init__(logging.WARNING)
        self.messages = messages

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message not in self.messages:
            self.messages.append(message)


@contextmanager
def collect_warnings() -> Iterator[list[str]]:
    """Every warning logged inside the block, in order (they are still shown as they come)."""
    messages: list[str] = []
    handler = _Collector(messages)
    LOGGER.addHandler(handler)
    try:
        yield messages
    finally:
        LOGGER.removeHandler(handler)
