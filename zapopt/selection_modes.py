"""How ``optimize`` chooses each layer's threshold: one small type per mode.

The modes exclude each other, so ``OptimizeConfig`` holds exactly one of them and an
invalid combination (two modes, a margin without an accuracy target) cannot be built.
Each mode checks its own numbers; :func:`selection_from_flags` turns the command line's
flat flags into one, with the messages the CLI has always printed.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import ClassVar, Union

from zapopt.errors import ZapoptError

#: ``--drop-margin``'s range, in standard errors (the CLI's option uses the same bounds).
DROP_MARGIN_RANGE = (0, 100)


def check_number(value: object, name: str) -> float:
    """``value`` as a float: TypeError for a non-number (a programming mistake), a
    ZapoptError for NaN (a user's)."""
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        raise TypeError(f"{name} must be a number, got {value!r}")
    if math.isnan(value):
        raise ZapoptError(f"{name} must be a number, got NaN")
    return float(value)


def check_flag(value: object, name: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value


@dataclass(frozen=True)
class UniformThreshold:
    """One threshold for every layer (``--threshold``); None: the default score, which
    depends on the predictors' ``magnitude_weight`` (see ``default_threshold``)."""

    tau: float | None = None
    #: Whether thresholds differ per layer (several candidate patterns need that).
    per_layer: ClassVar[bool] = False

    def __post_init__(self) -> None:
        if self.tau is not None:
            check_number(self.tau, "threshold")


@dataclass(frozen=True)
class ErrorBudget:
    """Per-layer thresholds that save the most while the summed activation mass lost stays
    within ``max_error`` (``--max-error``)."""

    max_error: float
    per_layer: ClassVar[bool] = True

    def __post_init__(self) -> None:
        check_number(self.max_error, "max_error")
        if not 0 <= self.max_error < math.inf:
            raise ZapoptError(f"--max-error must be a finite number >= 0, got {self.max_error}")


@dataclass(frozen=True)
class AccuracyBudget:
    """Per-layer thresholds under a measured accuracy drop of ``max_drop`` percent
    (``--max-drop``): ``margin`` standard errors are added to each measured drop, and
    ``sensitivity`` budgets each layer's measured effect on the output."""

    max_drop: float
    margin: float = 0.0
    sensitivity: bool = True
    per_layer: ClassVar[bool] = True

    def __post_init__(self) -> None:
        check_number(self.max_drop, "max_drop")
        check_number(self.margin, "drop_margin")
        check_flag(self.sensitivity, "sensitivity_weighting")
        if not 0 <= self.max_drop <= 100:
            raise ZapoptError(f"--max-drop is in percent and must be in [0, 100], got {self.max_drop}")
        low, high = DROP_MARGIN_RANGE
        if not low <= self.margin <= high:
            raise ZapoptError(f"--drop-margin must be in [{low:g}, {high:g}] (standard errors), got {self.margin}")


@dataclass(frozen=True)
class ExactOnly:
    """No predictors (``--exact``): every eligible conv becomes a ZeroSkipConv, outputs unchanged."""

    per_layer: ClassVar[bool] = False


SelectionMode = Union[UniformThreshold, ErrorBudget, AccuracyBudget, ExactOnly]
SELECTION_MODES = (UniformThreshold, ErrorBudget, AccuracyBudget, ExactOnly)


def selection_text(mode: SelectionMode, uniform_tau: float) -> str:
    """The report's one-line description of ``mode`` (``uniform_tau``: the resolved threshold)."""
    if isinstance(mode, ExactOnly):
        return "exact (no predictors)"
    if isinstance(mode, AccuracyBudget):
        return f"max accuracy drop {mode.max_drop}%"
    if isinstance(mode, ErrorBudget):
        return f"error budget {mode.max_error}"
    return f"uniform {uniform_tau}"


def selection_from_flags(*, threshold: float | None = None, max_error: float | None = None,
                         max_drop: float | None = None, drop_margin: float = 0.0, sensitivity: bool = True,
                         exact: bool = False) -> SelectionMode:
    """The mode the command line's flags ask for; refuses combinations that mean nothing."""
    check_flag(exact, "exact")
    check_flag(sensitivity, "sensitivity_weighting")
    given = [flag for flag, value in (("--threshold", threshold), ("--max-error", max_error),
                                      ("--max-drop", max_drop)) if value is not None]
    if exact:
        if given:
            raise ZapoptError(f"--exact trains no predictors, so it takes no {', '.join(given)}; "
                              "drop it, or leave out --exact for ZAP")
        return ExactOnly()
    if len(given) > 1:
        raise ZapoptError("give only one of --threshold, --max-error and --max-drop")
    if max_drop is not None:
        return AccuracyBudget(max_drop, drop_margin, sensitivity)
    check_number(drop_margin, "drop_margin")
    if drop_margin != 0:
        raise ZapoptError("--drop-margin only applies to the --max-drop search; add --max-drop X --eval DATA")
    if max_error is not None:
        return ErrorBudget(max_error)
    return UniformThreshold(threshold)
