"""ZAP-aware fine-tuning: bring a ZapConv model into torch, train it with the masks active,
write it back in the same format (``zapopt finetune``, docs/finetune.md).

Needs torch; imported only by the finetune command and its Python API.
"""
from __future__ import annotations

from zapopt.finetune.convert import ConvertedModel, export_weights, to_torch
from zapopt.finetune.zap_module import ZapConv2d

__all__ = ["ConvertedModel", "ZapConv2d", "export_weights", "to_torch"]
