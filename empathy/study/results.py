"""Results tables from finished runs: read job folders, group seeds, mean and std, write Markdown/CSV.

A job folder is what ``empathy.train`` writes (one per run, or per job of a Hydra multirun):
``metrics.json`` (absent when the job failed or is still running), ``resolved_config.yaml`` and
``.hydra/`` (``hydra.yaml`` records which ``experiment`` was chosen, ``overrides.yaml`` the
command-line overrides).

Cells never mix configurations: jobs are grouped by (experiment, mechanism, resolved config
without the keys in ``IGNORED_KEYS``: the seed, output paths, logging). Two different configs
under one experiment name become two rows; the second gets a suffix that names the keys in which
they differ, e.g. ``default [model.optimizer.lr=0.001]``. Nothing is averaged across them.

A run logs its metrics per mechanism (``test/<M>/...``) and becomes one job per mechanism; a run
of several mechanisms at once (the joint model) gets the experiment ``joint``
(``<experiment>+joint`` when an experiment was chosen), so its rows sit beside the separate
models' in each mechanism's table.

Everything here is a pure function of the files it is given, except ``hardware()`` (this machine)
and ``write_text_atomic``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import statistics
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from empathy.hardware import describe_hardware, hardware
from empathy.io import write_text_atomic

METRICS = ("acc", "macro_f1", "rationale_token_f1", "rationale_iou_f1")
METRIC_TITLES = {"acc": "acc", "macro_f1": "macro-F1", "rationale_token_f1": "T-F1", "rationale_iou_f1": "IOU-F1"}
POLICIES = ("paper", "strict")
MECHANISM_ORDER = ("ER", "IP", "EX")
JOINT_EXPERIMENT = "joint"
# Keys (and key prefixes) of the resolved config that do not change a run's results (or differ
# from run to run by design): they are left out when deciding whether two jobs share a cell.
IGNORED_KEYS = (
    "seed",
    "group",
    "tags",
    "ckpt_path",
    "resume",
    "test",
    "optimized_metric",
    "task_name",
    "paths",
    "logger",
    "data.cache_dir",
    "trainer.default_root_dir",
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
    "trainer.log_every_n_steps",
    "callbacks.resumable",
    "callbacks.epoch_summary",
    "callbacks.thread_share",
    "callbacks.model_checkpoint.dirpath",
)

# What reproduce_table.py --jobs writes in its folder: jobs at once, cores, wall minutes.
POOL_FILE = "pool.json"

# The paper's figures and the official code's re-run on the public Reddit data (x100), from the
# project's reference (Sharma et al. 2020, and a re-run of its code). The floors are not copied:
# aggregate() computes them on the runs' own split. Each: (label, labelling, mechanism -> figures).
REFERENCE_ROWS: tuple[tuple[str, str, dict[str, dict[str, float]]], ...] = (
    (
        "paper, reported (its full data)",
        "paper",
        {
            "ER": {"acc": 79.43, "macro_f1": 74.46, "rationale_token_f1": 53.57, "rationale_iou_f1": 64.83},
            "IP": {"acc": 84.0, "macro_f1": 62.6, "rationale_token_f1": 57.40, "rationale_iou_f1": 55.90},
            "EX": {"acc": 92.6, "macro_f1": 72.58, "rationale_token_f1": 71.50, "rationale_iou_f1": 84.48},
        },
    ),
    (
        "official code re-run on the Reddit data (1 seed)",
        "paper",
        {
            "ER": {"acc": 77.86, "macro_f1": 68.42, "rationale_token_f1": 51.0, "rationale_iou_f1": 57.0},
            "IP": {"acc": 82.60, "macro_f1": 62.47, "rationale_token_f1": 60.5, "rationale_iou_f1": 59.0},
            "EX": {"acc": 92.30, "macro_f1": 67.74, "rationale_token_f1": 74.0, "rationale_iou_f1": 83.9},
        },
    ),
)


def display_path(path: str | os.PathLike) -> str:
    """``path`` relative to the working directory (the project root, for the committed tables)
    when it lies below it: results files never name a folder of one machine."""
    resolved = Path(path).resolve()
    try:
        return str(resolved.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


# ----------------------------------------------------------------------------------- job folders
@dataclass
class Job:
    path: Path
    experiment: str
    config: dict[str, Any] | None
    metrics: dict[str, float] | None
    fit_minutes: float | None = None
    hardware: dict[str, Any] | None = None
    overrides: list[str] = field(default_factory=list)
    joint: bool = False  # one mechanism's share of a joint run (see split_joint_job)

    @property
    def finished(self) -> bool:
        return self.metrics is not None and self.config is not None

    @property
    def mechanism(self) -> str:
        return str(((self.config or {}).get("mechanism") or {}).get("name", "?"))

    @property
    def seed(self) -> Any:
        return (self.config or {}).get("seed")


def is_job_folder(path: Path) -> bool:
    return (path / ".hydra").is_dir() or (path / "metrics.json").is_file() or (path / "resolved_config.yaml").is_file()


def find_job_folders(roots: Iterable[str | os.PathLike]) -> list[Path]:
    """Every job folder under ``roots`` (a root may itself be one), sorted, without duplicates.
    The inside of a job folder (checkpoints, logger files) is not searched."""
    found: set[Path] = set()
    for root in roots:
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"{root}: no such folder (expected a run folder or a multirun folder)")
        for folder, subfolders, _ in os.walk(root):
            here = Path(folder)
            if is_job_folder(here):
                found.add(here.resolve())
                subfolders[:] = []
            else:
                subfolders[:] = sorted(s for s in subfolders if not s.startswith("."))
    return sorted(found, key=_job_sort_key)


def _job_sort_key(path: Path) -> tuple:
    head = path.name.split("_", 1)[0]
    return (str(path.parent), int(head) if head.isdigit() else math.inf, path.name)


def _load_yaml(path: Path) -> Any:
    with path.open(encoding="utf-8") as f:
        return yaml.safe_load(f)


def experiment_name(folder: Path) -> str:
    """The ``experiment`` chosen for a job (Hydra's record of it), ``default`` when none was."""
    hydra_yaml = folder / ".hydra" / "hydra.yaml"
    if hydra_yaml.is_file():
        choices = ((_load_yaml(hydra_yaml) or {}).get("hydra") or {}).get("runtime", {}).get("choices", {})
        choice = choices.get("experiment")
        return str(choice) if choice not in (None, "null") else "default"
    for override in job_overrides(folder):
        key, _, value = override.lstrip("+~").partition("=")
        if key == "experiment" and value not in ("", "null"):
            return value
    return "default"


def job_overrides(folder: Path) -> list[str]:
    path = folder / ".hydra" / "overrides.yaml"
    return [str(o) for o in (_load_yaml(path) or [])] if path.is_file() else []


def read_job(folder: Path) -> Job:
    config_path, metrics_path = folder / "resolved_config.yaml", folder / "metrics.json"
    config = _load_yaml(config_path) if config_path.is_file() else None
    payload = json.loads(metrics_path.read_text(encoding="utf-8")) if metrics_path.is_file() else None
    return Job(
        path=folder,
        experiment=experiment_name(folder),
        config=config,
        metrics=None if payload is None else {k: float(v) for k, v in payload.get("metrics", {}).items()},
        fit_minutes=None if payload is None else payload.get("fit_minutes"),
        hardware=None if payload is None else payload.get("hardware"),
        overrides=job_overrides(folder),
    )


def run_mechanisms(job: Job) -> list[str]:
    """The mechanisms whose metrics a run logged per mechanism (``<split>/<M>/<metric>``); none for
    a single-mechanism run of an earlier version (``<split>/<metric>``)."""
    found = {key.split("/")[1] for key in job.metrics or {} if key.count("/") == 2}
    return [m for m in MECHANISM_ORDER if m in found] + sorted(found - set(MECHANISM_ORDER))


def split_joint_job(job: Job) -> list[Job]:
    """A run as one job per mechanism: its ``<split>/<M>/<metric>`` as ``<split>/<metric>``, its
    config with ``mechanism`` set to ``M``; a run of several mechanisms (the joint model) gets the
    experiment ``joint`` (``<experiment>+joint``). A run without per-mechanism metrics is returned
    as it is."""
    mechanisms = run_mechanisms(job) if job.finished else []
    if not mechanisms:
        return [job]
    joint = len(mechanisms) > 1
    files = ((job.config or {}).get("data") or {}).get("mechanism_files") or {}
    experiment = job.experiment
    if joint:
        experiment = JOINT_EXPERIMENT if job.experiment == "default" else f"{job.experiment}+{JOINT_EXPERIMENT}"
    jobs = []
    for m in mechanisms:
        metrics = {}
        for key, value in job.metrics.items():
            parts = key.split("/")
            if len(parts) == 3 and parts[1] == m:
                metrics[f"{parts[0]}/{parts[2]}"] = value
        config = {**(job.config or {}), "mechanism": {"name": m, "file": files.get(m)}}
        jobs.append(
            Job(job.path, experiment, config, metrics, job.fit_minutes, job.hardware, list(job.overrides), joint=joint)
        )
    return jobs


def read_jobs(roots: Iterable[str | os.PathLike]) -> tuple[list[Job], list[Job]]:
    """(finished jobs, unfinished jobs) under ``roots``, a joint run as one job per mechanism;
    warns naming the unfinished ones."""
    jobs = [read_job(folder) for folder in find_job_folders(roots)]
    finished = [part for j in jobs if j.finished for part in split_joint_job(j)]
    unfinished = [j for j in jobs if not j.finished]
    if unfinished:
        names = ", ".join(str(j.path) for j in unfinished)
        warnings.warn(
            f"skipping {len(unfinished)} job(s) without metrics.json or resolved_config.yaml "
            f"(failed, killed or still running): {names}",
            stacklevel=2,
        )
    return finished, unfinished


# ----------------------------------------------------------------------------------- grouping
def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = tuple(value) if isinstance(value, list) else value
    return out


def _ignored(key: str) -> bool:
    return any(key == k or key.startswith(f"{k}.") for k in IGNORED_KEYS)


def config_fingerprint(config: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    """The resolved config as sorted (key, value) pairs, without the ignored keys."""
    return tuple(sorted((k, repr(v)) for k, v in flatten(config).items() if not _ignored(k)))


@dataclass
class Cell:
    experiment: str
    mechanism: str
    jobs: list[Job]
    label: str = ""

    @property
    def seeds(self) -> list[Any]:
        return [j.seed for j in self.jobs]


def group_jobs(jobs: Sequence[Job]) -> list[Cell]:
    """One cell per (experiment, mechanism, config without seed and paths). Cells that share an
    experiment and mechanism but differ in config get labels naming the differing keys. A seed
    repeated within a cell (the same run aggregated twice) is kept once, with a warning."""
    groups: dict[tuple, list[Job]] = {}
    for job in jobs:
        key = (job.experiment, job.mechanism, config_fingerprint(job.config or {}))
        groups.setdefault(key, []).append(job)

    cells = []
    for (experiment, mechanism, _), members in groups.items():
        by_seed: dict[Any, Job] = {}
        for job in sorted(members, key=lambda j: str(j.path)):
            if job.seed in by_seed:
                warnings.warn(
                    f"{experiment} {mechanism}: seed {job.seed} appears twice with the same config "
                    f"({by_seed[job.seed].path} and {job.path}); keeping the first",
                    stacklevel=2,
                )
                continue
            by_seed[job.seed] = job
        cells.append(Cell(experiment, mechanism, sorted(by_seed.values(), key=lambda j: _seed_key(j.seed))))

    by_name: dict[tuple[str, str], list[Cell]] = {}
    for cell in cells:
        by_name.setdefault((cell.experiment, cell.mechanism), []).append(cell)
    for siblings in by_name.values():
        suffixes = distinguishing_suffixes([c.jobs[0].config or {} for c in siblings])
        for cell, suffix in zip(siblings, suffixes, strict=True):
            cell.label = cell.experiment + (f" [{suffix}]" if suffix else "")
    return sorted(cells, key=_cell_order)


def _seed_key(seed: Any) -> tuple:
    return (0, seed, "") if isinstance(seed, int | float) else (1, 0, str(seed))


def _cell_order(cell: Cell) -> tuple:
    mechanism = MECHANISM_ORDER.index(cell.mechanism) if cell.mechanism in MECHANISM_ORDER else len(MECHANISM_ORDER)
    return (mechanism, cell.mechanism, cell.experiment != "default", cell.experiment, cell.label)


def distinguishing_suffixes(configs: Sequence[Mapping[str, Any]], max_keys: int = 3) -> list[str]:
    """For configs that share a row name: 'key=value, ...' of the keys in which they differ."""
    if len(configs) < 2:
        return [""] * len(configs)
    flat = [{k: v for k, v in flatten(c).items() if not _ignored(k)} for c in configs]
    keys = sorted(set().union(*flat))
    differing = [k for k in keys if len({repr(f.get(k, "<unset>")) for f in flat}) > 1]
    suffixes = []
    for f in flat:
        parts = [f"{k}={_short(f.get(k, '<unset>'))}" for k in differing[:max_keys]]
        if len(differing) > max_keys:
            parts.append(f"+{len(differing) - max_keys} more")
        suffixes.append(", ".join(parts))
    return suffixes


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


# ----------------------------------------------------------------------------------- statistics
def metric_key(metric: str, policy: str) -> str:
    """The test metric a table column reads: acc and macro-F1 do not depend on the labelling."""
    if metric in ("acc", "macro_f1"):
        return f"test/{metric}"
    return f"test/{metric}_{policy}"


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (n - 1); std is None for a single value."""
    if not values:
        return math.nan, None
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else None)


def table_rows(cells: Sequence[Cell]) -> list[dict[str, Any]]:
    """One row per (cell, labelling policy): <metric>_mean, <metric>_std, n_seeds, minutes."""
    rows = []
    for cell in cells:
        minutes = [j.fit_minutes for j in cell.jobs if j.fit_minutes is not None]
        for policy in POLICIES:
            row: dict[str, Any] = {
                "experiment": cell.label,
                "mechanism": cell.mechanism,
                "policy": policy,
                "n_seeds": len(cell.jobs),
                "seeds": " ".join(str(s) for s in cell.seeds),
            }
            for metric in METRICS:
                key = metric_key(metric, policy)
                values = [j.metrics[key] for j in cell.jobs if key in j.metrics]
                if len(values) != len(cell.jobs):
                    missing = [str(j.path) for j in cell.jobs if key not in j.metrics]
                    raise KeyError(f"{key} missing from metrics.json of {', '.join(missing)}")
                row[f"{metric}_mean"], row[f"{metric}_std"] = mean_std(values)
            row["minutes_per_run"] = statistics.fmean(minutes) if minutes else None
            rows.append(row)
    return rows


# ----------------------------------------------------------------------------------- output
CSV_COLUMNS = (
    "experiment",
    "mechanism",
    "policy",
    "n_seeds",
    "seeds",
    *(f"{m}_{s}" for m in METRICS for s in ("mean", "std")),
    "minutes_per_run",
)


def to_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    """Metrics as fractions (0..1), as in metrics.json; empty where undefined (std of one seed)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row.get(k) for k in CSV_COLUMNS})
    return buffer.getvalue()


def _cell_text(mean: float | None, std: float | None) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return ""
    text = f"{100 * mean:.1f}"
    return text + (f" ± {100 * std:.1f}" if std is not None else "")


def _reference_text(value: float | None) -> str:
    return "" if value is None else f"{value:g}"


def to_markdown(
    rows: Sequence[Mapping[str, Any]],
    cells: Sequence[Cell],
    sources: Sequence[str | os.PathLike],
    skipped: Sequence[Job] = (),
    generated: datetime | None = None,
    floors: Mapping[str, Mapping[str, float]] | None = None,
    pools: Mapping[str, Mapping[str, Any]] | None = None,
) -> str:
    """The table (x100, mean ± std over seeds) with the paper's figures and the floors beside it;
    ``pools``: {source: its pool.json} for sources whose jobs ran at once (reproduce_table.py --jobs)."""
    generated = generated or datetime.now(timezone.utc)
    # a joint run is one job per mechanism in the cells, but one run of the machine
    jobs = list({str(j.path): j for c in cells for j in c.jobs}.values())
    total = sum(j.fit_minutes or 0.0 for j in jobs)
    recorded = {describe_hardware(j.hardware) for j in jobs if j.hardware}
    hardware_text = (
        "; ".join(sorted(recorded))
        if recorded
        else f"{describe_hardware(hardware())} (this machine: the runs did not record theirs)"
    )
    lines = [
        "# EPITOME results: our runs beside the paper and the floors",
        "",
        f"Generated {generated:%Y-%m-%d %H:%M} UTC by `scripts/reproduce_table.py` from "
        + ", ".join(f"`{display_path(s)}`" for s in sources)
        + ".",
        f"{len(jobs)} runs; {total:.1f} training minutes in all; hardware: {hardware_text}.",
        "Test split; numbers x100, mean ± sample standard deviation over the training seeds (n). "
        "acc and macro-F1 do not depend on the labelling; rationale T-F1 / IOU-F1 are under the "
        "paper's labelling (level-0 rows: every token) or the strict one (rows with gold level > 0). "
        "Rows in italics are copied from the paper and from a re-run of its official code (their own "
        "splits); the floors in bold are computed on the split of our runs.",
    ]
    for source, pool in (pools or {}).items():
        lines.append(
            f"`{display_path(source)}`: {pool['count']} jobs, {pool['jobs']} at a time sharing {pool['cores']} cores "
            f"(`reproduce_table.py --jobs`), {pool['wall_minutes']:.1f} minutes of wall time from the first "
            "start to the last end; min/run is each job's own training time while it shared the cores."
            + (
                " Test figures: those runs' kept best checkpoints evaluated again from "
                f"`{display_path(pool['rescored_from'])}` "
                "with the rationale decodings and level offsets of today's configuration (`reproduce_table.py "
                "--rescore`)."
                if pool.get("rescored_from")
                else ""
            )
        )
    if skipped:
        lines += ["", f"Skipped {len(skipped)} unfinished job(s): " + ", ".join(f"`{j.path}`" for j in skipped) + "."]
    header = "| row | labelling | n | " + " | ".join(METRIC_TITLES[m] for m in METRICS) + " | min/run |"
    rule = "|---|---|---|" + "---|" * len(METRICS) + "---|"
    mechanisms = [m for m in MECHANISM_ORDER if any(r["mechanism"] == m for r in rows)]
    mechanisms += sorted({r["mechanism"] for r in rows} - set(mechanisms))
    for mechanism in mechanisms:
        lines += ["", f"## {mechanism}", "", header, rule]
        for row in (r for r in rows if r["mechanism"] == mechanism):
            metrics = " | ".join(_cell_text(row[f"{m}_mean"], row[f"{m}_std"]) for m in METRICS)
            minutes = "" if row["minutes_per_run"] is None else f"{row['minutes_per_run']:.1f}"
            lines.append(f"| {row['experiment']} | {row['policy']} | {row['n_seeds']} | {metrics} | {minutes} |")
        if floors and mechanism in floors:
            f = floors[mechanism]
            lines.append(
                "| **floor on our split: majority level** | - | | "
                f"{_reference_text(round(100 * f['majority_acc'], 1))} | "
                f"{_reference_text(round(100 * f['majority_macro_f1'], 1))} | | | |"
            )
            for policy in POLICIES:
                t, i = f[f"every_token_rationale_token_f1_{policy}"], f[f"every_token_rationale_iou_f1_{policy}"]
                lines.append(
                    f"| **floor on our split: every response token is rationale** | {policy} | | | | "
                    f"{_reference_text(round(100 * t, 1))} | {_reference_text(round(100 * i, 1))} | |"
                )
        for label, policy, figures in REFERENCE_ROWS:
            if mechanism in figures:
                values = " | ".join(_reference_text(figures[mechanism].get(m)) for m in METRICS)
                lines.append(f"| *{label}* | {policy} | | {values} | |")
    return "\n".join(lines) + "\n"


def aggregate(
    roots: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    name: str = "paper_table",
    floors: Callable[[Path], Mapping[str, float]] | None = None,
) -> dict[str, Any]:
    """Read every job under ``roots``, write ``<out_dir>/<name>.md`` and ``.csv``; return what was
    written (rows, cells, skipped jobs, paths). ``floors(job_folder)``, when given, computes the
    floors on that job's split (``empathy.study.floors.floors_for_run``), shown per mechanism; for a
    mechanism that only a joint run trained, ``floors(job_folder, mechanism=M)``."""
    finished, skipped = read_jobs(roots)
    if not finished:
        raise ValueError(
            f"no finished job (a folder with metrics.json and resolved_config.yaml) under {', '.join(map(str, roots))}"
        )
    cells = group_jobs(finished)
    rows = table_rows(cells)
    out_dir = Path(out_dir)
    markdown, csv_path = out_dir / f"{name}.md", out_dir / f"{name}.csv"
    floor_values: dict[str, Mapping[str, float]] = {}
    if floors is not None:
        for cell in sorted(cells, key=lambda c: c.jobs[0].joint):  # a separate model's split first
            if cell.mechanism in floor_values:
                continue
            try:
                job = cell.jobs[0]
                floor_values[cell.mechanism] = (
                    floors(job.path, mechanism=cell.mechanism) if job.joint else floors(job.path)
                )
            except Exception as error:  # the data or the config may be gone: the table still stands
                warnings.warn(f"no floors for {cell.mechanism} ({cell.jobs[0].path}): {error}", stacklevel=2)
    pools = {str(r): json.loads((Path(r) / POOL_FILE).read_text()) for r in roots if (Path(r) / POOL_FILE).is_file()}
    write_text_atomic(
        markdown, to_markdown(rows, cells, [str(r) for r in roots], skipped, floors=floor_values, pools=pools)
    )
    write_text_atomic(csv_path, to_csv(rows))
    return {"rows": rows, "cells": cells, "skipped": skipped, "markdown": markdown, "csv": csv_path}


# ----------------------------------------------------------------------------------- the multirun
def multirun_command(
    experiments: Sequence[str],
    mechanisms: Sequence[str],
    seeds: Sequence[int],
    sweep_dir: str | os.PathLike,
    overrides: Sequence[str] = (),
    python: str = "python",
) -> list[str]:
    """The Hydra multirun that trains every (experiment, mechanism, seed) into ``sweep_dir``; no
    ``mechanisms`` (a joint model, ``model=joint`` in ``overrides``): every (experiment, seed)."""
    return [
        python,
        "-m",
        "empathy.train",
        "-m",
        f"experiment={','.join(experiments)}",
        *([f"mechanism={','.join(mechanisms)}"] if mechanisms else []),
        f"seed={','.join(str(s) for s in seeds)}",
        f"hydra.sweep.dir={sweep_dir}",
        *overrides,
    ]
