"""Train the reference CNNs on Fashion-MNIST with low-precision FP neural gradients.

Compares FP32 gradients with fixed E5M2 / E4M3 and auto-chosen 8/6/5/4-bit formats, each
with and without per-layer scaling, and reports full-test-set accuracy and the per-step
cost of the simulator. Sized for a shared 2-core CPU: native 28x28, reduced width, a
training subset, 1 thread. Every config starts from the same seed and data order.

    python benchmarks/gradfp_train.py --arch resnet18 --configs all
    python benchmarks/gradfp_train.py --arch vgg16 --configs fp32,auto6-scaled,auto6-none

Writes benchmarks/results/gradfp_train/<arch>.json (or --out) and prints a markdown table.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from gradtools.fp import FPFormat  # noqa: E402
from gradtools.quantize import GradientQuantizer  # noqa: E402
from models.architectures import build_model  # noqa: E402
from benchmarks.gradprune_common import load_fashion  # noqa: E402
from benchmarks.result_files import command_line, results_dir, write_result  # noqa: E402


@dataclass(frozen=True)
class GradConfig:
    """One row of the table: a gradient format (None = FP32) and the scaling mode."""

    name: str
    bits: int | None
    fmt: FPFormat | str | None
    scaling: str
    rounding: str = "nearest"
    placement: str = "centre"


def _configs() -> dict[str, GradConfig]:
    # The FP8 presets with saturation instead of inf: an inf gradient would end the run.
    e5m2 = FPFormat.E5M2.replace(overflow="saturate")
    e4m3 = FPFormat.E4M3.replace(overflow="saturate")
    out = {"fp32": GradConfig("fp32", None, None, "none")}
    for scaling, tag in (("per-layer", "scaled"), ("none", "none")):
        out[f"e5m2-{tag}"] = GradConfig(f"e5m2-{tag}", 8, e5m2, scaling)
        out[f"e4m3-{tag}"] = GradConfig(f"e4m3-{tag}", 8, e4m3, scaling)
        for bits in (8, 6, 5, 4):
            out[f"auto{bits}-{tag}"] = GradConfig(f"auto{bits}-{tag}", bits, "auto", scaling)
    for bits in (8, 6, 5, 4):  # amax scaling (no saturation): an extension beyond the paper
        out[f"auto{bits}-max"] = GradConfig(f"auto{bits}-max", bits, "auto", "max")
    for bits in (8, 6, 5, 4):  # per-layer placement fitted to the |g|-weighted error, then
        for anchor in ("max", "mean"):  # tracked from the per-call amax or mean log2|g|
            name = f"auto{bits}-weighted-{anchor}"
            out[name] = GradConfig(name, bits, "auto", "per-layer", placement=f"weighted-{anchor}")
    for bits in (6, 5, 4):  # unbiased rounding: does it close the gap at low precision?
        out[f"auto{bits}-scaled-sr"] = GradConfig(f"auto{bits}-scaled-sr", bits, "auto", "per-layer",
                                                  "stochastic")
    return out


CONFIGS = _configs()


def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 1000) -> float:
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(y), batch):
            correct += int((model(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum())
    return correct / len(y)


def train_one(arch: str, cfg: GradConfig, args: argparse.Namespace,
              train: tuple[torch.Tensor, torch.Tensor], test: tuple[torch.Tensor, torch.Tensor]) -> dict:
    torch.manual_seed(args.seed)
    model = build_model(arch, upsample_to=None, width=args.width, **({"bn": True} if args.bn else {}))
    lr = args.lr if args.lr is not None else (0.05 if arch == "resnet18" else 0.02)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
    x_train, y_train = train
    steps_per_epoch = math.ceil(len(y_train) / args.batch)
    total = steps_per_epoch * args.epochs
    warmup = min(20, total // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warmup if s < warmup else
        0.5 * (1 + math.cos(math.pi * (s - warmup) / max(total - warmup, 1))))
    quantizer = None
    if cfg.bits is not None:
        # conv outputs only by default (as in the paper): the classifier's logit gradient
        # (p - onehot) is bimodal, not lognormal, and a narrow format clips its large entry
        layer_types = (torch.nn.Conv2d,) if args.layers == "conv" else (torch.nn.Conv2d, torch.nn.Linear)
        quantizer = GradientQuantizer(model, bits=cfg.bits, fmt=cfg.fmt, scaling=cfg.scaling,
                                      placement=cfg.placement, rounding=cfg.rounding,
                                      layer_types=layer_types,
                                      refresh_every=args.refresh_every,
                                      generator=torch.Generator().manual_seed(args.seed))
    order = torch.Generator().manual_seed(args.seed)
    step_times: list[float] = []
    loss_value = math.nan
    for _ in range(args.epochs):
        model.train()
        perm = torch.randperm(len(y_train), generator=order)
        for i in range(0, len(perm), args.batch):
            idx = perm[i:i + args.batch]
            start = time.perf_counter()
            loss = F.cross_entropy(model(x_train[idx]), y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            schedule.step()
            step_times.append(time.perf_counter() - start)
            loss_value = float(loss.detach())
            if not math.isfinite(loss_value):
                break
    row = {"arch": arch, "config": cfg.name, "bits": cfg.bits,
           "format": None if cfg.fmt is None else str(cfg.fmt), "scaling": cfg.scaling,
           "rounding": cfg.rounding, "placement": cfg.placement if cfg.scaling == "per-layer" else None,
           "seed": args.seed,
           "test_accuracy": evaluate(model, *test), "final_train_loss": loss_value,
           "steps": len(step_times), "median_step_s": float(np.median(step_times[1:])),
           "train_seconds": float(sum(step_times))}
    if quantizer is not None:
        stats = quantizer.stats()
        row["layer_formats"] = {n: str(s.fmt) if s.fmt else "-" for n, s in stats.items()}
        row["mean_underflow_fraction"] = float(np.mean([s.underflow_fraction for s in stats.values()]))
        row["mean_rel_error"] = float(np.mean([s.rel_error for s in stats.values()]))
        row["mean_saturated_fraction"] = float(np.mean([s.saturated_fraction for s in stats.values()]))
        row["layer_scale_offsets"] = {  # final target minus the format's centre, per layer
            n: round(s.mean_target - s.fmt.log2_centre, 2) for n, s in stats.items()
            if s.fmt is not None and math.isfinite(s.mean_target)}
        print(quantizer.summary(), flush=True)
        quantizer.remove()
    return row


def markdown(rows: list[dict]) -> str:
    base = {r["arch"]: r for r in rows if r["config"] == "fp32"}
    lines = ["| arch | config | formats | test acc | vs FP32 | step cost vs FP32 |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        ref = base.get(r["arch"])
        delta = f"{100 * (r['test_accuracy'] - ref['test_accuracy']):+.2f} %" if ref else "-"
        ratio = f"{r['median_step_s'] / ref['median_step_s']:.2f}x" if ref else "-"
        fmts = sorted(set(r.get("layer_formats", {}).values())) or ["FP32"]
        lines.append(f"| {r['arch']} | {r['config']} | {', '.join(fmts)} | "
                     f"{100 * r['test_accuracy']:.2f} % | {delta} | {ratio} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet18", choices=["resnet18", "vgg16"])
    parser.add_argument("--configs", default="all",
                        help=f"comma-separated subset of {','.join(CONFIGS)} (fp32 is always run first)")
    parser.add_argument("--train-size", type=int, default=8000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--bn", action="store_true",
                        help="VGG with BatchNorm (the BN-free VGG reaches only ~52 %% in 2 epochs)")
    parser.add_argument("--refresh-every", type=int, default=50)
    parser.add_argument("--layers", default="conv", choices=["conv", "all"],
                        help="quantize gradients of conv outputs only, or of conv and linear")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None, help="JSON path (default benchmarks/results/gradfp_train/<arch>.json)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    names = list(CONFIGS) if args.configs == "all" else [c.strip() for c in args.configs.split(",")]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        parser.error(f"unknown configs {unknown}; choose from {list(CONFIGS)}")
    names = ["fp32"] + [n for n in names if n != "fp32"]
    train = load_fashion("train", args.train_size, args.seed)
    test = load_fashion("test", None, args.seed)
    out = Path(args.out) if args.out else results_dir("gradfp_train") / f"{args.arch}.json"
    command = command_line(argv)
    rows: list[dict] = []
    for name in names:
        rows.append(train_one(args.arch, CONFIGS[name], args, train, test))
        r = rows[-1]
        print(f"{r['arch']} {r['config']}: acc {r['test_accuracy']:.4f} loss {r['final_train_loss']:.3f} "
              f"step {r['median_step_s'] * 1e3:.0f} ms", flush=True)
        write_result(out, {"settings": vars(args), "runs": rows}, argv)
    print(markdown(rows))
    print(f"\nreproduce: {command}")


if __name__ == "__main__":
    main()
