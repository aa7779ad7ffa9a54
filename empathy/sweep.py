"""A Hydra callback that ends every multirun with a summary table (conf/hydra/default.yaml).

``sweep_summary.md`` in the sweep folder: one line per job with its own overrides (those shared
by every job are listed once above the table), its dev and test macro-F1 and its training
minutes, or "unfinished" for a job without metrics.json. It is rewritten after each job (so a
sweep that stops on a failed job still leaves one) and at the end of the multirun, when it is also
printed. Works with any launcher: it reads the job folders.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from empathy.io import write_text_atomic

log = logging.getLogger(__name__)

COLUMNS = ("dev/macro_f1", "test/macro_f1")


@dataclass
class SweepJob:
    path: Path
    overrides: list[str]
    metrics: dict[str, float] | None  # None: no metrics.json (failed, killed or still running)
    fit_minutes: float | None


def read_sweep_jobs(sweep_dir: Path) -> list[SweepJob]:
    """The job folders of a multirun (those with a ``.hydra`` folder), in job order."""
    folders = sorted(
        (p.parent for p in sweep_dir.rglob(".hydra") if p.is_dir()),
        key=lambda p: (int(p.name.split("_")[0]) if p.name.split("_")[0].isdigit() else 1 << 30, str(p)),
    )
    jobs = []
    for folder in folders:
        overrides_file = folder / ".hydra" / "overrides.yaml"
        overrides = (
            [str(o) for o in (yaml.safe_load(overrides_file.read_text()) or [])] if overrides_file.is_file() else []
        )
        payload = json.loads((folder / "metrics.json").read_text()) if (folder / "metrics.json").is_file() else None
        metrics = None if payload is None else {k: float(v) for k, v in payload.get("metrics", {}).items()}
        jobs.append(
            SweepJob(folder.resolve(), overrides, metrics, None if payload is None else payload.get("fit_minutes"))
        )
    return jobs


def summary_table(sweep_dir: str | Path, columns: tuple[str, ...] = COLUMNS) -> str:
    """A Markdown table of the jobs under ``sweep_dir`` (pure: reads the job folders)."""
    sweep_dir = Path(sweep_dir)
    jobs = read_sweep_jobs(sweep_dir) if sweep_dir.is_dir() else []
    finished = sum(job.metrics is not None for job in jobs)
    common = [o for o in jobs[0].overrides if all(o in job.overrides for job in jobs)] if len(jobs) > 1 else []
    lines = [
        f"# Sweep {sweep_dir.name}",
        "",
        f"{len(jobs)} jobs, {finished} finished; folder `{sweep_dir}`.",
        "Overrides shared by every job: " + (" ".join(f"`{o}`" for o in common) or "none") + ".",
        "",
        "| job | overrides | " + " | ".join(columns) + " | minutes |",
        "|---|---|" + "---|" * len(columns) + "---|",
    ]
    for job in jobs:
        overrides = " ".join(f"`{o}`" for o in job.overrides if o not in common) or "(none)"
        name = job.path.relative_to(sweep_dir.resolve()) if job.path.is_relative_to(sweep_dir.resolve()) else job.path
        if job.metrics is None:
            values = " | ".join("" for _ in columns)
            lines.append(f"| {name} | {overrides} | {values} | unfinished |")
            continue
        values = " | ".join(f"{job.metrics[c]:.4f}" if c in job.metrics else "" for c in columns)
        minutes = "" if job.fit_minutes is None else f"{job.fit_minutes:.1f}"
        lines.append(f"| {name} | {overrides} | {values} | {minutes} |")
    return "\n".join(lines) + "\n"


class SweepSummary(Callback):
    def __init__(self, filename: str = "sweep_summary.md", columns: list[str] | tuple[str, ...] = COLUMNS) -> None:
        self.filename = filename
        self.columns = tuple(columns)

    def write(self, sweep_dir: str | Path) -> str:
        text = summary_table(sweep_dir, self.columns)
        write_text_atomic(Path(sweep_dir) / self.filename, text)
        return text

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        hydra_cfg = config.get("hydra")
        if hydra_cfg is None or hydra_cfg.get("mode") != RunMode.MULTIRUN:
            return
        try:
            self.write(hydra_cfg.sweep.dir)
        except Exception as error:  # a summary must never fail a job
            log.warning("could not write the sweep summary: %s", error)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        text = self.write(config.hydra.sweep.dir)
        print(text, flush=True)
        log.info("sweep summary: %s", Path(config.hydra.sweep.dir) / self.filename)
