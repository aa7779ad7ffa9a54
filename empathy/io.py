"""Atomic file output, shared by every command that writes results: a temporary file in the
target's folder, renamed into place only when the writing succeeded (no half-written files), and
never replacing an existing file unless asked to. And :func:`file_lock`, so that processes sharing
a cache build each entry once.

A temporary file is named ``.<target name>.<host>.<pid>.<random>.tmp``. A failed block removes
it; a process killed before it can (``kill -9``, a power cut) leaves it beside the target. The
next :func:`atomic_output` for the same target, on the same host, removes the temporary files of
that target whose process no longer runs. Those of a running process (also one that was given a
dead writer's PID) and those written on another host sharing the folder are left alone. Where
processes cannot be checked (outside POSIX), nothing is removed.
"""

from __future__ import annotations

import json
import os
import re
import socket
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # Windows: no advisory locks, each process builds its own cache entry
    fcntl = None


# The host part of temporary names: no dots, so that a name splits back into its parts.
_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "host"


def _running(pid: int) -> bool:
    """Whether process ``pid`` of this host exists; True when that cannot be told."""
    try:
        os.kill(pid, 0)  # signal 0: only checks that the process exists
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):  # run by another user / not a PID
        return True
    return True


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Remove the temporary files that :func:`atomic_output` left for ``path`` in processes of this
    host that no longer run (killed mid-write); return them. Never a live process's file."""
    if os.name != "posix":  # os.kill(pid, 0) would terminate the process on Windows
        return []
    path = Path(path)
    pattern = re.compile(re.escape(f".{path.name}.{_HOST}.") + r"(\d+)\.[A-Za-z0-9_]+\.tmp")
    removed = []
    try:
        names = os.listdir(path.parent)
    except FileNotFoundError:
        return []
    for name in names:
        match = pattern.fullmatch(name)
        if match is None or _running(int(match.group(1))):
            continue
        try:
            (path.parent / name).unlink()
        except OSError:  # removed by another process meanwhile, or not ours to remove
            continue
        removed.append(path.parent / name)
    return removed


@contextmanager
def atomic_output(path: str | os.PathLike, overwrite: bool = True) -> Iterator[Path]:
    """A temporary path in ``path``'s folder, moved to ``path`` when the block succeeds and
    removed when it fails. Without ``overwrite`` an existing ``path`` is never replaced (the
    final move is a hard link, which fails if the file appeared meanwhile)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=true to replace it")
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{_HOST}.{os.getpid()}.", suffix=".tmp")
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
                raise FileExistsError(
                    f"{path} appeared while it was being written; not replaced (pass overwrite=true)"
                ) from None
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
