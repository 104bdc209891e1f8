"""Self-describing, resumable checkpoints: a directory, no pickles.

Layout of ``DIR``::

    model.safetensors        the whole SSL model's state (backbone, heads, momentum copies, loss
                             buffers): everything needed to query or continue training
    train_state.safetensors  optimizer state (flattened), non-persistent buffers (MoCo's queue),
                             RNG states of torch/numpy/python, step counters; for --resume only
    checkpoint.json          full config, seeds, epoch/step, loss curve, versions, split
                             fingerprint, backbone feature_dim, image shape, augmentation, utility
    split.json               the MembershipSplit the members came from
    paired_halves.npz        (paired-halves shadows only) the (shadows x population) design
    utility.json             (optional) utility measured after training by ``lpla utility``

:class:`Checkpoint` owns these names and this layout: no other module spells them.

Every file is written through a temporary file and renamed, and ``checkpoint.json`` is written
last, so a reader that finds it also finds the tensors it describes.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from lpla.errors import LplaError
from lpla.io import atomic_path, file_digest, read_json, write_json_atomic

FORMAT = "lpla-ssl-checkpoint"
FORMAT_VERSION = 1
MODEL_FILE = "model.safetensors"
STATE_FILE = "train_state.safetensors"
META_FILE = "checkpoint.json"
SPLIT_FILE = "split.json"
PAIRED_HALVES_FILE = "paired_halves.npz"
UTILITY_FILE = "utility.json"
#: TrainConfig keys that say how a run was executed, not which weights it produced
RUN_ONLY_KEYS = frozenset({"out", "split", "resume", "progress", "device", "threads"})


# ---- writing -------------------------------------------------------------------------------
def _save_tensors(path: Path, tensors: dict[str, Tensor], metadata: dict[str, str]) -> None:
    from safetensors.torch import save_file

    # clone: safetensors refuses shared storage; contiguous + CPU for a portable file
    flat = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(flat, str(tmp), metadata=metadata)


def save_model(path: Path, model: nn.Module) -> None:
    _save_tensors(path, dict(model.state_dict()), {"format": FORMAT})


def non_persistent_buffers(model: nn.Module) -> dict[str, Tensor]:
    """Buffers missing from ``state_dict`` (lightly's memory bank) that training still needs."""
    persistent = set(model.state_dict())
    return {k: b for k, b in model.named_buffers() if k not in persistent}


def save_train_state(
    path: Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler_state: dict[str, Any],
    counters: dict[str, Any],
) -> None:
    """Optimizer + buffers + RNG + counters; tensors as tensors, the rest as JSON metadata."""
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    opt: dict[str, Any] = dict(optimizer.state_dict())
    for pid, pstate in opt["state"].items():
        for key, value in pstate.items():
            if isinstance(value, Tensor):
                tensors[f"optim.{pid}.{key}"] = value
            else:
                scalars.setdefault(str(pid), {})[key] = value
    for name, buf in non_persistent_buffers(model).items():
        tensors[f"buffer.{name}"] = buf
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = state
    np_state: tuple[Any, ...] = tuple(np.random.get_state(legacy=True))
    tensors["rng.numpy.keys"] = torch.from_numpy(np.asarray(np_state[1], dtype=np.int64))
    py_version, py_internal, py_gauss = random.getstate()
    tensors["rng.python.state"] = torch.tensor(py_internal, dtype=torch.int64)
    metadata = {
        "format": FORMAT,
        "param_groups": json.dumps(opt["param_groups"]),
        "optim_scalars": json.dumps(scalars),
        "scaler": json.dumps(scaler_state),
        "counters": json.dumps(counters),
        "rng_numpy": json.dumps(
            [np_state[0], int(np_state[2]), int(np_state[3]), float(np_state[4])]
        ),
        "rng_python": json.dumps([py_version, py_gauss]),
    }
    _save_tensors(path, tensors, metadata)


def write_meta(directory: Path, meta: dict[str, Any]) -> None:
    write_json_atomic(directory / META_FILE, meta)


# ---- reading -------------------------------------------------------------------------------
def _read_tensors(path: Path, what: str) -> tuple[dict[str, Tensor], dict[str, str]]:
    from safetensors import safe_open

    if not path.is_file():
        raise LplaError(f"{what} not found: {path}; re-run lpla train for this directory")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            metadata = dict(fh.metadata() or {})
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except Exception as exc:  # safetensors raises several types for a damaged header
        raise LplaError(
            f"{path} is not a readable safetensors file ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else 'corrupt'}); re-create it with lpla train"
        ) from None
    return tensors, metadata


def read_meta(directory: Path) -> dict[str, Any]:
    meta = read_json(directory / META_FILE, "checkpoint description")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise LplaError(
            f"{directory / META_FILE} is not an lpla SSL checkpoint description; "
            "point to a directory written by lpla train"
        )
    if int(meta.get("format_version", 0)) > FORMAT_VERSION:
        raise LplaError(
            f"{directory} was written by a newer lpla (checkpoint format "
            f"{meta.get('format_version')}); upgrade lpla"
        )
    return meta


def load_model_state(path: Path, model: nn.Module) -> None:
    """Load ``model.safetensors`` into ``model``; a mismatch names the file and the fix."""
    state, metadata = _read_tensors(path, "model weights")
    if metadata.get("format") != FORMAT:
        raise LplaError(
            f"{path} is a safetensors file, but not one written by lpla train (no lpla format "
            "tag); load foreign weights with lpla.encoders.load_any_encoder instead"
        )
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    if missing or unexpected or wrong:
        detail = "; ".join(
            f"{label} {len(keys)} (e.g. {keys[0]})"
            for label, keys in (
                ("missing", missing),
                ("unexpected", unexpected),
                ("wrong shape", wrong),
            )
            if keys
        )
        raise LplaError(
            f"{path} does not match the model described in its checkpoint.json ({detail}); "
            "the weights belong to another backbone/framework: re-train or fix checkpoint.json"
        )
    model.load_state_dict(state, strict=True)


def load_train_state(
    path: Path, *, model: nn.Module, optimizer: torch.optim.Optimizer
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Restore optimizer, buffers and RNG states; return ``(counters, scaler_state)``."""
    tensors, metadata = _read_tensors(path, "training state")
    try:
        param_groups = json.loads(metadata["param_groups"])
        scalars = json.loads(metadata["optim_scalars"])
        counters = json.loads(metadata["counters"])
        scaler_state = json.loads(metadata["scaler"])
        np_name, np_pos, np_has_gauss, np_gauss = json.loads(metadata["rng_numpy"])
        py_version, py_gauss = json.loads(metadata["rng_python"])
    except (KeyError, ValueError) as exc:
        raise LplaError(
            f"{path} lacks lpla training state ({exc}); resume is impossible, "
            "start a new run in a fresh --out directory"
        ) from None
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, pid, name = key.split(".", 2)
            state.setdefault(int(pid), {})[name] = value
    for pid, values in scalars.items():
        state.setdefault(int(pid), {}).update(values)
    try:
        optimizer.load_state_dict({"state": state, "param_groups": param_groups})  # type: ignore[dict-item]
    except (ValueError, KeyError, RuntimeError) as exc:
        raise LplaError(f"{path}: optimizer state does not fit this model ({exc})") from None
    buffers = dict(model.named_buffers())
    for key, value in tensors.items():
        if key.startswith("buffer."):
            buffers[key[len("buffer.") :]].copy_(value)
    torch.set_rng_state(tensors["rng.torch"])
    cuda_states = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
    if cuda_states and torch.cuda.is_available() and len(cuda_states) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda_states)
    keys = tensors["rng.numpy.keys"].numpy().astype(np.uint32)
    np.random.set_state((np_name, keys, np_pos, np_has_gauss, np_gauss))
    internal = tuple(int(v) for v in tensors["rng.python.state"].tolist())
    random.setstate((py_version, internal, py_gauss))
    return counters, scaler_state


def checkpoint_dir(path: str | Path) -> Path:
    """Accept the directory or any file inside it (``DIR/model.safetensors``)."""
    p = Path(path)
    if p.is_file():
        p = p.parent
    if not p.is_dir():
        raise LplaError(f"checkpoint directory not found: {p}; train one with lpla train --out {p}")
    if not (p / META_FILE).is_file():
        raise LplaError(
            f"{p} is not an lpla checkpoint (no {META_FILE}); train one with lpla train --out {p}"
        )
    return p


def build_model(meta: dict[str, Any]) -> nn.Module:
    """Re-create the (untrained) SSL model a checkpoint.json describes."""
    from lpla.ssl.backbones import create_backbone
    from lpla.ssl.frameworks import create_framework

    try:
        c, h, _ = (int(v) for v in meta["image_shape"])
        backbone = create_backbone(meta["backbone"], c, h)
        return create_framework(meta["framework"], backbone, **meta["framework_params"])
    except KeyError as exc:
        raise LplaError(f"checkpoint.json lacks {exc}; it is damaged, re-train") from None


class ProjectionEncoder(nn.Module):
    """Backbone followed by the framework's projection head (the "projection" query layer)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model.project(x)  # type: ignore[operator]


LAYERS = ("backbone", "projection")


def load_encoder(
    path: str | Path, layer: str = "backbone", device: str = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """Load a trained encoder in eval mode, with its ``checkpoint.json`` dict.

    ``layer="backbone"`` returns the representation an audit queries by default;
    ``"projection"`` the backbone followed by the projection head.
    """
    if layer not in LAYERS:
        raise LplaError(f"unknown layer {layer!r}; choose one of: {', '.join(LAYERS)}")
    directory = checkpoint_dir(path)
    meta = read_meta(directory)
    model = build_model(meta)
    load_model_state(directory / MODEL_FILE, model)
    encoder: nn.Module = model.backbone if layer == "backbone" else ProjectionEncoder(model)  # type: ignore[assignment]
    encoder.eval().to(device)
    return encoder, meta


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint directory: its file names, its metadata and its split, in one place.

    ``Checkpoint(path)`` never touches the disk; :meth:`open` checks that a finished-or-running
    lpla checkpoint is there (and says how to make one when it is not).
    """

    path: Path

    @classmethod
    def open(cls, path: str | Path) -> Checkpoint:
        """The checkpoint at ``path`` (the directory or a file inside it), or a clear error."""
        return cls(checkpoint_dir(path))

    @staticmethod
    def is_checkpoint(path: str | Path) -> bool:
        return (Path(path) / META_FILE).is_file()

    # --- the files ---------------------------------------------------------------------------
    @property
    def model_file(self) -> Path:
        return self.path / MODEL_FILE

    @property
    def state_file(self) -> Path:
        return self.path / STATE_FILE

    @property
    def meta_file(self) -> Path:
        return self.path / META_FILE

    @property
    def split_file(self) -> Path:
        return self.path / SPLIT_FILE

    @property
    def paired_halves_file(self) -> Path:
        return self.path / PAIRED_HALVES_FILE

    @property
    def utility_file(self) -> Path:
        return self.path / UTILITY_FILE

    # --- what they hold ----------------------------------------------------------------------
    def has_weights(self) -> bool:
        return self.meta_file.is_file() and self.model_file.is_file()

    def meta(self) -> dict[str, Any]:
        """``checkpoint.json``, validated as an lpla checkpoint description."""
        return read_meta(self.path)

    def config(self) -> dict[str, Any]:
        """The training config saved with the weights (``{}`` for a damaged description)."""
        return dict(self.meta().get("config") or {})

    def split(self) -> Any:
        """The :class:`~lpla.data.splits.MembershipSplit` the members came from, or None."""
        from lpla.data.splits import MembershipSplit

        return MembershipSplit.load(self.split_file) if self.split_file.is_file() else None

    def paired_halves(self) -> Any:
        """The paired-halves design of a ``--shadow-index`` shadow."""
        from lpla.data.splits import PairedHalves

        return PairedHalves.load(self.paired_halves_file)

    def utility(self) -> dict[str, Any] | None:
        """Utility measured at the end of training (or later, by ``lpla utility``)."""
        stored = self.meta().get("utility")
        if stored:
            return dict(stored)
        if self.utility_file.is_file():
            return dict(read_json(self.utility_file))
        return None

    def weights_digest(self) -> str:
        """Content hash of the weights: a copied run stays cached, retrained weights do not."""
        return file_digest(self.model_file)

    def trained_with(self, settings: dict[str, Any], fingerprint: str) -> bool:
        """The run described here (finished or not) has these settings (RUN_ONLY_KEYS aside)
        and trained on the split with this fingerprint."""
        if not self.meta_file.is_file():
            return False
        meta = read_json(self.meta_file)
        saved = {k: v for k, v in (meta.get("config") or {}).items() if k not in RUN_ONLY_KEYS}
        wanted = {k: v for k, v in settings.items() if k not in RUN_ONLY_KEYS}
        return meta.get("split_fingerprint") == fingerprint and saved == wanted

    def finished_with(self, settings: dict[str, Any], fingerprint: str) -> bool:
        """A finished run trained with these settings on the split with this fingerprint."""
        return (
            self.has_weights()
            and bool(read_json(self.meta_file).get("finished"))
            and self.trained_with(settings, fingerprint)
        )
