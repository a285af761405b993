r"""Train the reference CNNs on Fashion-MNIST with pruned neural gradients.

Every run uses the same seed, data subset, order and schedule; only the pruning of the
gradients entering each Conv2d output (--layers conv+linear adds Linear) differs: none, the stochastic (unbiased)
rule at several sparsities, and at the high sparsities the biased baselines (magnitude
pruning below the lognormal quantile, exact top-k). Accuracy is on the full 10k test set.
Sized for a shared 2-core CPU (native 28x28, narrow models, a train subset, 2 epochs).

    python benchmarks/gradprune_train.py --archs vgg16 --out vgg16.json
    python benchmarks/gradprune_train.py --archs resnet18 --out resnet18.json

12 runs per model: an estimated 10 min (VGG) and 20 min (ResNet) on one idle core; measured
~25 and ~35 min on this busy shared machine. Fewer --sparsities or an empty --baselines is shorter.

Finished runs are kept in the JSON file and skipped when the script is rerun with the same
settings, so an interrupted sweep resumes. Files go to benchmarks/results/gradprune_train/;
each records its commands, git commit and machine.

Every run also reports ``overall_sparsity``: the zeros in the gradient each conv's backward
really receives (counted after the pruner, over the steps after the warm-up),
element-weighted over all convs, unpruned ones included; ``layer_sparsity`` per conv.
Recipe B of docs/gradtools_pruning.md (half-epoch warm-up, VGG's last block unpruned, the
target raised so that 85 % is measured), one seed per file, paired with
benchmarks/gradprune_report.py:

    python benchmarks/gradprune_train.py --archs vgg16 --seed 0 --sparsities 0.875 --baselines \
        --warmup 39 --exclude 'features\.(34|37|40)$' --out vgg16_recipe_seed0.json
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time

import torch
from torch import nn

from gradprune_common import load_fashion, make_model, markdown_table
from result_files import command_line, results_dir, write_result

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


def build_pruners(model: nn.Module, method: str, sparsity: float, args: argparse.Namespace) -> list[GradientPruner]:
    """One pruner for the layers at ``sparsity`` (with ``--min-cosine`` if given) and one per
    ``--layer-sparsity`` override (a plain target); ``--exclude``d layers get none."""
    if method == "none":
        return []
    exclude = re.compile(args.exclude) if args.exclude else None
    overrides = [(re.compile(pattern), value) for pattern, value in parse_overrides(args.layer_sparsity)]

    def chosen(pattern: re.Pattern | None):
        """Layers of one pruner: not excluded; the override's own, or none of the overrides'."""
        def keep(name: str, _m: nn.Module) -> bool:
            if exclude is not None and exclude.search(name):
                return False
            if pattern is not None:
                return pattern.search(name) is not None
            return not any(p.search(name) for p, _v in overrides)
        return keep

    def options(pattern: re.Pattern | None) -> dict:
        """The noise floor and the global budget belong to the base pruner (stochastic only)."""
        if method != "stochastic" or pattern is not None:
            return {}
        return {"min_cosine": args.min_cosine, "floor": args.floor, "global_budget": args.global_budget,
                "max_sparsity": max(args.max_sparsity, sparsity)}

    return [GradientPruner(model, value, method=method, warmup_steps=args.warmup,
                           layer_types=LAYER_TYPES[args.layers], include=chosen(pattern),
                           refresh_every=args.refresh_every, **options(pattern),
                           generator=torch.Generator(device=args.device).manual_seed(args.seed + 1000 * i))
            for i, (pattern, value) in enumerate([(None, sparsity), *overrides])]


def train_once(arch: str, method: str, sparsity: float, data: dict, args: argparse.Namespace) -> dict:
    model = make_model(arch, args.width, seed=args.seed, **ARCH_KWARGS[arch]).to(args.device)
    peak = PEAK_LR[arch] if args.lr is None else args.lr
    opt = torch.optim.SGD(model.parameters(), lr=peak, momentum=0.9, weight_decay=5e-4, nesterov=True)
    pruners = build_pruners(model, method, sparsity, args)
    # attached after the pruner, so it sees the gradient the conv's backward really gets
    counter = ZeroCounter(model, LAYER_TYPES[args.layers], skip_steps=args.warmup)
    x, y = data["train"]
    steps_per_epoch = len(y) // args.batch
    total = steps_per_epoch * args.epochs
    order_gen = torch.Generator().manual_seed(args.seed)
    step, losses, start = 0, [], time.perf_counter()
    for epoch in range(args.epochs):
        order = torch.randperm(len(y), generator=order_gen)
        for b in range(steps_per_epoch):
            idx = order[b * args.batch:(b + 1) * args.batch].to(x.device)
            for group in opt.param_groups:
                group["lr"] = lr_at(step, total, peak, args.lr_warmup)
            opt.zero_grad(set_to_none=True)
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            step += 1
        # progress, so that a run stopped at a time limit still says how far it got
        print(f"{arch} {method} {sparsity}: epoch {epoch + 1}/{args.epochs} train loss "
              f"{sum(losses[-steps_per_epoch:]) / steps_per_epoch:.4f} ({time.perf_counter() - start:.0f} s)",
              file=sys.stderr, flush=True)
    train_s = time.perf_counter() - start
    for pruner in pruners:
        pruner.remove()
    counter.remove()
    result = {
        "arch": arch, "method": method, "sparsity": sparsity,
        "test_accuracy": accuracy(model, *data["test"]),
        "final_train_loss": sum(losses[-20:]) / len(losses[-20:]),
        "train_seconds": train_s, "steps": total,
    }
    if pruners:
        stats = {name: st for pruner in pruners for name, st in pruner.stats().items()}
        result["layers"] = {name: {"mean_sparsity": s.mean_sparsity, "zero_fraction_in": s.zero_fraction,
                                   "sigma": s.sigma, "mu": s.mu, "fits": s.fits}
                            for name, s in stats.items()}
        sizes = [s.mean_sparsity for s in stats.values()]
        result["mean_layer_sparsity"] = sum(sizes) / len(sizes)
        result["summary"] = "\n".join(pruner.summary() for pruner in pruners)
    else:
        result["mean_layer_sparsity"] = 0.0
    result.update(counter.report())
    return result


def parse_overrides(items: list[str] | None) -> list[tuple[str, float]]:
    """``REGEX=SPARSITY`` items of --layer-sparsity as (regex, sparsity) pairs."""
    pairs = []
    for item in items or []:
        pattern, sep, value = item.rpartition("=")
        if not sep or not pattern:
            raise ValueError(f"--layer-sparsity expects REGEX=SPARSITY, got {item!r}")
        pairs.append((pattern, float(value)))
    return pairs


class ZeroCounter:
    """Exact zeros in the gradient entering each selected layer's output, after any pruning,
    over the steps after the warm-up: per layer and element-weighted over all of them
    (unpruned layers included), i.e. the share of the backward convolutions' input that is 0."""

    def __init__(self, model: nn.Module, layer_types: tuple, skip_steps: int) -> None:
        self.zeros: dict[str, int] = {}
        self.elements: dict[str, int] = {}
        self.calls: dict[str, int] = {}
        self.skip = skip_steps
        self.handles = [m.register_forward_hook(self._hook(n)) for n, m in model.named_modules()
                        if isinstance(m, layer_types)]

    def _hook(self, name: str):
        def count(grad: torch.Tensor) -> None:
            self.calls[name] = self.calls.get(name, 0) + 1
            if self.calls[name] > self.skip:
                self.zeros[name] = self.zeros.get(name, 0) + int(grad.numel() - torch.count_nonzero(grad))
                self.elements[name] = self.elements.get(name, 0) + grad.numel()

        def forward_hook(_m: nn.Module, _i: tuple, out: torch.Tensor) -> None:
            if out.requires_grad:
                out.register_hook(count)
        return forward_hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()

    def report(self) -> dict:
        total = sum(self.elements.values())
        if not total:
            return {}
        return {"overall_sparsity": sum(self.zeros.values()) / total,
                "layer_sparsity": {n: self.zeros[n] / self.elements[n] for n in self.elements},
                "layer_elements_per_step": {n: self.elements[n] // max(1, self.calls[n] - self.skip)
                                            for n in self.elements}}


def planned_runs(args: argparse.Namespace) -> list[tuple[str, str, float]]:
    runs = []
    for arch in args.archs:
        if not args.no_unpruned:
            runs.append((arch, "none", 0.0))
        if args.unpruned_only:
            continue
        runs += [(arch, "stochastic", s) for s in args.sparsities]
        runs += [(arch, m, s) for m in args.baselines for s in args.baseline_sparsities]
    return runs


def settings_key(args: argparse.Namespace) -> dict:
    keys = ("layers", "width", "train_size", "epochs", "batch", "seed", "warmup", "refresh_every", "lr", "lr_warmup")
    settings = {k: getattr(args, k) for k in keys}
    if args.exclude:  # only when set, so older result files still resume
        settings["exclude"] = args.exclude
    if args.layer_sparsity:
        settings["layer_sparsity"] = args.layer_sparsity
    if args.min_cosine is not None:
        settings["min_cosine"] = args.min_cosine
    if args.floor is not None:
        settings["floor"] = args.floor
    if args.global_budget:
        settings["global_budget"] = True
        settings["max_sparsity"] = args.max_sparsity
    if args.device != "cpu":  # only when set, so older (CPU) result files still resume
        settings["device"] = args.device
    return settings


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
    parser.add_argument("--exclude", default=None,
                        help="regex on layer names left unpruned (their zeros still count in overall_sparsity)")
    parser.add_argument("--layer-sparsity", nargs="*", default=None, metavar="REGEX=SPARSITY",
                        help="per-layer-group targets (a separate pruner each) instead of --sparsities "
                             "for the layers whose name matches")
    parser.add_argument("--no-unpruned", action="store_true",
                        help="skip the unpruned reference run (it is the same in every file of a seed)")
    parser.add_argument("--min-cosine", type=float, default=None,
                        help="stochastic pruner's per-layer noise floor (GradientPruner min_cosine) for the "
                             "layers without a --layer-sparsity override; overridden layers keep a plain target")
    parser.add_argument("--floor", default=None, metavar="REGEX",
                        help="with --min-cosine: the layers the floor applies to (default: all of the base pruner's)")
    parser.add_argument("--global-budget", action="store_true",
                        help="the base pruner's target is for its layers together: the layers without the floor "
                             "take up what the floor holds back (GradientPruner global_budget)")
    parser.add_argument("--max-sparsity", type=float, default=0.95,
                        help="with --global-budget: no layer is aimed above this")
    parser.add_argument("--unpruned-only", action="store_true",
                        help="only the unpruned reference run (run the pruned ones in another process "
                             "with --no-unpruned, into another --out file)")
    parser.add_argument("--device", default="cpu",
                        help="torch device to train on, e.g. cuda (a CUDA run pairs only with CUDA runs: "
                             "its kernels and random draws differ from the CPU's)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="runs.json", help="file name under benchmarks/results/gradprune_train/")
    args = parser.parse_args()
    if args.unpruned_only and args.no_unpruned:
        parser.error("--unpruned-only and --no-unpruned leave nothing to run")
    try:
        args.device = str(torch.device(args.device))
    except RuntimeError as exc:
        parser.error(f"--device: {exc}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda: this torch sees no CUDA device")
    torch.set_num_threads(args.threads)

    path = results_dir("gradprune_train") / args.out
    previous = json.loads(path.read_text()) if path.exists() else {}
    same = previous.get("settings") == settings_key(args)
    runs = previous.get("runs", []) if same else []
    command = command_line()
    commands = [c for c in previous.get("commands", [previous.get("command")]) if c] if same else []
    commands += [] if command in commands else [command]
    done = {(r["arch"], r["method"], r["sparsity"]) for r in runs}
    data = {split: tuple(t.to(args.device) for t in tensors) for split, tensors in
            (("train", load_fashion("train", limit=args.train_size, seed=args.seed)), ("test", load_fashion("test")))}
    for arch, method, sparsity in planned_runs(args):
        if (arch, method, sparsity) in done:
            continue
        result = train_once(arch, method, sparsity, data, args)
        runs.append(result)
        write_result(path, {"settings": settings_key(args), "command": command, "commands": commands,
                            "runs": runs})
        print(f"{arch} {method} {sparsity}: acc {result['test_accuracy']:.4f} "
              f"sparsity {result['mean_layer_sparsity']:.3f} overall {result.get('overall_sparsity', 0):.3f} "
              f"({result['train_seconds']:.0f} s)",
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
    cmd = command_line()
    return (f"{table}\n\nTest accuracy % on the 10k test set (difference to unpruned) @ achieved "
            f"gradient sparsity averaged over layers.\nreproduce: {cmd}")


if __name__ == "__main__":
    main()
