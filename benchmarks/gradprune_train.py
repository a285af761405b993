"""Train the reference CNNs on Fashion-MNIST with pruned neural gradients.

Every run uses the same seed, data subset, order and schedule; only the pruning of the
gradients entering each Conv2d output (--layers conv+linear adds Linear) differs: none, the stochastic (unbiased)
rule at several sparsities, and at the high sparsities the biased baselines (magnitude
pruning below the lognormal quantile, exact top-k). Accuracy is on the full 10k test set.
Sized for a shared 2-core CPU (native 28x28, narrow models, a train subset, 2 epochs).

    python benchmarks/gradprune_train.py --archs vgg16 --out gradprune_train_vgg16.json
    python benchmarks/gradprune_train.py --archs resnet18 --out gradprune_train_resnet18.json

12 runs per model: an estimated 10 min (VGG) and 20 min (ResNet) on one idle core; measured
~25 and ~35 min on this busy shared machine. Fewer --sparsities or an empty --baselines is shorter.

Finished runs are kept in the JSON file and skipped when the script is rerun with the same
settings, so an interrupted sweep resumes.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time

import torch
from torch import nn

from gradprune_common import RESULTS_DIR, load_fashion, make_model, markdown_table, write_json

from gradtools import GradientPruner  # noqa: E402  (gradprune_common put the repo root on sys.path)

#: Peak SGD learning rate per model: the BN-free VGG needs a gentler one to start training.
PEAK_LR = {"resnet18": 0.05, "vgg16": 0.05}
#: VGG with BatchNorm: the BN-free variant barely trains in 2 epochs (55 % test accuracy),
#: which would make any comparison meaningless.
ARCH_KWARGS: dict[str, dict] = {"resnet18": {}, "vgg16": {"bn": True}}
LAYER_TYPES = {"conv": (nn.Conv2d,), "conv+linear": (nn.Conv2d, nn.Linear)}


def lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay to zero."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * 0.5 * (1.0 + math.cos(math.pi * progress))


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 1000) -> float:
    model.eval()
    correct = sum(int((model(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum()) for i in range(0, len(y), batch))
    model.train()
    return correct / len(y)


def train_once(arch: str, method: str, sparsity: float, data: dict, args: argparse.Namespace) -> dict:
    model = make_model(arch, args.width, seed=args.seed, **ARCH_KWARGS[arch])
    peak = PEAK_LR[arch] if args.lr is None else args.lr
    opt = torch.optim.SGD(model.parameters(), lr=peak, momentum=0.9, weight_decay=5e-4, nesterov=True)
    pruner = None
    if method != "none":
        pruner = GradientPruner(model, sparsity, method=method, warmup_steps=args.warmup,
                                layer_types=LAYER_TYPES[args.layers],
                                refresh_every=args.refresh_every,
                                generator=torch.Generator().manual_seed(args.seed))
    x, y = data["train"]
    steps_per_epoch = len(y) // args.batch
    total = steps_per_epoch * args.epochs
    order_gen = torch.Generator().manual_seed(args.seed)
    step, losses, start = 0, [], time.perf_counter()
    for _epoch in range(args.epochs):
        order = torch.randperm(len(y), generator=order_gen)
        for b in range(steps_per_epoch):
            idx = order[b * args.batch:(b + 1) * args.batch]
            for group in opt.param_groups:
                group["lr"] = lr_at(step, total, peak, args.lr_warmup)
            opt.zero_grad(set_to_none=True)
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            step += 1
    train_s = time.perf_counter() - start
    if pruner is not None:
        pruner.remove()
    result = {
        "arch": arch, "method": method, "sparsity": sparsity,
        "test_accuracy": accuracy(model, *data["test"]),
        "final_train_loss": sum(losses[-20:]) / len(losses[-20:]),
        "train_seconds": train_s, "steps": total,
    }
    if pruner is not None:
        stats = pruner.stats()
        result["layers"] = {name: {"mean_sparsity": s.mean_sparsity, "zero_fraction_in": s.zero_fraction,
                                   "sigma": s.sigma, "mu": s.mu, "fits": s.fits}
                            for name, s in stats.items()}
        sizes = [s.mean_sparsity for s in stats.values()]
        result["mean_layer_sparsity"] = sum(sizes) / len(sizes)
        result["summary"] = pruner.summary()
    else:
        result["mean_layer_sparsity"] = 0.0
    return result


def planned_runs(args: argparse.Namespace) -> list[tuple[str, str, float]]:
    runs = []
    for arch in args.archs:
        runs.append((arch, "none", 0.0))
        runs += [(arch, "stochastic", s) for s in args.sparsities]
        runs += [(arch, m, s) for m in args.baselines for s in args.baseline_sparsities]
    return runs


def settings_key(args: argparse.Namespace) -> dict:
    keys = ("layers", "width", "train_size", "epochs", "batch", "seed", "warmup", "refresh_every", "lr", "lr_warmup")
    return {k: getattr(args, k) for k in keys}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archs", nargs="+", default=["vgg16", "resnet18"], choices=sorted(PEAK_LR))
    parser.add_argument("--width", type=int, default=8, help="channel width of the first stage")
    parser.add_argument("--train-size", type=int, default=10_000, help="seeded random train subset")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=None, help="peak lr (default: per model)")
    parser.add_argument("--lr-warmup", type=int, default=20, help="linear lr warm-up steps")
    parser.add_argument("--warmup", type=int, default=20, help="pruner full-precision warm-up (backward passes)")
    parser.add_argument("--refresh-every", type=int, default=1, help="backward passes between lognormal fits")
    parser.add_argument("--sparsities", nargs="+", type=float, default=[0.5, 0.8, 0.85, 0.9, 0.95])
    parser.add_argument("--baselines", nargs="*", default=["magnitude", "topk"])
    parser.add_argument("--baseline-sparsities", nargs="*", type=float, default=[0.85, 0.9, 0.95])
    parser.add_argument("--layers", choices=sorted(LAYER_TYPES), default="conv",
                        help="layers whose output gradient is pruned")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="gradprune_train.json", help="file name under benchmarks/results/")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    path = RESULTS_DIR / args.out
    previous = json.loads(path.read_text()) if path.exists() else {}
    runs = previous.get("runs", []) if previous.get("settings") == settings_key(args) else []
    done = {(r["arch"], r["method"], r["sparsity"]) for r in runs}
    data = {"train": load_fashion("train", limit=args.train_size, seed=args.seed), "test": load_fashion("test")}
    for arch, method, sparsity in planned_runs(args):
        if (arch, method, sparsity) in done:
            continue
        result = train_once(arch, method, sparsity, data, args)
        runs.append(result)
        write_json(args.out, {"settings": settings_key(args), "runs": runs})
        print(f"{arch} {method} {sparsity}: acc {result['test_accuracy']:.4f} "
              f"sparsity {result['mean_layer_sparsity']:.3f} ({result['train_seconds']:.0f} s)",
              file=sys.stderr, flush=True)
    print(report(runs, args))


def report(runs: list[dict], args: argparse.Namespace) -> str:
    by_key = {(r["arch"], r["method"], r["sparsity"]): r for r in runs}
    rows = []
    for arch in args.archs:
        base = by_key.get((arch, "none", 0.0))
        for s in [0.0, *args.sparsities]:
            method = "none" if s == 0.0 else "stochastic"
            cells = [arch, f"{100 * s:.0f} %"]
            for m in (method, "magnitude", "topk"):
                r = by_key.get((arch, m, s))
                if r is None:
                    cells.append("")
                    continue
                delta = f" ({100 * (r['test_accuracy'] - base['test_accuracy']):+.2f})" if base and s else ""
                cells.append(f"{100 * r['test_accuracy']:.2f}{delta} @ {100 * r['mean_layer_sparsity']:.1f} %")
            rows.append(cells)
    table = markdown_table(["model", "target sparsity", "stochastic (ours)", "magnitude", "top-k"], rows)
    cmd = "python benchmarks/gradprune_train.py " + " ".join(sys.argv[1:])
    return (f"{table}\n\nTest accuracy % on the 10k test set (difference to unpruned) @ achieved "
            f"gradient sparsity averaged over layers.\nreproduce: {cmd}")


if __name__ == "__main__":
    main()
