"""``zapopt data fetch``: make a full idx dataset available without root.

Fashion-MNIST comes from Debian's ``dataset-fashion-mnist``: the installed files are used
when present; otherwise ``apt-get download`` fetches the .deb into a temp dir (works
unprivileged) and ``dpkg-deb -x`` unpacks it, and the four idx files are copied into the
destination. MNIST has no package on the registries this project may use, so it is taken
from a directory the user supplies (``--from DIR``), checked and copied the same way.
"""
from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from zapopt.files import copy_atomically
from zapopt.data.catalog import (
    SPLITS,
    IDX_FILE_STEMS,
    data_home,
    dataset_spec,
    find_idx_file,
    is_complete,
    read_split,
)
from zapopt.errors import ZapoptError

#: How long ``apt-get download`` may take before we give up (seconds).
APT_TIMEOUT_S = 600


@dataclass(frozen=True)
class FetchResult:
    """Where the set now is and how it got there (``installed``, ``copied``, ``downloaded``)."""

    name: str
    directory: Path
    how: str
    source: str


def _check_and_copy(name: str, source_dir: Path, destination: Path) -> None:
    """Validate all four files in ``source_dir``, then copy them into ``destination``."""
    spec = dataset_spec(name)
    for split in SPLITS:
        read_split(source_dir, split, spec.size(split))
    destination.mkdir(parents=True, exist_ok=True)
    for stems in IDX_FILE_STEMS.values():
        for stem in stems:
            found = find_idx_file(source_dir, stem)
            target = destination / found.name
            if target.exists() and target.samefile(found):
                continue
            copy_atomically(found, target)


def _require_tool(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise ZapoptError(
            f"`{tool}` not found: downloading needs a Debian/Ubuntu system with apt-get and dpkg-deb; "
            "elsewhere get the four idx files yourself and run `zapopt data fetch NAME --from DIR`"
        )
    return path


def _run(command: list[str], cwd: Path) -> None:
    try:
        result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=APT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise ZapoptError(f"`{' '.join(command)}` took over {APT_TIMEOUT_S}s; check the network and retry") from None
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()
        last = detail[-1] if detail else f"exit status {result.returncode}"
        raise ZapoptError(f"`{' '.join(command)}` failed: {last}")


def download_debian_package(package: str, workdir: Path) -> Path:
    """``apt-get download`` then ``dpkg-deb -x`` into ``workdir/root``; returns that root."""
    apt_get, dpkg_deb = _require_tool("apt-get"), _require_tool("dpkg-deb")
    _run([apt_get, "download", package], cwd=workdir)
    debs = sorted(workdir.glob(f"{package}_*.deb"))
    if not debs:
        raise ZapoptError(f"`apt-get download {package}` produced no .deb in {workdir}")
    root = workdir / "root"
    root.mkdir()
    _run([dpkg_deb, "-x", str(debs[-1]), str(root)], cwd=workdir)
    return root


def fetch_dataset(name: str, dest: str | Path | None = None, source_dir: str | Path | None = None) -> FetchResult:
    """Make set ``name`` loadable; see the module docstring for where it comes from.

    ``dest`` defaults to ``$ZAPOPT_DATA/NAME`` or ``~/.cache/zapopt/datasets/NAME``. When
    no ``dest`` is given and the Debian package is installed, nothing is copied: the
    loaders already find the system directory.
    """
    spec = dataset_spec(name)
    destination = Path(dest).expanduser() if dest is not None else data_home() / name
    if destination.exists() and not destination.is_dir():
        raise ZapoptError(f"destination {destination} exists and is not a directory")

    if source_dir is not None:
        source = Path(source_dir).expanduser()
        if not source.is_dir():
            raise ZapoptError(f"--from {source}: no such directory")
        if not is_complete(source):
            missing = [s for p in IDX_FILE_STEMS.values() for s in p if find_idx_file(source, s) is None]
            raise ZapoptError(f"--from {source} lacks {', '.join(m + '[.gz]' for m in missing)}")
        _check_and_copy(name, source, destination)
        return FetchResult(name, destination, "copied", str(source))

    if spec.system_dir is not None and is_complete(spec.system_dir):
        if dest is None:
            for split in SPLITS:
                read_split(spec.system_dir, split, spec.size(split))
            return FetchResult(name, spec.system_dir, "installed", f"Debian package {spec.debian_package}")
        _check_and_copy(name, spec.system_dir, destination)
        return FetchResult(name, destination, "copied", str(spec.system_dir))

    if spec.debian_package is None:
        raise ZapoptError(
            f"{name} has no package on the registries zapopt may use; download the four idx files "
            f"(train/t10k images and labels) yourself and run `zapopt data fetch {name} --from DIR`"
        )
    if destination.is_dir() and is_complete(destination):
        _check_and_copy(name, destination, destination)
        return FetchResult(name, destination, "present", str(destination))
    with tempfile.TemporaryDirectory(prefix="zapopt-fetch-") as tmp:
        root = download_debian_package(spec.debian_package, Path(tmp))
        unpacked = root / spec.system_dir.relative_to("/")
        if not is_complete(unpacked):
            raise ZapoptError(f"package {spec.debian_package} did not contain the idx files under {spec.system_dir}")
        _check_and_copy(name, unpacked, destination)
    return FetchResult(name, destination, "downloaded", f"Debian package {spec.debian_package}")
