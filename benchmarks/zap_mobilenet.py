"""ZAP on torchvision's ImageNet MobileNetV2, judged by agreement with the original on real photos.

    python benchmarks/zap_mobilenet.py --json benchmarks/results/zap_mobilenet/mobilenet_v2.json

There is no labeled ImageNet data here, so the measure is top-1 agreement (and top-5
overlap) with the original model. Images: random resized crops (scale 0.3-1, flips) of
scikit-image's real photos; calibration and evaluation use different crops (different
seeds). Only 7 of MobileNetV2's 52 convs are eligible (its depthwise and 1x1 convs are
not: a predictor would cost more than they do), so little can be gained: that is the
point of measuring it.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from zapopt.data import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from zapopt.data.embedded import photo_arrays  # noqa: E402
from zapopt.evaluate import evaluate  # noqa: E402
from zapopt.optimize import OptimizeConfig, UniformThreshold, choose_thresholds, finish, prepare_layers  # noqa: E402
from zap_common import save_results  # noqa: E402

MODEL = Path(__file__).resolve().parent.parent / "models" / "mobilenet_v2" / "mobilenet_v2.onnx"


def random_crops(count: int, seed: int, size: int = 224) -> np.ndarray:
    """ImageNet-normalized [count, 3, size, size] random resized crops of the sample photos."""
    rng = np.random.default_rng(seed)
    photos = [image for _, image in photo_arrays()]
    out = np.empty((count, 3, size, size), np.float32)
    for i in range(count):
        image = photos[i % len(photos)]
        h, w = image.shape[:2]
        side = int(min(h, w) * np.sqrt(rng.uniform(0.3, 1.0)))
        top, left = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        crop = Image.fromarray(image[top:top + side, left:left + side]).resize((size, size), Image.BILINEAR)
        pixels = np.asarray(crop, np.float32) / 255
        if rng.random() < 0.5:
            pixels = pixels[:, ::-1]
        out[i] = ((pixels - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)).transpose(2, 0, 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calib-images", type=int, default=128)
    parser.add_argument("--eval-images", type=int, default=128)
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.0, 0.1, 0.2, 0.3, 0.4])
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        calib, held_out = Path(tmp) / "calib.npy", Path(tmp) / "eval.npy"
        np.save(calib, random_crops(args.calib_images, seed=0))
        np.save(held_out, random_crops(args.eval_images, seed=1))
        config = OptimizeConfig(UniformThreshold(args.thresholds[0]), calib_images=args.calib_images)
        prepared = prepare_layers(MODEL, str(calib), config=config, progress=False)
        for tau in args.thresholds:
            config = OptimizeConfig(UniformThreshold(tau), calib_images=args.calib_images)
            result = finish(prepared, choose_thresholds(prepared, config), config, model_name=str(MODEL))
            path = Path(tmp) / f"zap-{tau}.onnx"
            path.write_bytes(result.model.SerializeToString())
            report = evaluate(path, str(held_out), reference=MODEL, progress=False)
            rows.append({"threshold": tau, "zap_layers": len(result.report.zap_layers),
                         "oracle_savings": result.report.oracle_savings, "savings": report.savings,
                         "agreement": report.agreement, "output_rel_error": report.output_rel_error})
            print(json.dumps(rows[-1]), flush=True)
    print("\n| threshold | ZAP layers | MACs saved (whole model) | oracle | top-1 agreement | output rel. error |\n"
          "|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['threshold']} | {r['zap_layers']} | {100 * r['savings']:.1f} % | {100 * r['oracle_savings']:.1f} % "
              f"| {100 * r['agreement']:.1f} % | {r['output_rel_error']:.3f} |")
    save_results(rows, args.json)


if __name__ == "__main__":
    main()
