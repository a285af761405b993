"""Reader for the IDX format used by MNIST and Fashion-MNIST (optionally gzipped)."""
from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np

from zapopt.files import write_atomically
from zapopt.errors import ZapoptError

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an ``.idx`` or ``.idx.gz`` file into a numpy array of its stored shape."""
    path = Path(path)
    if not path.is_file():
        raise ZapoptError(f"IDX file not found: {path}")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as exc:
        raise ZapoptError(f"cannot read IDX file {path} (corrupt or truncated): {exc}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ZapoptError(f"{path} is not an IDX file (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ZapoptError(f"{path} is truncated (header)")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise ZapoptError(f"{path} holds {len(raw) - header} data bytes, header promises {expected}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


_NP_TO_IDX = {np.dtype(v).newbyteorder("="): k for k, v in _IDX_DTYPES.items()}


def write_idx(path: str | Path, array: np.ndarray) -> Path:
    """Write ``array`` as an IDX file (gzipped when ``path`` ends in ``.gz``), atomically.

    The inverse of ``read_idx``; it lets users turn their own arrays into files that
    ``zapopt data fetch mnist --from DIR`` accepts, and lets tests build small fixtures.
    """
    path = Path(path)
    array = np.asarray(array)
    code = _NP_TO_IDX.get(array.dtype.newbyteorder("="))
    if code is None:
        raise ZapoptError(
            f"IDX cannot store dtype {array.dtype}; use one of uint8, int8, int16, int32, float32, float64"
        )
    if array.ndim == 0 or array.ndim > 255:
        raise ZapoptError(f"IDX stores arrays of rank 1 to 255, got rank {array.ndim}")
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + np.ascontiguousarray(array, dtype=np.dtype(_IDX_DTYPES[code])).tobytes()

    def fill(raw: BinaryIO) -> None:
        if path.suffix == ".gz":
            with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as f:
                f.write(payload)
        else:
            raw.write(payload)

    return write_atomically(path, fill)
