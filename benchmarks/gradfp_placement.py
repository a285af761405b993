"""Why mean-centred per-layer scaling loses accuracy at 6 bits: where each placement puts
real conv gradients in the format, and what that does to the weight gradient.

Trains the benchmark ResNet-18 (gradfp_train.py settings) in FP32 and, at a few steps,
captures every conv's input and neural gradient. For each layer and each placement of the
auto format's range (the paper's mean-centring, the fitted |g|-weighted target, amax),
it quantizes the gradient and reports the error of the weight gradient it produces
(||dW_q - dW|| / ||dW||, dW = conv2d_weight(x, g)), the fraction of entries and of sum|g|
that saturate or underflow, and the mean relative error (the paper's criterion). It also
compares the top of the measured log2|g| distribution with what a lognormal of the same
mean and spread predicts, and the |g|-weighted placement the lognormal model would pick.

    python benchmarks/gradfp_placement.py --steps 0 40 100 --bits 6
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.grad import conv2d_weight

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from benchmarks.gradprune_common import load_fashion  # noqa: E402
from benchmarks.result_files import command_line, results_dir, write_result  # noqa: E402
from gradtools.fp import FPFormat, best_format, quantize_fp  # noqa: E402
from gradtools.quantize import log2_moments, max_scale_exponent, weighted_scale_exponent  # noqa: E402
from models.architectures import build_model  # noqa: E402


def capture(args: argparse.Namespace) -> dict[int, dict[str, dict]]:
    """FP32 training with the gradfp_train.py schedule; conv inputs and output gradients
    at the requested steps (the state before that step's update)."""
    torch.manual_seed(args.seed)
    model = build_model("resnet18", upsample_to=None, width=args.width)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4, nesterov=True)
    x_train, y_train = load_fashion("train", args.train_size, args.seed)
    total = math.ceil(len(y_train) / args.batch) * args.epochs
    warmup = min(20, total // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warmup if s < warmup else
        0.5 * (1 + math.cos(math.pi * (s - warmup) / max(total - warmup, 1))))
    want = set(args.steps)
    current: dict[str, dict] = {}
    active = [False]

    def hook(name: str):  # noqa: ANN202
        def forward_hook(module: torch.nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            if not active[0]:
                return
            rec = {"x": inputs[0].detach().clone(), "wshape": tuple(module.weight.shape),
                   "stride": module.stride, "padding": module.padding}
            current[name] = rec
            output.register_hook(lambda g: rec.__setitem__("g", g.detach().clone()))
        return forward_hook

    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Conv2d):
            module.register_forward_hook(hook(name))
    order = torch.Generator().manual_seed(args.seed)
    snapshots: dict[int, dict[str, dict]] = {}
    step = 0
    while step <= max(want):
        perm = torch.randperm(len(y_train), generator=order)
        for i in range(0, len(perm), args.batch):
            if step > max(want):
                break
            active[0] = step in want
            current = {}
            idx = perm[i:i + args.batch]
            loss = F.cross_entropy(model(x_train[idx]), y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            schedule.step()
            if active[0]:
                snapshots[step] = current
            step += 1
    return snapshots


def lognormal_weighted_offset(fmt: FPFormat, sigma2: float) -> int:
    """Integer offset of the mean from fmt.log2_centre minimizing E|q - g| / E|g| when
    log2|g| ~ N(mean, sigma2^2) exactly (Gaussian-quantile quadrature, as best_format)."""
    n = 4096
    z = torch.special.ndtri((torch.arange(n, dtype=torch.float64) + 0.5) / n)
    best, best_err = 0, math.inf
    for d in range(-40, 11):
        mag = torch.exp2(fmt.log2_centre + d + sigma2 * z)
        err = float((quantize_fp(mag, fmt) - mag).abs().sum() / mag.sum())
        if err < best_err:
            best, best_err = d, err
    return best


def layer_report(rec: dict, bits: int) -> dict:
    g64 = rec["g"].double()
    x64 = rec["x"].double()
    dw = conv2d_weight(x64, rec["wshape"], g64, stride=rec["stride"], padding=rec["padding"])
    mag = g64.abs()
    nonzero = mag > 0
    logs = torch.log2(mag[nonzero])
    mu2, sigma2 = float(logs.mean()), float(logs.std())
    fmt = best_format(sigma2, bits)
    n = int(nonzero.sum())
    placements = {"centre": round(fmt.log2_centre - float(log2_moments(rec["g"])[0])),
                  "weighted": weighted_scale_exponent(rec["g"], fmt),
                  "max": int(max_scale_exponent(rec["g"], fmt))}
    out = {"format": str(fmt), "mu2": mu2, "sigma2": sigma2, "numel": n,
           "top_minus_mean": float(logs.max()) - mu2,
           "top_minus_mean_lognormal": sigma2 * float(torch.special.ndtri(torch.tensor(1 - 0.5 / n, dtype=torch.float64))),
           "l1_centre_minus_mean": float((logs * mag[nonzero]).sum() / mag[nonzero].sum()) - mu2,
           "l1_centre_minus_mean_lognormal": sigma2 ** 2 * math.log(2),
           "lognormal_weighted_offset": lognormal_weighted_offset(fmt, sigma2),
           "placements": {}}
    for label, k in placements.items():
        q = quantize_fp(rec["g"], fmt, scale=2.0 ** k).double()
        dwq = conv2d_weight(x64, rec["wshape"], q, stride=rec["stride"], padding=rec["padding"])
        scaled = mag * 2.0 ** k
        sat = nonzero & (scaled >= fmt.max_normal)
        under = nonzero & (q == 0)
        out["placements"][label] = {
            "scale_exp": k, "offset_from_centre": round(mu2 + k - fmt.log2_centre, 2),
            "weight_grad_error": float((dwq - dw).norm() / dw.norm()),
            "saturated_fraction": float(sat.sum()) / n, "saturated_mass": float(mag[sat].sum() / mag.sum()),
            "underflow_fraction": float(under.sum()) / n, "underflow_mass": float(mag[under].sum() / mag.sum()),
            "rel_error": float(((q - g64).abs()[nonzero] / mag[nonzero]).mean()),
            "weighted_error": float((q - g64).abs().sum() / mag.sum())}
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[0, 40, 100])
    parser.add_argument("--bits", type=int, default=6)
    parser.add_argument("--train-size", type=int, default=8000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None, help="JSON path (default benchmarks/results/gradfp_placement/resnet18.json)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    command = command_line(argv)
    snapshots = capture(args)
    results: dict[str, dict] = {}
    for step, layers in sorted(snapshots.items()):
        results[str(step)] = {name: layer_report(rec, args.bits) for name, rec in layers.items()}
        print(f"\nstep {step}, {args.bits} bits: weight-gradient error ||dW_q - dW||/||dW|| by placement "
              f"(saturated share of sum|g|); top of log2|g| above its mean, measured vs lognormal")
        print("| layer | format | sigma2 | top - mean (lognormal) | centre | weighted | max |")
        print("|---|---|---|---|---|---|---|")
        for name, r in results[str(step)].items():
            cells = [f"{p['weight_grad_error']:.3f} ({100 * p['saturated_mass']:.0f} %)" for p in r["placements"].values()]
            print(f"| {name} | {r['format']} | {r['sigma2']:.2f} | {r['top_minus_mean']:.1f} "
                  f"({r['top_minus_mean_lognormal']:.1f}) | " + " | ".join(cells) + " |")
    summary = {}
    for label in ("centre", "weighted", "max"):
        errs = [r["placements"][label]["weight_grad_error"] for layers in results.values() for r in layers.values()]
        late = [r["placements"][label]["weight_grad_error"] for step, layers in results.items() if int(step) > 0
                for r in layers.values()]
        summary[label] = {"mean_weight_grad_error": float(np.mean(errs)), "median_weight_grad_error": float(np.median(errs)),
                          "mean_weight_grad_error_after_step0": float(np.mean(late)) if late else None,
                          "mean_saturated_mass": float(np.mean([r["placements"][label]["saturated_mass"]
                                                                for layers in results.values() for r in layers.values()])),
                          "mean_rel_error": float(np.mean([r["placements"][label]["rel_error"]
                                                           for layers in results.values() for r in layers.values()]))}
    print("\nsummary over layers and steps:", json.dumps(summary, indent=1))
    out = Path(args.out) if args.out else results_dir("gradfp_placement") / "resnet18.json"
    write_result(out, {"settings": vars(args), "summary": summary, "steps": results}, argv)
    print(f"\nreproduce: {command}")


if __name__ == "__main__":
    main()
