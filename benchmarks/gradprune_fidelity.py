"""How far pruned weight gradients are from the exact ones, layer by layer.

Explains the training results: for one batch, compare each conv's weight gradient under
pruning with the exact one (relative L2 error, cosine), averaged over draws. Stochastic
pruning is unbiased but adds variance at every pruned layer, and the noise injected at a
layer also reaches every layer below it through the backward pass; the biased baselines
lose only the small entries. Layers are listed from the output back to the input.

    python benchmarks/gradprune_fidelity.py            # ~1 minute
"""
from __future__ import annotations

import argparse

import torch
from torch import nn

from gradprune_common import load_fashion, make_model, markdown_table
from result_files import REPO_ROOT, command_line, results_dir, write_result

from gradtools import GradientPruner  # noqa: E402  (gradprune_common put the repo root on sys.path)


def conv_weight_grads(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    nn.functional.cross_entropy(model(x), y).backward()
    return {n: m.weight.grad.clone() for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def fidelity(arch: str, width: int, batch: int, draws: int, methods: list[str], sparsities: list[float],
             pretrain_steps: int) -> dict:
    model = make_model(arch, width, seed=0, **({"bn": True} if arch == "vgg16" else {}))
    x, y = load_fashion("train", limit=batch * (pretrain_steps + 1), seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for i in range(pretrain_steps):  # move away from initialization so gradients look like training's
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[i * batch:(i + 1) * batch]), y[i * batch:(i + 1) * batch]).backward()
        opt.step()
    xb, yb = x[-batch:], y[-batch:]
    exact = conv_weight_grads(model, xb, yb)
    results: dict = {}
    for method in methods:
        for sparsity in sparsities:
            errors = {n: 0.0 for n in exact}
            cosines = {n: 0.0 for n in exact}
            gen = torch.Generator().manual_seed(0)
            for _ in range(draws):
                with GradientPruner(model, sparsity, method=method, layer_types=(nn.Conv2d,), generator=gen):
                    pruned = conv_weight_grads(model, xb, yb)
                for n in exact:
                    errors[n] += float((pruned[n] - exact[n]).norm() / exact[n].norm()) / draws
                    cosines[n] += float(nn.functional.cosine_similarity(pruned[n].flatten(), exact[n].flatten(),
                                                                        dim=0)) / draws
            results[f"{method}@{sparsity}"] = {"relative_error": errors, "cosine": cosines}
    return {"layers": list(exact), "results": results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="vgg16")
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--draws", type=int, default=5)
    parser.add_argument("--pretrain-steps", type=int, default=30)
    parser.add_argument("--methods", nargs="+", default=["stochastic", "magnitude", "topk"])
    parser.add_argument("--sparsities", nargs="+", type=float, default=[0.85, 0.95])
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = fidelity(args.arch, args.width, args.batch, args.draws, args.methods, args.sparsities,
                   args.pretrain_steps)
    path = write_result(results_dir("gradprune_fidelity") / f"{args.arch}.json", {"args": vars(args), **out})
    keys = list(out["results"])
    rows = [[layer] + [f"{out['results'][k]['relative_error'][layer]:.2f}" for k in keys]
            for layer in reversed(out["layers"])]
    print(f"Relative L2 error of conv weight gradients ({args.arch}, one batch, mean of {args.draws} draws), "
          "output layer first:\n")
    print(markdown_table(["layer"] + keys, rows))
    print(f"\nwritten {path.relative_to(REPO_ROOT)}")
    print("reproduce: " + command_line())


if __name__ == "__main__":
    main()
