"""zapopt: zero activation predictors (ZAP) for ONNX CNNs.

The public API mirrors the ``zapopt`` command line. Heavy modules (torch, training) are
imported lazily so that running an optimized model needs only onnxruntime and numpy.
"""
from __future__ import annotations

from zapopt.errors import ZapoptError

__version__ = "0.1.0"

__all__ = ["ZapoptError", "__version__"]
