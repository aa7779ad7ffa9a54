"""Atomic file output, shared by every command that writes results: a temporary file in the
target's folder, renamed into place only when the writing succeeded (no half-written files), and
never replacing an existing file unless asked to. And :func:`file_lock`, so that processes sharing
a cache build each entry once."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # Windows: no advisory locks, each process builds its own cache entry
    fcntl = None


@contextmanager
def atomic_output(path: str | os.PathLike, overwrite: bool = True) -> Iterator[Path]:
    """A temporary path in ``path``'s folder, moved to ``path`` when the block succeeds and
    removed when it fails. Without ``overwrite`` an existing ``path`` is never replaced (the
    final move is a hard link, which fails if the file appeared meanwhile)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=true to replace it")
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise FileExistsError(f"{path} appeared while predicting; not replaced (pass overwrite=true)") from None
            except OSError:  # no hard links on this file system
                if path.exists():
                    raise
                os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def file_lock(path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``path`` (created if missing, left in place) for the
    block: the processes of one machine that share a cache (a pool's jobs, DDP ranks) build an entry
    one at a time, and the later ones find it built. Where ``fcntl`` is missing, no lock is taken."""
    if fcntl is None:
        yield
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def write_text_atomic(path: str | os.PathLike, text: str, *, overwrite: bool = True) -> Path:
    """Write a UTF-8 text file atomically."""
    with atomic_output(path, overwrite) as tmp:
        tmp.write_text(text, encoding="utf-8", newline="")
    return Path(path)


def write_json_atomic(path: str | os.PathLike, payload: Mapping[str, Any], *, overwrite: bool = True) -> Path:
    """Write JSON (indented, sorted keys) atomically."""
    return write_text_atomic(path, json.dumps(payload, indent=2, sort_keys=True) + "\n", overwrite=overwrite)
