"""Progress for long work: a live bar on a terminal, plain periodic lines in a log file.

A tqdm bar redraws one line with carriage returns, which is unreadable (or, when tqdm
cannot tell the width, silent) once stderr is redirected to a file. When stderr is not a
terminal the same calls print a line at the start, one every ``interval`` seconds, and
one at the end, so a log shows that the work is moving and how far it got.
"""
from __future__ import annotations

import sys
import time
from typing import Any, TextIO

#: Seconds between two progress lines when stderr is not a terminal.
LOG_INTERVAL_SECONDS = 30.0


class ProgressLines:
    """The tqdm calls zapopt uses (``update``, ``close``), written as periodic log lines."""

    def __init__(self, total: int | None, desc: str, unit: str, *, interval: float = LOG_INTERVAL_SECONDS,
                 stream: TextIO | None = None) -> None:
        self.total, self.desc, self.unit, self.interval = total, desc, unit, interval
        self.stream = stream
        self.count = 0
        self.started = self.last = time.monotonic()
        self.closed = False
        self._write(f"{desc}: started" + ("" if total is None else f" ({total:,} {unit})"))

    def _write(self, text: str) -> None:
        print(text, file=self.stream or sys.stderr, flush=True)

    def _position(self) -> str:
        done = f"{self.count:,}" + ("" if not self.total else f"/{self.total:,} ({100 * self.count / self.total:.0f}%)")
        return f"{self.desc}: {done} {self.unit}, {time.monotonic() - self.started:.0f} s"

    def update(self, n: int = 1) -> None:
        self.count += n
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.last = now
            self._write(self._position())

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._write(self._position() + " (done)")

    def __enter__(self) -> ProgressLines:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def progress_bar(total: int | None, desc: str, unit: str = "img", enabled: bool | None = None,
                 leave: bool = True) -> Any:
    """A tqdm bar on a terminal, :class:`ProgressLines` elsewhere; nothing with ``enabled=False``.

    ``enabled=None`` (the default everywhere) decides by whether stderr is a terminal;
    ``True`` forces the bar, ``False`` (``--quiet``) silences both.
    """
    from tqdm import tqdm

    if enabled is None and not sys.stderr.isatty():
        return ProgressLines(total, desc, unit)
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, disable=enabled is False, leave=leave)
