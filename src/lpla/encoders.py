"""Load an encoder from anywhere lpla can audit: our checkpoints or a user's exported model.

Supported kinds (detected from the spec; the tests keep the detectors mutually exclusive):

- ``checkpoint``: an lpla checkpoint directory (has ``checkpoint.json``);
- ``export``: a ``.pt2`` file from ``torch.export.save``;
- ``torchscript``: a ``.pt``/``.ts``/``.torchscript``/``.jit`` TorchScript archive from
  ``torch.jit.save`` (checked to *be* TorchScript before loading: a pickled ``torch.save``
  checkpoint is refused, since unpickling runs arbitrary code);
- ``factory``: ``package.module:factory``, a function called with no arguments that returns an
  ``nn.Module``; weights come from ``--weights file.safetensors`` (strict key match).

Every encoder follows one convention: input float32 ``[B, C, H, W]`` in ``[0, 1]`` (normalisation
is inside the model), output ``[B, D]``. A probe forward on a dummy batch checks it when the image
shape is known, so a wrong model fails at load time with a clear message, not deep in a run.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import os
import pickle
import re
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lpla.errors import LplaError
from lpla.registry import Registry

LAYERS = ("backbone", "projection")
POOLS = ("avg", "flatten", "cls")
TORCHSCRIPT_SUFFIXES = (".pt", ".pth", ".ts", ".torchscript", ".jit")
_FACTORY_RE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


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
) -> LoadedEncoder:
    """Load the encoder named by ``spec`` in eval mode on ``device`` and probe it.

    ``kind`` forces a kind instead of detecting it. ``image_shape`` (C, H, W) overrides the one
    known from the encoder's metadata; without either, the probe waits for the dataset
    (:func:`probe_encoder`). ``pool`` (avg | flatten | cls) turns a feature-map output into [B, D].
    """
    if layer not in LAYERS:
        raise LplaError(f"unknown layer {layer!r}; use one of {', '.join(LAYERS)}")
    if pool is not None and pool not in POOLS:
        raise LplaError(f"unknown pool {pool!r}; use one of {', '.join(POOLS)}")
    kind = kind or detect_kind(spec)
    if weights is not None and kind != "factory":
        raise LplaError(
            f"--weights applies only to module:factory encoders; {spec} ({kind}) holds its own"
        )
    if layer != "backbone" and kind != "checkpoint":
        raise LplaError(
            f"--layer {layer} applies only to lpla checkpoints; a {kind} encoder is used as "
            "exported (export the layer you want to audit)"
        )
    enc = ENCODER_KINDS.get(kind).load(spec, weights, device, layer)
    enc.layer = layer
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
    if path.suffix == ".safetensors":
        raise LplaError(
            f"{spec} holds weights without an architecture",
            hint="give --encoder package.module:factory --weights " + spec,
        )
    if path.exists():
        raise LplaError(
            f"cannot tell what kind of encoder {spec} is (suffix {path.suffix!r})",
            hint="use a .pt2 (torch.export), a TorchScript .pt, an lpla checkpoint directory, "
            "or package.module:factory",
        )
    raise LplaError(
        f"encoder {spec!r} not found; give an lpla checkpoint directory, a .pt2 "
        "(torch.export), a TorchScript .pt, or package.module:factory"
    )


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
            hint="check --image-shape; a torch.export model needs a dynamic batch dimension "
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


def _eval(module: nn.Module) -> nn.Module:
    try:
        module.eval()
    except (NotImplementedError, RuntimeError):  # exported GraphModules refuse eval()
        pass
    return module


# ----------------------------------------------------------------------------------- the kinds


def _is_checkpoint(spec: str) -> bool:
    return (Path(spec) / "checkpoint.json").is_file()


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


def _is_export(spec: str) -> bool:
    return spec.endswith(".pt2") and Path(spec).is_file()


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
    return LoadedEncoder(
        module=_eval(module),
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
    return Path(spec).suffix in TORCHSCRIPT_SUFFIXES and Path(spec).is_file()


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
    return bool(_FACTORY_RE.match(spec)) and not Path(spec).exists()


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


def _load_safetensors_strict(model: nn.Module, weights: str, spec: str) -> None:
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
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise LplaError(
            f"{weights} does not fit {spec}: {len(missing)} missing keys {missing[:4]}, "
            f"{len(unexpected)} unexpected keys {unexpected[:4]}",
            hint="save the weights of the model the factory builds (model.state_dict())",
        )
    wrong = [k for k in expected if tuple(expected[k].shape) != tuple(state[k].shape)]
    if wrong:
        k = wrong[0]
        raise LplaError(
            f"{weights} does not fit {spec}: {len(wrong)} tensors have other shapes, e.g. {k} "
            f"{tuple(state[k].shape)} vs {tuple(expected[k].shape)} in the model"
        )
    model.load_state_dict(state, strict=True)


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
