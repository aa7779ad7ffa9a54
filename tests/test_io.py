"""Atomic output: temporary files of failed and killed writers do not stay."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from empathy.io import _HOST, atomic_output, write_text_atomic

REPO_ROOT = Path(__file__).resolve().parents[1]
# Enters atomic_output for the target, writes a part of the file, says so, then waits to be killed.
WRITER = """
import sys, time
from empathy.io import atomic_output
with atomic_output(sys.argv[1]) as tmp:
    tmp.write_bytes(b"x" * 100_000)
    print(tmp, flush=True)
    time.sleep(120)
"""

posix_only = pytest.mark.skipif(os.name != "posix", reason="stale files are only removed on POSIX")


def start_writer(target: Path) -> tuple[subprocess.Popen, Path]:
    """A process writing ``target`` through atomic_output, and its temporary file."""
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(target)],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    tmp = Path(proc.stdout.readline().strip())
    assert tmp.is_file(), "the writer did not start"
    return proc, tmp


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_failed_block_leaves_nothing(tmp_path):
    target = tmp_path / "out.csv"
    with pytest.raises(RuntimeError), atomic_output(target) as tmp:
        tmp.write_text("half", encoding="utf-8")
        raise RuntimeError("failed mid-write")
    assert list(tmp_path.iterdir()) == []


def test_temporary_name_holds_host_and_pid(tmp_path):
    with atomic_output(tmp_path / "out.csv") as tmp:
        assert tmp.parent == tmp_path
        assert tmp.name.startswith(f".out.csv.{_HOST}.{os.getpid()}.") and tmp.name.endswith(".tmp")


@posix_only
def test_a_killed_writer_file_is_removed_by_the_next_write(tmp_path):
    target = tmp_path / "scored.csv"
    proc, stale = start_writer(target)
    proc.send_signal(signal.SIGKILL)
    proc.wait()  # reaped: its PID no longer runs
    proc.stdout.close()
    assert stale.is_file() and not target.exists()  # what kill -9 leaves

    write_text_atomic(target, "new\n")
    assert not stale.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scored.csv"]
    assert target.read_text(encoding="utf-8") == "new\n"


@posix_only
def test_live_foreign_and_other_target_temporaries_are_kept(tmp_path):
    target = tmp_path / "scored.csv"
    proc, live = start_writer(target)
    try:
        pid = dead_pid()
        kept = [
            tmp_path / f".scored.csv.other-host.{pid}.abc123.tmp",  # another host: its PIDs are not ours
            tmp_path / f".scored.csv.bak.{_HOST}.{pid}.abc123.tmp",  # another target (scored.csv.bak)
            tmp_path / f".scored.csv.{_HOST}.{pid}.abc123.tmp.keep",  # not a temporary name
        ]
        stale = tmp_path / f".scored.csv.{_HOST}.{pid}.abc123.tmp"
        for path in [*kept, stale]:
            path.write_text("x", encoding="utf-8")
        write_text_atomic(target, "mine\n")
        assert live.is_file(), "the temporary file of a running writer was removed"
        assert all(path.is_file() for path in kept) and not stale.exists()
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
