"""On-disk format shared by every index and segment: ``.npy`` arrays plus a JSON manifest.

Files are written under a temporary name, fsynced and renamed; the manifest, written last,
records the format version, each file's size and crc32 and a crc32 of its own content, and the
loader checks them all so damage is reported by file name instead of producing wrong answers.
"""

from __future__ import annotations

import json
import os
import zlib
from collections.abc import Collection
from pathlib import Path
from typing import Any

import numpy as np

from .aligned import load_npy_aligned
from .errors import CorruptData

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
_CHUNK = 1 << 24


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write under a temporary name, fsync, rename over ``path``, fsync the directory; a
    failure (a full disk) leaves the old file and no temporary behind."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


METADATA_VERSION = 2
"""Version of checksummed metadata files (collection config, collection manifest); version 1
files (before checksums) are still read."""


def write_metadata(path: Path, body: dict[str, Any]) -> None:
    """A JSON metadata file with its format version and a crc32 of its canonical form,
    written atomically: an edited or damaged value can never load silently."""
    body = {k: v for k, v in body.items() if k not in ("format_version", "crc32")}
    body["format_version"] = METADATA_VERSION
    body["crc32"] = _manifest_crc(body)
    atomic_write_bytes(path, json.dumps(body, indent=1, sort_keys=True).encode())


def read_metadata(path: Path) -> dict[str, Any]:
    """What ``write_metadata`` wrote, verified; ``CorruptData`` naming the file otherwise."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise CorruptData(f"{path}: missing") from None
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CorruptData(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(body, dict):
        raise CorruptData(f"{path}: not a JSON object")
    version = body.get("format_version")
    crc = body.pop("crc32", None)
    if crc is None and version != 1:  # only files from before checksums may lack one
        raise CorruptData(f"{path}: no checksum (format version {version!r})")
    if crc is not None and crc != _manifest_crc(body):
        raise CorruptData(f"{path}: checksum mismatch (file damaged or edited)")
    if version not in (1, METADATA_VERSION):
        raise CorruptData(f"{path}: format version {version!r}, this Quiver reads 1 and "
                          f"{METADATA_VERSION}")
    return body


def file_crc32(path: Path) -> int:
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            crc = zlib.crc32(chunk, crc)
    return crc


def _manifest_crc(body: dict[str, Any]) -> int:
    """crc32 of the manifest's canonical JSON (everything but the checksum itself)."""
    return zlib.crc32(json.dumps(body, sort_keys=True, separators=(",", ":")).encode())


def save_arrays(directory: str | os.PathLike, kind: str, meta: dict[str, Any],
                arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` and a manifest describing them into ``directory`` (created if needed)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    files = {}
    for name, arr in arrays.items():
        arr = np.ascontiguousarray(arr)
        path = d / f"{name}.npy"
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            np.save(f, arr, allow_pickle=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        files[name] = {"file": path.name, "bytes": path.stat().st_size, "crc32": file_crc32(path),
                       "dtype": arr.dtype.str, "shape": list(arr.shape)}
    manifest = {"format_version": FORMAT_VERSION, "kind": kind, "meta": meta, "files": files}
    manifest["manifest_crc32"] = _manifest_crc(manifest)
    atomic_write_bytes(d / MANIFEST, json.dumps(manifest, indent=1).encode())
    fsync_dir(d)


def read_manifest(directory: str | os.PathLike, kind: str | None) -> dict[str, Any]:
    """The checked manifest of a saved object; ``kind`` None accepts any kind."""
    path = Path(directory) / MANIFEST
    if not path.exists():
        what = kind or "object"
        raise CorruptData(f"{path}: manifest missing (not a saved {what}, or an interrupted save)")
    try:
        manifest = json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError) as exc:
        raise CorruptData(f"{path}: manifest is not valid JSON ({exc})") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise CorruptData(f"{path}: manifest has no file table")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise CorruptData(f"{path}: format version {version!r}, this Quiver reads {FORMAT_VERSION}")
    # the manifest checksums itself too: a damaged value (a dimension, a dtype) that still
    # parses as JSON would otherwise load as a wrong index
    crc = manifest.pop("manifest_crc32", None)
    if crc != _manifest_crc(manifest):
        raise CorruptData(f"{path}: manifest checksum mismatch (file damaged)")
    if kind is not None and manifest.get("kind") != kind:
        raise CorruptData(f"{path}: holds a {manifest.get('kind')!r}, expected a {kind!r}")
    return manifest


def load_arrays(directory: str | os.PathLike, kind: str, mmap: bool = True,
                verify: bool = True, resident: Collection[str] = (),
                ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Validate and open what ``save_arrays`` wrote; arrays are read-only memory maps if mmap,
    except those named in ``resident``, read into (64-byte aligned) memory as with mmap off."""
    d = Path(directory)
    manifest = read_manifest(d, kind)
    arrays = {}
    for name, info in manifest["files"].items():
        if not isinstance(info, dict) or not {"file", "bytes", "crc32", "dtype", "shape"} <= set(info):
            raise CorruptData(f"{d / MANIFEST}: manifest entry for {name!r} is incomplete")
        path = d / info["file"]
        if not path.exists():
            raise CorruptData(f"{path}: file missing")
        size = path.stat().st_size
        if size != info["bytes"]:
            raise CorruptData(f"{path}: {size} bytes on disk, manifest says {info['bytes']} (truncated?)")
        if verify and file_crc32(path) != info["crc32"]:
            raise CorruptData(f"{path}: checksum mismatch (file damaged)")
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False) if mmap and \
                name not in resident else load_npy_aligned(path)
        except (ValueError, OSError) as exc:
            raise CorruptData(f"{path}: unreadable array ({exc})") from None
        if arr.dtype.str != info["dtype"] or list(arr.shape) != info["shape"]:
            raise CorruptData(f"{path}: dtype/shape {arr.dtype.str}{arr.shape} do not match the manifest")
        arrays[name] = arr
    return manifest["meta"], arrays
