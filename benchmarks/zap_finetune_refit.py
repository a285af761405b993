"""Re-choose fine-tuned models' thresholds with their kept predictors and with refitted ones (issue #18).

    python benchmarks/zap_finetune_refit.py models/vgg16/vgg16.onnx --before-model .cache/ft/before.zap.onnx \
        best=.cache/ft/op6_60k_l1_0.02_then_plain/plain.zap.onnx --max-drop 1.5 \
        --json benchmarks/results/zap_finetune/refit_vgg16.json

For each fine-tuned model (e.g. a `zap_finetune.py --save-models` output): its accuracy and
savings at the thresholds it was trained at, then the thresholds re-chosen for --max-drop
as `zapopt finetune --max-drop` re-chooses them (drop counted against the original model),
once with the kept predictors and once with predictors trained again on the tuned
weights' activations (`--refit-predictors`). Same calibration images (the first
--calib-images train images) and full test set as benchmarks/zap_finetune.py, so the rows
compare with its before-model. Savings are realised MACs on the test set (`zapopt eval`).
One torch thread by default (the machine is shared). One JSON through result_files.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from zapopt.errors import ZapoptError  # noqa: E402
from zapopt.evaluate import evaluate  # noqa: E402
from zapopt.files import save_model_atomically  # noqa: E402
from zapopt.finetuning.rethreshold import rechoose_thresholds  # noqa: E402
from zapopt.graph import load_model  # noqa: E402
from zap_common import save_results  # noqa: E402
from zap_finetune import fashion_mnist_files  # noqa: E402
from zap_finetune_latency import labeled  # noqa: E402

PREDICTORS = ("kept", "refitted")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("original", type=Path)
    parser.add_argument("models", type=labeled, nargs="+", help="LABEL=FINE_TUNED_ZAP_MODEL")
    parser.add_argument("--before-model", type=Path, required=True,
                        help="the ZAP model before fine-tuning (zap_finetune.py's cached one): the baseline row")
    parser.add_argument("--max-drop", type=float, default=1.5)
    parser.add_argument("--calib-images", type=int, default=1024)
    parser.add_argument("--predictors", nargs="+", choices=PREDICTORS, default=list(PREDICTORS))
    parser.add_argument("--save-models", type=Path, default=None, help="keep the re-chosen models in this folder")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (OMP_NUM_THREADS too)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    for path in [args.before_model] + [path for _, path in args.models]:
        if not path.is_file():
            parser.error(f"no model at {path}")

    torch.set_num_threads(args.threads)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp_dir:
        calib, test, _ = fashion_mnist_files(Path(tmp_dir), args.calib_images, 1)
        before = evaluate(args.before_model, test, reference=args.original, progress=False)
        print(f"before: savings {100 * before.savings:.1f} %, drop {before.top1_drop:.2f} points", flush=True)
        for label, path in args.models:
            kept = evaluate(path, test, reference=args.original, progress=False)
            for predictors in args.predictors:
                started = time.perf_counter()
                row = {"label": label, "model": str(path), "predictors": predictors, "max_drop": args.max_drop,
                       "calib_images": args.calib_images, "original_top1": before.reference_top1,
                       "before_drop": before.top1_drop, "before_savings": before.savings,
                       "kept_thresholds_drop": kept.top1_drop, "kept_thresholds_savings": kept.savings}
                try:
                    found = rechoose_thresholds(load_model(path), calib, test, args.max_drop,
                                                baseline=load_model(args.before_model),
                                                calib_images=args.calib_images,
                                                refit_predictors=predictors == "refitted", progress=False)
                except ZapoptError as exc:  # e.g. the tuned network computing everything is already too far down
                    row["error"] = str(exc)
                else:
                    out_dir = args.save_models or Path(tmp_dir)
                    out_dir.mkdir(parents=True, exist_ok=True)
                    out = out_dir / f"{label}.{predictors}.zap.onnx"
                    save_model_atomically(found.model, out)
                    after = evaluate(out, test, reference=args.original, progress=False)
                    row.update({"search_budget": found.budget, "exact_gain_points": found.exact_gain,
                                "after_drop": after.top1_drop, "after_savings": after.savings,
                                "savings_gain_points": 100 * (after.savings - before.savings),
                                "within_max_drop": after.top1_drop <= args.max_drop + 1e-9})
                row.update({"seconds": time.perf_counter() - started, "load_average_after": os.getloadavg()})
                rows.append(row)
                print(row, flush=True)
    print("\n| model | predictors | drop | MACs saved | gain vs before (points) |\n|---|---|---:|---:|---:|")
    for r in rows:
        if "error" in r:
            print(f"| {r['label']} | {r['predictors']} | - | - | ({r['error']}) |")
        else:
            print(f"| {r['label']} | {r['predictors']} | {r['after_drop']:.2f} | {100 * r['after_savings']:.1f} % | "
                  f"{r['savings_gain_points']:+.1f} |")
    save_results(rows, args.json)


if __name__ == "__main__":
    main()
