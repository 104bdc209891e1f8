"""Read CIFAR's python batches without trusting pickle.

CIFAR-10/100 ship as pickles, and ``pickle.load`` on a tampered file runs whatever code the file
names. This unpickler resolves only the globals those files need: numpy's array reconstruction
(``_reconstruct``, ``ndarray``, ``dtype``, ``scalar``) and ``_codecs.encode``, which protocol-2
pickles use to rebuild ``bytes`` and which we narrow to the latin-1 codec. The dicts and lists
of a batch are built by pickle opcodes and need no global at all. Everything else is refused.
"""

from __future__ import annotations

import codecs
import io
import pickle
from pathlib import Path
from typing import Any

from lpla.errors import LplaError

_NUMPY_GLOBALS = {
    (module, name)
    for module in ("numpy.core.multiarray", "numpy._core.multiarray")
    for name in ("_reconstruct", "scalar")
} | {("numpy", "ndarray"), ("numpy", "dtype")}


def _latin1_encode(text: str, encoding: str = "latin1", errors: str = "strict") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles use it (str -> bytes), and nothing more."""
    if not isinstance(text, str) or codecs.lookup(encoding).name != "iso8859-1":
        raise LplaError(
            f"refusing to unpickle _codecs.encode(..., {encoding!r}): not a CIFAR batch"
        )
    return codecs.encode(text, "latin1", errors)


class CifarUnpickler(pickle.Unpickler):
    """An unpickler that can build numpy arrays, dicts, lists, bytes and strings, and no more."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("_codecs", "encode"):
            return _latin1_encode
        if (module, name) in _NUMPY_GLOBALS:
            return super().find_class(module, name)
        raise LplaError(f"refusing to unpickle {module}.{name}: not a CIFAR batch")

    def persistent_load(self, pid: Any) -> Any:
        raise LplaError("refusing to unpickle a persistent id: not a CIFAR batch")


def load_cifar_batch(path: str | Path) -> dict[str, Any]:
    """One CIFAR batch or meta file as a dict with ``str`` keys (the files use bytes keys)."""
    p = Path(path)
    if not p.is_file():
        raise LplaError(f"CIFAR batch not found: {p}")
    try:
        obj = CifarUnpickler(io.BytesIO(p.read_bytes()), encoding="bytes").load()
    except LplaError as exc:
        raise LplaError(f"{p}: {exc.message}; delete it and download the dataset again") from None
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        IndexError,
        KeyError,
        AttributeError,
        MemoryError,
    ) as exc:
        raise LplaError(
            f"{p} is truncated or not a CIFAR batch ({type(exc).__name__}: {exc}); "
            "re-download the dataset"
        ) from None
    if not isinstance(obj, dict):
        raise LplaError(f"{p} is not a CIFAR batch (a pickled {type(obj).__name__}, not a dict)")
    return {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in obj.items()}
