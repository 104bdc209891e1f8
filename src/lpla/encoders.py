"""Load an encoder from anywhere lpla can audit: our checkpoints or a user's exported model.

Supported kinds (detected from the spec; the tests keep the detectors mutually exclusive):

- ``checkpoint``: an lpla checkpoint directory (has ``checkpoint.json``);
- ``export``: a ``.pt2`` file from ``torch.export.save``;
- ``torchscript``: a ``.pt``/``.ts``/``.torchscript``/``.jit`` TorchScript archive from
  ``torch.jit.save`` (checked to *be* TorchScript before loading: a pickled ``torch.save``
  checkpoint is refused, since unpickling runs arbitrary code);
- ``factory``: ``package.module:factory``, a function called with no arguments that returns an
  ``nn.Module``; weights come from ``--weights file.safetensors`` (strict key match);
- ``timm``: ``timm:NAME``, ``timm.create_model(NAME, pretrained=False, num_classes=0)`` (pooled
  features, nothing downloaded) + ``--weights file.safetensors``;
- ``torchvision``: ``torchvision:NAME``, ``torchvision.models.get_model(NAME, weights=None)`` with
  its classification layer replaced by ``Identity`` + ``--weights file.safetensors``.

Files are recognised by their content first (a torch.export archive saved as ``model.pt`` is still
an export) and by their suffix second. Every encoder follows one convention: input float32
``[B, C, H, W]`` in ``[0, 1]``, output ``[B, D]``. Normalisation is inside the model, except for
timm/torchvision models, which expect normalised RGB: :class:`ImageInput` repeats grey images to
3 channels and applies the model's mean/std (``normalize``). A probe forward on a dummy batch
checks the convention when the image shape is known, so a wrong model fails at load time with a
clear message, not deep in a run.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import importlib
import os
import pickle
import re
import struct
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lpla.errors import LplaError
from lpla.registry import Registry
from lpla.ssl.checkpoint import Checkpoint

LAYERS = ("backbone", "projection")
POOLS = ("avg", "flatten", "cls")
TORCHSCRIPT_SUFFIXES = (".pt", ".pth", ".ts", ".torchscript", ".jit")
_FACTORY_RE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
_LIBRARY_RE = re.compile(r"^(timm|torchvision):([\w.-]+)$")
WEIGHTED_KINDS = ("factory", "timm", "torchvision")  # architectures that take --weights
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
Normalization = tuple[tuple[float, ...], tuple[float, ...], str]  # mean, std, where from


@dataclass
class LoadedEncoder:
    """An encoder module plus what lpla knows about it (for defaults and the output's meta)."""

    module: nn.Module
    name: str
    kind: str
    meta: dict[str, Any] = field(default_factory=dict)
    augmentation: str | None = None  # its training augmentation, when known
    image_shape: tuple[int, int, int] | None = None  # (C, H, W) it expects, when known
    layer: str = "backbone"
    output_dim: int | None = None  # set by the probe
    # what a timm/torchvision loader knows its model expects: channels and mean/std (see ImageInput)
    input_channels: int | None = None
    default_normalization: Normalization | None = None


@dataclass(frozen=True)
class EncoderKind:
    """How to recognise one kind of encoder spec and how to load it."""

    matches: Callable[[str], bool]
    load: Callable[[str, str | None, str, str], LoadedEncoder]


ENCODER_KINDS: Registry[EncoderKind] = Registry("encoder kind")


def load_any_encoder(
    spec: str,
    weights: str | None = None,
    device: str = "cpu",
    layer: str = "backbone",
    *,
    kind: str | None = None,
    image_shape: tuple[int, int, int] | None = None,
    pool: str | None = None,
    normalize: str | None = None,
) -> LoadedEncoder:
    """Load the encoder named by ``spec`` in eval mode on ``device`` and probe it.

    ``kind`` forces a kind instead of detecting it. ``image_shape`` (C, H, W) overrides the one
    known from the encoder's metadata; without either, the probe waits for the dataset
    (:func:`probe_encoder`). ``pool`` (avg | flatten | cls) turns a feature-map output into [B, D].
    ``normalize`` (see :func:`parse_normalize`) is applied to the [0, 1] input before the model:
    by default the model's own mean/std for timm/torchvision, nothing for the others (whose
    normalisation belongs inside the model). The choice is recorded in ``meta["normalize"]``.
    """
    if layer not in LAYERS:
        raise LplaError(f"unknown layer {layer!r}; use one of {', '.join(LAYERS)}")
    if pool is not None and pool not in POOLS:
        raise LplaError(f"unknown pool {pool!r}; use one of {', '.join(POOLS)}")
    if kind is not None and kind in ENCODER_KINDS and not ENCODER_KINDS.get(kind).matches(spec):
        hint = encoder_file_hint(spec)
        if hint is not None:  # e.g. model.pt2 where a checkpoint directory was asked for
            raise LplaError(hint)
    kind = kind or detect_kind(spec)
    if weights is not None and kind not in WEIGHTED_KINDS:
        raise LplaError(
            "--weights applies only to module:factory, timm:NAME and torchvision:NAME encoders; "
            f"{spec} ({kind}) holds its own"
        )
    if layer != "backbone" and kind != "checkpoint":
        raise LplaError(
            f"--layer {layer} applies only to lpla checkpoints; a {kind} encoder is used as "
            "exported (export the layer you want to audit)"
        )
    if normalize is not None and kind == "checkpoint" and normalize != "auto":
        raise LplaError(
            "--normalize does not apply to lpla checkpoints (they normalise inside the model)"
        )
    requested = parse_normalize(normalize)  # before loading: a typo should not cost a build
    enc = ENCODER_KINDS.get(kind).load(spec, weights, device, layer)
    enc.layer = layer
    stats = enc.default_normalization if isinstance(requested, str) else requested  # "auto"
    if stats is not None or enc.input_channels is not None:
        mean, std = (stats[0], stats[1]) if stats is not None else (None, None)
        channels = enc.input_channels or (len(mean) if mean is not None else None)
        enc.module = ImageInput(enc.module, channels, mean, std).to(device)
        enc.meta["normalize"] = (
            None
            if stats is None
            else {"mean": list(stats[0]), "std": list(stats[1]), "source": stats[2]}
        )
        enc.meta["input_channels"] = channels
    if pool is not None:
        enc.module = PooledEncoder(enc.module, pool)
        enc.meta["pool"] = pool
    if image_shape is not None:
        enc.image_shape = tuple(int(s) for s in image_shape)  # type: ignore[assignment]
    if enc.image_shape is not None:
        enc.output_dim = probe_encoder(enc.module, enc.image_shape, device, name=enc.name)
    return enc


def detect_kind(spec: str) -> str:
    """The first registered kind whose ``matches`` accepts ``spec``; a clear error otherwise."""
    for name in ENCODER_KINDS:
        if ENCODER_KINDS.get(name).matches(spec):
            return name
    path = Path(spec)
    if path.is_dir():
        raise LplaError(f"directory {spec} is not an lpla checkpoint (no checkpoint.json in it)")
    hint = encoder_file_hint(spec)
    if hint is not None:  # a weights file, a checkpoint's own files, a pickle
        raise LplaError(hint)
    if path.exists():
        raise LplaError(
            f"cannot tell what kind of encoder {spec} is (suffix {path.suffix!r})",
            hint="use a .pt2 (torch.export), a TorchScript .pt, an lpla checkpoint directory, "
            "package.module:factory, timm:NAME or torchvision:NAME",
        )
    raise LplaError(
        f"encoder {spec!r} not found; give an lpla checkpoint directory, a .pt2 "
        "(torch.export), a TorchScript .pt, package.module:factory, timm:NAME or torchvision:NAME"
    )


def sniff_encoder_file(path: str | Path) -> str | None:
    """What a file holds, read from its first bytes / zip listing, never by loading it.

    ``export`` (torch.export archive), ``torchscript``, ``pickle`` (a ``torch.save`` zip or a
    legacy pickle), ``safetensors``, or None (not a file, or none of these). Users name files
    freely (``torch.export.save(ep, "model.pt")`` is common), so the content decides the kind.
    """
    p = Path(path)
    if not p.is_file():
        return None
    names = _zip_names(p)
    if names:
        if any(n.rsplit("/", 1)[-1] == "archive_format" for n in names):
            return "export"
        if is_torchscript_archive(p):
            return "torchscript"
        if any(n.endswith("data.pkl") for n in names):
            return "pickle"
        return None
    try:
        with open(p, "rb") as fh:
            head = fh.read(9)
    except OSError:
        return None
    if head[:1] == b"\x80":  # pickle protocol >= 2 (legacy torch.save)
        return "pickle"
    if len(head) == 9 and head[8:9] == b"{":  # u64 header length, then the JSON header
        size = struct.unpack("<Q", head[:8])[0]
        if 0 < size <= p.stat().st_size - 8:
            return "safetensors"
    return None


def encoder_file_hint(path: str | Path) -> str | None:
    """One line for a user who gave an encoder *file* where a checkpoint directory is expected.

    Messages such as ``checkpoint metadata not found: model.pt2/checkpoint.json`` are accurate
    but unhelpful; callers that expect an lpla checkpoint directory call this with the path they
    were given (or that ``.../checkpoint.json`` path) and show the hint instead. None when
    ``path`` is not a file lpla recognises (a directory, a missing path, an unknown file).
    """
    from lpla.ssl.checkpoint import META_FILE

    p = Path(path)
    if p.name == META_FILE and p.parent.is_file():
        p = p.parent
    if not p.is_file():
        return None
    given = str(p)
    usage = f"pass it with --encoder (lpla audit --encoder {given} --members ... --nonmembers ...)"
    if p.name == META_FILE:
        return f"{given} is part of an lpla checkpoint; pass its directory {p.parent}"
    content = sniff_encoder_file(p)
    if content == "export":
        return f"{given} is a torch.export file, not an lpla checkpoint directory; {usage}"
    if content == "torchscript":
        return f"{given} is a TorchScript file, not an lpla checkpoint directory; {usage}"
    if content == "safetensors" or p.suffix == ".safetensors":
        if Checkpoint.is_checkpoint(p.parent):
            return f"{given} is part of an lpla checkpoint; pass its directory {p.parent}"
        return (
            f"{given} holds weights without an architecture, not an lpla checkpoint directory; "
            f"pass --encoder package.module:factory --weights {given} (or --encoder timm:NAME "
            "or torchvision:NAME with the same --weights)"
        )
    if content == "pickle":
        return (
            f"{given} is a pickled torch.save file, which lpla never loads (unpickling runs "
            "code); save the encoder with torch.export.save (or its state_dict as .safetensors "
            "for --encoder module:factory --weights) and pass that with --encoder"
        )
    return None


# ---------------------------------------------------------------------------------- the probe


class PooledEncoder(nn.Module):
    """Wrap an encoder whose output is a feature map / token sequence to give [B, D]."""

    def __init__(self, encoder: nn.Module, pool: str) -> None:
        super().__init__()
        self.encoder = encoder
        self.pool = pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.encoder(x)
        if out.ndim == 2:
            return out
        if self.pool == "flatten":
            return out.flatten(1)
        if self.pool == "cls":
            if out.ndim != 3:
                raise LplaError(f"--pool cls needs [B, T, D] tokens, got shape {tuple(out.shape)}")
            return out[:, 0]
        # avg: spatial mean for [B, C, H, W], token mean for [B, T, D]
        return out.mean(dim=tuple(range(2, out.ndim))) if out.ndim == 4 else out.mean(dim=1)


def probe_encoder(
    module: nn.Module, image_shape: tuple[int, int, int], device: str = "cpu", *, name: str = ""
) -> int:
    """One forward on a dummy batch of 2: check the output is a finite [B, D]; return D."""
    label = name or type(module).__name__
    x = torch.rand((2, *image_shape), generator=torch.Generator().manual_seed(0)).to(device)
    try:
        with torch.inference_mode():
            out = module(x)
    except LplaError:
        raise
    except Exception as exc:  # the user's model failed: say on what input
        raise LplaError(
            f"encoder {label} failed on a dummy batch of shape {tuple(x.shape)} in [0, 1]: "
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
            hint="check the image size (--image-shape C,H,W or --image-size N); a torch.export "
            "model needs a dynamic batch dimension "
            "(dynamic_shapes={'x': {0: torch.export.Dim('batch')}})",
        ) from None
    if not isinstance(out, torch.Tensor):
        raise LplaError(
            f"encoder {label} returns {type(out).__name__}, not a tensor",
            hint="make forward return one [B, D] embedding tensor",
        )
    if out.ndim in (3, 4):
        raise LplaError(
            f"encoder {label} returns shape {tuple(out.shape)}, a feature map, not [B, D] "
            "embeddings",
            hint="pool it in the model, or pass --pool avg (or flatten / cls)",
        )
    if out.ndim != 2 or out.shape[0] != 2:
        raise LplaError(
            f"encoder {label} must return [B, D]; got shape {tuple(out.shape)} for B = 2"
        )
    if not torch.isfinite(out).all():
        raise LplaError(f"encoder {label} returns NaN/inf on a dummy batch; check its weights")
    return int(out.shape[1])


def module_fingerprint(module: nn.Module) -> str:
    """A hash of the module's parameters and buffers (identifies weights, e.g. for --resume)."""
    h = hashlib.sha256()
    for key, value in sorted(module.state_dict().items()):
        h.update(key.encode())
        if isinstance(value, torch.Tensor):
            t = value.detach().to("cpu").contiguous()
            h.update(str(t.dtype).encode() + str(tuple(t.shape)).encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def _one_line(exc: BaseException) -> str:
    """The first line of an exception's message: library errors can span a screen."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class ImageInput(nn.Module):
    """Adapt lpla's [0, 1] images to a model trained on normalised (RGB) input.

    Grey images ([B, 1, H, W]) into a model with ``channels`` = 3 are repeated to 3 channels
    (what a grey photo is in RGB); then ``(x - mean) / std`` per channel when ``mean`` is given.
    The statistics are non-persistent buffers: the state dict (and fingerprint) stays the
    model's weights.
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(
        self,
        model: nn.Module,
        channels: int | None,
        mean: tuple[float, ...] | None = None,
        std: tuple[float, ...] | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.channels = channels
        self.normalized = mean is not None
        shape = (1, -1, 1, 1)
        self.register_buffer("mean", torch.tensor(mean or (0.0,)).view(shape), persistent=False)
        self.register_buffer("std", torch.tensor(std or (1.0,)).view(shape), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels is not None and x.shape[1] == 1 and self.channels != 1:
            x = x.expand(-1, self.channels, -1, -1)
        if self.normalized:
            x = (x - self.mean) / self.std
        return self.model(x)


class ExportedEncoder(nn.Module):
    """The module of a torch.export program, safe to ``.eval()``/``.train()``.

    ``ExportedProgram.module()`` raises ``NotImplementedError`` on ``train()``/``eval()`` (torch
    2.14), which broke every caller that puts an encoder in eval mode (``lpla utility``, the query
    engine). Its graph is frozen in the mode it was exported in, checked at load to be eval mode,
    so here ``train()``/``eval()`` only flip this wrapper's flag and never reach the program.
    """

    def __init__(self, program: nn.Module) -> None:
        super().__init__()
        self.program = program

    def train(self, mode: bool = True) -> ExportedEncoder:
        self.training = mode
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.program(x)  # type: ignore[no-any-return]


def _training_mode_ops(graph_module: nn.Module) -> list[str]:
    """BatchNorm/Dropout nodes exported with ``training=True`` (batch statistics, random masks)."""
    graph = getattr(graph_module, "graph", None)
    found = []
    for node in getattr(graph, "nodes", ()):
        target, args = str(getattr(node, "target", "")), tuple(getattr(node, "args", ()))
        if (target.startswith("aten.batch_norm.") and len(args) > 5 and args[5] is True) or (
            target.startswith("aten.dropout.") and len(args) > 2 and args[2] is True
        ):
            found.append(target.split(".")[1])
    return found


def _eval(module: nn.Module) -> nn.Module:
    try:
        module.eval()
    except (NotImplementedError, RuntimeError):  # exported GraphModules refuse eval()
        pass
    return module


# ----------------------------------------------------------------------------------- the kinds


def _is_checkpoint(spec: str) -> bool:
    return Checkpoint.is_checkpoint(spec)


def _find(cfg: dict[str, Any], *keys: str) -> Any:
    """First of ``keys`` found at the top level of checkpoint.json or in its ``config``."""
    for where in (cfg, cfg.get("config") or {}):
        if isinstance(where, dict):
            for key in keys:
                if where.get(key) is not None:
                    return where[key]
    return None


def _load_checkpoint(spec: str, weights: str | None, device: str, layer: str) -> LoadedEncoder:
    from lpla.ssl.checkpoint import load_encoder

    module, info = load_encoder(spec, layer=layer, device=device)
    augmentation = _find(info, "augmentation")
    if augmentation is None:  # frameworks are named after their own augmentation recipe
        augmentation = _find(info, "framework")
    shape = _find(info, "image_shape")
    return LoadedEncoder(
        module=_eval(module),
        name=Path(spec).resolve().name,
        kind="checkpoint",
        meta={"path": str(Path(spec).resolve()), "checkpoint": info},
        augmentation=str(augmentation) if augmentation is not None else None,
        image_shape=tuple(int(s) for s in shape) if shape is not None else None,  # type: ignore[arg-type]
    )


def _zip_names(path: Path) -> list[str]:
    if not zipfile.is_zipfile(path):
        return []
    with zipfile.ZipFile(path) as zf:
        return zf.namelist()


def _file_kind(spec: str) -> str | None:
    """export | torchscript for an encoder file: its content first, its suffix second."""
    path = Path(spec)
    content = sniff_encoder_file(path)
    if content in ("export", "torchscript"):
        return content
    if not path.is_file():
        return None
    if path.suffix == ".pt2":
        return "export"  # not an archive: its loader says so
    if path.suffix in TORCHSCRIPT_SUFFIXES:
        return "torchscript"  # a torch.save pickle: its loader refuses it
    return None


def _is_export(spec: str) -> bool:
    return _file_kind(spec) == "export"


def _load_export(spec: str, weights: str | None, device: str, layer: str) -> LoadedEncoder:
    names = _zip_names(Path(spec))
    if not names:
        raise LplaError(
            f"{spec} is not a torch.export archive (expected a zip from torch.export.save)"
        )
    check_export_archive(spec, names)
    try:
        with _torch_load_weights_only():
            program = torch.export.load(spec)
    except LplaError:
        raise
    except pickle.UnpicklingError:  # what the forced weights-only torch.load raises
        raise LplaError(
            f"{spec} holds pickled Python objects, not just tensors; lpla never unpickles them",
            hint="export the encoder again with torch.export.save from a plain nn.Module",
        ) from None
    except Exception as exc:
        raise LplaError(f"cannot load {spec} with torch.export.load: {_one_line(exc)}") from None
    module = program.module().to(device)
    training_ops = _training_mode_ops(module)
    if training_ops:
        raise LplaError(
            f"{spec} was exported in training mode ({', '.join(sorted(set(training_ops)))} with "
            "training=True: embeddings would depend on the batch or be random)",
            hint="call model.eval() before torch.export.export",
        )
    return LoadedEncoder(
        module=ExportedEncoder(module),
        name=Path(spec).name,
        kind="export",
        meta={"path": str(Path(spec).resolve())},
    )


# torch.export.load trusts its input (its docs: "never load data from an untrusted source"): it
# falls back to ``torch.load(weights_only=False)``, ``pickle.loads`` opaque constants, loads
# AOTInductor shared libraries, resolves graph targets by ``getattr`` from ``torch``/``operator``
# (``torch.serialization.os.system`` resolves) and ``sympy.sympify``s (= ``eval``) shape strings.
# Before calling it, lpla accepts only archives made of the plain parts ``torch.export.save``
# writes, graph targets that are torch operators or arithmetic, and shape expressions built from
# sympy's and torch's symbolic-shape functions; every torch.load inside is forced weights-only.
_PT2_PARTS = re.compile(
    r"^(archive_format|archive_version|byteorder|\.data/version|\.data/serialization_id"
    r"|models/[\w.-]+\.json|data/weights/[\w.-]+|data/constants/[\w.-]+"
    r"|data/sample_inputs/[\w.-]+\.pt|extra/[\w.-]+)$"
)
_PT2_OPERATOR_FUNCS = frozenset(
    "add sub mul truediv floordiv mod pow neg pos abs eq ne lt le gt ge and_ or_ xor not_ invert "
    "lshift rshift getitem matmul truth".split()
)
_PT2_TARGET = re.compile(r"^(torch\.ops\.\w+\.\w+(\.\w+)?|torch\._?sym_\w+|math\.[a-z]\w*)$")
_SYMPY_NAMES = frozenset(
    "Symbol Dummy Integer Float Rational Add Mul Pow Mod Max Min Abs floor ceiling sqrt log exp "
    "sign Eq Ne Lt Le Gt Ge StrictLessThan LessThan GreaterThan StrictGreaterThan Equality "
    "Unequality And Or Not Xor Piecewise ITE true false True False oo zoo nan Infinity "
    "NegativeInfinity pi E S Half One Zero NegativeOne FloorDiv ModularIndexing Where PythonMod "
    "CleanDiv CeilToInt FloorToInt CeilDiv IntTrueDiv FloatTrueDiv LShift RShift "
    "IsNonOverlappingAndDenseIndicator TruncToFloat TruncToInt RoundToInt RoundDecimal ToFloat "
    "FloatPow PowByNatural Identity OpaqueUnaryFn_sqrt".split()
)
_EXPR_TOKEN = re.compile(
    r"\s+|'[A-Za-z_]\w*'|\d+(\.\d+)?([eE][+-]?\d+)?|(?P<name>[A-Za-z_]\w*)|==|!=|<=|>=|[-+*/%(),=<>]"
)


def _safe_target(target: str) -> bool:
    if "__" in target:
        return False
    if target.startswith("_operator."):
        return target[len("_operator.") :] in _PT2_OPERATOR_FUNCS
    return bool(_PT2_TARGET.match(target))


def _safe_expr(expr: str) -> bool:
    """A shape expression made only of sympy/torch symbolic names, numbers and arithmetic."""
    pos = 0
    while pos < len(expr):
        m = _EXPR_TOKEN.match(expr, pos)
        if m is None:
            return False
        name = m.group("name")
        if name is not None:
            rest = expr[m.end() :].lstrip()
            is_keyword = rest.startswith("=") and not rest.startswith("==")
            allowed = not name.startswith("_") if is_keyword else name in _SYMPY_NAMES
            if not allowed:
                return False
        pos = m.end()
    return True


def _unsafe_graph_strings(node: Any) -> Iterator[str]:
    """Operator targets and shape expressions in a serialized program that are not plainly safe."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "nodes" and isinstance(value, list):
                for n in value:
                    target = n.get("target") if isinstance(n, dict) else None
                    if not isinstance(target, str) or not _safe_target(target):
                        yield f"operator {target!r}"
            if key == "as_operator" and (not isinstance(value, str) or not _safe_target(value)):
                yield f"operator {value!r}"
            if key == "expr_str" and (not isinstance(value, str) or not _safe_expr(value)):
                yield f"shape expression {value!r}"
            yield from _unsafe_graph_strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from _unsafe_graph_strings(item)


def check_export_archive(spec: str | Path, names: list[str] | None = None) -> None:
    """Refuse a .pt2 that holds anything beyond what torch.export.save writes for a plain model."""
    import json

    path = Path(spec)
    names = _zip_names(path) if names is None else names
    fix = "export the encoder again with torch.export.save, or use module:factory + .safetensors"
    with zipfile.ZipFile(path) as zf:
        for name in names:
            if name.endswith("/"):
                continue
            part = name.split("/", 1)[1] if "/" in name else name
            if not _PT2_PARTS.match(part) or "/opaque_obj_" in name:
                raise LplaError(
                    f"{spec} holds {name!r}, which torch.export.load would execute or unpickle; "
                    "lpla refuses it",
                    hint=fix,
                )
            if part.startswith("models/"):
                try:
                    program = json.loads(zf.read(name))
                except (ValueError, UnicodeDecodeError) as exc:
                    raise LplaError(f"{spec}: {name} is not valid JSON ({exc})", hint=fix) from None
                bad = next(_unsafe_graph_strings(program), None)
                if bad is not None:
                    raise LplaError(
                        f"{spec} calls {bad[:120]}, not a torch operator; lpla refuses to run it",
                        hint=fix,
                    )


@contextlib.contextmanager
def _torch_load_weights_only() -> Iterator[None]:
    """Force ``torch.load(weights_only=True)`` even where a library asks for False (env switch)."""
    keys = ("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")
    saved = {k: os.environ.get(k) for k in keys}
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    os.environ.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", None)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _is_torchscript_path(spec: str) -> bool:
    return _file_kind(spec) == "torchscript"


def is_torchscript_archive(path: str | Path) -> bool:
    """True for a ``torch.jit.save`` zip (it has ``code/`` and ``constants.pkl``)."""
    names = _zip_names(Path(path))
    has_code = any("/code/" in n or n.startswith("code/") for n in names)
    has_constants = any(n.endswith("constants.pkl") for n in names)
    return has_code and has_constants


def _load_torchscript(spec: str, weights: str | None, device: str, layer: str) -> LoadedEncoder:
    if not is_torchscript_archive(spec):
        raise LplaError(
            f"{spec} is a pickled checkpoint, not TorchScript; lpla never unpickles it",
            hint="export with torch.jit.save/torch.export, or give module:factory "
            "--weights .safetensors",
        )
    try:
        module = torch.jit.load(spec, map_location=device)
    except Exception as exc:
        raise LplaError(f"cannot load TorchScript {spec}: {_one_line(exc)}") from None
    return LoadedEncoder(
        module=_eval(module),
        name=Path(spec).name,
        kind="torchscript",
        meta={"path": str(Path(spec).resolve())},
    )


def _is_factory(spec: str) -> bool:
    return bool(_FACTORY_RE.match(spec)) and not _LIBRARY_RE.match(spec) and not Path(spec).exists()


def _load_factory(spec: str, weights: str | None, device: str, layer: str) -> LoadedEncoder:
    module_name, func_name = spec.split(":")
    try:
        mod = importlib.import_module(module_name)
    except ImportError as exc:
        raise LplaError(
            f"cannot import {module_name!r} for encoder {spec}: {exc}",
            hint="install the package or add its folder to PYTHONPATH",
        ) from None
    factory = getattr(mod, func_name, None)
    if not callable(factory):
        raise LplaError(f"{module_name} has no callable {func_name!r} (encoder {spec})")
    model = factory()
    if not isinstance(model, nn.Module):
        raise LplaError(f"{spec}() returned {type(model).__name__}, not a torch.nn.Module")
    meta: dict[str, Any] = {"factory": spec, "weights": None}
    if weights is not None:
        _load_safetensors_strict(model, weights, spec)
        meta["weights"] = str(Path(weights).resolve())
    shape = getattr(model, "image_shape", None)
    augmentation = getattr(model, "augmentation", None)
    return LoadedEncoder(
        module=_eval(model.to(device)),
        name=spec,
        kind="factory",
        meta=meta,
        augmentation=augmentation if isinstance(augmentation, str) else None,
        image_shape=tuple(int(s) for s in shape) if shape is not None else None,  # type: ignore[arg-type]
    )


def _load_safetensors_strict(
    model: nn.Module, weights: str, spec: str, head_prefixes: tuple[str, ...] = ()
) -> list[str]:
    """Load ``weights`` into ``model`` with every key and shape matching; say which do not.

    Keys under ``head_prefixes`` (the classification layer a timm/torchvision loader removed)
    may be in the file, as they are in a classifier's state dict: they are skipped and returned.
    """
    path = Path(weights)
    if not path.is_file():
        raise LplaError(f"weights file not found: {weights}")
    if path.suffix != ".safetensors":
        raise LplaError(
            f"lpla loads weights only from .safetensors, never pickles: {weights}",
            hint="convert with safetensors.torch.save_file(model.state_dict(), 'w.safetensors')",
        )
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(str(path), device="cpu")
    except (SafetensorError, OSError) as exc:
        raise LplaError(f"{weights} is not a readable safetensors file: {exc}") from None
    expected = model.state_dict()
    skipped = sorted(
        k for k in state if k not in expected and any(k.startswith(h + ".") for h in head_prefixes)
    )
    for k in skipped:
        del state[k]
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise LplaError(
            f"{weights} does not fit {spec}: {len(missing)} missing keys {missing[:4]}, "
            f"{len(unexpected)} unexpected keys {unexpected[:4]}",
            hint=_prefix_hint(unexpected, expected)
            or "save the weights of the model the spec builds (model.state_dict())",
        )
    wrong = [k for k in expected if tuple(expected[k].shape) != tuple(state[k].shape)]
    if wrong:
        k = wrong[0]
        raise LplaError(
            f"{weights} does not fit {spec}: {len(wrong)} tensors have other shapes, e.g. {k} "
            f"{tuple(state[k].shape)} vs {tuple(expected[k].shape)} in the model"
        )
    model.load_state_dict(state, strict=True)
    return skipped


def _prefix_hint(unexpected: list[str], expected: Any) -> str | None:
    """'the file's keys start with backbone.': the usual cause of a full mismatch."""
    if not unexpected or "." not in unexpected[0]:
        return None
    prefix = unexpected[0].split(".", 1)[0] + "."
    stripped = {k[len(prefix) :] for k in unexpected if k.startswith(prefix)}
    if stripped and set(expected) <= stripped:
        return (
            f"the file's keys start with {prefix!r}: save that sub-module's state_dict "
            f"(e.g. model.{prefix[:-1]}.state_dict())"
        )
    return None


# ------------------------------------------------------------- timm / torchvision architectures


def _is_library(library: str) -> Callable[[str], bool]:
    def matches(spec: str) -> bool:
        m = _LIBRARY_RE.match(spec)
        return m is not None and m.group(1) == library and not Path(spec).exists()

    return matches


def _unknown_model(library: str, name: str, known: list[str]) -> LplaError:
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    return LplaError(
        f"{library} has no model {name!r}"
        + (f"; did you mean {', '.join(close)}?" if close else "")
        + f" (list them with {library}.list_models())"
    )


def _library_encoder(
    spec: str,
    model: nn.Module,
    weights: str | None,
    device: str,
    head_prefixes: tuple[str, ...],
    normalization: Normalization,
    input_size: Any,
) -> LoadedEncoder:
    """Weights, meta and eval mode shared by timm:NAME and torchvision:NAME."""
    kind = spec.split(":", 1)[0]
    meta: dict[str, Any] = {
        "architecture": spec,
        "weights": None,
        "classifier_removed": list(head_prefixes),
    }
    if input_size is not None:
        meta["input_size"] = [int(s) for s in input_size]
    if weights is None:
        meta["warning"] = (
            f"no --weights: {spec} is randomly initialised (nothing is downloaded); its audit "
            "describes an untrained network, not your encoder"
        )
    else:
        skipped = _load_safetensors_strict(model, weights, spec, head_prefixes)
        meta["weights"] = str(Path(weights).resolve())
        if skipped:
            meta["skipped_head_keys"] = skipped
    return LoadedEncoder(
        module=_eval(model.to(device)),
        name=spec,
        kind=kind,
        meta=meta,
        input_channels=3,
        default_normalization=normalization,
    )


def _load_timm(spec: str, weights: str | None, device: str, layer: str) -> LoadedEncoder:
    name = spec.split(":", 1)[1]
    try:
        import timm
    except ImportError:
        raise LplaError(f"{spec} needs timm: pip install timm") from None
    try:
        model = timm.create_model(name, pretrained=False, num_classes=0)
    except RuntimeError as exc:
        if "Unknown model" in str(exc):
            raise _unknown_model("timm", name, timm.list_models()) from None
        raise LplaError(f"cannot build {spec}: {_one_line(exc)}") from None
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    classifier = cfg.get("classifier") or "head"
    heads = (classifier,) if isinstance(classifier, str) else tuple(classifier)
    mean, std = cfg.get("mean"), cfg.get("std")
    if mean is not None and std is not None:
        normalization = (tuple(mean), tuple(std), "timm pretrained_cfg")
    else:
        normalization = (IMAGENET_MEAN, IMAGENET_STD, "imagenet")
    return _library_encoder(
        spec, model, weights, device, heads, normalization, cfg.get("input_size")
    )


def remove_classifier(model: nn.Module) -> str:
    """Replace a torchvision classifier's last linear (or 1x1 conv) layer by ``Identity``.

    Returns the state-dict prefix of the removed layer (``fc``, ``classifier.6``,
    ``heads.head``...). What stays is the model's pooled penultimate representation: ResNet's
    pooled features, ViT's class token, ConvNeXt's normalised pooled features, VGG's fc7.
    """
    for attr in ("fc", "classifier", "heads", "head"):
        head = getattr(model, attr, None)
        if isinstance(head, nn.Linear):
            setattr(model, attr, nn.Identity())
            return attr
        if isinstance(head, nn.Sequential):
            names = [n for n, m in head.named_children() if isinstance(m, nn.Linear | nn.Conv2d)]
            if names:
                setattr(head, names[-1], nn.Identity())
                return f"{attr}.{names[-1]}"
    raise LplaError(
        f"cannot find the classification layer of {type(model).__name__} (no fc, classifier, "
        "heads or head)",
        hint="wrap the model in a package.module:factory that returns [B, D] features",
    )


def _load_torchvision(spec: str, weights: str | None, device: str, layer: str) -> LoadedEncoder:
    import torchvision.models as tvm

    name = spec.split(":", 1)[1]
    known = tvm.list_models(module=tvm)  # classification models only
    if name not in known:
        raise _unknown_model("torchvision", name, known)
    model = tvm.get_model(name, weights=None)
    head = remove_classifier(model)
    normalization = (IMAGENET_MEAN, IMAGENET_STD, "imagenet")
    return _library_encoder(spec, model, weights, device, (head,), normalization, None)


def parse_normalize(value: str | None) -> Normalization | str | None:
    """``--normalize``: ``auto`` (None; the kind's default), ``imagenet``, ``none``, or
    ``MEAN/STD`` with comma-separated per-channel values (``0.5,0.5,0.5/0.5,0.5,0.5``).

    Returns ``"auto"``, None for no normalisation, or ``(mean, std, source)``.
    """
    if value is None or value == "auto":
        return "auto"
    if value == "none":
        return None
    if value == "imagenet":
        return IMAGENET_MEAN, IMAGENET_STD, "imagenet"
    usage = "use auto, imagenet, none or MEAN/STD such as 0.5,0.5,0.5/0.25,0.25,0.25"
    parts = value.split("/")
    try:
        mean, std = (tuple(float(v) for v in part.split(",")) for part in parts)
    except ValueError:
        raise LplaError(f"cannot read --normalize {value!r}; {usage}") from None
    if len(mean) != len(std) or len(mean) not in (1, 3) or min(std) <= 0:
        raise LplaError(
            f"--normalize {value!r} needs as many means as stds (1 or 3) and stds > 0; {usage}"
        )
    return mean, std, "user"


ENCODER_KINDS.add(
    "checkpoint",
    EncoderKind(_is_checkpoint, _load_checkpoint),
    "lpla checkpoint directory (checkpoint.json + model.safetensors)",
)
ENCODER_KINDS.add(
    "export", EncoderKind(_is_export, _load_export), ".pt2 archive from torch.export.save"
)
ENCODER_KINDS.add(
    "torchscript",
    EncoderKind(_is_torchscript_path, _load_torchscript),
    "TorchScript archive from torch.jit.save (.pt/.ts/.torchscript)",
)
ENCODER_KINDS.add(
    "factory",
    EncoderKind(_is_factory, _load_factory),
    "package.module:factory returning an nn.Module, + --weights .safetensors",
)
ENCODER_KINDS.add(
    "timm",
    EncoderKind(_is_library("timm"), _load_timm),
    "timm:NAME, pooled features (num_classes=0), + --weights .safetensors; nothing downloaded",
)
ENCODER_KINDS.add(
    "torchvision",
    EncoderKind(_is_library("torchvision"), _load_torchvision),
    "torchvision:NAME, classifier replaced by Identity, + --weights .safetensors",
)


def training_augmentation(enc: LoadedEncoder) -> Any:
    """The exact augmentation an lpla checkpoint was trained with (recipe + overrides), as a module.

    The attacker's default query augmentation is the target's own training recipe; rebuilding it
    from the checkpoint's config keeps the overrides (``crop_scale_min``, ``jitter``, strength)
    that the recipe's name alone would lose. Other encoders: their augmentation name, or ``weak``.
    """
    info = enc.meta.get("checkpoint") if enc.kind == "checkpoint" else None
    cfg = (info or {}).get("config") or {}
    if not info or enc.image_shape is None or not cfg:
        return enc.augmentation or "weak"
    from lpla.ssl.augment import create_augmentation

    name = cfg.get("augmentation") or enc.augmentation or "weak"
    return create_augmentation(
        str(name),
        enc.image_shape,
        float(cfg.get("aug_strength", 1.0)),
        crop_scale_min=cfg.get("crop_scale_min"),
        jitter=cfg.get("jitter"),
    )
