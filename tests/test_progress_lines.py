"""Progress in a log file: plain lines at the start, every interval and at the end."""
from __future__ import annotations

import io
import logging

import pytest

from zapopt.notices import collect_warnings, warn
from zapopt.progress import ProgressLines, progress_bar


def test_lines_at_start_each_interval_and_end() -> None:
    stream = io.StringIO()
    with ProgressLines(3, "calibrate", "img", interval=0.0, stream=stream) as bar:
        bar.update(1)
        bar.update(2)
    lines = stream.getvalue().splitlines()
    assert lines[0] == "calibrate: started (3 img)"
    assert lines[1].startswith("calibrate: 1/3 (33%) img, ")
    assert lines[2].startswith("calibrate: 3/3 (100%) img, ")
    assert lines[-1].endswith("(done)") and len(lines) == 4
    assert "\r" not in stream.getvalue()


def test_nothing_between_start_and_end_within_the_interval() -> None:
    stream = io.StringIO()
    bar = ProgressLines(None, "train", "layer", interval=3600.0, stream=stream)
    for _ in range(5):
        bar.update(1)
    bar.close()
    bar.close()
    assert stream.getvalue().splitlines() == ["train: started", stream.getvalue().splitlines()[1]]
    assert stream.getvalue().splitlines()[1].startswith("train: 5 layer, ")


def test_quiet_prints_nothing(capsys: pytest.CaptureFixture) -> None:
    bar = progress_bar(4, "eval", enabled=False)
    bar.update(4)
    bar.close()
    assert capsys.readouterr().err == ""


def test_warnings_are_collected_once_each_and_still_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="zapopt"), collect_warnings() as messages:
        warn("first")
        warn("second")
        warn("first")
    warn("after")
    assert messages == ["first", "second"]
    assert caplog.text.count("first") == 2
