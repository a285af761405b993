"""The ZapConv operator: its spec, sampling patterns and numpy reference."""
from __future__ import annotations

from zapopt.ops.patterns import PATTERNS, Pattern, get_pattern
from zapopt.ops.reference import (
    ZapConv,
    ZapConvTrace,
    conv2d,
    reference_session,
    zap_conv_reference,
    zap_conv_trace,
)
from zapopt.ops.spec import DOMAIN, OP_TYPE, VERSION, ZapConvAttrs, is_zap_node, make_zap_node

__all__ = [
    "DOMAIN", "OP_TYPE", "PATTERNS", "VERSION", "Pattern", "ZapConv", "ZapConvAttrs",
    "ZapConvTrace", "conv2d", "get_pattern", "is_zap_node", "make_zap_node",
    "reference_session", "zap_conv_reference", "zap_conv_trace",
]
