"""Per layer, what the predictor's training schedule buys at a fixed activation-mass error.

Trains each layer's predictor (zapopt's defaults otherwise: pre-activation input,
magnitude-weighted loss) with a few schedules on the first calibration (train) images,
measures its curve on held-out test images and reports the share of the layer's
activations skipped at the largest threshold whose error stays <= each budget, plus the
same weighted by the layer's MACs and summed over layers (share of the whole model's
MACs). It is the evidence for ``--max-epoch-scale``: the deep layers' epochs are cheap
and their predictors are still learning after 3 epochs.

    python benchmarks/zap_predictor_training.py models/vgg16/vgg16.onnx
"""
from __future__ import annotations

import argparse
import json
import sys
import time
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
from zapopt.predictor.train import scaled_epochs, train_predictor  # noqa: E402
from zap_common import save_results  # noqa: E402
from zap_predictor_variants import ERRORS, skipped_at  # noqa: E402

#: (label, training images, epochs on the largest layer, max epoch scale)
SCHEDULES = (("flat, 1024 images", 1024, 3, 1), ("scaled, 1024 images", 1024, 3, 8),
             ("flat, 8192 images", 8192, 3, 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("--test-images", type=int, default=1000, help="held-out test images for the curves")
    parser.add_argument("--pattern", default="checkerboard")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)

    images = max(n for _, n, _, _ in SCHEDULES)
    x_train, _ = load_fashion_mnist("train")
    x_test, _ = load_fashion_mnist("test")
    pixels = np.concatenate([x_train[:images], x_test[: args.test_images]])[:, None].astype(np.float32) / 255
    analysis = analyze(args.model)
    total_macs = sum(c.macs for c in analysis.convs)
    selected, _ = select_layers(analysis.convs, (), (), False)
    pattern = get_pattern(args.pattern)
    tensors = {c.conv: c.preactivation for c in selected}
    batches = (pixels[i : i + 64] for i in range(0, len(pixels), 64))
    model_share = {label: np.zeros(len(ERRORS)) for label, _, _, _ in SCHEDULES}
    seconds = {label: 0.0 for label, _, _, _ in SCHEDULES}
    rows = []
    with calibrate(args.model, tensors, batches, progress=False) as store:
        largest = max(int(np.prod(store.layer_array(c.conv).shape[1:])) for c in selected)
        for conv in selected:
            stored = store.layer_array(conv.conv)
            source = PredictorInput("preactivation", conv.clip_max)
            row = {"layer": conv.conv, "shape": list(stored.shape[1:]), "macs": conv.macs}
            for label, n, epochs, scale in SCHEDULES:
                layer_epochs = scaled_epochs(epochs, int(np.prod(stored.shape[1:])), largest, scale)
                started = time.perf_counter()
                trained = train_predictor(stored[:n], pattern, epochs=layer_epochs, seed=0, progress=False,
                                          predictor_input=source, magnitude_weight=6.0)
                seconds[label] += time.perf_counter() - started
                curve = layer_curve(conv.conv, stored[images:], trained, macs=conv.macs)
                skipped = np.array([skipped_at(curve, e) for e in ERRORS])
                model_share[label] += skipped * conv.macs / total_macs
                row[label] = {"epochs": layer_epochs, **{f"{e:g}": float(v) for e, v in zip(ERRORS, skipped)}}
            rows.append(row)
            print(json.dumps(row), flush=True)
    summary = [{"schedule": label, "train_seconds": seconds[label],
                **{f"model_share@{e:g}": float(v) for e, v in zip(ERRORS, model_share[label])}}
               for label, _, _, _ in SCHEDULES]
    print("\n| schedule | train s | " + " | ".join(f"model MACs skipped @ {e:g}" for e in ERRORS) + " |")
    print("|---|---:|" + "---:|" * len(ERRORS))
    for s in summary:
        print(f"| {s['schedule']} | {s['train_seconds']:.0f} | "
              + " | ".join(f"{100 * s[f'model_share@{e:g}']:.2f} %" for e in ERRORS) + " |")
    save_results(rows + summary, args.json)  # per-layer rows, then one summary row per schedule


if __name__ == "__main__":
    main()
