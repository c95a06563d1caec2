"""Files written so that nothing half-written is ever read: atomic writes under hidden
staging names (removed by the next writer when their process died), free-space checks,
sha256 fingerprints, and the versions and plain-data form every output records.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from augment.errors import DataError


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def png_bytes(mask: np.ndarray) -> bytes:
    """Lossless 8-bit PNG of a label mask (deterministic bytes: no timestamps)."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(mask, dtype=np.uint8), mode="L").save(buf, format="PNG")
    return buf.getvalue()


def versions() -> dict[str, str]:
    """Versions of Python and the packages whose behaviour shapes our outputs."""
    import platform

    out = {"python": platform.python_version()}
    for pkg in (
        "lesionforge",
        "numpy",
        "scipy",
        "scikit-image",
        "albumentations",
        "torch",
        "torchvision",
        "nibabel",
        "pydicom",
    ):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            continue
    return out


def to_jsonable(value: Any) -> Any:
    """numpy scalars/arrays, tuples and Paths to plain JSON types."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


# Staging names beside an output NAME: ``.NAME.tmp-PID`` (a file being written),
# ``.NAME.partial-PID`` (a folder being written), ``.NAME.old-PID`` (the replaced
# output, deleted after the rename). PID is the writing process.
STAGING_RE = re.compile(r"^\.(?P<name>.+)\.(?:tmp|partial|old)-(?P<pid>\d+)$")


def staging_name(path: str | os.PathLike, role: str) -> Path:
    """``.NAME.<role>-PID`` beside ``path``: where this process stages it (role: tmp|partial|old)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{role}-{os.getpid()}")


def pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    except OSError:
        return False
    return True


def remove_stale_staging(path: str | os.PathLike) -> list[Path]:
    """Delete the staging files/folders of ``path`` left by processes that no longer run.

    A kill -9 during a write leaves ``.NAME.tmp-PID`` (or ``.partial-``/``.old-``)
    beside ``path``; the next writer of ``path`` removes them. Those of a live process
    (another writer at work) are left alone. Returns what was removed.
    """
    path = Path(path)
    removed: list[Path] = []
    try:
        entries = list(path.parent.iterdir())
    except OSError:
        return removed
    for entry in entries:
        m = STAGING_RE.match(entry.name)
        if not m or m["name"] != path.name or pid_alive(int(m["pid"])):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write to a temporary name beside ``path``, then rename: never a half-written file."""
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path}: is a folder; expected a file name here")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"{path.parent}: cannot create the folder ({e.strerror or e})") from None
    remove_stale_staging(path)
    tmp = staging_name(path, "tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError as e:
        raise DataError(f"{path}: cannot write ({e.strerror or e})") from None
    finally:
        if tmp.exists():
            tmp.unlink()


def human_bytes(n: float) -> str:
    """``1.2 GB``: decimal units, as ``df -H`` shows them."""
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} PB"  # pragma: no cover


def check_free_space(out: str | os.PathLike, needed: int, what: str) -> None:
    """Refuse (`DataError`) before any work when ``needed`` bytes will not fit where ``out``
    is written; ``what`` says what needs them (``"phantom: --n 500 slices of 128x128 px"``).

    The free space is that of the nearest existing folder above ``out``; a folder that
    cannot be asked is left to the write itself to report.
    """
    folder = Path(out).absolute().parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        usage = shutil.disk_usage(folder)
    except OSError:
        return
    free = usage.free
    if usage.total and needed > free:  # total 0: a pseudo file system (/proc), no answer
        raise DataError(
            f"{what} need about {human_bytes(needed)} ({needed} bytes) but {folder} has "
            f"{human_bytes(free)} ({free} bytes) free"
        )


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    text = json.dumps(to_jsonable(obj), indent=2, sort_keys=True) + "\n"
    write_bytes_atomic(path, text.encode())


# ------------------------------------------------------------------------- datasets
