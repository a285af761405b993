"""Which eligible layers get a predictor: ``--layers`` / ``--exclude`` and the defaults.

A name pattern matches a Conv node name exactly or as a full regex. A pattern that
matches no Conv is an error (a typo must not silently optimize nothing).
"""
from __future__ import annotations

import re
from collections.abc import Sequence

from zapopt.errors import ZapoptError
from zapopt.graph import ConvActivation


def _matcher(pattern: str, flag: str, names: Sequence[str]) -> set[str]:
    """The conv names ``pattern`` selects: an exact name, else a full-match regex."""
    if pattern in names:
        return {pattern}
    try:
        regex = re.compile(pattern)
    except re.error as exc:
        raise ZapoptError(f"{flag} {pattern!r} is neither a Conv name nor a valid regular expression: {exc}") from None
    hits = {n for n in names if regex.fullmatch(n)}
    if not hits:
        shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
        raise ZapoptError(f"{flag} {pattern!r} matches no Conv layer; the model's convs are: {shown}")
    return hits


def select_layers(convs: Sequence[ConvActivation], layers: Sequence[str] = (), exclude: Sequence[str] = (),
                  include_first: bool = False) -> tuple[list[ConvActivation], list[tuple[str, str]]]:
    """(layers to optimize, [(conv name, why it is left alone)]) in graph order."""
    names = [c.conv for c in convs]
    named = set().union(*(_matcher(p, "--layers", names) for p in layers))
    excluded = set().union(*(_matcher(p, "--exclude", names) for p in exclude))
    selected: list[ConvActivation] = []
    skipped: list[tuple[str, str]] = []
    for conv in convs:
        if conv.conv in excluded:
            skipped.append((conv.conv, "excluded by --exclude"))
        elif layers and conv.conv not in named:
            skipped.append((conv.conv, "not selected by --layers"))
        elif not conv.eligible:
            skipped.append((conv.conv, conv.reason))
        elif conv.first_layer and not (include_first or conv.conv in named):
            skipped.append((conv.conv, "first conv of the network (its input is the image; "
                                       "name it in --layers to include it)"))
        else:
            selected.append(conv)
    if not selected:
        raise ZapoptError("no layer to optimize: " + ("; ".join(f"{n}: {r}" for n, r in skipped[:5])
                                                        or "the model has no Conv layer"))
    return selected, skipped


def named_subset(names: Sequence[str], layers: Sequence[str] = (), exclude: Sequence[str] = ()) -> list[str]:
    """``names`` restricted to --layers (when given) and without --exclude, in order."""
    named = set().union(*(_matcher(p, "--layers", names) for p in layers))
    excluded = set().union(*(_matcher(p, "--exclude", names) for p in exclude))
    return [n for n in names if n not in excluded and (not layers or n in named)]
