"""The fine-tuning loop: SGD over shuffled global batches, split across ranks, optional
compressed neural gradients (gradtools), validation and a checkpoint after every epoch.

Why the loss is ``sum / global batch * world``: DistributedDataParallel averages the ranks'
gradients, so each rank scaling its share's summed loss this way makes the step exactly
the one-process step on the whole global batch, whatever the split (the last batch too).
"""
from __future__ import annotations

import hashlib
import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from zapopt.errors import ZapoptError
from zapopt.files import write_atomically
from zapopt.finetuning.convert import ConvertedModel
from zapopt.finetuning.distributed import Ranks

CHECKPOINT_FORMAT = "zapopt-finetune-checkpoint-1"
#: Progress lines per epoch when stderr is not a terminal (logs, CI, torchrun).
LOG_LINES_PER_EPOCH = 10
Log = Callable[[str], None]


def _positive(name: str, value: Any, kind: type = int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int) or value <= 0:
        raise ZapoptError(f"{name} must be a positive {'number' if kind is float else 'integer'}, got {value!r}")


@dataclass(frozen=True)
class FinetuneConfig:
    """How to fine-tune (validated on construction). ``batch_size`` is the global batch:
    under torchrun each of the N ranks computes about ``batch_size / N`` of it."""

    epochs: int = 1
    batch_size: int = 64
    lr: float = 1e-4
    momentum: float = 0.9
    weight_decay: float = 5e-4
    grad_sparsity: float | None = None  # GradientPruner target sparsity of the neural gradients
    grad_bits: int | None = None  # GradientQuantizer with the format chosen per layer from the spread
    grad_format: tuple[int, int] | None = None  # GradientQuantizer with a fixed [1, E, M] format
    seed: int = 0
    train_images: int | None = None  # use the first N training samples
    val_images: int | None = None
    #: Train at the thresholds ``zapopt optimize --max-drop`` would choose for this top-1 drop (%),
    #: a more aggressive point than the final one, so the weights adapt to more skipped
    #: activations before the thresholds are re-chosen (None: train at the model's own).
    operating_drop: float | None = None
    #: Weight of an L1 penalty on every ZapConv layer's activation (ReLU output before the
    #: mask, mean per image, summed over the layers) added to the cross-entropy: sparser
    #: activations are what lets the same accuracy skip more (0: off).
    activation_l1: float = 0.0
    #: After training, train every ZapConv layer's predictor again on the new weights'
    #: activations (as ``optimize`` trains them) before the thresholds are re-chosen: the
    #: frozen predictors learned the old weights' zeros. Needs the ``max_drop`` re-choice.
    refit_predictors: bool = False

    def __post_init__(self) -> None:
        _positive("epochs", self.epochs)
        _positive("batch_size", self.batch_size)
        _positive("lr", self.lr, float)
        for name in ("momentum", "weight_decay"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
                raise ZapoptError(f"{name} must be a number >= 0, got {value!r}")
        if self.grad_sparsity is not None and not 0 < self.grad_sparsity < 1:
            raise ZapoptError(f"--grad-sparsity must be in (0, 1), e.g. 0.85, got {self.grad_sparsity}")
        if self.grad_bits is not None and self.grad_format is not None:
            raise ZapoptError("give --grad-bits (format chosen per layer) or --grad-format E,M, not both")
        if self.grad_bits is not None and not 3 <= self.grad_bits <= 16:
            raise ZapoptError(f"--grad-bits must be in 3..16, got {self.grad_bits}")
        if self.grad_format is not None:
            fmt = tuple(self.grad_format)
            if len(fmt) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in fmt) \
                    or fmt[0] < 1 or fmt[1] < 0 or sum(fmt) > 15:
                raise ZapoptError(f"--grad-format must be E,M with E >= 1, M >= 0, 1 + E + M <= 16, got {fmt}")
            object.__setattr__(self, "grad_format", fmt)
        for name in ("train_images", "val_images"):
            if getattr(self, name) is not None:
                _positive(name, getattr(self, name))
        l1 = self.activation_l1
        if isinstance(l1, bool) or not isinstance(l1, (int, float)) or not 0 <= l1 < math.inf:
            raise ZapoptError(f"--activation-l1 must be a number >= 0, e.g. 1e-3, got {l1!r}")
        if not isinstance(self.refit_predictors, bool):
            raise ZapoptError(f"refit_predictors must be True or False, got {self.refit_predictors!r}")
        drop = self.operating_drop
        if drop is not None and (isinstance(drop, bool) or not isinstance(drop, (int, float))
                                 or not 0 <= drop <= 100):
            raise ZapoptError(f"--operating-drop is a top-1 drop in percent, in [0, 100], got {drop!r}")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["grad_format"] = list(self.grad_format) if self.grad_format else None
        return out

    def resumable_from(self, other: dict[str, Any]) -> list[str]:
        """Settings that differ from a checkpoint's (epochs may grow; refit_predictors acts
        after training, so it may change too)."""
        mine = self.to_dict()
        free = ("epochs", "refit_predictors")
        return sorted(k for k in mine if k not in free and other.get(k) != mine[k])


@dataclass(frozen=True)
class EpochLog:
    """What one epoch did: training loss/accuracy on its batches, validation after it."""

    epoch: int
    train_loss: float
    train_top1: float
    val_top1: float | None
    val_computed_share: float | None  # share of ZAP-layer activations computed on the validation set
    seconds: float
    images: int


@dataclass
class TrainState:
    """Where a run is: epochs done, the log so far (restored from a checkpoint on resume)."""

    epochs_done: int = 0
    history: list[EpochLog] = field(default_factory=list)
    gradient_summary: str = ""  # what gradtools did on this rank (its summary tables)


def model_digest(data: bytes) -> str:
    """Identifies the input model in a checkpoint (resuming on another model is refused)."""
    return hashlib.sha256(data).hexdigest()[:16]


def gradient_tools(module: nn.Module, config: FinetuneConfig, seed: int) -> list[Any]:
    """Attach the configured gradtools to the convs and linears of ``module`` (each rank its own)."""
    tools: list[Any] = []
    if config.grad_sparsity is not None:
        from gradtools import GradientPruner

        generator = torch.Generator(device=next(module.parameters()).device).manual_seed(seed)
        tools.append(GradientPruner(module, config.grad_sparsity, generator=generator))
    if config.grad_bits is not None or config.grad_format is not None:
        from gradtools import FPFormat, GradientQuantizer

        if config.grad_format is not None:
            exp_bits, man_bits = config.grad_format
            tools.append(GradientQuantizer(module, bits=1 + exp_bits + man_bits, fmt=FPFormat(exp_bits, man_bits)))
        else:
            tools.append(GradientQuantizer(module, bits=config.grad_bits))
    return tools


def global_batches(count: int, batch_size: int, seed: int, epoch: int) -> list[np.ndarray]:
    """The epoch's shuffled global batches (the same on every rank: seeded by seed and epoch)."""
    order = np.random.default_rng([seed, epoch]).permutation(count)
    return [order[i:i + batch_size] for i in range(0, count, batch_size)]


def activation_penalty(module: ConvertedModel) -> torch.Tensor:
    """Sum over this batch's images of each ZapConv layer's mean activation (before the mask),
    summed over the layers: the L1 term of ``activation_l1`` (activations are >= 0)."""
    terms = []
    for name, zap in module.zap_layers().items():
        if zap.last_activation is None:
            raise ZapoptError(f"internal: ZapConv {name} kept no activation in training mode")
        terms.append(zap.last_activation.flatten(1).mean(1).sum())
    return torch.stack(terms).sum()


def rank_share(batch: np.ndarray, ranks: Ranks) -> np.ndarray:
    """This rank's contiguous part of a global batch (sizes differ by at most one)."""
    return np.array_split(batch, ranks.world)[ranks.rank]


def evaluate_torch(module: ConvertedModel, x: torch.Tensor, y: torch.Tensor, device: torch.device,
                   batch_size: int = 256) -> tuple[float, float | None]:
    """(top-1, share of ZAP-layer activations computed) of ``module`` on ``x``, ``y``."""
    module.eval()
    correct, computed, total = 0, 0, 0
    zaps = list(module.zap_layers().values())
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            logits = module(x[start:start + batch_size].to(device))
            correct += int((logits.argmax(1).cpu() == y[start:start + batch_size]).sum())
            for zap in zaps:
                computed += int(zap.last_computed.sum())
                total += zap.last_computed.numel()
    module.train()
    return correct / len(x), (computed / total if total else None)


class _Progress:
    """A tqdm bar with loss/accuracy on a terminal, else a few plain log lines per epoch."""

    def __init__(self, epoch: int, epochs: int, batches: int, enabled: bool, interactive: bool | None,
                 log: Log) -> None:
        self.interactive = sys.stderr.isatty() if interactive is None else interactive
        self.enabled, self.log, self.batches = enabled, log, batches
        self.prefix = f"epoch {epoch + 1}/{epochs}"
        self.bar = tqdm(total=batches, desc=self.prefix, unit="batch", file=sys.stderr, leave=False,
                        disable=not (enabled and self.interactive))
        self.every = max(1, batches // LOG_LINES_PER_EPOCH)

    def update(self, done: int, loss: float, top1: float) -> None:
        if not self.enabled:
            return
        if self.interactive:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.4f}", acc=f"{100 * top1:.2f}%")
        elif done % self.every == 0 or done == self.batches:
            self.log(f"{self.prefix}: batch {done}/{self.batches}, loss {loss:.4f}, accuracy {100 * top1:.2f} %")

    def close(self) -> None:
        self.bar.close()


def save_checkpoint(path: Path, module: nn.Module, optimizer: torch.optim.Optimizer, state: TrainState,
                    config: FinetuneConfig, digest: str) -> None:
    payload = {"format": CHECKPOINT_FORMAT, "epochs_done": state.epochs_done, "model_digest": digest,
               "config": config.to_dict(), "history": [asdict(h) for h in state.history],
               "model": module.state_dict(), "optimizer": optimizer.state_dict()}
    write_atomically(path, lambda f: torch.save(payload, f))


def load_checkpoint(path: Path, config: FinetuneConfig, digest: str) -> dict[str, Any]:
    """Read a checkpoint of this model and these settings; refuse anything else."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises pickle/zip/runtime errors for a bad file
        raise ZapoptError(f"cannot read the checkpoint {path}: {str(exc).splitlines()[0]}") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ZapoptError(f"{path} is not a zapopt finetune checkpoint")
    if payload["model_digest"] != digest:
        raise ZapoptError(f"the checkpoint {path} belongs to another input model; start without --resume "
                          "or give the model it was made from")
    differing = config.resumable_from(payload["config"])
    if differing:
        raise ZapoptError(f"the checkpoint {path} was made with other settings ({', '.join(differing)}); "
                          "resume with the same ones (only --epochs may change)")
    return payload


def train(module: ConvertedModel, x: torch.Tensor, y: torch.Tensor, config: FinetuneConfig, *, ranks: Ranks,
          val: tuple[torch.Tensor, torch.Tensor] | None = None, checkpoint: Path | None = None,
          resume: dict[str, Any] | None = None, digest: str = "", progress: bool = True,
          interactive: bool | None = None, log: Log = print) -> TrainState:
    """Fine-tune ``module`` in place for ``config.epochs`` epochs (minus those already done)."""
    device = ranks.device
    module.to(device).train()
    torch.manual_seed(config.seed)
    model: nn.Module = module
    if ranks.distributed:
        model = nn.parallel.DistributedDataParallel(
            module, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = torch.optim.SGD(module.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay)
    state = TrainState()
    if resume is not None:
        module.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        state = TrainState(resume["epochs_done"], [EpochLog(**h) for h in resume["history"]])
    tools = gradient_tools(module, config, seed=config.seed * 1000 + ranks.rank)
    try:
        for epoch in range(state.epochs_done, config.epochs):
            state.history.append(_epoch(model, optimizer, x, y, config, ranks, epoch, val, module,
                                        progress, interactive, log))
            state.epochs_done = epoch + 1
            if checkpoint is not None and ranks.is_main:
                save_checkpoint(checkpoint, module, optimizer, state, config, digest)
            ranks.barrier()
    finally:
        state.gradient_summary = "\n".join(tool.summary() for tool in tools)
        for tool in tools:
            tool.remove()
    return state


def _epoch(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
           config: FinetuneConfig, ranks: Ranks, epoch: int, val: tuple[torch.Tensor, torch.Tensor] | None,
           module: ConvertedModel, progress: bool, interactive: bool | None, log: Log) -> EpochLog:
    started = time.perf_counter()
    batches = global_batches(len(x), config.batch_size, config.seed, epoch)
    bar = _Progress(epoch, config.epochs, len(batches), progress and ranks.is_main, interactive, log)
    loss_sum = correct = seen = 0.0
    try:
        for done, batch in enumerate(batches, start=1):
            share = torch.from_numpy(rank_share(batch, ranks))
            inputs, labels = x[share].to(ranks.device), y[share].to(ranks.device)
            logits = model(inputs)
            summed = F.cross_entropy(logits, labels, reduction="sum")
            objective = summed
            if config.activation_l1:
                objective = summed + config.activation_l1 * activation_penalty(module)
            optimizer.zero_grad(set_to_none=True)
            (objective * (ranks.world / len(batch))).backward()
            optimizer.step()
            loss_sum += float(summed.detach())
            correct += float((logits.detach().argmax(1) == labels).sum())
            seen += len(share)
            bar.update(done, loss_sum / max(seen, 1), correct / max(seen, 1))
    finally:
        bar.close()
    loss_sum, correct, seen = ranks.sum([loss_sum, correct, seen])
    val_top1 = val_share = None
    if val is not None and ranks.is_main:
        val_top1, val_share = evaluate_torch(module, val[0], val[1], ranks.device)
    entry = EpochLog(epoch + 1, loss_sum / seen, correct / seen, val_top1, val_share,
                     time.perf_counter() - started, int(seen))
    if ranks.is_main:
        val_text = "" if val_top1 is None else (f", validation top-1 {100 * val_top1:.2f} %, computed "
                                                f"{100 * (val_share or 0):.1f} % of ZAP activations")
        log(f"epoch {entry.epoch}/{config.epochs}: loss {entry.train_loss:.4f}, accuracy "
            f"{100 * entry.train_top1:.2f} %{val_text} ({entry.seconds:.0f} s)")
    return entry
