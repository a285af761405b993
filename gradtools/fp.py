"""Low-precision floating-point formats [1, E, M] and an exact simulator for casting to them.

Why a simulator: training with 4..8-bit gradients needs the *values* a real format would
produce, in whatever dtype and on whatever device the model runs, not packed bytes. We
compute the rounding in float64, where every float32/float16/bfloat16 input and every
format value (exponents within float64's normal range) is exact, so the result is
bit-identical to a hardware/reference cast (tested against torch's float8/float16/bfloat16
casts and ml_dtypes).

Format semantics (see docs/gradtools_fp.md):

* value = (-1)^s * 2^(e - bias) * 1.m for exponent codes e >= 1, and
  (-1)^s * 2^(1 - bias) * 0.m for e = 0 (subnormals, when enabled).
* ``has_inf=True`` (IEEE style): the top exponent code holds +-inf (mantissa 0) and NaNs.
* ``has_inf=False, nan=True`` (the "FN" style of float8_e4m3fn): the all-ones code is the
  one NaN, every other code is finite.
* ``has_inf=False, nan=False``: every code is a finite number (most range per bit).
* ``subnormals=False``: code 0 only holds zero; values below min_normal round to 0 or
  min_normal (a tie at min_normal/2 goes to 0), they are not flushed wholesale.
* ``overflow``: what a finite value that rounds beyond ``max_normal`` becomes: "saturate"
  (+-max_normal, torch's float8_e4m3fn cast), "inf" (IEEE, torch's float8_e5m2 cast) or
  "nan" (ml_dtypes' float8_e4m3fn cast). +-inf inputs stay +-inf when the format has
  infinities, else follow the same rule. NaN inputs always stay NaN (even for a format
  without a NaN code: dropping them would hide a diverged run). Signed zeros are kept.
"""
from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import KW_ONLY, dataclass
from functools import lru_cache
from typing import ClassVar, Literal, Union

import torch

Overflow = Literal["saturate", "inf", "nan"]
Rounding = Literal["nearest", "stochastic"]
ScaleLike = Union[float, int, torch.Tensor, None]

_OVERFLOW_MODES = ("saturate", "inf", "nan")
_ROUNDING_MODES = ("nearest", "stochastic")
#: float64 normal exponent range: format exponents must stay inside it for exact math.
_F64_MIN_EXP, _F64_MAX_EXP = -1022, 1023


@dataclass(frozen=True)
class FPFormat:
    """A binary floating-point format [1 sign, E exponent, M mantissa] bits.

    ``bias`` defaults to 2^(E-1) - 1. Defaults (no inf, no NaN code, saturation) spend
    every code on a finite value, which is what a gradient format wants; the presets
    ``E5M2``, ``E4M3FN``, ``E4M3`` reproduce the common FP8 formats exactly.
    """

    exp_bits: int
    man_bits: int
    bias: int | None = None
    _: KW_ONLY
    subnormals: bool = True
    overflow: Overflow = "saturate"
    has_inf: bool = False
    nan: bool = False

    E5M2: ClassVar[FPFormat]
    E4M3FN: ClassVar[FPFormat]
    E4M3: ClassVar[FPFormat]

    def __post_init__(self) -> None:
        for name in ("exp_bits", "man_bits"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"{name} must be an int, got {value!r}")
        if not 1 <= self.exp_bits <= 11:
            raise ValueError(f"exp_bits must be in 1..11, got {self.exp_bits}")
        if not 0 <= self.man_bits <= 52:
            raise ValueError(f"man_bits must be in 0..52, got {self.man_bits}")
        if self.bias is None:
            object.__setattr__(self, "bias", 2 ** (self.exp_bits - 1) - 1)
        elif not isinstance(self.bias, int) or isinstance(self.bias, bool):
            raise TypeError(f"bias must be an int or None, got {self.bias!r}")
        for name in ("subnormals", "has_inf", "nan"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool, got {getattr(self, name)!r}")
        if self.overflow not in _OVERFLOW_MODES:
            raise ValueError(f"overflow must be one of {_OVERFLOW_MODES}, got {self.overflow!r}")
        if self.has_inf and not self.nan:
            raise ValueError("has_inf=True is the IEEE layout, whose top exponent also holds NaNs: "
                             "pass nan=True")
        if self.overflow == "inf" and not self.has_inf:
            raise ValueError("overflow='inf' needs a format with infinities (has_inf=True); "
                             "use 'saturate' or 'nan'")
        if self.overflow == "nan" and not self.nan:
            raise ValueError("overflow='nan' needs a format with a NaN code (nan=True)")
        if self.emax < self.emin:
            raise ValueError(
                f"[1,{self.exp_bits},{self.man_bits}] with has_inf={self.has_inf}, nan={self.nan} has no "
                "normal numbers left (the top exponent code is reserved): use more exponent bits, "
                "or has_inf=False/nan=False")
        if self.emax + 1 > _F64_MAX_EXP or self.emin - self.man_bits < _F64_MIN_EXP:
            raise ValueError(f"bias {self.bias} puts the format outside float64's exponent range")

    # ------------------------------------------------------------------ derived numbers
    @property
    def bits(self) -> int:
        """Total storage bits, sign included."""
        return 1 + self.exp_bits + self.man_bits

    @property
    def emin(self) -> int:
        """Unbiased exponent of the smallest normal number."""
        return 1 - self.bias  # type: ignore[operator]

    @property
    def emax(self) -> int:
        """Unbiased exponent of the largest finite number."""
        top_code = 2 ** self.exp_bits - 1
        top_is_special = self.has_inf or (self.nan and self.man_bits == 0)
        return (top_code - 1 if top_is_special else top_code) - self.bias  # type: ignore[operator]

    @property
    def max_normal(self) -> float:
        """Largest finite value."""
        if self.has_inf or not self.nan:
            top_mantissa = 2 ** self.man_bits - 1
        else:  # FN style: the all-ones mantissa of the top exponent is the NaN
            top_mantissa = 2 ** self.man_bits - 2 if self.man_bits > 0 else 0
        return math.ldexp(1.0 + top_mantissa / 2 ** self.man_bits, self.emax)

    @property
    def log2_centre(self) -> float:
        """log2 of the geometric centre of the normal range [2^emin, 2^(emax+1)).

        Per-layer scaling moves a layer's mean log2|g| here (see GradientQuantizer).
        """
        return (self.emin + self.emax + 1) / 2

    @property
    def min_normal(self) -> float:
        return math.ldexp(1.0, self.emin)

    @property
    def min_subnormal(self) -> float:
        """Smallest positive value (equals ``min_normal`` without subnormals or with M = 0)."""
        if not self.subnormals:
            return self.min_normal
        return math.ldexp(1.0, self.emin - self.man_bits)

    def __str__(self) -> str:
        flags = []
        if self.bias != 2 ** (self.exp_bits - 1) - 1:
            flags.append(f"bias={self.bias}")
        if self.has_inf:
            flags.append("inf")
        elif self.nan:
            flags.append("fn")
        if not self.subnormals:
            flags.append("no-subnormals")
        if self.overflow != "saturate":
            flags.append(f"overflow={self.overflow}")
        return f"E{self.exp_bits}M{self.man_bits}" + (f"({', '.join(flags)})" if flags else "")

    def replace(self, **changes: object) -> FPFormat:
        """A validated copy with some fields changed (e.g. ``overflow="saturate"``)."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    @classmethod
    def from_name(cls, name: str) -> FPFormat:
        """``"e5m2"``, ``"e4m3fn"``, ``"e4m3"`` (the presets) or any ``"eXmY"`` (defaults)."""
        if not isinstance(name, str):
            raise TypeError(f"format name must be a str, got {type(name).__name__}")
        key = name.strip().lower().removeprefix("float8_").removeprefix("fp8_")
        presets = {"e5m2": cls.E5M2, "e4m3fn": cls.E4M3FN, "e4m3": cls.E4M3}
        if key in presets:
            return presets[key]
        match = re.fullmatch(r"e(\d+)m(\d+)", key)
        if match is None:
            raise ValueError(f"unknown format name {name!r}: use 'e5m2', 'e4m3fn', 'e4m3' or 'eXmY'")
        return cls(int(match.group(1)), int(match.group(2)))


FPFormat.E5M2 = FPFormat(5, 2, has_inf=True, nan=True, overflow="inf")
FPFormat.E4M3FN = FPFormat(4, 3, nan=True, overflow="saturate")
FPFormat.E4M3 = FPFormat(4, 3, has_inf=True, nan=True, overflow="inf")


# ---------------------------------------------------------------------------- simulator
def _pow2(exponent: torch.Tensor) -> torch.Tensor:
    """Exact 2^k in float64 for int64 k in float64's normal range, built from the bits."""
    return ((exponent + 1023) << 52).view(torch.float64)


def _check_scale(scale: ScaleLike) -> None:
    if scale is None:
        return
    if isinstance(scale, torch.Tensor):
        if not scale.is_floating_point():
            raise TypeError(f"scale must be a floating tensor, got {scale.dtype}")
        if not bool(torch.all(torch.isfinite(scale) & (scale > 0))):
            raise ValueError("scale must be finite and > 0 everywhere")
        return
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise TypeError(f"scale must be a number, a tensor or None, got {type(scale).__name__}")
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be finite and > 0, got {scale}")


def quantize_fp(x: torch.Tensor, fmt: FPFormat, *, rounding: Rounding = "nearest",
                scale: ScaleLike = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Round ``x`` onto ``fmt``'s grid; returns a new tensor in ``x``'s dtype and device.

    ``rounding="nearest"`` is round-to-nearest, ties to even (what hardware casts do);
    ``"stochastic"`` rounds up with probability equal to the distance from the lower
    neighbour over the gap, so E[q(x)] = x inside the finite range. ``scale`` (a positive
    number or a broadcastable tensor) multiplies ``x`` before rounding and divides after,
    i.e. it moves the data into the format's range. ``generator`` seeds stochastic rounding.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got {x.dtype}")
    if not isinstance(fmt, FPFormat):
        raise TypeError(f"fmt must be an FPFormat, got {type(fmt).__name__}")
    if rounding not in _ROUNDING_MODES:
        raise ValueError(f"rounding must be one of {_ROUNDING_MODES}, got {rounding!r}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError("generator must be a torch.Generator or None")
    _check_scale(scale)
    return quantize_fp_unchecked(x, fmt, stochastic=rounding == "stochastic", scale=scale,
                                 generator=generator)


def quantize_fp_unchecked(x: torch.Tensor, fmt: FPFormat, *, stochastic: bool = False,
                          scale: ScaleLike = None,
                          generator: torch.Generator | None = None) -> torch.Tensor:
    """``quantize_fp`` without argument checks (no host sync), for hot training loops.

    float32/float16/bfloat16 inputs take a float32 path when the format's spacings are
    float32 normals (every FP8/FP16/BF16-sized format with the default bias); anything
    else is computed in float64. Both are exact for round-to-nearest.
    """
    if x.dtype in _F32_EXACT_DTYPES and _fits_float32(fmt):
        return _quantize_float32(x, fmt, stochastic, scale, generator)
    return _quantize_float64(x, fmt, stochastic, scale, generator)


_F32_EXACT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@lru_cache(maxsize=None)
def _fits_float32(fmt: FPFormat) -> bool:
    """True when every spacing 2^(binade - M) (binade up to emax + 1) is a float32 normal."""
    return (fmt.emin - fmt.man_bits >= -126 and fmt.emax + 1 - fmt.man_bits <= 127
            and fmt.emax <= 127 and fmt.emin <= 127 and fmt.man_bits <= 23)


def _quantize_float32(x: torch.Tensor, fmt: FPFormat, stochastic: bool, scale: ScaleLike,
                      generator: torch.Generator | None) -> torch.Tensor:
    """Bit-level float32 version: binade from the exponent field, spacing built from bits.

    |x| >= 2^(emax+1) (inf included) is put in binade emax+1, so it rounds above
    max_normal and takes the overflow rule; NaN propagates through every step.
    """
    xf = x.detach().to(torch.float32)
    if scale is not None:
        scale_f = scale.detach().to(device=x.device, dtype=torch.float32) \
            if isinstance(scale, torch.Tensor) else float(scale)
        xf = xf * scale_f
    mag = xf.abs()
    binade = (mag.view(torch.int32) >> 23) - 127  # fp32 subnormals give -127: below emin
    binade.clamp_(min=fmt.emin, max=fmt.emax + 1)
    quantum_exp = binade.sub_(fmt.man_bits)
    if not fmt.subnormals:  # only 0 and min_normal below min_normal: spacing min_normal
        quantum_exp.masked_fill_(mag < fmt.min_normal, fmt.emin)
    quantum = quantum_exp.add_(127).bitwise_left_shift_(23).view(torch.float32)
    steps = mag.div_(quantum)  # exact: division by a power of two, result < 2^(M+1)
    if stochastic:
        lower = torch.floor(steps)
        draw = torch.rand(steps.shape, generator=generator, dtype=torch.float32, device=steps.device)
        steps = lower.add_(draw.lt_(steps.sub_(lower)))
    else:
        steps = steps.round_()  # half to even
    out = steps.mul_(quantum)
    if fmt.overflow == "saturate":
        out = out.clamp_(max=fmt.max_normal)
    else:
        special = math.inf if fmt.overflow == "inf" else math.nan
        out = out.masked_fill_(out > fmt.max_normal, special)
    if fmt.has_inf and fmt.overflow != "inf":  # infinite inputs stay infinite
        out = out.masked_fill_(torch.isinf(xf), math.inf)
    out = out.copysign_(xf)  # keeps -0 and the sign of saturated/inf values
    if scale is not None:
        out = out.div_(scale_f)
    return out.to(x.dtype)


def _quantize_float64(x: torch.Tensor, fmt: FPFormat, stochastic: bool, scale: ScaleLike,
                      generator: torch.Generator | None) -> torch.Tensor:
    """General version in float64 (any float input, formats with exponents far from 0)."""
    xd = x.detach().to(torch.float64)
    if scale is not None:
        scale_d = scale.detach().to(device=x.device, dtype=torch.float64) \
            if isinstance(scale, torch.Tensor) else float(scale)
        xd = xd * scale_d
    finite = torch.isfinite(xd)
    mag = torch.where(finite, xd.abs(), torch.zeros((), dtype=torch.float64, device=xd.device))
    # floor(log2 |x|) (frexp's mantissa is in [0.5, 1)), clamped at the normal range's
    # bottom so subnormals share the smallest normal binade's spacing.
    _, frexp_exp = torch.frexp(mag)
    binade = torch.clamp(frexp_exp.to(torch.int64) - 1, min=fmt.emin)
    quantum_exp = binade - fmt.man_bits
    if not fmt.subnormals:  # only 0 and min_normal below min_normal: spacing min_normal
        below = mag < fmt.min_normal
        quantum_exp = torch.where(below, torch.full_like(quantum_exp, fmt.emin), quantum_exp)
    quantum = _pow2(quantum_exp)
    steps = mag / quantum  # exact: division by a power of two, result < 2^(M+1)
    if stochastic:
        lower = torch.floor(steps)
        draw = torch.rand(steps.shape, generator=generator, dtype=torch.float64, device=steps.device)
        steps = lower + (draw < steps - lower).to(torch.float64)
    else:
        steps = torch.round(steps)  # half to even
    out = steps * quantum
    overflowed = out > fmt.max_normal
    if fmt.overflow == "saturate":
        out = torch.where(overflowed, torch.full_like(out, fmt.max_normal), out)
    else:
        special = math.inf if fmt.overflow == "inf" else math.nan
        out = torch.where(overflowed, torch.full_like(out, special), out)
    # Infinite inputs: inf if representable, else the overflow rule. NaN stays NaN.
    inf_value = math.inf if fmt.has_inf else {"saturate": fmt.max_normal, "nan": math.nan,
                                              "inf": math.inf}[fmt.overflow]
    out = torch.where(torch.isinf(xd), torch.full_like(out, inf_value), out)
    out = torch.copysign(out, xd)  # keeps -0 and the sign of saturated/inf values
    out = torch.where(torch.isnan(xd), xd, out)
    if scale is not None:
        out = out / scale_d
    return out.to(x.dtype)


# ------------------------------------------------------------------------ format choice
#: Quadrature for the expected error: Gaussian quantile nodes (a fixed, deterministic
#: sample of the lognormal's log2) times uniform offsets modelling the residual of scaling
#: by a power of two (the mean lands anywhere within +-0.5 of the format's centre).
_QUANTILE_NODES = 2048
_RESIDUAL_OFFSETS = 8


@lru_cache(maxsize=1)
def _quadrature_nodes() -> tuple[torch.Tensor, torch.Tensor]:
    """Standard-normal quantiles at (i + 0.5)/n, and the residual offsets; float64."""
    probs = (torch.arange(_QUANTILE_NODES, dtype=torch.float64) + 0.5) / _QUANTILE_NODES
    normal = torch.special.ndtri(probs)
    offsets = (torch.arange(_RESIDUAL_OFFSETS, dtype=torch.float64) + 0.5) / _RESIDUAL_OFFSETS - 0.5
    return normal, offsets


def expected_relative_error(fmt: FPFormat, sigma2: float) -> float:
    """E[|q(g) - g| / |g|] for |g| lognormal with std ``sigma2`` of log2|g|, after scaling.

    Models what ``GradientQuantizer`` does: the layer's mean log2|g| is moved by a power of
    two to within +-0.5 of ``fmt.log2_centre`` (uniformly), then rounded to nearest. All
    error sources are in the integral: rounding, subnormal precision loss, underflow to
    zero (relative error 1) and saturation/overflow at the top of the range.
    """
    if not isinstance(fmt, FPFormat):
        raise TypeError(f"fmt must be an FPFormat, got {type(fmt).__name__}")
    sigma2 = _check_sigma2(sigma2)
    normal, offsets = _quadrature_nodes()
    log2_mag = (normal * sigma2).unsqueeze(0) + offsets.unsqueeze(1) + fmt.log2_centre
    mag = torch.exp2(log2_mag.reshape(-1))
    quantized = _quantize_float64(mag, fmt, False, None, None)
    rel = ((quantized - mag).abs() / mag)
    rel = torch.where(torch.isfinite(rel), rel, torch.ones_like(rel))  # inf/NaN: lost value
    return float(rel.mean())


def _check_sigma2(sigma2: object) -> float:
    if isinstance(sigma2, bool) or not isinstance(sigma2, (int, float)):
        raise TypeError(f"sigma2 must be a number, got {type(sigma2).__name__}")
    sigma2 = float(sigma2)
    if not (math.isfinite(sigma2) and sigma2 >= 0):
        raise ValueError(f"sigma2 (std of log2|g|) must be finite and >= 0, got {sigma2}")
    return sigma2


def check_bits(bits: object) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int):
        raise TypeError(f"bits must be an int, got {type(bits).__name__}")
    if not 2 <= bits <= 16:
        raise ValueError(f"bits must be in 2..16 (sign + at least one exponent bit), got {bits}")
    return bits


def best_format(sigma2: float, bits: int) -> FPFormat:
    """The [1, E, bits-1-E] format (default bias, saturating, subnormals) with the least
    ``expected_relative_error`` for a lognormal of spread ``sigma2`` (std of log2|g|).

    Wider distributions need more exponent bits. Computed numerically and cached per
    (bits, sigma2 rounded to 3 significant digits); ties go to fewer exponent bits.
    """
    sigma2 = _check_sigma2(sigma2)
    bits = check_bits(bits)
    key = float(f"{sigma2:.3g}")
    return _best_format_cached(key, bits)


@lru_cache(maxsize=4096)
def _best_format_cached(sigma2: float, bits: int) -> FPFormat:
    candidates = [FPFormat(e, bits - 1 - e) for e in range(1, bits)]
    errors = [expected_relative_error(f, sigma2) for f in candidates]
    return candidates[min(range(len(errors)), key=errors.__getitem__)]


@lru_cache(maxsize=32)
def format_breakpoints(bits: int, *, sigma_max: float = 40.0) -> tuple[tuple[float, int], ...]:
    """Where ``best_format`` switches exponent width: ((sigma2, new exp_bits), ...).

    Found by scanning sigma2 on a log grid up to ``sigma_max`` and bisecting each switch to
    about 0.5 %; the paper's table (docs/gradtools_fp.md) is the reference to compare.
    """
    bits = check_bits(bits)
    exp_of = lambda s: _best_format_cached(s, bits).exp_bits  # noqa: E731
    grid = [0.01 * (sigma_max / 0.01) ** (i / 80) for i in range(81)]
    switches: list[tuple[float, int]] = []
    for lo, hi in zip(grid, grid[1:]):
        e_lo, e_hi = exp_of(lo), exp_of(hi)
        if e_lo == e_hi:
            continue
        a, b = lo, hi
        while b / a > 1.005:
            mid = math.sqrt(a * b)
            a, b = (mid, b) if exp_of(mid) == e_lo else (a, mid)
        switches.append((round(math.sqrt(a * b), 3), e_hi))
    return tuple(switches)
