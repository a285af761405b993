"""MAC savings at a fixed top-1 drop before and after ZAP-aware fine-tuning (issue #18).

    python benchmarks/zap_finetune.py models/vgg16/vgg16.onnx --max-drop 1.5 --train-images 10000 \
        --variants plain sparse85 fp6 --json benchmarks/results/zap_finetune/vgg16_plain.json \
        --before-model .cache/ft/before.zap.onnx [--operating-drop 5 --lr 1e-3]

1. Before: predictors trained on the first --calib-images Fashion-MNIST train images and
   thresholds chosen as `zapopt optimize --max-drop` does, measured on the full test set
   (10k images, the search's own data, as in zap_savings.py's "full" rows); the latency
   check is off (unless --latency-check), so the savings do not depend on timings.
   --before-model caches it (the slow step: ~30 min on a loaded 2-core machine).
2. Fine-tune (`zapopt.finetune`): --epochs over the first --train-images train images, SGD
   lr 1e-4 / momentum 0.9 / weight decay 5e-4 by default, masks active, predictors frozen;
   per variant: plain, 85 % gradient sparsity, 6-bit gradients. With --operating-drop X the
   training starts from the thresholds chosen for a drop of X % instead (what `finetune
   --operating-drop` does; here chosen once, from the same predictors and probes as the
   before-model, and cached beside it, so every variant trains from the same model).
3. After: thresholds re-chosen for --max-drop on the new weights (kept predictors, curves
   measured again; with --refit-predictors new predictors trained first), the drop counted against the original model's top-1. --no-rechoose
   keeps the thresholds trained at instead: accuracy and savings at the same thresholds;
   --rechoose-if-over keeps them when the drop recovered to <= --max-drop, else re-chooses.
   --start-model trains an earlier run's saved model instead (a second phase, e.g. without
   --activation-l1), at its own thresholds.
Savings are realised MACs on the test set (`zapopt eval`), the whole model, net of the
predictors. Each row records wall-clock seconds and the load average; command, commit and
machine are in the file's provenance (benchmarks/result_files.py). Training runs on
--threads torch threads (1 by default: the machine is shared).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from zapopt.data import load_fashion_mnist  # noqa: E402
from zapopt.errors import ZapoptError  # noqa: E402
from zapopt.evaluate import evaluate  # noqa: E402
from zapopt.files import save_model_atomically  # noqa: E402
from zapopt.finetuning import FinetuneConfig, finetune  # noqa: E402
from zapopt.finetuning.rethreshold import rechoose_thresholds  # noqa: E402
from zapopt.graph import load_model  # noqa: E402
from zapopt.optimize import AccuracyBudget, OptimizeConfig, choose_thresholds, finish, prepare_layers  # noqa: E402
from zap_common import save_results  # noqa: E402

VARIANTS = {"plain": {}, "sparse85": {"grad_sparsity": 0.85}, "fp6": {"grad_bits": 6}}


def _operating_path(before: Path, drop: float) -> Path:
    """Where the model at the --operating-drop thresholds is cached, beside the before-model."""
    return before.with_name(f"{before.stem}.operating{drop:g}.onnx")


def fashion_mnist_files(folder: Path, calib_images: int, train_images: int) -> tuple[str, str, str]:
    """The first ``calib_images`` train images (calibration, no labels), the whole test set and the
    first ``train_images`` labeled train images, as files in ``folder`` scaled to [0, 1]."""
    x_train, y_train = load_fashion_mnist("train")
    x_test, y_test = load_fashion_mnist("test")
    calib, test, train = str(folder / "calib.npy"), str(folder / "test.npz"), str(folder / "train.npz")
    np.save(calib, x_train[:calib_images, None].astype(np.float32) / 255)
    np.savez(test, x=x_test[:, None].astype(np.float32) / 255, y=y_test)
    np.savez(train, x=x_train[:train_images, None].astype(np.float32) / 255, y=y_train[:train_images])
    return calib, test, train


def make_before_models(model: str, calib: str, test: str, config: OptimizeConfig, before_path: Path,
                       operating_drops: list[float]) -> float:
    """Optimize ``model`` at ``config.selection.max_drop`` into ``before_path`` and, from the same predictors and
    sensitivity probes, at each operating drop beside it; returns the seconds taken."""
    started = time.perf_counter()
    prepared = prepare_layers(model, calib, config=config, eval_data=test, progress=False)
    choice = choose_thresholds(prepared, config, eval_data=test, progress=False)
    save_model_atomically(finish(prepared, choice, config, model_name=model).model, before_path)
    print(f"optimized at {config.selection.max_drop} % ({time.perf_counter() - started:.0f} s)", flush=True)
    for drop in operating_drops:  # same predictors and probes, a bigger budget
        harder = replace(config, selection=replace(config.selection, max_drop=drop))
        harder_choice = choose_thresholds(prepared, harder, eval_data=test, progress=False, probes=choice.probes)
        save_model_atomically(finish(prepared, harder_choice, harder, model_name=model).model,
                              _operating_path(before_path, drop))
        print(f"optimized at {drop} % ({time.perf_counter() - started:.0f} s)", flush=True)
    return time.perf_counter() - started


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
    parser.add_argument("--operating-drop", type=float, default=None,
                        help="fine-tune with the thresholds chosen for this top-1 drop (a more aggressive operating "
                             "point), then re-choose them for --max-drop (default: train at --max-drop's)")
    parser.add_argument("--before-model", type=Path, default=None,
                        help="the ZAP model before fine-tuning: reused when the file exists (optimize takes ~30 min "
                             "on a loaded 2-core machine), else computed and saved there; the --operating-drop model "
                             "is cached beside it the same way")
    parser.add_argument("--no-rechoose", action="store_true",
                        help="keep the thresholds trained at (no --max-drop re-choice after training: minutes "
                             "cheaper; compares accuracy and savings at the same thresholds)")
    parser.add_argument("--rechoose-if-over", action="store_true",
                        help="keep the thresholds trained at when the drop recovered to <= --max-drop, else "
                             "re-choose them (the row records both: kept_* and after_*)")
    parser.add_argument("--also-cache-drops", type=float, nargs="*", default=[],
                        help="when the before-model is built, also cache the operating points for these drops beside "
                             "it (same predictors and probes, minutes each instead of a re-choice each later)")
    parser.add_argument("--activation-l1", type=float, default=0.0,
                        help="finetune's --activation-l1: an L1 penalty on the ZAP layers' activations")
    parser.add_argument("--start-model", type=Path, default=None,
                        help="fine-tune this ZAP model (e.g. an earlier run's --save-models output, for a second "
                             "phase) at its own thresholds, instead of the before- or --operating-drop model; "
                             "the drop is still counted against the original")
    parser.add_argument("--refit-predictors", action="store_true",
                        help="finetune's --refit-predictors: the re-choice (always, or --rechoose-if-over's) trains "
                             "every predictor again on the tuned weights' activations first")
    parser.add_argument("--seed", type=int, default=0, help="fine-tuning seed (batch order, gradtools' sampling)")
    parser.add_argument("--save-models", type=Path, default=None,
                        help="keep the fine-tuned models in this folder (e.g. for `zapopt bench`)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for training (OMP_NUM_THREADS too)")
    parser.add_argument("--latency-check", action="store_true",
                        help="let optimize's latency check drop native layers (off: MAC savings do not depend on "
                             "this machine's timings)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    if args.no_rechoose and args.rechoose_if_over:
        parser.error("--no-rechoose and --rechoose-if-over exclude each other")
    if args.no_rechoose and args.refit_predictors:
        parser.error("--refit-predictors acts in the re-choice, which --no-rechoose skips")
    rechoose = "never" if args.no_rechoose else "if-over" if args.rechoose_if_over else "always"
    if args.start_model is not None and (rechoose == "always" or not args.start_model.is_file()):
        parser.error("--start-model needs an existing model and --no-rechoose or --rechoose-if-over (finetune's own "
                     "re-choice would count the drop against the start model, not the original)")
    torch.set_num_threads(args.threads)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        calib, test, train = fashion_mnist_files(tmp, args.calib_images, args.train_images)

        config = OptimizeConfig(AccuracyBudget(args.max_drop, sensitivity=not args.no_sensitivity),
                                pattern=args.pattern, calib_images=args.calib_images,
                                latency_check=args.latency_check)
        before_path = args.before_model or tmp / "before.zap.onnx"
        train_path = before_path if args.operating_drop is None else _operating_path(before_path, args.operating_drop)
        optimize_s = None
        if before_path.is_file():
            print(f"before: reusing {before_path}", flush=True)
        else:
            drops = sorted(set(args.also_cache_drops) | ({args.operating_drop} - {None}))
            optimize_s = make_before_models(args.model, calib, test, config, before_path, drops)
        if args.start_model is not None:
            train_path = args.start_model
        elif not train_path.is_file():  # a cached before-model without this operating point
            found = rechoose_thresholds(load_model(before_path), calib, test, args.operating_drop,
                                        calib_images=args.calib_images, sensitivity_weighting=not args.no_sensitivity,
                                        progress=False)
            save_model_atomically(found.model, train_path)
        before = evaluate(before_path, test, reference=args.model, progress=False)
        trained_from = before if train_path == before_path else evaluate(train_path, test, reference=args.model,
                                                                           progress=False)
        print(f"before: savings {100 * before.savings:.1f} %, drop {before.top1_drop:.2f} points; fine-tuning from "
              f"{train_path.name}: savings {100 * trained_from.savings:.1f} %, drop {trained_from.top1_drop:.2f}",
              flush=True)
        for variant in args.variants:
            started = time.perf_counter()
            tuned_dir = args.save_models or tmp
            tuned_dir.mkdir(parents=True, exist_ok=True)
            tuned_path = tuned_dir / f"{variant}.zap.onnx"
            report = finetune(str(train_path), str(tuned_path), train, val=test,
                              config=FinetuneConfig(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                                                    seed=args.seed, activation_l1=args.activation_l1,
                                                    refit_predictors=args.refit_predictors and rechoose == "always",
                                                    **VARIANTS[variant]),
                              max_drop=args.max_drop if rechoose == "always" else None, calib=calib,
                              device="cpu", progress=False)
            after = kept = report.after  # the output on the test set, measured by finetune as `zapopt eval` does
            thresholds = report.thresholds
            if rechoose == "if-over" and 100 * (before.reference_top1 - kept.top1) > args.max_drop:
                try:
                    found = rechoose_thresholds(load_model(tuned_path), calib, test, args.max_drop,
                                                baseline=load_model(before_path), calib_images=args.calib_images,
                                                sensitivity_weighting=not args.no_sensitivity,
                                                refit_predictors=args.refit_predictors, progress=False)
                except ZapoptError as exc:  # e.g. the tuned network computing everything is already too far down
                    thresholds = {"max_drop": args.max_drop, "error": str(exc)}
                else:
                    rechosen_path = tuned_dir / f"{variant}.rechosen.zap.onnx"
                    save_model_atomically(found.model, rechosen_path)
                    after = evaluate(rechosen_path, test, reference=args.model, progress=False)
                    thresholds = {"max_drop": args.max_drop, "search_budget": found.budget,
                                  "exact_gain_points": found.exact_gain, "drop": found.drop}
            seconds = time.perf_counter() - started
            row = {"variant": variant, "pattern": args.pattern, "max_drop": args.max_drop,
                   "operating_drop": args.operating_drop,
                   "start_model": None if args.start_model is None else str(args.start_model), "rechoose": rechoose,
                   "rechosen": thresholds is not None and "error" not in thresholds,
                   "train_images": args.train_images, "epochs": args.epochs,
                   "lr": args.lr, "batch_size": args.batch_size, "threads": args.threads, "seed": args.seed,
                   "activation_l1": args.activation_l1, "refit_predictors": args.refit_predictors,
                   "sensitivity_weighting": not args.no_sensitivity, "latency_check": args.latency_check,
                   "original_top1": before.reference_top1,
                   "before_top1": before.top1, "before_drop": before.top1_drop, "before_savings": before.savings,
                   "trained_at_top1": trained_from.top1, "trained_at_drop": trained_from.top1_drop,
                   "trained_at_savings": trained_from.savings,
                   "kept_top1": kept.top1, "kept_drop": 100 * (before.reference_top1 - kept.top1),
                   "kept_savings": kept.savings,
                   "after_top1": after.top1, "after_drop": 100 * (before.reference_top1 - after.top1),
                   "after_savings": after.savings,
                   "savings_gain_points": 100 * (after.savings - before.savings),
                   "within_max_drop": 100 * (before.reference_top1 - after.top1) <= args.max_drop + 1e-9,
                   "thresholds": thresholds,
                   "epoch_log": [vars(h) for h in report.state.history],
                   "optimize_seconds": optimize_s, "finetune_seconds": seconds,
                   "load_average_after": os.getloadavg()}
            rows.append(row)
            print(json.dumps(row), flush=True)
    print("\n| variant | top-1 drop before / after | MACs saved before | after | gain (points) |\n"
          "|---|---:|---:|---:|---:|")
    for r in rows:
        over = "" if r["within_max_drop"] else f" (drop over {r['max_drop']})"
        print(f"| {r['variant']} | {r['before_drop']:.2f} / {r['after_drop']:.2f}{over} | "
              f"{100 * r['before_savings']:.1f} % | {100 * r['after_savings']:.1f} % | "
              f"{r['savings_gain_points']:+.1f} |")
    save_results(rows, args.json)


if __name__ == "__main__":
    main()
