"""IDX reading/writing: round trips, gzip, and every way a file can be broken."""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from zapopt.data.idx import read_idx, write_idx
from zapopt.errors import ZapoptError


@pytest.mark.parametrize("suffix", [".idx", ".idx.gz"])
@pytest.mark.parametrize(
    "array",
    [
        np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4),
        np.array([-3, 0, 7], dtype=np.int8),
        np.array([[-30000, 2], [5, 30000]], dtype=np.int16),
        np.array([-(2**31), 2**31 - 1], dtype=np.int32),
        np.linspace(-1, 1, 6, dtype=np.float32).reshape(3, 2),
        np.array([np.pi, -np.e], dtype=np.float64),
    ],
    ids=lambda a: str(a.dtype) if isinstance(a, np.ndarray) else None,
)
def test_round_trip_keeps_dtype_shape_and_values(tmp_path: Path, array: np.ndarray, suffix: str) -> None:
    back = read_idx(write_idx(tmp_path / f"a{suffix}", array))
    assert back.dtype == array.dtype
    assert back.shape == array.shape
    np.testing.assert_array_equal(back, array)


def test_gz_file_is_really_gzipped_and_big_endian(tmp_path: Path) -> None:
    write_idx(tmp_path / "a.idx.gz", np.array([1, 256], dtype=np.int32))
    raw = gzip.decompress((tmp_path / "a.idx.gz").read_bytes())
    assert raw == bytes([0, 0, 0x0C, 1, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 1, 0])


def test_unsupported_dtype_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ZapoptError, match="uint16"):
        write_idx(tmp_path / "a.idx", np.zeros(3, dtype=np.uint16))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ZapoptError, match="not found"):
        read_idx(tmp_path / "nope.idx")


def test_bad_magic(tmp_path: Path) -> None:
    (tmp_path / "bad.idx").write_bytes(b"\x01\x00\x08\x01\x00\x00\x00\x01\x05")
    with pytest.raises(ZapoptError, match="magic"):
        read_idx(tmp_path / "bad.idx")


def test_truncated_header(tmp_path: Path) -> None:
    (tmp_path / "short.idx").write_bytes(bytes([0, 0, 8, 3, 0, 0]))
    with pytest.raises(ZapoptError, match="truncated"):
        read_idx(tmp_path / "short.idx")


def test_truncated_data(tmp_path: Path) -> None:
    path = write_idx(tmp_path / "a.idx", np.zeros((4, 5), dtype=np.uint8))
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(ZapoptError, match="17 data bytes, header promises 20"):
        read_idx(path)


def test_truncated_gzip_stream(tmp_path: Path) -> None:
    path = write_idx(tmp_path / "a.idx.gz", np.arange(1000, dtype=np.int32))
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(ZapoptError, match="corrupt or truncated"):
        read_idx(path)


def test_corrupt_gzip_stream(tmp_path: Path) -> None:
    path = write_idx(tmp_path / "a.idx.gz", np.arange(1000, dtype=np.int32))
    data = bytearray(path.read_bytes())
    for i in range(20, 60):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ZapoptError, match="corrupt or truncated"):
        read_idx(path)


def test_not_gzip_at_all(tmp_path: Path) -> None:
    (tmp_path / "plain.idx.gz").write_bytes(b"this is not gzip")
    with pytest.raises(ZapoptError, match="corrupt or truncated"):
        read_idx(tmp_path / "plain.idx.gz")
