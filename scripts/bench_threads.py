"""Training throughput on the CPU: one job using every core against N jobs at once sharing them.

    python scripts/bench_threads.py [--jobs 2] [--steps 12] [model=joint ...]

Both modes run the real training step (forward, loss, backward, clip, optimiser) of the configured
model (default: the joint model with the packaged MiniLM) on the first real training batches, each
job in its own process: first one job with all the cores as threads, then ``--jobs`` jobs at once
with the cores shared among them (``empathy.study.local_pool.core_shares``), the way
``scripts/reproduce_table.py --jobs`` runs seeds. The jobs of a mode build their model, then wait
for one another, so that their timed steps overlap. Prints steps/s of each mode and the ratio.
Needs the EPITOME CSVs (EMPATHY_DATA_DIR).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def worker(args: argparse.Namespace) -> None:
    import warnings

    import torch
    from bench_step import training_steps  # scripts/ is this script's folder, first on sys.path

    from empathy import runner

    warnings.filterwarnings("ignore", message=".*self.log.*")  # the step logs without a Trainer

    runner.quiet_libraries()
    step, batches = training_steps(args.overrides, args.steps, Path(args.folder) / "run")
    step(batches[0])  # warm-up
    Path(args.folder, f"ready{args.index}").touch()
    while not Path(args.folder, "go").exists():
        time.sleep(0.05)
    started = time.perf_counter()
    for batch in batches[1:]:
        step(batch)
    seconds = time.perf_counter() - started
    Path(args.folder, f"result{args.index}.json").write_text(
        json.dumps({"threads": torch.get_num_threads(), "steps": len(batches) - 1, "seconds": seconds})
    )


def run_mode(jobs: int, cores: int, steps: int, overrides: list[str]) -> dict:
    from empathy.study.local_pool import core_shares

    with tempfile.TemporaryDirectory() as folder:
        processes = []
        for index, threads in enumerate(core_shares(cores, jobs)):
            env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
            command = [
                sys.executable,
                __file__,
                "--worker",
                "--index",
                str(index),
                "--folder",
                folder,
                "--steps",
                str(steps),
                *overrides,
            ]
            processes.append(subprocess.Popen(command, env=env))
        while sum(Path(folder, f"ready{i}").exists() for i in range(jobs)) < jobs:
            if any(p.poll() not in (None, 0) for p in processes):
                raise SystemExit("a benchmark job failed")
            time.sleep(0.1)
        Path(folder, "go").touch()
        if any(p.wait() != 0 for p in processes):
            raise SystemExit("a benchmark job failed")
        results = [json.loads(Path(folder, f"result{i}.json").read_text()) for i in range(jobs)]
    rate = sum(r["steps"] / r["seconds"] for r in results)
    return {
        "jobs": jobs,
        "threads": [r["threads"] for r in results],
        "steps_per_s": rate,
        "wall_s": max(r["seconds"] for r in results),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of the train config (key=value)")
    parser.add_argument("--jobs", type=int, default=2, help="jobs at once in the shared mode (default 2)")
    parser.add_argument("--steps", type=int, default=12, help="timed training steps per job (default 12)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--index", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    from empathy.hardware import usable_cores

    cores = usable_cores()
    one = run_mode(1, cores, args.steps, args.overrides)
    shared = run_mode(args.jobs, cores, args.steps, args.overrides)
    print(f"cores={cores} steps/job={args.steps} overrides={args.overrides or '(defaults)'}")
    for name, mode in (("one job, all cores", one), (f"{args.jobs} jobs sharing them", shared)):
        print(
            f"{name:>22}: threads {mode['threads']}  {mode['steps_per_s']:.3f} steps/s in all  "
            f"({mode['wall_s']:.1f} s wall)"
        )
    print(f"throughput {args.jobs} jobs / one job: {shared['steps_per_s'] / one['steps_per_s']:.2f}x")


if __name__ == "__main__":
    main()
