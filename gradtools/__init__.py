"""gradtools: compress neural gradients (gradients w.r.t. activations) in PyTorch.

Both tools rely on the near-lognormal distribution of neural gradients: stochastic
pruning with a lognormal-derived threshold, and low-precision floating-point formats
whose exponent/mantissa split is chosen from the measured spread.
"""
from __future__ import annotations

__all__: list[str] = []
