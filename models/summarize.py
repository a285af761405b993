"""Regenerate models/README.md (the model table) from every models/*/card.json.

    python models/summarize.py

Why generated: the table must never drift from the cards the training scripts write.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

MODELS_DIR = Path(__file__).resolve().parent
REPO_ROOT = MODELS_DIR.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from models.model_card import write_text_atomic  # noqa: E402

HEADER = """# Reference models

Seeded, reproducible CNNs for zapopt experiments. Each folder holds the ONNX file, a
`card.json` (machine-readable: accuracy, per-layer MACs, per-layer ReLU sparsity, recipe,
epoch log) and a `README.md` model card. Architectures: `models/architectures.py`
(`build_model("vgg16" | "resnet18" | "alexnet" | "mobilenet_v2", **kw)`).

Fashion-MNIST models take float32 `[N, 1, 28, 28]` = pixel / 255; upsampling and
normalization are inside the graph. MACs count conv (`C_out*H_out*W_out*(C_in/groups)*kH*kW`)
and Linear (`in*out`) layers for one image. Sparsity = mean over conv-layer ReLUs of the
fraction of exact zeros on the 10k test images (ReLU6 on 4 photos for MobileNetV2).

| model | data | accuracy | MACs | params | ONNX size | mean sparsity | retrain / re-export |
|---|---|---:|---:|---:|---:|---:|---|
"""

FOOTER = """
Training ran on a 2-core CPU shared with other jobs (load average 3-10), one or two torch threads,
so the recipes are small: narrow widths (VGG 16-32-64-128-128, ResNet 8-16-32-64, AlexNet
16-32-48-48-32 channels), 4-8 epochs, and the shipped VGG/AlexNet upsample 28 -> 32 (not 64),
which leaves 2x2 maps in VGG's last block (`VGG16Style(upsample_to=64)` gives 4x4 but costs
4x the MACs); the ResNet runs at the native 28x28. The cards record wall time and the
per-epoch log. Bit-exact reruns need the same thread count and torch version.

Data: Fashion-MNIST (c) Zalando SE, MIT license, from the Debian package
dataset-fashion-mnist. MobileNetV2 weights: torchvision, BSD-3-Clause.
After retraining, run `python models/summarize.py` to refresh this table.
"""


def row(card: dict) -> str:
    if "test_accuracy" in card:
        acc = f"{card['test_accuracy'] * 100:.2f} % (test, 10k)"
        sparsity = card["mean_relu_sparsity"]
    else:
        acc = f"{card['published_imagenet_top1']} % (published top-1)"
        sparsity = card["mean_relu6_sparsity"]
    return (f"| [{card['name']}]({card['name']}/README.md) | {card['dataset']} | {acc} | "
            f"{card['macs'] / 1e6:.1f} M | {card['params'] / 1e3:.0f} k | "
            f"{card['onnx_bytes'] / 1e6:.1f} MB | {sparsity * 100:.1f} % | `{card['command']}` |")


def main() -> None:
    cards = [json.loads(p.read_text()) for p in sorted(MODELS_DIR.glob("*/card.json"))]
    text = HEADER + "\n".join(row(c) for c in cards) + "\n" + FOOTER
    write_text_atomic(MODELS_DIR / "README.md", text)
    print(f"wrote {MODELS_DIR / 'README.md'} ({len(cards)} models)")


if __name__ == "__main__":
    main()
