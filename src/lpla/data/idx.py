"""A careful reader for the IDX format (MNIST, Fashion-MNIST), plain or gzipped.

IDX: two zero bytes, a type code, the number of dimensions, then one big-endian uint32 per
dimension and the raw big-endian data. Every check here turns a truncated download or a foreign
file into one :class:`LplaError` naming the file, never a numpy reshape crash.
"""

from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path

import numpy as np

from lpla.errors import LplaError

IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"


def _read_bytes(path: Path) -> bytes:
    """The file's content, gunzipped when it is a gzip stream (by its magic bytes, not its name)."""
    raw = path.read_bytes()
    if not raw.startswith(_GZIP_MAGIC):
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise LplaError(
            f"{path} is a truncated or corrupt gzip file ({exc}); re-download it"
        ) from None


def read_idx(path: str | Path, *, ndim: int | None = None) -> np.ndarray:
    """Read an IDX file into a native-endian array; ``ndim`` asserts the number of dimensions."""
    p = Path(path)
    if not p.is_file():
        raise LplaError(f"IDX file not found: {p}")
    raw = _read_bytes(p)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_DTYPES:
        raise LplaError(f"{p} is not an IDX file (bad magic number {raw[:4].hex() or 'empty'})")
    dtype = IDX_DTYPES[raw[2]]
    dims_count = raw[3]
    header = 4 + 4 * dims_count
    if dims_count == 0:
        raise LplaError(f"{p} is not an IDX file (0 dimensions in its header)")
    if ndim is not None and dims_count != ndim:
        raise LplaError(f"{p} has {dims_count} dimensions, expected {ndim}; is it the right file?")
    if len(raw) < header:
        raise LplaError(f"{p} has a truncated IDX header; re-download it")
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims_count))
    expected = math.prod(dims) * dtype.itemsize
    if len(raw) - header != expected:
        raise LplaError(
            f"{p} is truncated or corrupt: its header says {dims} ({expected} bytes of data), "
            f"the file has {len(raw) - header}; re-download it"
        )
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)
    return data.astype(dtype.newbyteorder("="))


def write_idx(path: str | Path, array: np.ndarray) -> None:
    """Write ``array`` as an IDX file (gzipped when ``path`` ends in .gz), atomically."""
    from lpla.io import write_bytes_atomic

    arr = np.asarray(array)
    codes = {dt.kind + str(dt.itemsize): code for code, dt in IDX_DTYPES.items()}
    code = codes.get(arr.dtype.kind + str(arr.dtype.itemsize))
    if code is None or arr.ndim == 0 or arr.ndim > 255:
        raise LplaError(f"cannot write a {arr.dtype} array of {arr.ndim} dimensions as IDX")
    header = bytes([0, 0, code, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    body = header + arr.astype(IDX_DTYPES[code]).tobytes()
    write_bytes_atomic(path, gzip.compress(body, mtime=0) if str(path).endswith(".gz") else body)
