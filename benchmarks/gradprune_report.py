"""Paired, multi-seed summary of gradprune_train.py result files.

One training run per seed is not enough here: at this budget the unpruned accuracy alone
moves by 2-2.5 points from seed to seed. Every pruned run is therefore paired with the
unpruned run of the same model, seed and schedule (same init, data and order), and the
table reports the mean paired difference with its standard error over seeds.

    python benchmarks/gradprune_report.py                       # every results/gradprune_train/*.json
    python benchmarks/gradprune_report.py benchmarks/results/gradprune_train/vgg16_recipe_seed*.json
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
from collections import defaultdict
from pathlib import Path

import torch
from torch import nn

from gradprune_common import make_model, markdown_table
from result_files import results_dir

#: Settings that change an unpruned run; the pruner's own (warmup, exclude, ...) do not.
TRAINING_KEYS = ("width", "train_size", "epochs", "batch", "seed", "lr", "lr_warmup", "device")


def load(paths: list[Path]) -> tuple[dict, dict]:
    """(unpruned accuracy by training key, pruned runs grouped by recipe)."""
    unpruned: dict[tuple, float] = {}
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for path in paths:
        payload = json.loads(path.read_text())
        settings = payload.get("settings", {})
        train_key = tuple(settings.get(k) for k in TRAINING_KEYS)
        for run in payload.get("runs", []):
            if run["method"] == "none":
                unpruned[(run["arch"], *train_key)] = run["test_accuracy"]
                continue
            layer_groups = settings.get("exclude") or "-"
            if settings.get("layer_sparsity"):
                layer_groups += "; " + "; ".join(settings["layer_sparsity"])
            if settings.get("min_cosine") is not None:
                layer_groups += f"; cosine >= {settings['min_cosine']:g}"
                if settings.get("floor"):
                    layer_groups += f" on {settings['floor']}"
            if settings.get("global_budget"):
                layer_groups += f"; global budget (max {settings['max_sparsity']:g})"
            width = settings.get("width", 8)
            model = run["arch"] if width == 8 else f"{run['arch']} width {width}"
            if settings.get("device"):  # absent: CPU
                model += f" on {settings['device']}"
            recipe = (model, settings.get("train_size"), settings.get("epochs"), settings.get("warmup"),
                      settings.get("refresh_every"),
                      layer_groups, settings.get("layers"), run["method"], run["sparsity"])
            groups[recipe].append({**run, "train_key": (run["arch"], *train_key), "file": path.name})
    return unpruned, groups


_MAC_CACHE: dict[tuple, dict[str, int]] = {}


def backward_macs(arch: str, width: int) -> dict[str, int]:
    """Multiply-adds per image of each conv's backward products, keyed by layer name: the
    weight gradient and, unless the conv reads the input image, the input gradient; each is
    output elements x C_in/groups x kh x kw."""
    key = (arch, width)
    if key not in _MAC_CACHE:
        model = make_model(arch, width, seed=0, **({"bn": True} if arch == "vgg16" else {}))
        macs: dict[str, int] = {}
        hooks = [m.register_forward_hook(
            lambda mod, inp, out, name=n: macs.__setitem__(
                name, (1 + inp[0].requires_grad) * out[0].numel() * mod.in_channels // mod.groups
                * mod.kernel_size[0] * mod.kernel_size[1]))
            for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
        model.eval()(torch.zeros(1, 1, 28, 28))
        for h in hooks:
            h.remove()
        _MAC_CACHE[key] = macs
    return _MAC_CACHE[key]


def mac_weighted_sparsity(run: dict, width: int) -> float:
    """Share of the conv backward multiply-adds whose gradient operand is zero."""
    per_layer = run.get("layer_sparsity") or {n: s["mean_sparsity"] for n, s in run.get("layers", {}).items()}
    macs = backward_macs(run["arch"], width)
    return sum(per_layer.get(n, 0.0) * m for n, m in macs.items()) / sum(macs.values())


def summarize(unpruned: dict, groups: dict) -> list[list[str]]:
    rows = []
    for recipe in sorted(groups, key=lambda r: tuple(str(x) for x in r)):
        arch, train_size, epochs, warmup, refresh, exclude, layers, method, sparsity = recipe
        runs = [r for r in groups[recipe] if r["train_key"] in unpruned]
        if not runs:
            continue
        diffs = [100 * (r["test_accuracy"] - unpruned[r["train_key"]]) for r in runs]
        bases = [100 * unpruned[r["train_key"]] for r in runs]
        overall = [r.get("overall_sparsity", r["mean_layer_sparsity"]) for r in runs]
        macs = [mac_weighted_sparsity(r, r["train_key"][1]) for r in runs]
        se = statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else float("nan")
        seeds = ",".join(str(r["train_key"][5]) for r in runs)
        rows.append([arch, f"{train_size}", f"{epochs}", f"{warmup}", f"{refresh}", exclude, f"{method} {100 * sparsity:.1f} %",
                     f"{100 * statistics.mean(overall):.1f} %", f"{100 * statistics.mean(macs):.1f} %", seeds,
                     f"{statistics.mean(bases):.2f}", f"{statistics.mean(bases) + statistics.mean(diffs):.2f}",
                     f"{statistics.mean(diffs):+.2f} ± {se:.2f}", f"{min(diffs):+.2f} / {max(diffs):+.2f}"])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="*", type=Path)
    args = parser.parse_args()
    files = args.files or sorted(results_dir("gradprune_train").glob("*.json"))
    unpruned, groups = load(files)
    header = ["model", "train images", "epochs", "warm-up", "refresh", "unpruned layers; other targets", "target", "achieved (all convs)",
              "MAC-weighted", "seeds", "unpruned %", "pruned %", "paired diff ± SE", "min / max diff"]
    print(markdown_table(header, summarize(unpruned, groups)))
    print("\nachieved: zeros in the gradient entering every conv's backward (unpruned layers included),"
          " element-weighted, over the steps after the warm-up (mean_layer_sparsity for old files);"
          "\nMAC-weighted: the same zeros weighted by the multiply-adds of each conv's weight- and"
          " input-gradient products.\nDifferences are pruned minus unpruned test accuracy (points), paired by seed."
          "\nreproduce: python benchmarks/gradprune_report.py " + " ".join(str(f) for f in args.files))


if __name__ == "__main__":
    main()
