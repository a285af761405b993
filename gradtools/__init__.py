"""gradtools: compress neural gradients (gradients w.r.t. activations) in PyTorch.

Both tools rely on the near-lognormal distribution of neural gradients: stochastic
pruning with a lognormal-derived threshold, and low-precision floating-point formats
whose exponent/mantissa split is chosen from the measured spread.
"""
from __future__ import annotations

from gradtools.lognormal import expected_sparsity, fit_lognormal, pruning_threshold
from gradtools.prune import GradientPruner, LayerStats, PrunerConfig, added_noise_ratio, stochastic_prune
from gradtools.fp import FPFormat, best_format, expected_relative_error, format_breakpoints, quantize_fp
from gradtools.quantize import GradientQuantizer, QuantizerConfig, QuantLayerStats

__all__: list[str] = []
__all__ += ["fit_lognormal", "expected_sparsity", "pruning_threshold",
            "stochastic_prune", "added_noise_ratio", "GradientPruner", "PrunerConfig", "LayerStats"]
__all__ += ["FPFormat", "quantize_fp", "best_format", "expected_relative_error",
            "format_breakpoints", "GradientQuantizer", "QuantizerConfig", "QuantLayerStats"]
