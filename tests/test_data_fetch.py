"""Finding and fetching the full idx sets; downloads are simulated, never real."""
from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from zapopt.data import catalog, fetch
from zapopt.data.catalog import IDX_FILE_STEMS, load_fashion_mnist, load_mnist
from zapopt.data.idx import write_idx
from zapopt.errors import ZapoptError

SIZES = {"train": 6, "test": 4}


def make_idx_dir(directory: Path, seed: int = 0, gz: bool = True) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    content = {}
    for split, (image_stem, label_stem) in IDX_FILE_STEMS.items():
        x = rng.integers(0, 256, size=(SIZES[split], 28, 28), dtype=np.uint8)
        y = rng.integers(0, 10, size=SIZES[split]).astype(np.uint8)
        suffix = ".gz" if gz else ""
        write_idx(directory / f"{image_stem}{suffix}", x)
        write_idx(directory / f"{label_stem}{suffix}", y)
        content[split] = (x, y)
    return content


@pytest.fixture
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No ZAPOPT_DATA, a private cache, tiny split sizes, and a system dir under tmp_path."""
    monkeypatch.delenv("ZAPOPT_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    for name in ("fashion-mnist", "mnist"):
        spec = catalog.DATASETS[name]
        system_dir = tmp_path / "system" / name if spec.system_dir is not None else None
        monkeypatch.setitem(catalog.DATASETS, name, dataclasses.replace(
            spec, train_size=SIZES["train"], test_size=SIZES["test"], system_dir=system_dir))
    return tmp_path


def forbid_subprocess(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("no subprocess may run here")
    monkeypatch.setattr(fetch.subprocess, "run", refuse)


def test_fetch_uses_installed_files_without_downloading(isolated: Path, monkeypatch) -> None:
    content = make_idx_dir(isolated / "system" / "fashion-mnist")
    forbid_subprocess(monkeypatch)
    result = fetch.fetch_dataset("fashion-mnist")
    assert result.how == "installed" and result.directory == isolated / "system" / "fashion-mnist"
    x, y = load_fashion_mnist("test")
    np.testing.assert_array_equal(x, content["test"][0])
    assert y.dtype == np.int64
    np.testing.assert_array_equal(y, content["test"][1])


def test_fetch_with_dest_copies_installed_files(isolated: Path, monkeypatch) -> None:
    make_idx_dir(isolated / "system" / "fashion-mnist")
    forbid_subprocess(monkeypatch)
    result = fetch.fetch_dataset("fashion-mnist", dest=isolated / "mine")
    assert result.how == "copied"
    assert sorted(p.name for p in (isolated / "mine").iterdir()) == sorted(
        f"{stem}.gz" for pair in IDX_FILE_STEMS.values() for stem in pair)


def test_loader_search_order_env_then_cache_then_system(isolated: Path, monkeypatch) -> None:
    make_idx_dir(isolated / "system" / "fashion-mnist", seed=1)
    cache = make_idx_dir(isolated / "cache" / "zapopt" / "datasets" / "fashion-mnist", seed=2, gz=False)
    np.testing.assert_array_equal(load_fashion_mnist("train")[0], cache["train"][0])
    env = make_idx_dir(isolated / "env" / "fashion-mnist", seed=3)
    monkeypatch.setenv("ZAPOPT_DATA", str(isolated / "env"))
    np.testing.assert_array_equal(load_fashion_mnist("train")[0], env["train"][0])


def test_loader_error_names_the_fetch_command(isolated: Path) -> None:
    with pytest.raises(ZapoptError, match="zapopt data fetch fashion-mnist"):
        load_fashion_mnist("test")
    with pytest.raises(ZapoptError, match="zapopt data fetch mnist --from"):
        load_mnist("train")
    make_idx_dir(isolated / "system" / "fashion-mnist")
    with pytest.raises(ZapoptError, match="split must be"):
        load_fashion_mnist("validation")


def test_wrong_split_size_is_refused(isolated: Path, monkeypatch) -> None:
    make_idx_dir(isolated / "system" / "fashion-mnist")
    spec = catalog.DATASETS["fashion-mnist"]
    monkeypatch.setitem(catalog.DATASETS, "fashion-mnist", dataclasses.replace(spec, test_size=10000))
    with pytest.raises(ZapoptError, match="4 images, the official test split has 10000"):
        load_fashion_mnist("test")


def test_mnist_from_user_directory(isolated: Path, monkeypatch) -> None:
    content = make_idx_dir(isolated / "download", seed=5, gz=False)
    forbid_subprocess(monkeypatch)
    with pytest.raises(ZapoptError, match="--from"):
        fetch.fetch_dataset("mnist")
    result = fetch.fetch_dataset("mnist", source_dir=isolated / "download")
    assert result.how == "copied"
    assert result.directory == isolated / "cache" / "zapopt" / "datasets" / "mnist"
    x, y = load_mnist("train")
    np.testing.assert_array_equal(x, content["train"][0])
    np.testing.assert_array_equal(y, content["train"][1])


def test_from_directory_missing_or_bad_files(isolated: Path) -> None:
    make_idx_dir(isolated / "partial")
    (isolated / "partial" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(ZapoptError, match="lacks t10k-labels-idx1-ubyte"):
        fetch.fetch_dataset("mnist", source_dir=isolated / "partial")
    make_idx_dir(isolated / "mismatch")
    write_idx(isolated / "mismatch" / "train-labels-idx1-ubyte.gz", np.zeros(5, np.uint8))
    with pytest.raises(ZapoptError, match="5] labels for 6 images"):
        fetch.fetch_dataset("mnist", source_dir=isolated / "mismatch")
    assert not (isolated / "cache" / "zapopt" / "datasets" / "mnist").exists()


@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb to build a test package")
def test_download_path_runs_apt_get_download_then_dpkg_deb(isolated: Path, monkeypatch) -> None:
    system_dir = catalog.DATASETS["fashion-mnist"].system_dir  # absent: forces the download path
    tree = isolated / "pkgtree"
    content = make_idx_dir(tree / system_dir.relative_to("/"), seed=7)
    (tree / "DEBIAN").mkdir()
    (tree / "DEBIAN" / "control").write_text(
        "Package: dataset-fashion-mnist\nVersion: 1.0\nArchitecture: all\n"
        "Maintainer: test <t@example.invalid>\nDescription: test package\n")
    deb = isolated / "built.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-b", str(tree), str(deb)], check=True, capture_output=True)
    bin_dir = isolated / "bin"
    bin_dir.mkdir()
    log = isolated / "apt.log"
    fake_apt = bin_dir / "apt-get"
    fake_apt.write_text(f'#!/bin/sh\necho "$@" >> {log}\ncp {deb} "./$2_1.0_all.deb"\n')
    fake_apt.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    result = fetch.fetch_dataset("fashion-mnist")
    assert result.how == "downloaded"
    assert log.read_text().split() == ["download", "dataset-fashion-mnist"]
    x, y = load_fashion_mnist("train")
    np.testing.assert_array_equal(x, content["train"][0])
    again = fetch.fetch_dataset("fashion-mnist")
    assert again.how == "present" and log.read_text().count("download") == 1


def test_download_without_tools_is_a_clear_error(isolated: Path, monkeypatch) -> None:
    empty = isolated / "emptybin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(ZapoptError, match="`apt-get` not found"):
        fetch.fetch_dataset("fashion-mnist")


def test_apt_failure_is_reported(isolated: Path, monkeypatch) -> None:
    bin_dir = isolated / "bin"
    bin_dir.mkdir()
    for tool, body in (("apt-get", "echo 'E: Unable to locate package' >&2; exit 100"), ("dpkg-deb", "exit 0")):
        (bin_dir / tool).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    with pytest.raises(ZapoptError, match="Unable to locate package"):
        fetch.fetch_dataset("fashion-mnist")
