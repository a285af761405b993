"""OptimizeConfig: validation, the selection modes, the default threshold's meaning, and
the CLI's defaults and ranges coming from the config."""
from __future__ import annotations

import math

import click
import numpy as np
import pytest

from zapopt.commands.optimize import optimize_command
from zapopt.errors import ZapoptError
from zapopt.optimize import (
    DEFAULT_NONZERO_CHANCE,
    AccuracyBudget,
    ErrorBudget,
    ExactOnly,
    OptimizeConfig,
    UniformThreshold,
    default_threshold,
    selection_from_flags,
)
from zapopt.data_checks import MIN_CALIBRATION_IMAGES
from zapopt.optimize_config import FORMATS, MAGNITUDE_WEIGHT_RANGE
from zapopt.selection_modes import DROP_MARGIN_RANGE


def test_default_threshold_is_the_weighted_mse_optimum_of_a_10_percent_position() -> None:
    assert default_threshold(0.0) == pytest.approx(0.1)
    assert default_threshold(6.0) == pytest.approx(0.4375)
    # argmin_q E[w (q - t)^2] with t ~ Bernoulli(p), w = 1 + mw on positives, 1 on zeros
    p = DEFAULT_NONZERO_CHANCE
    for mw in (0.0, 2.0, 6.0, 20.0):
        q = np.linspace(0, 1, 100001)
        loss = p * (1 + mw) * (q - 1) ** 2 + (1 - p) * q**2
        assert q[np.argmin(loss)] == pytest.approx(default_threshold(mw), abs=1e-4)
    assert OptimizeConfig().uniform_threshold == pytest.approx(default_threshold(OptimizeConfig().magnitude_weight))
    assert OptimizeConfig(magnitude_weight=0.0).uniform_threshold == pytest.approx(0.1)
    assert OptimizeConfig(UniformThreshold(0.2)).uniform_threshold == 0.2


@pytest.mark.parametrize(
    "kwargs, error",
    [
        (dict(predictor_input="relu"), ZapoptError),
        (dict(magnitude_weight=-1.0), ZapoptError),
        (dict(magnitude_weight=math.inf), ZapoptError),
        (dict(magnitude_weight="6"), TypeError),
        (dict(selection=AccuracyBudget(1.0), pattern="diag3x3-33", latency_check="yes"), TypeError),
        (dict(selection="max_drop"), TypeError),
        (dict(selection=ExactOnly(), pattern="diag3x3-33"), ZapoptError),
        (dict(selection=ExactOnly(), output_format="zap"), ZapoptError),
        (dict(calib_images=4), ZapoptError),
    ],
)
def test_bad_options_are_refused_up_front(kwargs: dict, error: type[Exception]) -> None:
    with pytest.raises(error):
        OptimizeConfig(**kwargs)


@pytest.mark.parametrize(
    "make, error",
    [
        (lambda: AccuracyBudget(1.0, sensitivity="yes"), TypeError),
        (lambda: AccuracyBudget(1.0, margin=-0.5), ZapoptError),
        (lambda: AccuracyBudget(101.0), ZapoptError),
        (lambda: AccuracyBudget(math.nan), ZapoptError),
        (lambda: ErrorBudget(-0.1), ZapoptError),
        (lambda: ErrorBudget(math.inf), ZapoptError),
        (lambda: UniformThreshold("0.1"), TypeError),
    ],
)
def test_each_selection_mode_checks_its_own_numbers(make, error: type[Exception]) -> None:
    with pytest.raises(error):
        make()


@pytest.mark.parametrize(
    "flags, match",
    [
        (dict(threshold=0.1, max_drop=1.0), "only one of"),
        (dict(max_error=0.1, max_drop=1.0), "only one of"),
        (dict(drop_margin=1.0), "only applies to the --max-drop"),  # without --max-drop it would do nothing
        (dict(drop_margin=-0.5), "only applies to the --max-drop"),
        (dict(exact=True, threshold=0.3), "takes no --threshold"),
    ],
)
def test_meaningless_flag_combinations_are_refused(flags: dict, match: str) -> None:
    with pytest.raises(ZapoptError, match=match):
        selection_from_flags(**flags)


def test_flags_build_one_selection_mode() -> None:
    assert selection_from_flags() == UniformThreshold(None)
    assert selection_from_flags(threshold=0.3) == UniformThreshold(0.3)
    assert selection_from_flags(max_error=0.05) == ErrorBudget(0.05)
    assert selection_from_flags(max_drop=1.0, drop_margin=2.0, sensitivity=False) == AccuracyBudget(1.0, 2.0, False)
    assert selection_from_flags(exact=True) == ExactOnly()
    assert OptimizeConfig(ExactOnly()).exact and not OptimizeConfig().exact
    assert OptimizeConfig(AccuracyBudget(0.5)).selection_text == "max accuracy drop 0.5%"
    assert OptimizeConfig(ErrorBudget(0.05)).selection_text == "error budget 0.05"


#: CLI option -> where its default lives: an OptimizeConfig field or an AccuracyBudget one.
CONFIG_OPTIONS = {
    "calib_images": "calib_images", "pattern": "pattern", "predictor_input": "predictor_input",
    "magnitude_weight": "magnitude_weight", "epochs": "epochs", "max_epoch_scale": "max_epoch_scale",
    "seed": "seed", "output_format": "output_format", "latency_check": "latency_check",
    "latency_batch": "latency_batch", "latency_threads": "latency_threads", "eval_images": "eval_images",
}
ACCURACY_OPTIONS = {"sensitivity_weighting": "sensitivity", "drop_margin": "margin"}


def test_cli_defaults_and_ranges_are_the_configs() -> None:
    """Every option's parsed default is the config's (and its range the config's constant),
    so a changed default in OptimizeConfig changes the command line too."""
    parsed = optimize_command.make_context("optimize", ["m.onnx", "-o", "out.onnx", "--calib", "calib.npz"]).params
    config, budget = OptimizeConfig(), AccuracyBudget(1.0)
    for option, field_name in CONFIG_OPTIONS.items():
        assert parsed[option] == getattr(config, field_name), option
    for option, field_name in ACCURACY_OPTIONS.items():
        assert parsed[option] == getattr(budget, field_name), option
    flags = {name: parsed[name] for name in ("threshold", "max_error", "max_drop", "exact")}
    assert selection_from_flags(**flags) == config.selection  # no mode given: the config's default mode
    params = {p.name: p for p in optimize_command.params}
    ranges = {"magnitude_weight": MAGNITUDE_WEIGHT_RANGE, "drop_margin": DROP_MARGIN_RANGE}
    for option, (low, high) in ranges.items():
        kind = params[option].type
        assert isinstance(kind, click.FloatRange) and (kind.min, kind.max) == (low, high), option
    assert set(params["output_format"].type.choices) == set(FORMATS)
    assert params["calib_images"].type.min == MIN_CALIBRATION_IMAGES
