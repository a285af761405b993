"""``zapopt demo``: the whole flow on the embedded model and data, no download needed.

info -> optimize (calibrate on the 1,024 embedded Fashion-MNIST *train* images) -> eval on the
2,000 embedded *test* images against the original -> sweep thresholds, with every report
and the curve's PNG written to one folder.
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

from zapopt.errors import ZapoptError
from zapopt.files import write_text_atomically

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = REPO_ROOT / "models" / "vgg16" / "vgg16.onnx"
CALIB = "embedded:fashion-mnist-train"
TEST = "embedded:fashion-mnist-test"


def run_demo(out_dir: str | os.PathLike = "zapopt-demo", *, model: str | os.PathLike | None = None,
             threshold: float | None = None, calib_images: int = 1024, echo: Callable[[str], None] = print,
             progress: bool | None = None) -> dict:
    """Run the demo, print each step's table via ``echo``, return a summary dict."""
    from zapopt.evaluate import evaluate
    from zapopt.graph.info import info
    from zapopt.optimize import OptimizeConfig, UniformThreshold, optimize
    from zapopt.sweep import sweep

    source = Path(model) if model is not None else DEFAULT_MODEL
    if not source.is_file():
        raise ZapoptError(f"demo model not found: {source} (run from a clone of the zapopt repository, "
                          "or pass --model)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    optimized = out / f"{source.stem}.zap.onnx"

    echo(f"== 1/4  zapopt info {source}")
    echo(info(source).format_table())
    echo(f"\n== 2/4  zapopt optimize {source} -o {optimized} --calib {CALIB} --calib-images {calib_images} "
         "--format zap --no-latency-check")
    # The demo shows what ZAP saves in MACs and costs in accuracy, so every ZAP layer stays a
    # ZapConv; whether this machine runs them faster is `zapopt bench`'s question.
    config = OptimizeConfig(UniformThreshold(threshold), calib_images=calib_images, output_format="zap",
                            latency_check=False)
    result = optimize(source, optimized, CALIB, config=config, progress=progress)
    echo(result.report.format_table())
    echo(f"\n== 3/4  zapopt eval {optimized} --data {TEST} --reference {source}")
    evaluation = evaluate(optimized, TEST, reference=source, progress=progress)
    echo(evaluation.format_table())
    sweep_json = out / "sweep.json"
    echo(f"\n== 4/4  zapopt sweep {optimized} --data {TEST} -o {sweep_json}")
    curve = sweep(optimized, TEST, output_json=sweep_json, output_png=out / "sweep.png", progress=progress)
    echo(curve.format_table())
    summary = {
        "model": str(source), "optimized": str(optimized),
        "expected_savings": result.report.savings, "oracle_savings": result.report.oracle_savings,
        "eval": evaluation.to_dict(), "sweep": curve.to_dict(),
    }
    write_text_atomically(out / "summary.json", json.dumps(summary, indent=1))
    echo(f"\nwrote {optimized}, its report, {sweep_json}, {out / 'sweep.png'} and {out / 'summary.json'}")
    return summary
