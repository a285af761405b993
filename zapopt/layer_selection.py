"""Which eligible layers get a predictor: ``--layers`` / ``--exclude`` and the defaults.

A name pattern matches a Conv node name exactly or as a full regex. A pattern that
matches no Conv is an error (a typo must not silently optimize nothing).
"""
from __future__ import annotations

import re
from collections.abc import Sequence

from zapopt.errors import ZapoptError
from zapopt.graph import ConvActivation


def _compile(pattern: str, flag: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise ZapoptError(f"{flag} {pattern!r} is not a valid regular expression: {exc}") from None


def _matches(pattern: str, regex: re.Pattern[str], name: str) -> bool:
    return name == pattern or regex.fullmatch(name) is not None


def select_layers(convs: Sequence[ConvActivation], layers: Sequence[str] = (), exclude: Sequence[str] = (),
                  include_first: bool = False) -> tuple[list[ConvActivation], list[tuple[str, str]]]:
    """(layers to optimize, [(conv name, why it is left alone)]) in graph order."""
    names = [c.conv for c in convs]
    for flag, patterns in (("--layers", layers), ("--exclude", exclude)):
        for pattern in patterns:
            regex = _compile(pattern, flag)
            hits = [n for n in names if _matches(pattern, regex, n)]
            if not hits:
                shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
                raise ZapoptError(f"{flag} {pattern!r} matches no Conv layer; the model's convs are: {shown}")
    selected: list[ConvActivation] = []
    skipped: list[tuple[str, str]] = []
    for conv in convs:
        named = any(_matches(p, _compile(p, "--layers"), conv.conv) for p in layers)
        excluded = any(_matches(p, _compile(p, "--exclude"), conv.conv) for p in exclude)
        if excluded:
            skipped.append((conv.conv, "excluded by --exclude"))
        elif layers and not named:
            skipped.append((conv.conv, "not selected by --layers"))
        elif not conv.eligible:
            skipped.append((conv.conv, conv.reason))
        elif conv.first_layer and not (include_first or named):
            skipped.append((conv.conv, "first conv of the network (its input is the image; "
                                       "name it in --layers to include it)"))
        else:
            selected.append(conv)
    if not selected:
        raise ZapoptError("no layer to optimize: " + ("; ".join(f"{n}: {r}" for n, r in skipped[:5])
                                                        or "the model has no Conv layer"))
    return selected, skipped
