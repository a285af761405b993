"""The README's main job: `zapopt demo` runs end to end on the embedded model and data."""
from __future__ import annotations

import json
from pathlib import Path

from zapopt.demo import DEFAULT_MODEL, run_demo


def test_demo_writes_every_artifact(tmp_path: Path) -> None:
    lines: list[str] = []
    summary = run_demo(tmp_path, calib_images=64, echo=lines.append, progress=False)
    for name in ("vgg16.zap.onnx", "vgg16.zap.onnx.report.json", "sweep.json", "sweep.png", "summary.json"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert json.loads((tmp_path / "summary.json").read_text())["optimized"] == summary["optimized"]
    assert 0 < summary["eval"]["savings"] < summary["oracle_savings"] + 0.1
    assert summary["eval"]["top1"] > 0.8  # the embedded VGG is ~92 % on these images
    assert any("== 4/4" in line for line in lines)
    assert DEFAULT_MODEL.is_file()
