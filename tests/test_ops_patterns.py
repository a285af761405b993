"""Sampling patterns: the paper's fractions, the mask formula, attribute round trips."""
from __future__ import annotations

import numpy as np
import pytest

from zapopt.errors import ZapoptError
from zapopt.ops import PATTERNS, Pattern, get_pattern


@pytest.mark.parametrize(
    ("name", "fraction", "shape"),
    [
        ("checkerboard", 1 / 2, (2, 2)),
        ("tile5x5-60", 15 / 25, (5, 5)),
        ("tile5x5-40", 10 / 25, (5, 5)),
        ("diag3x3-33", 3 / 9, (3, 3)),
        ("rows-50", 1 / 2, (2, 1)),
        ("cols-50", 1 / 2, (1, 2)),
        ("all", 1.0, (1, 1)),
    ],
)
def test_registered_patterns_have_the_documented_fractions(name: str, fraction: float, shape: tuple) -> None:
    pattern = get_pattern(name)
    assert pattern.name == name
    assert pattern.shape == shape
    assert pattern.computed_fraction == pytest.approx(fraction)


def test_mask_repeats_the_tile() -> None:
    pattern = get_pattern("tile5x5-40")
    mask = pattern.mask(13, 7)
    assert mask.shape == (13, 7) and mask.dtype == np.bool_
    for i in range(13):
        for j in range(7):
            assert mask[i, j] == bool(pattern.tile[i % 5][j % 5])


def test_checkerboard_and_diagonal_layouts() -> None:
    np.testing.assert_array_equal(get_pattern("checkerboard").mask(2, 3), [[1, 0, 1], [0, 1, 0]])
    np.testing.assert_array_equal(get_pattern("diag3x3-33").mask(3, 3), np.eye(3, dtype=bool))
    np.testing.assert_array_equal(get_pattern("rows-50").mask(3, 2), [[1, 1], [0, 0], [1, 1]])
    np.testing.assert_array_equal(get_pattern("cols-50").mask(2, 3), [[1, 0, 1], [1, 0, 1]])


def test_5x5_tiles_are_inverses() -> None:
    sixty, forty = get_pattern("tile5x5-60"), get_pattern("tile5x5-40")
    np.testing.assert_array_equal(sixty.tile_array(), ~forty.tile_array())


@pytest.mark.parametrize("name", ["checkerboard", "tile5x5-60", "tile5x5-40", "diag3x3-33"])
def test_every_predicted_position_sees_computed_neighbours(name: str) -> None:
    pattern = get_pattern(name)
    th, tw = pattern.shape
    plane = pattern.mask(3 * th, 3 * tw)
    for i in range(th, 2 * th):
        for j in range(tw, 2 * tw):
            if not plane[i, j]:
                assert plane[i - 1 : i + 2, j - 1 : j + 2].sum() >= 2, (name, i, j)


def test_attrs_round_trip_for_every_pattern() -> None:
    for pattern in PATTERNS.values():
        attrs = pattern.to_attrs()
        assert Pattern.from_attrs(**attrs) == pattern
        assert Pattern.from_attrs(attrs["pattern"], attrs["pattern_shape"]) == pattern  # name recovered


def test_unknown_tile_without_name_is_custom() -> None:
    pattern = Pattern.from_attrs([1, 1, 0], [1, 3])
    assert pattern.name == "custom" and pattern.computed_fraction == pytest.approx(2 / 3)


def test_unknown_name_lists_the_valid_ones() -> None:
    with pytest.raises(ZapoptError, match="checkerboard.*tile5x5-60|tile5x5-40"):
        get_pattern("chess")


@pytest.mark.parametrize(
    "tile",
    [(), ((1, 0), (1,)), ((0, 0),), ((2, 0),), ((True, False),)],
)
def test_invalid_tiles_are_rejected(tile) -> None:
    with pytest.raises(ZapoptError):
        Pattern("bad", tile)


def test_from_attrs_checks_sizes() -> None:
    with pytest.raises(ZapoptError, match="needs 4"):
        Pattern.from_attrs([1, 0, 1], [2, 2])
    with pytest.raises(ZapoptError, match="two positive ints"):
        Pattern.from_attrs([1], [1])
