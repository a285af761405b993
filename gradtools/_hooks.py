"""The one place that attaches backward transforms to the outputs of modules.

A *neural gradient* is the gradient of the loss w.r.t. a layer's output. We intercept it
with a tensor hook registered on the output during the forward pass. Tensor hooks (unlike
module backward hooks) keep working when the next layer is an in-place ReLU: a hook
registered before an in-place change still receives the gradient w.r.t. the original
output, which is exactly the layer's neural gradient.

Order: when several transforms are attached to the same module, they run in the order
they were attached (the first one attached sees the incoming gradient first).
"""
from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Union

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

GradTransform = Callable[[torch.Tensor], Union[torch.Tensor, None]]
ModuleFilter = Callable[[str, nn.Module], bool]

DEFAULT_LAYER_TYPES: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.Linear)


def attach_output_grad_transform(module: nn.Module, transform: GradTransform) -> RemovableHandle:
    """Make ``transform`` rewrite the gradient flowing back into ``module``'s output.

    ``transform(grad) -> new_grad`` (or None to keep it). It is called once per backward
    pass per forward call. Returns a handle whose ``remove()`` detaches it.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"expected a torch.nn.Module, got {type(module).__name__}")
    if not callable(transform):
        raise TypeError("transform must be callable: grad -> grad")

    def forward_hook(_mod: nn.Module, _inputs: tuple, output: object) -> None:
        if isinstance(output, torch.Tensor) and output.requires_grad:
            output.register_hook(transform)

    return module.register_forward_hook(forward_hook)


def select_modules(
    model: nn.Module,
    layer_types: Iterable[type[nn.Module]] = DEFAULT_LAYER_TYPES,
    include: str | ModuleFilter | None = None,
) -> list[tuple[str, nn.Module]]:
    """The (name, module) pairs a gradient tool acts on, in model order.

    ``include`` is either a regex matched (``re.search``) against the qualified module
    name, or a predicate ``(name, module) -> bool``. Raises ValueError when nothing
    matches, since a tool that silently does nothing hides the user's mistake.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    types = tuple(layer_types)
    if not types or not all(isinstance(t, type) and issubclass(t, nn.Module) for t in types):
        raise TypeError("layer_types must be a non-empty sequence of nn.Module subclasses")
    if include is None:
        keep: ModuleFilter = lambda _n, _m: True  # noqa: E731
    elif isinstance(include, str):
        pattern = re.compile(include)
        keep = lambda n, _m: pattern.search(n) is not None  # noqa: E731
    elif callable(include):
        keep = include
    else:
        raise TypeError("include must be a regex string, a callable (name, module) -> bool, or None")
    chosen = [(n, m) for n, m in model.named_modules() if isinstance(m, types) and keep(n, m)]
    if not chosen:
        names = ", ".join(t.__name__ for t in types)
        raise ValueError(f"no module of type {names} matched the selection {include!r}")
    return chosen
