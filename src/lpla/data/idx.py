"""A careful reader for the IDX format (MNIST, Fashion-MNIST), plain or gzipped."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from lpla.errors import LplaError

_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
           0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file; a truncated or foreign file is an LplaError naming the file."""
    p = Path(path)
    if not p.is_file():
        raise LplaError(f"IDX file not found: {p}")
    try:
        raw = gzip.decompress(p.read_bytes()) if p.suffix == ".gz" else p.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise LplaError(f"{p} is not a readable gzip file ({exc}); re-download it") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _DTYPES:
        raise LplaError(f"{p} is not an IDX file (bad magic number)")
    dtype = np.dtype(_DTYPES[raw[2]])
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise LplaError(f"{p} has a truncated IDX header")
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(raw) - header != expected:
        raise LplaError(f"{p} is truncated or corrupt: header says {dims} ({expected} bytes), "
                        f"file has {len(raw) - header} bytes of data; re-download it")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))
