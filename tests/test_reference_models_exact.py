"""With thresholds that compute everything, every reference model's ZAP version is exact."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
import pytest

from tests.conftest import REPO_ROOT
from zapopt.data import model_input
from zapopt.optimize import OptimizeConfig, build_zap_model, prepare_layers
from zapopt.rewrite.zap_layers import read_zap_layers
from zapopt.runtime import make_session, prepare

MODELS = ["vgg16", "resnet18", "alexnet", "mobilenet_v2"]


@pytest.mark.parametrize("name", MODELS)
def test_compute_everything_matches_original(name: str, tmp_path: Path) -> None:
    path = REPO_ROOT / "models" / name / f"{name}.onnx"
    if not path.is_file():
        pytest.skip(f"{path} not built (scripts/install.sh exports MobileNetV2)")
    original = onnx.load(path)
    spec = model_input(original)
    rng = np.random.default_rng(0)
    shape = [8 if d is None else d for d in spec.shape]
    calib = rng.random(shape, dtype=np.float32)
    if name == "mobilenet_v2":
        calib = (calib - 0.45) / 0.225  # ImageNet-normalized range
    np.save(tmp_path / "calib.npy", calib)
    config = OptimizeConfig(calib_images=8, epochs=1, holdout=0.25)
    prepared = prepare_layers(original, str(tmp_path / "calib.npy"), config=config, progress=False)
    # A finite threshold below any score: every layer becomes a ZapConv that computes everything.
    zap = build_zap_model(original, prepared.trained, {n: -1e30 for n in prepared.trained})
    assert len(read_zap_layers(zap)) == len(prepared.trained) > 0
    onnx.checker.check_model(zap)
    x = rng.random([4, *shape[1:]], dtype=np.float32)
    want = make_session(original).run(None, {spec.name: x})[0]
    got = make_session(prepare(zap).model).run(None, {spec.name: x})[0]
    assert np.linalg.norm(got - want) / np.linalg.norm(want) <= 1e-5
    if name != "mobilenet_v2":  # the numpy reference op agrees too (too slow at 224x224)
        from zapopt.ops.reference import reference_session

        ref = reference_session(zap).run(None, {spec.name: x[:1]})[0]
        assert np.linalg.norm(ref - want[:1]) / np.linalg.norm(want[:1]) <= 1e-5
    assert math.isfinite(float(got.sum()))
