"""Run training jobs as processes on this machine, N at a time, sharing its CPU cores among them.

On a CPU, PyTorch gains less than linearly from more threads: jobs of one thread each train faster
in all than one job of every thread (``scripts/bench_threads.py`` measures it on a machine). A seed
sweep therefore finishes sooner as parallel jobs, provided the cores are not left idle at
its end: when a job finishes, the pool gives its cores to the jobs still running. Each job reads
its thread count from a file that the pool rewrites (``empathy.models.callbacks.ThreadShare``,
``EMPATHY_THREADS_FILE``), and starts with it as ``OMP_NUM_THREADS``.

``scripts/reproduce_table.py --jobs N`` uses it; each job is a plain ``python -m empathy.train``
run into its own folder.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from empathy.hardware import usable_cores
from empathy.io import write_text_atomic

THREADS_FILE_ENV = "EMPATHY_THREADS_FILE"


def core_shares(cores: int, running: int) -> list[int]:
    """Threads for each of ``running`` jobs on ``cores`` cores: as equal as possible, adding up to
    ``cores`` (the first jobs get the remainder), at least 1 each."""
    if running < 1:
        return []
    base, extra = divmod(cores, running)
    return [max(1, base + (i < extra)) for i in range(running)]


@dataclass
class PoolJob:
    command: list[str]
    folder: Path  # the job's run folder; its output goes to <folder>/job.log
    returncode: int | None = None
    minutes: float | None = None
    threads: list[int] = field(default_factory=list)  # each share the pool gave it, in order


class LocalPool:
    """Runs :class:`PoolJob` s ``jobs`` at a time on ``cores`` cores (default: this process's)."""

    def __init__(self, jobs: int, cores: int | None = None, poll_s: float = 1.0) -> None:
        if jobs < 1:
            raise ValueError(f"jobs must be >= 1, got {jobs}")
        self.jobs = jobs
        self.cores = cores or usable_cores()
        self.poll_s = poll_s

    def run(self, jobs: Sequence[PoolJob], threads_dir: Path) -> list[PoolJob]:
        threads_dir.mkdir(parents=True, exist_ok=True)
        pending = list(jobs)
        running: dict[int, tuple[PoolJob, subprocess.Popen, object, float]] = {}
        started = time.monotonic()
        next_id = 0

        def threads_file(job_id: int) -> Path:
            return threads_dir / f"job{job_id}"

        def share(new: dict[int, PoolJob]) -> dict[int, int]:
            ids = sorted([*running, *new])
            shares = dict(zip(ids, core_shares(self.cores, len(ids)), strict=True))
            for job_id, threads in shares.items():
                job = new[job_id] if job_id in new else running[job_id][0]
                if not job.threads or job.threads[-1] != threads:
                    job.threads.append(threads)
                    write_text_atomic(threads_file(job_id), f"{threads}\n")
            return shares

        def say(text: str) -> None:
            print(f"[{(time.monotonic() - started) / 60:6.1f} min] {text}", flush=True)

        try:
            while pending or running:
                new: dict[int, PoolJob] = {}
                while pending and len(running) + len(new) < self.jobs:
                    new[next_id] = pending.pop(0)
                    next_id += 1
                if new:
                    shares = share(new)
                    for job_id, job in new.items():
                        job.folder.mkdir(parents=True, exist_ok=True)
                        log = open(job.folder / "job.log", "w")  # noqa: SIM115 (closed when the job ends)
                        env = {
                            **os.environ,
                            THREADS_FILE_ENV: str(threads_file(job_id)),
                            "OMP_NUM_THREADS": str(shares[job_id]),
                        }
                        env.setdefault("TOKENIZERS_PARALLELISM", "false")
                        process = subprocess.Popen(job.command, stdout=log, stderr=subprocess.STDOUT, env=env)
                        running[job_id] = (job, process, log, time.monotonic())
                        say(f"started {job.folder} ({shares[job_id]} thread(s); log: job.log)")
                time.sleep(self.poll_s)
                finished = [job_id for job_id, (_, process, _, _) in running.items() if process.poll() is not None]
                for job_id in finished:
                    job, process, log, t0 = running.pop(job_id)
                    log.close()
                    job.returncode, job.minutes = process.returncode, (time.monotonic() - t0) / 60
                    threads_file(job_id).unlink(missing_ok=True)
                    say(
                        f"{'finished' if job.returncode == 0 else f'FAILED (exit {job.returncode})'} "
                        f"{job.folder} in {job.minutes:.1f} min"
                    )
                if finished and running and not pending:  # else the next job's start shares the cores
                    share({})
        finally:
            for job, process, log, _ in running.values():  # interrupted: stop the jobs still running
                process.terminate()
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
                log.close()
                job.returncode = process.returncode
        return list(jobs)
