"""Time cost of GradientPruner per training step, as a ratio to an unpruned step.

Compares a fresh lognormal fit on every backward call (refresh_every=1) with a threshold
cached between refreshes (refresh_every=100), plus the baselines. Configurations are
interleaved round by round and the median is reported, because this machine is shared.

    python benchmarks/gradprune_overhead.py            # ~3 minutes on one thread
    python benchmarks/gradprune_overhead.py --device cuda --out cuda.json
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
from torch import nn

from gradprune_common import load_fashion, make_model, markdown_table
from result_files import REPO_ROOT, command_line, results_dir, write_result

from gradtools import GradientPruner  # noqa: E402  (gradprune_common put the repo root on sys.path)

CONFIGS: dict[str, dict | None] = {
    "unpruned": None,
    "stochastic, fit every call": {"method": "stochastic", "refresh_every": 1},
    "stochastic, fit every call, min_cosine 0.92": {"method": "stochastic", "refresh_every": 1, "min_cosine": 0.92},
    "stochastic, cached (refresh 100)": {"method": "stochastic", "refresh_every": 100},
    "magnitude, cached (refresh 100)": {"method": "magnitude", "refresh_every": 100},
    "top-k (exact)": {"method": "topk"},
}


def time_steps(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
               steps: int) -> float:
    """Seconds per SGD step (forward, backward, update), averaged over ``steps`` (on a GPU,
    until its queued work is done)."""
    start = time.perf_counter()
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    if x.is_cuda:
        torch.cuda.synchronize(x.device)
    return (time.perf_counter() - start) / steps


def measure(arch: str, width: int, batch: int, rounds: int, steps: int, sparsity: float,
            device: str = "cpu") -> dict:
    x, y = (t.to(device) for t in load_fashion("train", limit=batch, seed=0))
    per_config: dict[str, list[float]] = {name: [] for name in CONFIGS}
    models = {}
    for name, cfg in CONFIGS.items():
        model = make_model(arch, width, seed=0).to(device)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        pruner = None
        if cfg is not None:
            pruner = GradientPruner(model, sparsity, generator=torch.Generator(device=device).manual_seed(0), **cfg)
        time_steps(model, opt, x, y, 2)  # allocator and first-fit warm-up
        models[name] = (model, opt, pruner)
    for _ in range(rounds):
        for name, (model, opt, _pruner) in models.items():
            per_config[name].append(time_steps(model, opt, x, y, steps))
    base = statistics.median(per_config["unpruned"])
    results = {}
    for name, times in per_config.items():
        pruner = models[name][2]
        sparsities = [s.mean_sparsity for s in pruner.stats().values()] if pruner else []
        results[name] = {
            "median_step_s": statistics.median(times), "all_step_s": times,
            "ratio_to_unpruned": statistics.median(times) / base,
            "mean_layer_sparsity": sum(sparsities) / len(sparsities) if sparsities else 0.0,
        }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archs", nargs="+", default=["resnet18", "vgg16"])
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--sparsity", type=float, default=0.85)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cuda")
    parser.add_argument("--out", default="overhead.json", help="file name under benchmarks/results/gradprune_overhead/")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    payload = {"args": vars(args), "results": {}}
    rows = []
    for arch in args.archs:
        results = measure(arch, args.width, args.batch, args.rounds, args.steps, args.sparsity, args.device)
        payload["results"][arch] = results
        for name, r in results.items():
            rows.append([arch, name, f"{1000 * r['median_step_s']:.1f}", f"{r['ratio_to_unpruned']:.3f}",
                         f"{r['mean_layer_sparsity']:.3f}"])
        print(f"done {arch}", file=sys.stderr, flush=True)
    path = write_result(results_dir("gradprune_overhead") / args.out, payload)
    print(markdown_table(["model", "pruner", "ms / step", "ratio to unpruned", "mean layer sparsity"], rows))
    print(f"\nwritten {path.relative_to(REPO_ROOT)}")
    print("reproduce: " + command_line())


if __name__ == "__main__":
    main()
