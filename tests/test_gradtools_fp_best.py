"""best_format: the numerically derived E/M split agrees with the paper's table, and
per-layer scaling (as GradientQuantizer applies it) lowers the error for any mean."""
from __future__ import annotations

import math

import pytest
import torch

from gradtools.fp import FPFormat, best_format, expected_relative_error, quantize_fp
from gradtools.quantize import log2_moments

#: The reference's breakpoints (sigma2 = std of log2|g|) for E = 1, 2, 3, ... (gradtools.md).
PAPER_TABLE = {
    3: (0, 0.7),
    4: (0, 0.5, 1.2),
    5: (0, 0.2, 1, 2.4),
    6: (0, 0.3, 0.9, 2, 4.9),
    7: (0, 0.3, 0.7, 1.7, 4, 9.4),
    8: (0, 0.1, 0.6, 1.4, 3.7, 8.1, 19.3),
}


def away_from_breakpoints() -> list[tuple[int, float, int]]:
    """(bits, sigma2, paper's E) at the geometric middle of each table interval."""
    cases = []
    for bits, bps in PAPER_TABLE.items():
        for e, lo in enumerate(bps, start=1):
            hi = bps[e] if e < len(bps) else None
            if lo == 0:
                sigma2 = hi / 2.5
            elif hi is None:
                sigma2 = lo * 1.6
            else:
                sigma2 = math.sqrt(lo * hi)
            cases.append((bits, round(sigma2, 3), e))
    return cases


@pytest.mark.parametrize("bits, sigma2, paper_e", away_from_breakpoints())
def test_best_format_agrees_with_paper_table(bits: int, sigma2: float, paper_e: int) -> None:
    fmt = best_format(sigma2, bits)
    assert (fmt.exp_bits, fmt.man_bits) == (paper_e, bits - 1 - paper_e)


def test_best_format_is_monotone_in_the_spread_and_cached() -> None:
    exps = [best_format(s, 6).exp_bits for s in (0.05, 0.2, 0.5, 1, 1.5, 2, 3, 4, 6, 10)]
    assert exps == sorted(exps) and exps[0] == 1 and exps[-1] == 5
    assert best_format(1.2345, 7) is best_format(1.2345, 7)


def test_expected_error_trades_precision_for_range() -> None:
    narrow, wide = 0.3, 6.0
    assert expected_relative_error(FPFormat(2, 5), narrow) < expected_relative_error(FPFormat(5, 2), narrow)
    assert expected_relative_error(FPFormat(5, 2), wide) < expected_relative_error(FPFormat(2, 5), wide)
    # a narrow spread only sees rounding: E|q - x|/x = (2^-M / 4) * E[1/m], m log-uniform
    # on [1, 2) -> 2^-(M+3) / ln 2
    assert expected_relative_error(FPFormat(4, 7), 0.5) == pytest.approx(2 ** -10 / math.log(2), rel=0.03)


@pytest.mark.parametrize("sigma2, bits, error", [(-1.0, 6, ValueError), (math.nan, 6, ValueError),
                                                 (1.0, 1, ValueError), (1.0, 6.0, TypeError),
                                                 ("1", 6, TypeError)])
def test_best_format_rejects_bad_arguments(sigma2: object, bits: object, error: type) -> None:
    with pytest.raises(error):
        best_format(sigma2, bits)  # type: ignore[arg-type]


def lognormal(mu2: float, sigma2: float, n: int = 50_000, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    signs = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0)
    return (torch.exp2(mu2 + sigma2 * torch.randn(n, generator=g)) * signs).to(torch.float32)


def measured_rel_error(g: torch.Tensor, q: torch.Tensor) -> float:
    return float(((q.double() - g.double()).abs() / g.double().abs()).mean())


@pytest.mark.parametrize("fmt", [best_format(2.0, 6), FPFormat.E4M3FN, FPFormat.E5M2.replace(overflow="saturate")],
                         ids=str)
@pytest.mark.parametrize("mu2", [-30.0, -20.0, -10.0, -4.0, 4.0, 10.0])
def test_per_layer_scaling_lowers_the_error_for_any_mean(fmt: FPFormat, mu2: float) -> None:
    g = lognormal(mu2, 2.0)
    measured_mu2 = float(log2_moments(g)[0])
    scale = 2.0 ** round(fmt.log2_centre - measured_mu2)
    scaled_err = measured_rel_error(g, quantize_fp(g, fmt, scale=scale))
    plain_err = measured_rel_error(g, quantize_fp(g, fmt))
    assert scaled_err <= plain_err * 1.02  # never (measurably) worse
    half_range = (fmt.emax + 1 - math.log2(fmt.min_subnormal)) / 2
    if abs(mu2 - fmt.log2_centre) > half_range:  # far better once the mean leaves the range
        assert scaled_err < 0.5 * plain_err
    # and the model best_format optimizes predicts the scaled error
    assert scaled_err == pytest.approx(expected_relative_error(fmt, 2.0), rel=0.25)
