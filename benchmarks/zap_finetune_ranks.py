"""`zapopt finetune` on 1 process and under torchrun on N: same weights? how long? (issue #18)

    python benchmarks/zap_finetune_ranks.py vgg16.zap.onnx --train-images 2048 --ranks 2 \
        --json benchmarks/results/zap_finetune/ranks_vgg16.json

Both runs use the same global batch and data (the first --train-images Fashion-MNIST train
images), gloo on CPU, one torch thread per process. Reported: wall-clock of each command
(start-up included), and the largest weight difference between the two outputs next to
the largest change fine-tuning made. On a machine with fewer free cores than ranks the
wall-clock says little about scaling; the load average is recorded with it.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from zapopt.data import load_fashion_mnist  # noqa: E402
from zap_common import save_results  # noqa: E402

CLI = str(Path(__file__).resolve().parent.parent / "cli.py")


def _weights(path: Path) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="a ZapConv model (zapopt optimize --format zap)")
    parser.add_argument("--train-images", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        x, y = load_fashion_mnist("train")
        data = tmp / "train.npz"
        np.savez(data, x=x[:args.train_images, None].astype(np.float32) / 255, y=y[:args.train_images])
        common = ["finetune", args.model, "--data", str(data), "--batch-size", str(args.batch_size),
                  "--lr", str(args.lr), "--device", "cpu", "-q"]
        runs = {"1": [sys.executable, CLI, *common, "-o", str(tmp / "one.onnx")],
                str(args.ranks): [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                                  str(args.ranks), CLI, *common, "-o", str(tmp / "many.onnx")]}
        seconds = {}
        for label, command in runs.items():
            started = time.perf_counter()
            subprocess.run(command, env=env, check=True, capture_output=True)
            seconds[label] = time.perf_counter() - started
            print(f"{label} process(es): {seconds[label]:.1f} s", flush=True)
        one, many, start = _weights(tmp / "one.onnx"), _weights(tmp / "many.onnx"), _weights(Path(args.model))
        difference = max(float(np.abs(one[k] - many[k]).max()) for k in one)
        change = max(float(np.abs(one[k] - start[k]).max()) for k in one)
    row = {"model": args.model, "train_images": args.train_images, "batch_size": args.batch_size, "lr": args.lr,
           "ranks": args.ranks, "seconds_1_process": seconds["1"], f"seconds_{args.ranks}_processes":
           seconds[str(args.ranks)], "max_weight_difference": difference, "max_weight_change": change,
           "load_average": os.getloadavg()}
    print(json.dumps(row, indent=1))
    save_results([row], args.json)


if __name__ == "__main__":
    main()
