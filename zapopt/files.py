"""Safe output files: atomic writes (a crash or Ctrl-C never leaves half a file) and
path checks done before long work starts."""
from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
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
            f.flush()
            os.fsync(f.fileno())
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


def _same_file(a: Path, b: Path) -> bool:
    return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))


def check_output_path(path: str | Path, *, inputs: Iterable[object] = (), what: str = "output") -> Path:
    """Refuse an output that would overwrite an input or cannot be written, before any work.

    ``inputs`` may hold anything a command reads (model, data, report); entries that are
    not paths (arrays, ``embedded:`` names, None) are ignored.
    """
    from zapopt.errors import ZapoptError

    out = Path(path)
    for source in inputs:
        if isinstance(source, (str, os.PathLike)) and _same_file(out, Path(source)):
            raise ZapoptError(f"the {what} path {out} is an input file ({source}); choose another name "
                              "(zapopt never overwrites its inputs)")
    parent = out.parent if str(out.parent) else Path(".")
    if out.is_dir():
        raise ZapoptError(f"the {what} path {out} is a directory; give a file name")
    if not parent.is_dir():
        raise ZapoptError(f"the {what} directory {parent} does not exist; create it first")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ZapoptError(f"cannot write the {what} to {parent}: permission denied")
    return out


def check_distinct_outputs(**outputs: str | Path | None) -> None:
    """Refuse two outputs of one command that are the same file (one would erase the other)."""
    from zapopt.errors import ZapoptError

    given = [(name, Path(p)) for name, p in outputs.items() if p is not None]
    for i, (name_a, a) in enumerate(given):
        for name_b, b in given[i + 1:]:
            if _same_file(a, b):
                raise ZapoptError(f"the {name_a} and the {name_b} would both be written to {a}; give them "
                                  "different names")


def save_model_atomically(model, path: str | Path) -> Path:
    """Serialize an ONNX model and write it atomically (a crash never leaves half a model)."""
    data = model.SerializeToString()
    return write_atomically(path, lambda f: f.write(data))


def write_text_atomically(path: str | Path, text: str) -> Path:
    """Write a text file atomically (UTF-8)."""
    data = text.encode("utf-8")
    return write_atomically(path, lambda f: f.write(data))
