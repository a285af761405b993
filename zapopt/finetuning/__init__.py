"""ZAP-aware fine-tuning (the package behind `zapopt.finetune`, named apart so the
function is never shadowed by it): bring a ZapConv model into torch, train it with the masks active,
write it back in the same format (``zapopt finetune``, docs/finetune.md).

Needs torch; imported only by the finetune command and its Python API.
"""
from __future__ import annotations

from zapopt.finetuning.api import FinetuneReport, finetune
from zapopt.finetuning.convert import ConvertedModel, export_weights, to_torch
from zapopt.finetuning.train import FinetuneConfig
from zapopt.finetuning.zap_module import ZapConv2d

__all__ = ["ConvertedModel", "FinetuneConfig", "FinetuneReport", "ZapConv2d", "export_weights", "finetune",
           "to_torch"]
