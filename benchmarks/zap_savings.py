"""How much compute ZAP saves at a given accuracy cost, per pattern (issue: optimize targets).

    python benchmarks/zap_savings.py models/vgg16/vgg16.onnx --patterns checkerboard tile5x5-60 \
        tile5x5-40 diag3x3-33 --drops 0.5 1.5 --json benchmarks/results/zap_savings/vgg16_patterns.json

For each pattern: predictors are trained once (calibration: the first --calib-images
Fashion-MNIST *train* images), then for each accuracy budget X the thresholds are chosen
with ``--max-drop X`` measured on (``--select``) the full official test set (10k images,
what the targets are stated on: the drop reported there is in-sample), and on each half
of it (5,000 images) with the result measured on the other half, which the search never
saw: a two-fold check of how far a search's drop carries to new images. Savings are
*realised* MACs counted from the activations the model really computes (whole model,
every layer included), next to the *oracle* (a perfect predictor with the same pattern
on the same layers, from the held-out calibration curves), both
free (every true zero in the predicted positions skipped at no cost) and at its real
cost (18 MACs per activation, only on layers where it pays): the savings are net of the
predictors, so the second is the like-for-like bound.
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from zapopt.data import load_fashion_mnist  # noqa: E402
from zapopt.evaluate import evaluate  # noqa: E402
from zapopt.optimize import AccuracyBudget, OptimizeConfig, choose_thresholds, finish, prepare_layers  # noqa: E402
from zap_common import save_results  # noqa: E402


def write_split(directory: Path) -> dict[str, str]:
    x, y = load_fashion_mnist("test")
    x = x[:, None].astype(np.float32) / 255
    paths = {}
    for name, part in (("first-half", slice(0, 5000)), ("second-half", slice(5000, 10000)),
                       ("full", slice(0, 10000))):
        path = directory / f"{name}.npz"
        np.savez(path, x=x[part], y=y[part])
        paths[name] = str(path)
    return paths


#: (search data, data it never saw) per --select choice
SELECTIONS = {"full": ("full", None), "first-half": ("first-half", "second-half"),
              "second-half": ("second-half", "first-half")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("--patterns", nargs="+", default=["checkerboard"],
                        help="each run separately; 'auto' or a comma-separated list lets the budget pick "
                             "each layer's pattern")
    parser.add_argument("--drops", nargs="+", type=float, default=[0.5, 1.5])
    parser.add_argument("--calib-images", type=int, default=1024)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--predictor-input", default="preactivation", choices=["preactivation", "activation"])
    parser.add_argument("--magnitude-weight", type=float, default=6.0, help="0 = the paper's plain MSE")
    parser.add_argument("--no-sensitivity", action="store_true", help="plain (unweighted) error budget search")
    parser.add_argument("--drop-margin", type=float, default=0.0, help="standard errors added to the search's drop")
    parser.add_argument("--select", nargs="+", choices=sorted(SELECTIONS), default=list(SELECTIONS),
                        help="test images the --max-drop search measures on")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0],
                        help="predictor training seeds; each (pattern, seed) is trained and searched anew, "
                             "to see how much a rerun moves the result")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = write_split(Path(tmp))
        x_train, _ = load_fashion_mnist("train")
        calib = str(Path(tmp) / "calib.npy")
        np.save(calib, x_train[: args.calib_images, None].astype(np.float32) / 255)
        for pattern, seed in itertools.product(args.patterns, args.seeds):
            started = time.perf_counter()
            budget = AccuracyBudget(args.drops[0], margin=args.drop_margin, sensitivity=not args.no_sensitivity)
            config = OptimizeConfig(budget, pattern=pattern, calib_images=args.calib_images, epochs=args.epochs,
                                    predictor_input=args.predictor_input, magnitude_weight=args.magnitude_weight,
                                    seed=seed)
            prepared = prepare_layers(args.model, calib, config=config, eval_data=data["full"], progress=False)
            train_s = time.perf_counter() - started
            probes = {}  # per search split: the sensitivity probes do not depend on the drop
            for drop in args.drops:
                config = replace(config, selection=replace(budget, max_drop=drop))
                for select in args.select:
                    search_split, unseen_split = SELECTIONS[select]
                    choice = choose_thresholds(prepared, config, eval_data=data[search_split], progress=False,
                                               probes=probes.get(search_split))
                    if choice.probes is not None:
                        probes.setdefault(search_split, choice.probes)
                    result = finish(prepared, choice, config, model_name=args.model)
                    model_path = Path(tmp) / f"{pattern}-{seed}-{drop}-{select}.onnx"
                    model_path.write_bytes(result.model.SerializeToString())
                    splits = {"full": "full", **({"heldout": unseen_split} if unseen_split else {})}
                    measured = {key: evaluate(model_path, data[split], reference=args.model, progress=False)
                                for key, split in splits.items()}
                    row = {
                        "pattern": pattern, "seed": seed, "select": select, "predictor_input": args.predictor_input,
                        "magnitude_weight": args.magnitude_weight,
                        "sensitivity_weighting": not args.no_sensitivity, "drop_margin": args.drop_margin,
                        "max_drop": drop,
                        "oracle_savings": result.report.oracle_savings,
                        "oracle_savings_with_predictor": result.report.oracle_savings_with_predictor,
                        "expected_savings": result.report.savings, "search_drop": choice.measured_drop,
                        "search": [{"savings": e["savings"], "drop": e["drop"], "monotone_drop": e["monotone_drop"]}
                                   for e in choice.search],
                        "zap_layers": len(result.report.zap_layers), "train_seconds": train_s,
                        "layer_patterns": {layer.name: layer.pattern for layer in result.report.zap_layers},
                        **{f"{split}_{key}": value for split, r in measured.items() for key, value in (
                            ("savings", r.savings), ("drop", r.top1_drop), ("top1", r.top1),
                            ("reference_top1", r.reference_top1), ("agreement", r.agreement))},
                    }
                    for key in ("oracle_savings", "oracle_savings_with_predictor"):
                        share = key.replace("oracle_savings", "share_of_oracle")
                        row[share] = row["full_savings"] / row[key] if row[key] else 0.0
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    print("\n| pattern | seed | budget (top-1 drop) | search on | oracle: free / at predictor cost "
          "| savings (full test) | of oracle: free / at cost | drop full test | drop on the unseen half |\n"
          "|---|---:|---:|---|---:|---:|---:|---:|---:|")
    for r in rows:
        unseen = f"{r['heldout_drop']:.2f}" if "heldout_drop" in r else "-"
        print(f"| {r['pattern']} | {r['seed']} | <= {r['max_drop']} % | {r['select']} | "
              f"{100 * r['oracle_savings']:.1f} % / {100 * r['oracle_savings_with_predictor']:.1f} % | "
              f"{100 * r['full_savings']:.1f} % | "
              f"{100 * r['share_of_oracle']:.0f} % / {100 * r['share_of_oracle_with_predictor']:.0f} % | "
              f"{r['full_drop']:.2f} | {unseen} |")
    save_results(rows, args.json)


if __name__ == "__main__":
    main()
