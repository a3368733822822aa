"""Atomic writes: a crash leaves the old file or folder or the new one, never a half-written one.

Every file writer in optlib (records, the model cache, reports, studies) goes through
`atomic_write`; every folder written as a whole (the hand-off, the example's image folders, the
export cache's entries) through `atomic_folder`.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write(path: str | Path, write: Callable[[str], None]) -> Path:
    """Call `write(tmp_path)` on a temporary file next to `path`, fsync it, then rename it over
    `path`. On any error the temporary file is removed and `path` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes the file private; the result is an ordinary file
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


@contextmanager
def atomic_folder(path: str | Path, replace: bool = True) -> Iterator[Path]:
    """Yield an empty folder beside `path` to fill; on a clean exit it is renamed to `path`. An
    existing `path` is replaced (set aside, then removed) or, with `replace=False`, kept and the new
    folder dropped. On any error the new folder is removed and `path` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_UMASK)  # mkdtemp makes the folder private; the result is an ordinary one
        if path.exists() and not replace:
            shutil.rmtree(tmp)
            return
        old = path.with_name(f".{path.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        if path.exists():
            path.rename(old)
        try:
            tmp.rename(path)
        except BaseException:
            if old.exists() and not path.exists():
                old.rename(path)
            raise
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def json_safe(obj):
    """Plain JSON values: NaN/inf become null, numpy scalars Python numbers, tuples lists."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalars
        return json_safe(obj.item())
    return obj


def write_json_atomic(data, path: str | Path) -> Path:
    """`data` as indented JSON (NaN written as null), atomically."""
    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(json_safe(data), f, indent=2, allow_nan=False)
    return atomic_write(path, write)


def write_text_atomic(text: str, path: str | Path) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))
