"""Reproduce the paper's table: train every (experiment, mechanism, seed) as a Hydra multirun (one
per kind of model), then write the results table (``scripts/reproduce_table.py`` runs :func:`main`).

    python scripts/reproduce_table.py                                   # default (joint model) x seeds 1..5
    python scripts/reproduce_table.py --experiments default,paper,no_attention trainer=gpu
    python scripts/reproduce_table.py --aggregate-only outputs/reproduce/2026-01-01_10-00-00 [DIR ...]
    python scripts/reproduce_table.py model=biencoder                   # one model per mechanism x ER,IP,EX x seeds
    python scripts/reproduce_table.py --dry-run                         # print the command(s) only
    python scripts/reproduce_table.py --jobs 1                          # one job at a time (one Hydra multirun)
    python scripts/reproduce_table.py --rescore outputs/reproduce/2026-01-01_10-00-00  # kept checkpoints

Positional ``key=value`` arguments are passed to ``empathy.train`` as they are. An experiment
of the joint model (the default) trains ER, IP and EX in one run per seed; one of a model per
mechanism (``paper``, or any with ``model=biencoder``) is swept over ``--mechanisms``; with both,
each kind gets its own multirun folder (``<sweep-dir>/joint``, ``<sweep-dir>/separate``). The table goes to
``<out>/<name>.md`` and ``<out>/<name>.csv`` (default ``results/paper_table.*``) (see
empathy/study/results.py and docs/experiments.md); re-running with --aggregate-only regenerates it from the run folders.

``--rescore DIR`` trains nothing: it evaluates each finished run's best checkpoint under DIR on
test again (``empathy.evaluate``) with the rationale decodings and level offsets that today's
configuration sets (the defaults, or ``key=value`` overrides), into a new folder whose runs hold
the original ``metrics.json`` with its test metrics replaced (and ``rescored``: from where, with
what) and the original config with those decisions; the table is made from it. The checkpoints
stay those the runs kept: a new run with these decisions could keep another epoch's checkpoint,
since the decisions change the dev macro-F1 that chooses it.

Training on the CPU, ``--jobs`` (default 2 there) runs that many jobs at once, each a plain
``empathy.train`` run into ``<sweep-dir>/<n>``, sharing the cores (``empathy.study.local_pool``:
on a CPU, jobs of one thread each train faster in all than one job of all the threads,
``scripts/bench_threads.py``; a job gets the cores of those that finished). On a GPU, or with a
launcher (``cluster=...``), the default is 1: one Hydra multirun, one job after another (or the
launcher's).
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

from empathy.io import write_json_atomic
from empathy.study import results


def comma_list(text: str) -> list[str]:
    return [item for item in text.split(",") if item]


def group_experiments(experiments: list[str], overrides: list[str]) -> dict[bool, list[str]]:
    """{joint?: experiments}: an experiment of the joint preset (``model=joint``, the default)
    trains every mechanism in one run, so it gets no mechanism sweep; one of the per-mechanism
    preset (``model=biencoder``, e.g. ``paper``) is swept over the mechanisms."""
    from empathy import runner

    groups: dict[bool, list[str]] = {}
    for experiment in experiments:
        choices = runner.config_choices("train", [f"experiment={experiment}", *overrides])
        groups.setdefault(choices.get("model") != "biencoder", []).append(experiment)
    return groups


LAUNCHER_KEYS = ("cluster", "hydra/launcher", "hydra.launcher", "hparams_search", "hydra/sweeper", "hydra.sweeper")


def uses_launcher(overrides: list[str]) -> bool:
    """Whether the overrides choose a Hydra launcher or sweeper (cluster=..., hparams_search=...)."""
    return any(o.lstrip("+~").startswith(LAUNCHER_KEYS) for o in overrides)


def default_jobs(overrides: list[str]) -> int:
    """2 when the jobs train on this machine's CPU (and it has 2 cores or more), else 1."""
    from empathy import runner
    from empathy.hardware import usable_cores

    if uses_launcher(overrides):
        return 1
    accelerator = str(runner.compose_config("train", overrides).trainer.get("accelerator", "auto"))
    if accelerator == "auto":
        import torch

        accelerator = "gpu" if torch.cuda.is_available() else "cpu"
    return min(2, usable_cores()) if accelerator == "cpu" else 1


def pool_jobs(experiments: list[str], mechanisms: list[str], seeds: list[int], folder: Path, overrides: list[str]):
    """One ``empathy.train`` run per (experiment, mechanism, seed), in the multirun's order, into
    ``folder/<n>``; the W&B group is the folder's name, as in a multirun."""
    from empathy.study.local_pool import PoolJob

    extra = [] if any(o.startswith("group=") for o in overrides) else [f"group={folder.name}"]
    jobs = []
    for experiment in experiments:
        for mechanism in mechanisms or [None]:
            for seed in seeds:
                run_dir = folder / str(len(jobs))
                command = [
                    sys.executable,
                    "-m",
                    "empathy.train",
                    f"experiment={experiment}",
                    *([f"mechanism={mechanism}"] if mechanism else []),
                    f"seed={seed}",
                    f"hydra.run.dir={run_dir}",
                    *extra,
                    *overrides,
                ]
                jobs.append(PoolJob(command, run_dir))
    return jobs


def run_pool(jobs, n: int, folder: Path, dry_run: bool) -> int:
    """Run ``jobs`` ``n`` at a time (``empathy.study.local_pool``): 0, or the first failed job's status."""
    from empathy.study.local_pool import LocalPool

    pool = LocalPool(n)
    print(f"# {len(jobs)} job(s), {n} at a time on {pool.cores} core(s)", flush=True)
    for job in jobs:
        print(shlex.join(job.command), flush=True)
    if dry_run:
        return 0
    folder.mkdir(parents=True, exist_ok=True)
    started = time.time()
    pool.run(jobs, folder / ".threads")
    write_json_atomic(
        folder / results.POOL_FILE,
        {
            "jobs": n,
            "cores": pool.cores,
            "count": len(jobs),
            "wall_minutes": round((time.time() - started) / 60, 2),
            "started": datetime.fromtimestamp(started).isoformat(timespec="seconds"),
            "finished": datetime.now().isoformat(timespec="seconds"),
            "runs": [
                {
                    "folder": str(job.folder),
                    "returncode": job.returncode,
                    "minutes": job.minutes and round(job.minutes, 2),
                    "threads": job.threads,
                }
                for job in jobs
            ],
        },
    )
    return next((job.returncode for job in jobs if job.returncode), 0)


DECISIONS = ("rationale_decoding", "level_offsets")  # model settings that act after training only


def rescore(source: Path, target: Path, overrides: list[str]) -> Path:
    """Each finished run under ``source`` evaluated on test again with today's decisions
    (:data:`DECISIONS` of the train config with ``overrides``) into ``target/<run>``: its
    ``metrics.json`` with the test metrics replaced, its config with the decisions; ``pool.json``
    is copied with ``rescored_from``. Existing run folders under ``target`` are an error."""
    import json
    import shutil

    import yaml
    from omegaconf import OmegaConf, open_dict

    from empathy import runner
    from empathy.evaluate import evaluate
    from empathy.io import write_text_atomic

    today = runner.compose_config("train", overrides)
    decisions = {key: OmegaConf.to_container(today.model.get(key), resolve=True) for key in DECISIONS}
    folders = [f for f in results.find_job_folders([source]) if (f / "metrics.json").is_file()]
    if not folders:
        raise FileNotFoundError(f"{source}: no finished run (a folder with metrics.json) to rescore")
    for folder in folders:
        new = target / folder.relative_to(source.resolve())
        if new.exists():
            raise FileExistsError(f"{new} exists: rescore into a new --sweep-dir")
        payload = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
        checkpoint = payload.get("best_checkpoint")
        if not checkpoint or not Path(checkpoint).is_file():
            raise FileNotFoundError(
                f"{folder / 'metrics.json'}: best_checkpoint {checkpoint!r} is not a file (kept checkpoints are needed)"
            )
        config = yaml.safe_load((folder / "resolved_config.yaml").read_text(encoding="utf-8"))
        cfg = runner.compose_config(
            "evaluate",
            [f"ckpt_path={checkpoint}", "split=test", "++trainer.enable_progress_bar=false"],
            output_dir=new / "rescore",
        )
        with open_dict(cfg):
            cfg.paths.data_dir = config["paths"]["data_dir"]  # the data and cache the run used
            cfg.paths.cache_dir = config["paths"]["cache_dir"]
            for key, value in decisions.items():
                cfg[key] = value
        print(f"# rescoring {folder} into {new}", flush=True)
        metrics = evaluate(cfg, new / "rescore")
        old = {k for k in payload["metrics"] if k.startswith("test/")}
        if not old <= set(metrics):
            raise KeyError(f"{folder}: the evaluation lacks {sorted(old - set(metrics))[:5]}")
        payload["metrics"] = {k: v for k, v in payload["metrics"].items() if not k.startswith("test/")} | {
            k: v for k, v in metrics.items() if k.startswith("test/")
        }
        payload["rescored"] = {"from": str(folder), "checkpoint": checkpoint, **decisions}
        for key, value in decisions.items():
            config["model"][key] = value
        write_text_atomic(new / "resolved_config.yaml", yaml.safe_dump(config, sort_keys=False))
        write_json_atomic(new / "metrics.json", payload)
        if (folder / ".hydra").is_dir():
            shutil.copytree(folder / ".hydra", new / ".hydra")
    pool = source / results.POOL_FILE
    if pool.is_file():
        write_json_atomic(target / results.POOL_FILE, {**json.loads(pool.read_text()), "rescored_from": str(source)})
    return target


def main(argv: list[str] | None = None) -> int:
    """The command line of ``scripts/reproduce_table.py``."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for empathy.train (key=value)")
    parser.add_argument(
        "--experiments",
        type=comma_list,
        default=["default"],
        help="conf/experiment names, comma-separated (default: default)",
    )
    parser.add_argument("--mechanisms", type=comma_list, default=["ER", "IP", "EX"])
    parser.add_argument("--seeds", type=comma_list, default=["1", "2", "3", "4", "5"])
    parser.add_argument(
        "--sweep-dir", help="the multirun folder (default: $EMPATHY_LOG_DIR or outputs, then reproduce/<time>)"
    )
    parser.add_argument("--out", default="results", help="folder of the table files (default: results)")
    parser.add_argument(
        "--name", default="paper_table", help="file name of the table: <out>/<name>.md and .csv (default: paper_table)"
    )
    parser.add_argument(
        "--aggregate-only", nargs="+", metavar="DIR", help="only aggregate these finished run / multirun folders"
    )
    parser.add_argument(
        "--joint", action="store_true", help="model=joint for every experiment (the default model already is)"
    )
    parser.add_argument(
        "--jobs",
        type=int,
        help="jobs run at once on this machine, sharing its cores (default: 2 training on the CPU, "
        "else 1; 1: one Hydra multirun)",
    )
    parser.add_argument(
        "--rescore",
        metavar="DIR",
        help="train nothing: evaluate the best checkpoints of the runs under DIR "
        "on test again with today's rationale decodings and level offsets, into --sweep-dir, and "
        "make the table from that",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the training command(s) and exit")
    parser.add_argument(
        "--no-floors", action="store_true", help="do not compute the floors on the runs' split (needs the data)"
    )
    args = parser.parse_args(argv)

    status = 0
    roots = args.aggregate_only
    if args.rescore and roots:
        parser.error("--rescore and --aggregate-only exclude each other")
    if args.rescore:
        log_dir = Path(os.environ.get("EMPATHY_LOG_DIR", "outputs"))
        target = Path(
            args.sweep_dir or log_dir / "reproduce" / (datetime.now().strftime("%Y-%m-%d_%H-%M-%S-%f") + "-rescored")
        )
        try:
            roots = [str(rescore(Path(args.rescore), target.resolve(), list(args.overrides)))]
        except (FileNotFoundError, FileExistsError, KeyError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
    if not roots:
        log_dir = Path(os.environ.get("EMPATHY_LOG_DIR", "outputs"))
        sweep_dir = Path(
            args.sweep_dir or log_dir / "reproduce" / datetime.now().strftime("%Y-%m-%d_%H-%M-%S-%f")
        ).resolve()
        seeds = [int(s) for s in args.seeds]
        overrides = ["model=joint", *args.overrides] if args.joint else list(args.overrides)
        groups = group_experiments(args.experiments, overrides)
        jobs = args.jobs or default_jobs(overrides)
        if jobs > 1 and uses_launcher(overrides):
            parser.error(
                "--jobs runs the jobs on this machine; with a launcher or sweeper (cluster=..., hparams_search=...) "
                "use --jobs 1"
            )
        roots = []
        for joint, experiments in groups.items():
            folder = sweep_dir if len(groups) == 1 else sweep_dir / ("joint" if joint else "separate")
            mechanisms = [] if joint else args.mechanisms
            if jobs > 1:
                code = run_pool(
                    pool_jobs(experiments, mechanisms, seeds, folder, overrides), jobs, folder, args.dry_run
                )
            else:
                command = results.multirun_command(experiments, mechanisms, seeds, folder, overrides, sys.executable)
                print(shlex.join(command), flush=True)
                code = 0 if args.dry_run else subprocess.call(command)
            if args.dry_run:
                continue
            if code:
                print(f"the jobs exited with status {code}; aggregating the jobs that finished", file=sys.stderr)
            status = status or code
            roots.append(str(folder))
        if args.dry_run:
            return 0
    try:
        floors = None
        if not args.no_floors:
            from empathy.study.floors import floors_for_run

            floors = floors_for_run
        written = results.aggregate(roots, args.out, name=args.name, floors=floors)
    except (FileNotFoundError, ValueError, KeyError) as error:
        print(f"error: {error}", file=sys.stderr)
        return status or 2
    print(written["markdown"].read_text(encoding="utf-8"))
    print(f"wrote {written['markdown']} and {written['csv']}")
    return status


if __name__ == "__main__":
    sys.exit(main())
