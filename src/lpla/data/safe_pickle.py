"""Read CIFAR's python batches without trusting pickle.

CIFAR-10/100 ship as pickles; a tampered file could run code on ``pickle.load``. This unpickler
resolves only the handful of globals those files need (numpy array reconstruction) and refuses
everything else.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

from lpla.errors import LplaError

_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _CifarUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}: not part of a CIFAR batch")


def load_cifar_batch(path: str | Path) -> dict[Any, Any]:
    p = Path(path)
    if not p.is_file():
        raise LplaError(f"CIFAR batch not found: {p}")
    try:
        obj = _CifarUnpickler(io.BytesIO(p.read_bytes()), encoding="bytes").load()
    except pickle.UnpicklingError as exc:
        raise LplaError(f"{p}: {exc}") from None
    except (EOFError, ValueError, TypeError, IndexError, AttributeError) as exc:
        raise LplaError(f"{p} is truncated or not a CIFAR batch ({exc}); re-download the dataset") from None
    if not isinstance(obj, dict):
        raise LplaError(f"{p} is not a CIFAR batch (got {type(obj).__name__})")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}
