"""Is the pruning noise small next to the minibatch noise SGD already lives with?

For each conv, compares two variances of its weight gradient at one point of training:
the minibatch (SGD) noise, ``E_b ||G_b - G||^2`` over ``--batches`` batches (G = their
mean; unbiased), and the noise stochastic pruning adds on top, ``E ||G_b^pruned - G_b||^2``
(``--draws`` per batch). A ratio well below 1 means pruning barely changes the optimizer's
noise; above 1 it dominates it. Pruning noise is independent per gradient entry, so it
averages over batch x height x width positions, while minibatch noise averages over the
batch only: at a larger input resolution (``--upsample``) the ratio should fall, which
tests whether the small 28x28 maps are why the 85 % headline does not transfer.

    python benchmarks/gradprune_noise.py --arch vgg16                 # ~1 minute
    python benchmarks/gradprune_noise.py --arch vgg16 --upsample 56   # ~4 minutes
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


def noise_ratio(args: argparse.Namespace) -> dict:
    model = make_model(args.arch, args.width, seed=0, upsample_to=args.upsample,
                       **({"bn": True} if args.arch == "vgg16" else {}))
    b = args.batch
    x, y = load_fashion("train", limit=b * (args.pretrain_steps + args.batches), seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    for i in range(args.pretrain_steps):  # the same kind of point in training as the fidelity check
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x[i * b:(i + 1) * b]), y[i * b:(i + 1) * b]).backward()
        opt.step()
    first = args.pretrain_steps * b
    batches = [(x[first + k * b:first + (k + 1) * b], y[first + k * b:first + (k + 1) * b])
               for k in range(args.batches)]
    exact = [conv_weight_grads(model, xb, yb) for xb, yb in batches]
    names = list(exact[0])
    mean = {n: sum(g[n] for g in exact) / len(exact) for n in names}
    sgd = {n: sum(float((g[n] - mean[n]).square().sum()) for g in exact) / (len(exact) - 1) for n in names}
    out: dict = {"layers": names, "sgd_variance": sgd, "pruning": {}}
    for sparsity in args.sparsities:
        gen = torch.Generator().manual_seed(0)
        var = {n: 0.0 for n in names}
        with GradientPruner(model, sparsity, layer_types=(nn.Conv2d,), generator=gen) as pruner:
            for (xb, yb), ex in zip(batches, exact):
                for _ in range(args.draws):
                    pruned = conv_weight_grads(model, xb, yb)
                    for n in names:
                        var[n] += float((pruned[n] - ex[n]).square().sum()) / (args.draws * len(batches))
            achieved = {n: s.mean_sparsity for n, s in pruner.stats().items()}
        out["pruning"][str(sparsity)] = {"variance": var, "ratio": {n: var[n] / sgd[n] for n in names},
                                         "achieved_sparsity": achieved}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="vgg16", choices=["vgg16", "resnet18"])
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--upsample", type=int, default=None, help="input side (default: native 28)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--draws", type=int, default=2)
    parser.add_argument("--pretrain-steps", type=int, default=60)
    parser.add_argument("--sparsities", nargs="+", type=float, default=[0.8, 0.85])
    parser.add_argument("--out", default=None, help="file name under benchmarks/results/gradprune_noise/")
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = noise_ratio(args)
    name = args.out or f"{args.arch}_{args.upsample or 28}.json"
    cmd = command_line()
    path = write_result(results_dir("gradprune_noise") / name, {"args": vars(args), **out})
    keys = list(out["pruning"])
    rows = [[n] + [f"{out['pruning'][k]['ratio'][n]:.2f}" for k in keys] for n in reversed(out["layers"])]
    print(f"Pruning variance / minibatch variance of conv weight gradients ({args.arch}, "
          f"{args.upsample or 28}x{args.upsample or 28}), output layer first:\n")
    print(markdown_table(["layer"] + [f"stochastic@{k}" for k in keys], rows))
    print(f"\nwritten {path.relative_to(REPO_ROOT)}\nreproduce: {cmd}")


if __name__ == "__main__":
    main()
