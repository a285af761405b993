"""Graph rewrite passes: fold BN, replace layers with ZapConv, retune, expand to plain ONNX."""
from __future__ import annotations

from zapopt.rewrite.base import Pass, PassManager, PassResult
from zapopt.rewrite.expand import ExpandZapToOnnx, mask_output_name
from zapopt.rewrite.fold_bn import FoldBatchNorm
from zapopt.rewrite.graph_edit import rule_of
from zapopt.rewrite.rebuild import RebuildNativeOps
from zapopt.rewrite.replace import ReplaceWithZap, ZapParams
from zapopt.rewrite.zero_skip import ReplaceWithZeroSkip, ZeroSkipRule, zero_skip_candidates
from zapopt.rewrite.zap_layers import SetThresholds, ZapLayer, read_zap_layers

__all__ = [
    "ExpandZapToOnnx", "FoldBatchNorm", "Pass", "PassManager", "PassResult", "RebuildNativeOps",
    "ReplaceWithZap", "ReplaceWithZeroSkip", "SetThresholds", "ZapLayer", "ZapParams", "ZeroSkipRule",
    "mask_output_name", "read_zap_layers", "rule_of", "zero_skip_candidates",
]
