"""The ai.zapopt operators (ZapConv, ZeroSkipConv): spec, sampling patterns and numpy references."""
from __future__ import annotations

from zapopt.ops.patterns import PATTERNS, Pattern, get_pattern
from zapopt.ops.reference import (
    ZapConv,
    ZapConvTrace,
    ZeroSkipConv,
    conv2d,
    reference_session,
    zap_conv_reference,
    zap_conv_trace,
    zero_skip_conv_reference,
)
from zapopt.ops.spec import (
    DOMAIN,
    OP_TYPE,
    VERSION,
    ZERO_SKIP_OP_TYPE,
    ZapConvAttrs,
    ZeroSkipConvAttrs,
    is_zap_node,
    is_zero_skip_node,
    make_zap_node,
    make_zero_skip_node,
)

__all__ = [
    "DOMAIN", "OP_TYPE", "PATTERNS", "VERSION", "ZERO_SKIP_OP_TYPE", "Pattern", "ZapConv", "ZapConvAttrs",
    "ZapConvTrace", "ZeroSkipConv", "ZeroSkipConvAttrs", "conv2d", "get_pattern", "is_zap_node",
    "is_zero_skip_node", "make_zap_node", "make_zero_skip_node", "reference_session", "zap_conv_reference",
    "zap_conv_trace", "zero_skip_conv_reference",
]
