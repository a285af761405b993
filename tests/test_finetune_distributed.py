"""Two gloo processes under torchrun train the same model as one process with the same global batch."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from tests.conftest import REPO_ROOT
from tests.finetune_models import tiny_labeled_arrays, tiny_zap_classifier
from zapopt.files import save_model_atomically
from zapopt.finetuning import FinetuneConfig, finetune
from zapopt.finetuning.distributed import Ranks
from zapopt.finetuning.train import global_batches, rank_share


def _weights(path: Path) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}


def test_ranks_split_every_global_batch_exactly() -> None:
    for batch in global_batches(37, 10, seed=1, epoch=0):
        shares = [rank_share(batch, Ranks(r, 3, None)) for r in range(3)]  # type: ignore[arg-type]
        assert np.array_equal(np.concatenate(shares), batch)
    epochs = [np.concatenate(global_batches(37, 10, seed=1, epoch=e)) for e in range(2)]
    assert sorted(epochs[0]) == list(range(37)) and not np.array_equal(epochs[0], epochs[1])


@pytest.mark.parametrize("tools", [[], ["--grad-sparsity", "0.85"]])
def test_two_processes_match_one(tmp_path: Path, tools: list[str]) -> None:
    model = tmp_path / "tiny.zap.onnx"
    save_model_atomically(tiny_zap_classifier(), model)
    x, y = tiny_labeled_arrays(60, seed=1)  # 60 = 3 full global batches of 16 and one of 12
    np.savez(tmp_path / "train.npz", x=x, y=y)
    config = FinetuneConfig(epochs=2, batch_size=16, lr=0.05)
    one = tmp_path / "one.onnx"
    finetune(str(model), str(one), str(tmp_path / "train.npz"), config=config, device="cpu", progress=False,
             log=lambda _m: None)
    two = tmp_path / "two.onnx"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(REPO_ROOT / "cli.py"), "finetune", str(model), "--data", str(tmp_path / "train.npz"),
               "-o", str(two), "--epochs", "2", "--batch-size", "16", "--lr", "0.05", "--device", "cpu", "-q",
               "--json", *tools]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert report["world_size"] == 2 and [e["images"] for e in report["epochs"]] == [60, 60]
    a, b = _weights(one), _weights(two)
    if not tools:  # the same steps: equal up to float summation order
        for name in a:
            assert np.allclose(a[name], b[name], rtol=1e-4, atol=1e-6), name
    else:  # pruning is random per rank: the run works, trains, and gradtools ran on the ranks
        assert "GradientPruner" in report["gradient_tools"]
        original = _weights(model)
        assert any(not np.array_equal(original[k], b[k]) for k in original)
