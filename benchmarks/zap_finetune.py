"""MAC savings at a fixed top-1 drop before and after ZAP-aware fine-tuning (issue #18).

    python benchmarks/zap_finetune.py models/vgg16/vgg16.onnx --max-drop 1.5 --train-images 10000 \
        --variants plain sparse85 fp6 --json benchmarks/results/zap_finetune/vgg16_plain.json

1. Before: predictors trained on the first --calib-images Fashion-MNIST train images and
   thresholds chosen as `zapopt optimize --max-drop` does, measured on the full test set
   (10k images, the search's own data, as in zap_savings.py's "full" rows).
2. Fine-tune that model (`zapopt.finetune`): --epochs over the first --train-images train
   images, SGD lr 1e-4 / momentum 0.9 / weight decay 5e-4 by default, masks active,
   predictors frozen; per variant: plain, 85 % gradient sparsity, 6-bit gradients.
3. After: thresholds re-chosen the same way on the new weights (kept predictors, curves
   measured again), the drop counted against the original model's top-1.
Savings are realised MACs on the test set (`zapopt eval`), the whole model, net of the
predictors. Each row records wall-clock seconds and the load average; command, commit and machine
are in the file's provenance (benchmarks/result_files.py).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from zapopt.data import load_fashion_mnist  # noqa: E402
from zapopt.evaluate import evaluate  # noqa: E402
from zapopt.files import save_model_atomically  # noqa: E402
from zapopt.finetuning import FinetuneConfig, finetune  # noqa: E402
from zapopt.optimize import AccuracyBudget, OptimizeConfig, choose_thresholds, finish, prepare_layers  # noqa: E402
from zap_common import save_results  # noqa: E402

VARIANTS = {"plain": {}, "sparse85": {"grad_sparsity": 0.85}, "fp6": {"grad_bits": 6}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("--pattern", default="checkerboard")
    parser.add_argument("--max-drop", type=float, default=1.5)
    parser.add_argument("--calib-images", type=int, default=1024)
    parser.add_argument("--train-images", type=int, default=10000)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=["plain"])
    parser.add_argument("--no-sensitivity", action="store_true", help="plain error-budget search (faster)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        x_train, y_train = load_fashion_mnist("train")
        x_test, y_test = load_fashion_mnist("test")
        calib, test, train = str(tmp / "calib.npy"), str(tmp / "test.npz"), str(tmp / "train.npz")
        np.save(calib, x_train[:args.calib_images, None].astype(np.float32) / 255)
        np.savez(test, x=x_test[:, None].astype(np.float32) / 255, y=y_test)
        np.savez(train, x=x_train[:args.train_images, None].astype(np.float32) / 255, y=y_train[:args.train_images])

        started = time.perf_counter()
        config = OptimizeConfig(AccuracyBudget(args.max_drop, sensitivity=not args.no_sensitivity),
                                pattern=args.pattern, calib_images=args.calib_images)
        prepared = prepare_layers(args.model, calib, config=config, eval_data=test, progress=False)
        choice = choose_thresholds(prepared, config, eval_data=test, progress=False)
        before_path = tmp / "before.zap.onnx"
        save_model_atomically(finish(prepared, choice, config, model_name=args.model).model, before_path)
        before = evaluate(before_path, test, reference=args.model, progress=False)
        optimize_s = time.perf_counter() - started
        print(f"before: savings {100 * before.savings:.1f} %, drop {before.top1_drop:.2f} points "
              f"({optimize_s:.0f} s)", flush=True)
        for variant in args.variants:
            started = time.perf_counter()
            tuned_path = tmp / f"{variant}.zap.onnx"
            report = finetune(str(before_path), str(tuned_path), train, val=test,
                              config=FinetuneConfig(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                                                    **VARIANTS[variant]),
                              max_drop=args.max_drop, calib=calib, device="cpu", progress=False)
            seconds = time.perf_counter() - started
            after = evaluate(tuned_path, test, reference=args.model, progress=False)
            row = {"variant": variant, "pattern": args.pattern, "max_drop": args.max_drop,
                   "train_images": args.train_images, "epochs": args.epochs, "lr": args.lr,
                   "batch_size": args.batch_size, "sensitivity_weighting": not args.no_sensitivity,
                   "original_top1": before.reference_top1,
                   "before_top1": before.top1, "before_drop": before.top1_drop, "before_savings": before.savings,
                   "after_top1": after.top1, "after_drop": after.top1_drop, "after_savings": after.savings,
                   "savings_gain_points": 100 * (after.savings - before.savings),
                   "epoch_log": [vars(h) for h in report.state.history],
                   "optimize_seconds": optimize_s, "finetune_seconds": seconds}
            rows.append(row)
            print(json.dumps(row), flush=True)
    print("\n| variant | top-1 drop before / after | MACs saved before | after | gain (points) |\n"
          "|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['variant']} | {r['before_drop']:.2f} / {r['after_drop']:.2f} | "
              f"{100 * r['before_savings']:.1f} % | {100 * r['after_savings']:.1f} % | "
              f"{r['savings_gain_points']:+.1f} |")
    for r in rows:
        r["load_average"] = os.getloadavg()  # the machine is in the file's provenance
    save_results(rows, args.json)


if __name__ == "__main__":
    main()
