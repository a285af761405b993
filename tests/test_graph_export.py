"""Analysis of tiny PyTorch CNNs exported with the TorchScript exporter at opsets 11..21."""
from __future__ import annotations

import warnings
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

from zapopt.graph import analyze  # noqa: E402


class TinyResNet(nn.Module):
    """stem conv+BN+ReLU (first layer, too narrow), conv+BN+ReLU6, residual block, FC head."""

    def __init__(self, nhwc: bool = False) -> None:
        super().__init__()
        self.nhwc = nhwc
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.down = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU6())
        self.conv3 = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.conv4 = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16))
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        if self.nhwc:
            x = x.permute(0, 3, 1, 2)
        x = self.down(self.stem(x))
        x = torch.relu(self.conv4(self.conv3(x)) + x)
        x = nn.functional.adaptive_avg_pool2d(x, 1)
        return self.fc(x.view(x.size(0), -1))


# Per sample, input 3x8x8: C_out * H_out * W_out * C_in * kH * kW for each conv, 16 * 10 for the FC.
STEM, DOWN, CONV3, CONV4, FC = 8 * 64 * 27, 16 * 16 * 72, 16 * 16 * 144, 16 * 16 * 144, 160


def export(tmp_path: Path, opset: int, nhwc: bool = False, dynamic_spatial: bool = False) -> Path:
    torch.manual_seed(0)
    model = TinyResNet(nhwc).eval()
    shape = (1, 8, 8, 3) if nhwc else (1, 3, 8, 8)
    axes = {0: "batch"}
    if dynamic_spatial:
        axes.update({2: "height", 3: "width"})
    path = tmp_path / f"tiny_{opset}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # opset 21 is past the TorchScript exporter's tested range
        torch.onnx.export(model, (torch.randn(*shape),), str(path), dynamo=False, opset_version=opset,
                          input_names=["input"], output_names=["logits"], dynamic_axes={"input": axes})
    return path


@pytest.mark.parametrize("opset", range(11, 22))
def test_exported_model_at_each_opset(tmp_path: Path, opset: int) -> None:
    info = analyze(export(tmp_path, opset))
    assert info.opset == opset
    assert [layer.macs for layer in info.layers] == [STEM, DOWN, CONV3, CONV4, FC]
    assert info.total_macs == STEM + DOWN + CONV3 + CONV4 + FC
    assert [layer.op_type for layer in info.layers][-1] in ("Gemm", "MatMul")
    stem, down, conv3, conv4 = info.convs
    assert stem.first_layer and not stem.eligible and "3 input channels" in stem.reason
    assert down.eligible and down.clip_max == 6.0, down.reason
    assert conv3.eligible and conv3.clip_max == float("inf")
    assert conv4.eligible and conv4.add is not None and conv4.skip_input == down.output
    assert not any(c.first_layer for c in (down, conv3, conv4))
    assert info.eligible_macs == DOWN + CONV3 + CONV4
    assert any("assumed batch size 1" in note for note in info.notes)


def test_nhwc_input_with_transpose_before_the_first_conv(tmp_path: Path) -> None:
    info = analyze(export(tmp_path, 17, nhwc=True), {"input": [2, 8, 8, 3]})
    assert info.inputs[0].shape == (2, 8, 8, 3) and info.batch_size == 2
    assert info.total_macs == STEM + DOWN + CONV3 + CONV4 + FC  # still per sample
    assert info.convs[0].first_layer and info.convs[0].input_shape == (2, 3, 8, 8)
    assert [c.eligible for c in info.convs] == [False, True, True, True]


def test_dynamic_spatial_dims_need_an_input_shape(tmp_path: Path) -> None:
    from zapopt.errors import ZapoptError

    path = export(tmp_path, 13, dynamic_spatial=True)
    with pytest.raises(ZapoptError, match="--input-shape"):
        analyze(path)
    info = analyze(path, {"input": [1, 3, 16, 16]})
    assert info.total_macs == 4 * (STEM + DOWN + CONV3 + CONV4) + FC
