"""Per layer, how much each predictor variant skips at a fixed activation-mass error.

Compares, on the same layers and calibration images, the paper's predictor (input after
the ReLU, plain MSE) with zapopt's pre-activation input, with and without the
magnitude-weighted loss. For every layer it trains each variant on the first
calibration images, measures its curve on held-out test images and reports the share of
the layer's activations skipped at the largest threshold whose error (share of the
layer's activation mass lost) stays <= each budget. This isolates the predictor from the
threshold search that `zap_savings.py` measures end to end.

    python benchmarks/zap_predictor_variants.py models/vgg16/vgg16.onnx --images 1024
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from zapopt.calibrate import calibrate  # noqa: E402
from zapopt.curves import layer_curve  # noqa: E402
from zapopt.data import load_fashion_mnist  # noqa: E402
from zapopt.graph import analyze  # noqa: E402
from zapopt.layer_selection import select_layers  # noqa: E402
from zapopt.ops.patterns import get_pattern  # noqa: E402
from zapopt.predictor.inputs import PredictorInput  # noqa: E402
from zapopt.predictor.train import train_predictor  # noqa: E402
from zap_common import save_results  # noqa: E402

#: (label, predictor input, magnitude weight)
VARIANTS = (("paper", "activation", 0.0), ("preact", "preactivation", 0.0), ("preact+weighted", "preactivation", 6.0))
ERRORS = (0.005, 0.01, 0.02)


def skipped_at(curve, error: float) -> float:
    """Share of all the layer's activations skipped at the largest threshold with error <= ``error``."""
    fits = curve.error <= error
    return float(np.max(curve.predicted_zero[fits]) * (1 - curve.pattern_fraction)) if fits.any() else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("--images", type=int, default=1024, help="calibration (train) images")
    parser.add_argument("--test-images", type=int, default=500, help="held-out test images for the curves")
    parser.add_argument("--pattern", default="checkerboard")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)

    x_train, _ = load_fashion_mnist("train")
    x_test, _ = load_fashion_mnist("test")
    pixels = np.concatenate([x_train[: args.images], x_test[: args.test_images]])[:, None].astype(np.float32) / 255
    selected, _ = select_layers(analyze(args.model).convs, (), (), False)
    pattern = get_pattern(args.pattern)
    tensors = {c.conv: c.preactivation for c in selected}  # the ofm is derived from it
    batches = (pixels[i : i + 64] for i in range(0, len(pixels), 64))
    rows = []
    with calibrate(args.model, tensors, batches, progress=False) as store:
        for conv in selected:
            stored = store.layer_array(conv.conv)
            row = {"layer": conv.conv, "shape": list(stored.shape[1:])}
            for label, kind, weight in VARIANTS:
                source = PredictorInput("preactivation", conv.clip_max)
                if kind == "activation":  # the paper's predictor reads (and is trained on) the ofm itself
                    train_data = np.asarray(source.ofm(stored[: args.images]))
                    curve_data = np.asarray(source.ofm(stored[args.images :]))
                    source = PredictorInput("activation")
                else:
                    train_data, curve_data = stored[: args.images], stored[args.images :]
                trained = train_predictor(train_data, pattern, seed=0, progress=False,
                                          predictor_input=source, magnitude_weight=weight)
                curve = layer_curve(conv.conv, curve_data, trained, macs=conv.macs)
                row[label] = {f"{e:g}": skipped_at(curve, e) for e in ERRORS}
            rows.append(row)
            print(json.dumps(row), flush=True)
    header = " | ".join(f"{label} @ {e:g}" for label, _, _ in VARIANTS for e in ERRORS)
    print(f"\n| layer | shape | {header} |\n|---|---|" + "---:|" * (len(VARIANTS) * len(ERRORS)))
    for r in rows:
        cells = " | ".join(f"{r[label][f'{e:g}']:.3f}" for label, _, _ in VARIANTS for e in ERRORS)
        print(f"| {r['layer']} | {'x'.join(map(str, r['shape']))} | {cells} |")
    save_results(rows, args.json)


if __name__ == "__main__":
    main()
