"""OptimizeConfig: validation and the default threshold's meaning."""
from __future__ import annotations

import math

import numpy as np
import pytest

from zapopt.errors import ZapoptError
from zapopt.optimize import DEFAULT_NONZERO_CHANCE, OptimizeConfig, default_threshold


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
    assert OptimizeConfig(threshold=0.2).uniform_threshold == 0.2


@pytest.mark.parametrize(
    "kwargs, error",
    [
        (dict(predictor_input="relu"), ZapoptError),
        (dict(magnitude_weight=-1.0), ZapoptError),
        (dict(magnitude_weight=math.inf), ZapoptError),
        (dict(magnitude_weight="6"), TypeError),
        (dict(sensitivity_weighting="yes"), TypeError),
        (dict(drop_margin=-0.5), ZapoptError),
        (dict(drop_margin=1.0), ZapoptError),  # without --max-drop it would do nothing
        (dict(threshold=0.1, max_drop=1.0), ZapoptError),
    ],
)
def test_bad_options_are_refused_up_front(kwargs: dict, error: type[Exception]) -> None:
    with pytest.raises(error):
        OptimizeConfig(**kwargs)
