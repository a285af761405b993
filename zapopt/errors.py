"""User-facing errors.

Every mistake a user can make (bad path, wrong shape, unknown option) is raised as a
``ZapoptError`` with a message that says what was wrong and what to do instead. The CLI
prints such errors as one line and exits non-zero, never with a traceback.
"""
from __future__ import annotations


class ZapoptError(ValueError):
    """A problem with the user's input, explained in one actionable sentence."""


def first_line(exc: BaseException) -> str:
    """The first line of a third-party exception's message (onnx and onnxruntime add pages)."""
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0].strip()
