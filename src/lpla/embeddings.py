"""The embeddings file: what the query engine writes and what every attack reads.

One uncompressed ``.npz`` (a zip of ``.npy`` members) holding

- ``embeddings``: float16/float32 ``[N, K, D]`` (N images, K views, D features),
- ``member``: int8 ``[N]`` (1 member, 0 non-member, -1 unknown),
- ``index``: int64 ``[N]`` (the images' indices in their dataset),
- ``meta``: a JSON object stored as a 0-d unicode array (encoder, dataset, views, seed, ...).

Anything that writes this file can be audited, which is how embeddings from a model we never saw
enter lpla. The members are stored, not deflated, so :func:`open_embeddings` can memory-map the
embeddings straight out of the zip: attacks then stream statistics over files larger than RAM.
A user's ``np.savez_compressed`` file still loads (fully, into memory). Object arrays are never
unpickled.

Large files are written by :class:`EmbeddingsWriter`, which fills a ``.npy`` memmap batch by batch
(memory bounded by the batch, not by N), can resume an interrupted run from its last saved batch,
and builds the final zip by streaming that ``.npy`` into it.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import shutil
import struct
import time
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import numpy as np

from lpla.errors import LplaError
from lpla.io import atomic_path, json_default, read_json, write_json_atomic

REQUIRED_KEYS = ("embeddings", "member", "index")
OPTIONAL_KEYS = ("meta",)
STORAGE_DTYPES = ("float16", "float32")
MEMBER_VALUES = (-1, 0, 1)

# A fixed zip timestamp makes the file a function of its content only (reproducible outputs).
_ZIP_DATE_TIME = (1980, 1, 1, 0, 0, 0)
_LOCAL_HEADER = struct.Struct("<4s5H3I2H")  # zip local file header, 30 bytes
_LOCAL_HEADER_SIGNATURE = b"PK\x03\x04"
_CHUNK_BYTES = 16 * 1024 * 1024  # rows scanned at once by the NaN check
_COPY_BYTES = 1024 * 1024


@dataclass
class EmbeddingsFile:
    """An opened (or in-memory) embeddings set; ``embeddings`` may be a read-only memmap."""

    embeddings: np.ndarray
    member: np.ndarray
    index: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    @property
    def num_images(self) -> int:
        return int(self.embeddings.shape[0])

    @property
    def num_views(self) -> int:
        return int(self.embeddings.shape[1])

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[2])

    @property
    def clean_view0(self) -> bool:
        """Whether view 0 is the un-augmented image: a property of how the file was made."""
        return bool(self.meta.get("clean_view0", False))

    @property
    def is_memmap(self) -> bool:
        return isinstance(self.embeddings, np.memmap)

    def __len__(self) -> int:
        return self.num_images

    def __repr__(self) -> str:
        where = f" from {self.path}" if self.path else ""
        kind = "memmap" if self.is_memmap else "array"
        return (
            f"EmbeddingsFile(N={self.num_images}, K={self.num_views}, D={self.dim}, "
            f"dtype={self.embeddings.dtype}, {kind}{where})"
        )


# ----------------------------------------------------------------------------------- validation


def validate_embeddings(
    embeddings: np.ndarray,
    member: np.ndarray,
    index: np.ndarray,
    *,
    source: str = "embeddings",
    check_finite: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Check shapes, dtypes and values; return ``member`` as int8 and ``index`` as int64.

    Raises one :class:`LplaError` per problem, naming it and the fix.
    """
    if embeddings.ndim == 2:
        raise LplaError(
            f"{source}: 'embeddings' has shape {embeddings.shape} [N, D], lpla needs [N, K, D] "
            "(K views per image)",
            hint="add a views axis: embeddings[:, None, :]",
        )
    if embeddings.ndim != 3:
        raise LplaError(
            f"{source}: 'embeddings' must be [N, K, D] (images, views, features), "
            f"got shape {embeddings.shape}"
        )
    if not np.issubdtype(embeddings.dtype, np.floating):
        raise LplaError(
            f"{source}: 'embeddings' must be floating point, got {embeddings.dtype}",
            hint="save embeddings.astype(np.float32)",
        )
    n = embeddings.shape[0]
    member_arr = _as_member(member, source)
    index_arr = _as_index(index, source)
    for name, arr in (("member", member_arr), ("index", index_arr)):
        if arr.shape[0] != n:
            raise LplaError(
                f"{source}: 'embeddings' has {n} images but '{name}' has {arr.shape[0]} entries; "
                "they must describe the same images in the same order"
            )
    if check_finite:
        bad, bad_rows = count_nonfinite(embeddings)
        if bad:
            raise LplaError(
                f"{source}: 'embeddings' contains {bad} NaN/inf values in {bad_rows} of {n} images",
                hint="fix the encoder's output (or drop those images) before auditing",
            )
    return member_arr, index_arr


def _as_member(member: np.ndarray, source: str) -> np.ndarray:
    arr = np.asarray(member)
    if arr.ndim != 1:
        raise LplaError(f"{source}: 'member' must be 1-D [N], got shape {arr.shape}")
    if arr.dtype == np.bool_:
        return arr.astype(np.int8)
    if not np.issubdtype(arr.dtype, np.integer):
        raise LplaError(
            f"{source}: 'member' must be integers (1 member, 0 non-member, -1 unknown), "
            f"got {arr.dtype}"
        )
    bad = ~np.isin(arr, MEMBER_VALUES)
    if bad.any():
        values = sorted({int(v) for v in np.unique(arr[bad])[:5]})
        raise LplaError(
            f"{source}: 'member' holds {int(bad.sum())} values outside {{-1, 0, 1}} "
            f"(e.g. {values}); use 1 member, 0 non-member, -1 unknown"
        )
    return arr.astype(np.int8, copy=False)


def _as_index(index: np.ndarray, source: str) -> np.ndarray:
    arr = np.asarray(index)
    if arr.ndim != 1:
        raise LplaError(f"{source}: 'index' must be 1-D [N], got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise LplaError(f"{source}: 'index' must be integer dataset indices, got {arr.dtype}")
    return arr.astype(np.int64, copy=False)


def release_rows(array: np.ndarray, start: int, stop: int) -> None:
    """Drop rows ``[start, stop)`` of a (shared) memmap from this process's resident set.

    Pages of a file mapping that were read stay counted in the process's RSS until the kernel
    wants the memory back, so streaming a 10 GB file showed a 10 GB RSS (and looked like a leak
    to anyone watching memory). ``MADV_DONTNEED`` unmaps them; the data stays in the page cache
    (and, for a shared mapping, on disk), so nothing is lost and a re-read is still cheap.
    Dirty pages of a shared writable map are kept by the kernel and written back as usual.
    A no-op for in-memory arrays, copy-on-write maps and platforms without ``madvise``.
    """
    mm = getattr(array, "_mmap", None)
    if (
        not isinstance(array, np.memmap)
        or mm is None
        or array.mode == "c"  # private copy-on-write pages would lose their changes
        or not hasattr(mm, "madvise")
        or array.ndim == 0
        or array.strides[0] <= 0
        or stop <= start
    ):
        return
    base = np.frombuffer(mm, dtype=np.uint8).ctypes.data
    first = array.ctypes.data - base + start * array.strides[0]
    last = array.ctypes.data - base + stop * array.strides[0]
    first -= first % mmap.PAGESIZE
    last = min(last, len(mm))
    if 0 <= first < last:
        mm.madvise(mmap.MADV_DONTNEED, first, last - first)


def count_nonfinite(embeddings: np.ndarray) -> tuple[int, int]:
    """(NaN/inf values, images with any) scanned in chunks, so a memmap is never fully loaded."""
    n = embeddings.shape[0]
    row_bytes = max(1, int(np.prod(embeddings.shape[1:])) * embeddings.itemsize)
    step = max(1, _CHUNK_BYTES // row_bytes)
    bad_values = bad_rows = 0
    for start in range(0, n, step):
        chunk = np.asarray(embeddings[start : start + step])
        finite = np.isfinite(chunk).reshape(chunk.shape[0], -1)
        release_rows(embeddings, start, start + step)  # RSS stays flat on files larger than RAM
        if not finite.all():
            bad_values += int(finite.size - finite.sum())
            bad_rows += int((~finite.all(axis=1)).sum())
    return bad_values, bad_rows


# ------------------------------------------------------------------------------------- writing


def meta_to_array(meta: Mapping[str, Any]) -> np.ndarray:
    """Meta dict -> the 0-d unicode array stored under ``meta``."""
    return np.array(json.dumps(dict(meta), sort_keys=True, default=json_default))


def _zip_member(zf: zipfile.ZipFile, key: str) -> IO[bytes]:
    info = zipfile.ZipInfo(f"{key}.npy", date_time=_ZIP_DATE_TIME)
    info.compress_type = zipfile.ZIP_STORED
    info.external_attr = 0o644 << 16
    return zf.open(info, "w", force_zip64=True)


def _write_npz_stored(
    path: Path,
    arrays: Mapping[str, np.ndarray],
    embeddings_npy: Path | None = None,
) -> None:
    """Write an uncompressed npz; the ``embeddings_npy`` file is streamed in, never loaded."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for key, arr in arrays.items():
            with _zip_member(zf, key) as fh:
                _write_npy(fh, np.asanyarray(arr))
        if embeddings_npy is not None:
            with _zip_member(zf, "embeddings") as fh, open(embeddings_npy, "rb") as src:
                shutil.copyfileobj(src, fh, _COPY_BYTES)


def _write_npy(fh: IO[bytes], arr: np.ndarray) -> None:
    """``np.save`` without the copy ``write_array`` makes of its input (bytes are identical)."""
    if arr.dtype.hasobject:
        raise ValueError("object arrays are not part of the embeddings format")
    if not arr.flags.c_contiguous:  # (np.ascontiguousarray would turn 0-d meta into 1-d)
        arr = arr.copy(order="C")
    np.lib.format.write_array_header_1_0(fh, np.lib.format.header_data_from_array_1_0(arr))
    if arr.size:
        fh.write(arr.reshape(-1).view(np.uint8).data)


def write_embeddings(
    path: str | os.PathLike[str],
    embeddings: np.ndarray,
    member: np.ndarray | None = None,
    index: np.ndarray | None = None,
    meta: Mapping[str, Any] | None = None,
) -> Path:
    """Validate and write an in-memory embeddings set (atomically, uncompressed).

    ``member`` defaults to all -1 (unknown), ``index`` to ``0..N-1``. For sets that do not fit in
    memory use :class:`EmbeddingsWriter`.
    """
    emb = np.asarray(embeddings)
    n = emb.shape[0] if emb.ndim else 0
    member = np.full(n, -1, np.int8) if member is None else member
    index = np.arange(n, dtype=np.int64) if index is None else index
    member_arr, index_arr = validate_embeddings(emb, member, index, source=str(path))
    if emb.dtype not in (np.float16, np.float32):
        emb = emb.astype(np.float32)
    target = Path(path)
    with atomic_path(target) as tmp:
        _write_npz_stored(
            tmp,
            {  # same member order as EmbeddingsWriter: identical inputs, identical bytes
                "member": member_arr,
                "index": index_arr,
                "meta": meta_to_array(meta or {}),
                "embeddings": emb,
            },
        )
    return target


class EmbeddingsWriter:
    """Stream ``[B, K, D]`` batches into an embeddings file; memory bounded by one batch.

    Rows go into ``<out>.partial/embeddings.npy`` (a memmap). :meth:`checkpoint` flushes it and
    records the rows done in ``progress.json`` with a hash of the call's configuration, so that a
    re-run with ``resume=True`` continues from there; a run with another configuration refuses to
    resume. :meth:`close` streams the ``.npy`` into the final zip (atomic rename) and removes the
    partial directory. Used as a context manager, an exception saves progress and re-raises.

    ``meta["created"]`` is set on the first run and kept on resume, so a resumed file is
    byte-identical to an uninterrupted one made with the same ``created``.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        n: int,
        k: int,
        d: int,
        dtype: str = "float32",
        member: np.ndarray | None = None,
        index: np.ndarray | None = None,
        meta: Mapping[str, Any] | None = None,
        *,
        resume: bool = False,
        checkpoint_every_s: float = 5.0,
    ) -> None:
        if dtype not in STORAGE_DTYPES:
            raise LplaError(f"unknown embeddings dtype {dtype!r}; use one of {STORAGE_DTYPES}")
        if n < 0 or k < 1 or d < 1:
            raise LplaError(f"embeddings shape must have N >= 0, K >= 1, D >= 1; got {(n, k, d)}")
        self.path = Path(path)
        self.shape = (int(n), int(k), int(d))
        self.dtype = np.dtype(dtype)
        member = np.full(n, -1, np.int8) if member is None else member
        index = np.arange(n, dtype=np.int64) if index is None else index
        self.member, self.index = validate_member_index(member, index, n, str(self.path))
        self.meta: dict[str, Any] = dict(meta or {})
        self.partial_dir = self.path.with_name(self.path.name + ".partial")
        self._npy = self.partial_dir / "embeddings.npy"
        self._progress = self.partial_dir / "progress.json"
        self.config_hash = self._config_hash()
        self.checkpoint_every_s = checkpoint_every_s
        self.rows_done = 0
        self._last_checkpoint = time.monotonic()
        self._closed = False
        self.resumed_from = 0
        if resume and self._progress.is_file() and self._npy.is_file():
            self._open_resume()
        else:
            self._open_fresh()

    # -- set-up
    def _config_hash(self) -> str:
        h = hashlib.sha256()
        stable_meta = {k: v for k, v in self.meta.items() if k != "created"}
        h.update(json.dumps([self.shape, self.dtype.str], sort_keys=True).encode())
        h.update(json.dumps(stable_meta, sort_keys=True, default=json_default).encode())
        h.update(self.member.data)  # a buffer, no copy: memory stays independent of N
        h.update(self.index.data)
        return h.hexdigest()[:32]

    def _open_fresh(self) -> None:
        if self.partial_dir.exists():
            shutil.rmtree(self.partial_dir)
        self.partial_dir.mkdir(parents=True)
        self.meta.setdefault("created", datetime.now(UTC).isoformat(timespec="seconds"))
        self._array = np.lib.format.open_memmap(
            self._npy, mode="w+", dtype=self.dtype, shape=self.shape
        )
        self._write_progress()

    def _open_resume(self) -> None:
        progress = read_json(self._progress, "embedding progress file")
        if progress.get("config_hash") != self.config_hash:
            raise LplaError(
                f"{self.partial_dir} holds a partial run made with other settings "
                "(encoder, data, views, seed, batch size or dtype differ)",
                hint=f"re-run with the original settings, or delete {self.partial_dir} "
                "and drop --resume",
            )
        self._array = np.lib.format.open_memmap(self._npy, mode="r+")
        if self._array.shape != self.shape or self._array.dtype != self.dtype:
            raise LplaError(f"{self._npy} does not match the expected shape; delete it and re-run")
        self.rows_done = self.resumed_from = int(progress["rows_done"])
        if "created" in progress:
            self.meta["created"] = progress["created"]

    def _write_progress(self) -> None:
        write_json_atomic(
            self._progress,
            {
                "rows_done": self.rows_done,
                "config_hash": self.config_hash,
                "shape": list(self.shape),
                "dtype": self.dtype.name,
                "created": self.meta.get("created"),
            },
        )

    # -- filling
    @property
    def complete(self) -> bool:
        return self.rows_done >= self.shape[0]

    def write(self, rows: np.ndarray) -> None:
        """Append ``[B, K, D]`` rows after the last ones written."""
        if self._closed:
            raise RuntimeError("EmbeddingsWriter is closed")
        batch = np.asarray(rows)
        if batch.ndim != 3 or batch.shape[1:] != self.shape[1:]:
            raise ValueError(
                f"expected rows [B, {self.shape[1]}, {self.shape[2]}], got {batch.shape}"
            )
        end = self.rows_done + batch.shape[0]
        if end > self.shape[0]:
            raise ValueError(f"writing rows up to {end} but the file holds {self.shape[0]}")
        bad_values, bad_rows = count_nonfinite(batch)
        if bad_values:
            raise LplaError(
                f"the encoder produced {bad_values} NaN/inf values in {bad_rows} images "
                f"(rows {self.rows_done}..{end - 1}); nothing was written to {self.path}",
                hint="check the encoder (try --dtype float32, or without --amp)",
            )
        self._array[self.rows_done : end] = batch
        release_rows(self._array, self.rows_done, end)  # written rows leave the RSS
        self.rows_done = end
        if time.monotonic() - self._last_checkpoint >= self.checkpoint_every_s:
            self.checkpoint()

    def checkpoint(self) -> None:
        """Flush written rows to disk, then record them as done (in that order)."""
        self._array.flush()
        self._write_progress()
        self._last_checkpoint = time.monotonic()

    def close(self) -> Path:
        """Finish: stream the rows into the final ``.npz`` and remove the partial directory."""
        if self._closed:
            return self.path
        if not self.complete:
            raise RuntimeError(f"only {self.rows_done} of {self.shape[0]} rows were written")
        self._array.flush()
        del self._array
        with atomic_path(self.path) as tmp:
            _write_npz_stored(
                tmp,
                {"member": self.member, "index": self.index, "meta": meta_to_array(self.meta)},
                embeddings_npy=self._npy,
            )
        shutil.rmtree(self.partial_dir, ignore_errors=True)
        self._closed = True
        return self.path

    def abort(self) -> None:
        """Drop the partial run (no resume possible)."""
        self._closed = True
        self.__dict__.pop("_array", None)
        shutil.rmtree(self.partial_dir, ignore_errors=True)

    def __enter__(self) -> EmbeddingsWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None and not self._closed and hasattr(self, "_array"):
            self.checkpoint()  # keep what is done for --resume


def validate_member_index(
    member: np.ndarray, index: np.ndarray, n: int, source: str
) -> tuple[np.ndarray, np.ndarray]:
    """Check ``member``/``index`` for N images; return contiguous int8 / int64 copies or views."""
    member_arr = _as_member(member, source)
    index_arr = _as_index(index, source)
    for name, arr in (("member", member_arr), ("index", index_arr)):
        if arr.shape[0] != n:
            raise LplaError(f"{source}: {n} images but '{name}' has {arr.shape[0]} entries")
    return np.ascontiguousarray(member_arr), np.ascontiguousarray(index_arr)


# ------------------------------------------------------------------------------------- reading


def open_embeddings(
    path: str | os.PathLike[str], *, mmap: bool = True, check_finite: bool = True
) -> EmbeddingsFile:
    """Open and validate an embeddings ``.npz``.

    With ``mmap=True`` (default) the embeddings of an uncompressed file are memory-mapped from
    their offset inside the zip, so opening costs no RAM; compressed files are loaded fully.
    ``meta`` is optional (``{}``), so a plain ``np.savez(f, embeddings=, member=, index=)`` works.
    """
    p = Path(path)
    if not p.exists():
        raise LplaError(f"embeddings file not found: {p}")
    if p.is_dir() or not zipfile.is_zipfile(p):
        raise LplaError(
            f"{p} is not an .npz (zip) file",
            hint="save with np.savez(path, embeddings=E, member=M, index=I) or run lpla embed",
        )
    try:
        with zipfile.ZipFile(p) as zf:
            members = {name[:-4]: name for name in zf.namelist() if name.endswith(".npy")}
            info = zf.getinfo(members["embeddings"]) if "embeddings" in members else None
    except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError) as exc:
        # NotImplementedError: zipfile's word for a damaged version or compression field
        raise LplaError(f"{p} is corrupt or truncated ({exc}); re-create it") from None
    missing = [k for k in REQUIRED_KEYS if k not in members]
    if missing or info is None:
        raise LplaError(
            f"{p} has no {missing[0]!r} array (found: {sorted(members) or 'none'}); "
            f"required keys: {', '.join(REQUIRED_KEYS)}; optional: meta (JSON string)"
        )
    emb: np.ndarray | None = None
    if mmap and info.compress_type == zipfile.ZIP_STORED:
        emb = _memmap_member(p, info)
    try:
        with np.load(p, allow_pickle=False) as npz:
            if emb is None:
                emb = npz["embeddings"]
            member = npz["member"]
            index = npz["index"]
            meta_raw = npz["meta"] if "meta" in members else None
    except ValueError as exc:
        if "allow_pickle" in str(exc) or "Object arrays" in str(exc):
            raise LplaError(
                f"{p} holds Python object arrays; lpla never unpickles data files",
                hint="save plain numeric arrays (and meta as a JSON string)",
            ) from None
        raise LplaError(f"{p} is not a readable .npz: {exc}") from None
    except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError) as exc:
        raise LplaError(f"{p} is corrupt or truncated ({exc}); re-create it") from None
    member_arr, index_arr = validate_embeddings(
        emb, member, index, source=str(p), check_finite=check_finite
    )
    return EmbeddingsFile(emb, member_arr, index_arr, _parse_meta(meta_raw, p), p)


def _memmap_member(path: Path, info: zipfile.ZipInfo) -> np.ndarray | None:
    """Memory-map a stored ``.npy`` member: skip the zip local header, read the npy header.

    Returns None for anything unusual (the caller then loads the array normally).
    """
    with open(path, "rb") as fh:
        fh.seek(info.header_offset)
        raw = fh.read(_LOCAL_HEADER.size)
        if len(raw) != _LOCAL_HEADER.size:
            return None
        fields = _LOCAL_HEADER.unpack(raw)
        if fields[0] != _LOCAL_HEADER_SIGNATURE:
            return None
        name_len, extra_len = fields[-2], fields[-1]
        fh.seek(info.header_offset + _LOCAL_HEADER.size + name_len + extra_len)
        try:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
            else:
                return None
        except ValueError:
            return None
        if dtype.hasobject:
            raise LplaError(
                f"{path} holds Python object arrays; lpla never unpickles data files",
                hint="save plain numeric arrays",
            )
        offset = fh.tell()
    if offset + dtype.itemsize * int(np.prod(shape)) > path.stat().st_size:
        raise LplaError(f"{path} is truncated; re-create it")
    if int(np.prod(shape)) == 0:
        return np.zeros(shape, dtype=dtype)
    return np.memmap(
        path, dtype=dtype, mode="r", shape=shape, offset=offset, order="F" if fortran else "C"
    )


def _parse_meta(raw: np.ndarray | None, path: Path) -> dict[str, Any]:
    if raw is None:
        return {}
    if raw.ndim != 0 or raw.dtype.kind not in "US":
        raise LplaError(
            f"{path}: 'meta' must be a JSON string (0-d), got {raw.dtype} shape {raw.shape}",
            hint="store meta=np.array(json.dumps(meta_dict)) or leave it out",
        )
    text = raw.item()
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as exc:
        raise LplaError(
            f"{path}: 'meta' is not valid JSON ({exc})", hint="store json.dumps(meta_dict)"
        ) from None
    if not isinstance(meta, dict):
        raise LplaError(f"{path}: 'meta' must be a JSON object, got {type(meta).__name__}")
    return meta
