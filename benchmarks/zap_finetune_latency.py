"""Latency of ZAP models before and after fine-tuning, each against the original (issue #18).

    python benchmarks/zap_finetune_latency.py models/vgg16/vgg16.onnx \
        untuned=.cache/ft/before.zap.onnx tuned=.cache/ft/op6_60k/plain.zap.onnx \
        --json benchmarks/results/zap_finetune/latency_vgg16.json

Fine-tuning changes the weights, not the graph, so what can change the speed is how many
activations the predictors skip and how many inputs are zero at the chosen thresholds.
Each model is timed by `zapopt bench` (native form, the original in stock onnxruntime with
ORT_ENABLE_ALL, runs alternated in one process, balanced) on the same Fashion-MNIST test
images and settings; the models are benched one after the other, so compare their
speed-ups against the original, not their milliseconds across rows. The realised MAC
savings on those images (`zapopt eval`'s count) sit beside each. Build the models with
the optimize latency check off (benchmarks/zap_finetune.py does), so every ZAP layer is
native. One JSON through result_files (command, commit, machine).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from zapopt.bench import bench  # noqa: E402
from zapopt.evaluate import evaluate  # noqa: E402
from zap_common import save_results  # noqa: E402


def labeled(spec: str) -> tuple[str, Path]:
    """``label=path`` as given on the command line."""
    label, sep, path = spec.partition("=")
    if not sep or not label or not path:
        raise argparse.ArgumentTypeError(f"expected LABEL=MODEL, got {spec!r}")
    return label, Path(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("original", type=Path)
    parser.add_argument("models", type=labeled, nargs="+", help="LABEL=ZAP_MODEL, e.g. tuned=out.zap.onnx")
    parser.add_argument("--data", default="embedded:fashion-mnist-test")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--threads", type=int, nargs="+", default=[1])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--wall-time", action="store_true", help="time 1-thread rows in wall time (default: the "
                                                                 "CPU time of the running thread, steadier here)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    rows = []
    for label, path in args.models:
        savings = evaluate(path, args.data, progress=False).savings
        report = bench(path, args.original, args.data, batches=args.batch, threads=args.threads, runs=args.runs,
                       cpu_clock=not args.wall_time)
        print(report.format_table(), flush=True)
        for r in report.end_to_end:
            rows.append({"label": label, "model": str(path), "form": report.form, "batch": r.batch,
                         "threads": r.threads, "clock": r.clock, "macs_saved": savings,
                         "original_ms": r.original_ms.median, "optimized_ms": r.optimized_ms.median,
                         "speedup": r.speedup.median, "speedup_q1": r.speedup.q1, "speedup_q3": r.speedup.q3,
                         "bench": report.to_dict()})
    print("\n| model | MACs saved | batch | threads | clock | original ms | ZAP ms | speed-up (IQR) |\n"
          "|---|---:|---:|---:|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['label']} | {100 * r['macs_saved']:.1f} % | {r['batch']} | {r['threads']} | {r['clock']} | "
              f"{r['original_ms']:.2f} | {r['optimized_ms']:.2f} | {r['speedup']:.2f}x "
              f"({r['speedup_q1']:.2f}-{r['speedup_q3']:.2f}) |")
    save_results(rows, args.json)


if __name__ == "__main__":
    main()
