"""Local jobs sharing the cores: the shares, the pool handing a finished job's cores to the one still
running (through the threads file that ThreadShare reads), and reproduce_table.py --jobs 2 for real."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from empathy.data.synthetic import write_synthetic_epitome
from empathy.models.callbacks import ThreadShare
from empathy.study.local_pool import LocalPool, PoolJob, core_shares

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_core_shares_add_up_to_the_cores_and_give_each_job_one_at_least():
    assert core_shares(2, 1) == [2]
    assert core_shares(2, 2) == [1, 1]
    assert core_shares(16, 3) == [6, 5, 5]
    assert core_shares(2, 3) == [1, 1, 1]  # more jobs than cores: one thread each
    assert core_shares(4, 0) == []


# Polls its threads file until the pool has given it every core (or 20 s pass), and records what it read.
WATCHER = """
import os, sys, time
path, seen = os.environ["EMPATHY_THREADS_FILE"], [os.environ["OMP_NUM_THREADS"]]
end = time.monotonic() + 20
while time.monotonic() < end and seen[-1] != sys.argv[1]:
    time.sleep(0.05)
    try:
        text = open(path).read().strip()
    except FileNotFoundError:
        continue
    if text != seen[-1]:
        seen.append(text)
open(sys.argv[2], "w").write(",".join(seen))
"""


def test_the_pool_gives_a_finished_jobs_cores_to_the_job_still_running(tmp_path):
    quick = PoolJob([sys.executable, "-c", "import time; time.sleep(1)"], tmp_path / "quick")
    watcher = PoolJob([sys.executable, "-c", WATCHER, "2", str(tmp_path / "seen.txt")], tmp_path / "watcher")
    failing = PoolJob([sys.executable, "-c", "raise SystemExit(3)"], tmp_path / "failing")
    LocalPool(2, cores=2, poll_s=0.1).run([quick, watcher, failing], tmp_path / "threads")
    assert quick.returncode == 0 and watcher.returncode == 0
    assert failing.returncode == 3 and failing.threads  # started after quick ended, while watcher ran
    # watcher started with 1 of the 2 cores and got both once quick and failing had ended
    assert (tmp_path / "seen.txt").read_text() == "1,2"
    assert watcher.threads == [1, 2] and quick.threads == [1]
    assert (tmp_path / "watcher" / "job.log").is_file()
    assert not list((tmp_path / "threads").iterdir())  # each job's file goes when it ends


def test_a_pool_of_one_job_at_a_time_gives_it_every_core(tmp_path):
    job = PoolJob([sys.executable, "-c", "import os; print(os.environ['OMP_NUM_THREADS'])"], tmp_path / "job")
    LocalPool(1, cores=3, poll_s=0.05).run([job], tmp_path / "threads")
    assert job.returncode == 0 and job.threads == [3]
    assert (tmp_path / "job" / "job.log").read_text().strip() == "3"
    with pytest.raises(ValueError, match="jobs must be >= 1"):
        LocalPool(0)


def test_thread_share_applies_the_files_count_and_refuses_a_bad_one(tmp_path):
    before = torch.get_num_threads()
    path = tmp_path / "threads"
    share = ThreadShare(path)
    try:
        share.refresh(0)  # no file yet: nothing changes
        assert torch.get_num_threads() == before and share.changes == []
        other = 1 if before != 1 else 2
        path.write_text(f"{other}\n")
        share.refresh(5)
        assert torch.get_num_threads() == other and share.changes == [(5, other)]
        share.refresh(6)  # unchanged file: not read again
        assert share.changes == [(5, other)]
        path.write_text("many")
        with pytest.raises(ValueError, match=r"threads: expected a thread count \(one integer\), got 'many'"):
            share.refresh(7)
        path.write_text("0")
        with pytest.raises(ValueError, match="expected a thread count >= 1, got 0"):
            ThreadShare(path).refresh(0)
        ThreadShare(None).refresh(0)  # no path: nothing to do
    finally:
        torch.set_num_threads(before)


def test_reproduce_table_jobs_are_one_run_per_mechanism_and_seed_and_refuse_a_launcher(tmp_path):
    script, sweep = str(REPO_ROOT / "scripts" / "reproduce_table.py"), tmp_path / "sweep"
    dry = subprocess.run(
        [sys.executable, script, "--dry-run", "--jobs", "2", "--experiments", "default,paper", "--seeds", "1,2",
         "--sweep-dir", str(sweep), "encoder=tiny"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    lines = [line.split() for line in dry.stdout.splitlines() if not line.startswith("#")]
    joint = [line for line in lines if "experiment=default" in line]
    separate = [line for line in lines if "experiment=paper" in line]
    assert [line[-4:] for line in joint] == [  # the joint model: one run per seed, no mechanism
        ["seed=1", f"hydra.run.dir={sweep / 'joint' / '0'}", "group=joint", "encoder=tiny"],
        ["seed=2", f"hydra.run.dir={sweep / 'joint' / '1'}", "group=joint", "encoder=tiny"],
    ]
    assert [(line[4], line[5], line[6]) for line in separate] == [  # one model per mechanism: each mechanism
        (f"mechanism={m}", f"seed={s}", f"hydra.run.dir={sweep / 'separate' / str(i)}")
        for i, (m, s) in enumerate((m, s) for m in ("ER", "IP", "EX") for s in (1, 2))
    ]
    assert "# 2 job(s), 2 at a time" in dry.stdout and "# 6 job(s), 2 at a time" in dry.stdout
    refused = subprocess.run(
        [sys.executable, script, "--dry-run", "--jobs", "2", "cluster=slurm"], capture_output=True, text=True
    )
    assert refused.returncode == 2 and "use --jobs 1" in refused.stderr
    # with a launcher and no --jobs: one multirun, the launcher's
    launcher = subprocess.run(
        [sys.executable, script, "--dry-run", "cluster=submitit_local"], capture_output=True, text=True, check=True
    )
    assert " -m empathy.train -m " in launcher.stdout


def test_reproduce_table_runs_seeds_as_parallel_jobs_that_share_the_cores(tmp_path):
    data = write_synthetic_epitome(tmp_path / "data", n_rows=40, seed=0)
    sweep = tmp_path / "sweep"
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "HF_HUB_OFFLINE": "1",
        "WANDB_MODE": "offline",
        "TOKENIZERS_PARALLELISM": "false",
    }
    command = [
        sys.executable, str(REPO_ROOT / "scripts" / "reproduce_table.py"), "--jobs", "2", "--seeds", "1,2,3",
        "--sweep-dir", str(sweep), "--out", str(tmp_path / "results"), "--no-floors",
        "encoder=tiny", "debug=limit", "logger=csv", f"paths.data_dir={data}", f"paths.cache_dir={tmp_path / 'cache'}",
        "++trainer.enable_progress_bar=false",
    ]  # fmt: skip
    done = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "3 job(s), 2 at a time on" in done.stdout
    folders = sorted(p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert [p.name for p in folders] == ["0", "1", "2"]
    assert [json.loads((p / "metrics.json").read_text())["seed"] for p in folders] == [1, 2, 3]
    assert all((p / "job.log").is_file() and (p / ".hydra" / "overrides.yaml").is_file() for p in folders)
    # each job read its share from the pool's file: metrics.json lists the changes (none at start)
    assert all(isinstance(json.loads((p / "metrics.json").read_text())["thread_changes"], list) for p in folders)
    table = (tmp_path / "results" / "paper_table.md").read_text()
    pool = json.loads((sweep / "pool.json").read_text())
    assert (pool["jobs"], pool["count"]) == (2, 3) and [r["returncode"] for r in pool["runs"]] == [0, 0, 0]
    assert "3 jobs, 2 at a time sharing" in table and "minutes of wall time" in table
    # one cell of the three seeds: the jobs' threads files do not split them
    assert "| joint | strict | 3 |" in table and "thread_share" not in table
