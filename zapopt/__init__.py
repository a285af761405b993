"""zapopt: zero activation predictors (ZAP) for ONNX CNNs.

The public API mirrors the ``zapopt`` command line. Heavy modules (torch, training) are
imported lazily so that running an optimized model needs only onnxruntime and numpy.
"""
from __future__ import annotations

from zapopt.errors import ZapoptError

__version__ = "0.1.0"

__all__ = [
    "AccuracyBudget", "ErrorBudget", "ExactOnly", "FinetuneConfig", "OptimizeConfig", "UniformThreshold",
    "ZapoptError", "__version__", "bench", "convert", "evaluate", "finetune", "get_library_path", "info", "optimize",
    "retune", "session", "sweep",
]

#: Public names imported on first use: attribute name -> (module, name in that module).
_LAZY_EXPORTS = {
    "info": ("zapopt.graph.info", "info"),
    "optimize": ("zapopt.optimize", "optimize"),
    "OptimizeConfig": ("zapopt.optimize", "OptimizeConfig"),
    "UniformThreshold": ("zapopt.selection_modes", "UniformThreshold"),
    "ErrorBudget": ("zapopt.selection_modes", "ErrorBudget"),
    "AccuracyBudget": ("zapopt.selection_modes", "AccuracyBudget"),
    "ExactOnly": ("zapopt.selection_modes", "ExactOnly"),
    "evaluate": ("zapopt.evaluate", "evaluate"),
    "sweep": ("zapopt.sweep", "sweep"),
    "retune": ("zapopt.retune", "retune"),
    "finetune": ("zapopt.finetuning.api", "finetune"),
    "FinetuneConfig": ("zapopt.finetuning.train", "FinetuneConfig"),
    "bench": ("zapopt.bench", "bench"),
    "convert": ("zapopt.model_form", "convert"),
    "get_library_path": ("zapopt.native", "get_library_path"),
    "session": ("zapopt.native", "session"),
}


def __getattr__(name: str):
    """Import heavy public API functions (onnx, torch) only when first used."""
    if name in _LAZY_EXPORTS:
        import importlib

        module_name, attr = _LAZY_EXPORTS[name]
        value = getattr(importlib.import_module(module_name), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'zapopt' has no attribute {name!r}")
