"""Safe output files: atomic writes (a crash or Ctrl-C never leaves half a file) and
path checks done before long work starts."""
from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def _default_mode() -> int:
    """0o666 less the process umask, i.e. the mode a plain ``open(path, "w")`` would give."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def write_atomically(path: str | Path, fill: Callable[[BinaryIO], None]) -> Path:
    """Call ``fill`` on a temp file beside ``path``, then rename it over ``path``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            fill(f)
        os.chmod(tmp, _default_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def copy_atomically(source: str | Path, destination: str | Path) -> Path:
    """Copy ``source`` to ``destination`` so readers see either nothing or the whole file."""
    with open(source, "rb") as src:
        return write_atomically(destination, lambda dst: shutil.copyfileobj(src, dst, 1 << 20))


def check_output_path(path: str | Path, *, inputs: tuple[str | Path, ...] = (), what: str = "output") -> Path:
    """Refuse an output that would overwrite an input or cannot be written, before any work."""
    out = Path(path)
    for source in inputs:
        src = Path(source)
        if out.resolve() == src.resolve() or (out.exists() and src.exists() and os.path.samefile(out, src)):
            raise ValueError(f"the {what} path {out} is the input file; choose another name "
                             "(zapopt never overwrites its input)")
    parent = out.parent if str(out.parent) else Path(".")
    if out.is_dir():
        raise ValueError(f"the {what} path {out} is a directory; give a file name")
    if not parent.is_dir():
        raise ValueError(f"the {what} directory {parent} does not exist; create it first")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"cannot write the {what} to {parent}: permission denied")
    return out


def save_model_atomically(model, path: str | Path) -> Path:
    """Serialize an ONNX model and write it atomically (a crash never leaves half a model)."""
    data = model.SerializeToString()
    return write_atomically(path, lambda f: f.write(data))


def write_text_atomically(path: str | Path, text: str) -> Path:
    """Write a text file atomically (UTF-8)."""
    data = text.encode("utf-8")
    return write_atomically(path, lambda f: f.write(data))
