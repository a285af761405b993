"""Cost of simulated FP gradient quantization: training-step ratio and raw throughput.

Steps of an FP32 model and of an identical model with a GradientQuantizer attached are
interleaved (A, B, A, B, ...) so that load from other processes hits both alike; the
ratio of medians is the simulator's overhead per step. Also times ``quantize_fp`` alone.

    python benchmarks/gradfp_overhead.py
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path
from statistics import median

import torch
import torch.nn.functional as F

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from gradtools.fp import FPFormat, quantize_fp  # noqa: E402
from gradtools.quantize import GradientQuantizer  # noqa: E402
from models.architectures import build_model  # noqa: E402
from benchmarks.result_files import command_line, results_dir, write_result  # noqa: E402


def step_time(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    start = time.perf_counter()
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    return time.perf_counter() - start


def interleaved_ratio(arch: str, width: int, batch: int, steps: int, quantizer_kwargs: dict) -> dict:
    torch.manual_seed(0)
    base = build_model(arch, upsample_to=None, width=width)
    quant = copy.deepcopy(base)
    GradientQuantizer(quant, layer_types=(torch.nn.Conv2d,), refresh_every=100, **quantizer_kwargs)
    x, y = torch.rand(batch, 1, 28, 28), torch.randint(0, 10, (batch,))
    for _ in range(2):  # warm-up (the first quantized step also picks formats)
        step_time(base, x, y), step_time(quant, x, y)
    fp32, quantized = [], []
    for _ in range(steps):
        fp32.append(step_time(base, x, y))
        quantized.append(step_time(quant, x, y))
    return {"arch": arch, "width": width, "batch": batch, "steps": steps,
            "quantizer": {k: str(v) for k, v in quantizer_kwargs.items()},
            "fp32_median_s": median(fp32), "quantized_median_s": median(quantized),
            "ratio": median(quantized) / median(fp32)}


def throughput(numel: int, dtype: torch.dtype, repeats: int = 5) -> float:
    """Elements per second of round-to-nearest ``quantize_fp`` (E4M3FN, with a scale)."""
    x = torch.randn(numel, dtype=dtype)
    quantize_fp(x, FPFormat.E4M3FN, scale=8.0)
    start = time.perf_counter()
    for _ in range(repeats):
        quantize_fp(x, FPFormat.E4M3FN, scale=8.0)
    return numel * repeats / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(results_dir("gradfp_overhead") / "overhead.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for arch in ("resnet18", "vgg16"):
        for kwargs in ({"bits": 6}, {"bits": 6, "scaling": "max"},
                       {"bits": 8, "fmt": FPFormat.E5M2.replace(overflow="saturate")},
                       {"bits": 6, "rounding": "stochastic"}):
            rows.append(interleaved_ratio(arch, args.width, args.batch, args.steps, kwargs))
            r = rows[-1]
            print(f"{arch} {r['quantizer']}: fp32 {r['fp32_median_s'] * 1e3:.0f} ms, "
                  f"quantized {r['quantized_median_s'] * 1e3:.0f} ms, ratio {r['ratio']:.2f}x", flush=True)
    rates = {str(dtype): throughput(1 << 21, dtype) for dtype in (torch.float32, torch.float64)}
    for name, rate in rates.items():
        print(f"quantize_fp {name}: {rate / 1e6:.0f} M elements/s (1 thread)")
    write_result(args.out, {"settings": vars(args), "step_ratios": rows, "quantize_fp_elements_per_s": rates}, argv)
    print(f"\nreproduce: {command_line(argv)}")


if __name__ == "__main__":
    main()
