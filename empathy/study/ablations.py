"""Choose the default model honestly: k-fold cross-validation of every lever inside train + dev,
then test only the chosen configurations; write results/ablations.{md,csv}.

    # everything, on a GPU machine with 16 jobs at a time sharing it
    python scripts/ablations.py run --out outputs/ablations --trainer gpu --workers 16
    # the report of a finished (or partly finished) run folder; test runs trained elsewhere
    python scripts/ablations.py report --out outputs/ablations [--test-runs LEVER=DIR ...]

Stages of `run` (each job is `python -m empathy.train <overrides>`, with its own run folder):
1. `cv`: every lever of LEVERS, one change from its base (BASES: the separate per-mechanism
   default, or the joint model at lr 1e-4, as the study started), on each of `--folds` folds of
   train + dev (`data.cv_folds`, grouped by seeker post, stratified); `test=false`: test is never
   touched. The dev decoding grid is scored too.
2. `combine`: the joint base with every joint lever that beat it in stage 1, together.
3. `decoding`: when the chosen configuration's `cv` jobs scored a smaller decoding grid than
   today's (`empathy.decoding.DecodingGrid`), their best checkpoints are scored again on their dev
   folds (`empathy.evaluate split=dev grid=decoding`, into `<job>/rescore`), or, where the
   checkpoints are gone, the configuration is trained on the same folds again; each mechanism then gets
   the decoding with its best mean dev strict IOU-F1 over the folds (`chosen.json`: decodings).
   Chosen: the fastest to train (CV minutes for all three mechanisms) of the configurations whose
   cross-validated macro-F1 (mean over ER, IP, EX; default training seed) is within `--tolerance`
   points (0.5) of the best; then the fastest of its cheaper variants (CHEAPER: fewer epochs, frozen
   layers, no encoder dropout, shorter inputs) within the same tolerance of it on the machine, folds
   and training seeds they ran on (a variant's seed repeats, REPEATS, paired with the
   configuration's), fastest by the CPU training step in `<out>/step_seconds.json`
   (`scripts/bench_step.py --json`) where that file exists. A chosen variant decodes as its
   configuration. Before that, a refinement of the configuration (REFINEMENTS: a change that costs
   the same, tried later on another machine) replaces it when it beats it by more than the
   tolerance on the same machine, folds and seeds (`chosen.json`: variants, both kinds).
   `--extended-grid`: the chosen configuration's kept checkpoints are scored with the extended grid
   too (`grid=decoding_extended`: min_span, fallback, into `<job>/rescore_extended`), and its
   decodings are chosen from it (`chosen.json`: decoding_grid).
   `--level-offsets`: the same checkpoints scored with the level offset grid (`grid=level_offsets`,
   into `<job>/rescore_levels`); a mechanism keeps the pair with the best mean dev macro-F1 when it
   beats the argmax by more than the tolerance (`chosen.json`: level_offsets, level_offset_choice).
   `--ensemble`: the configuration's seed repeats trained on the same folds with kept checkpoints,
   each member and their ensemble scored on every fold (`<out>/ensemble/<configuration>/`;
   `chosen.json`: ensemble). Reported only: an ensemble trains and predicts several models.
   `chosen.json` is rewritten by every `run`: give these flags together.
4. `test`: the chosen configuration with those decodings, and the separate-model default with its
   own, each on the standard split with `--seeds` seeds: the only runs that see test.
Jobs that have a metrics.json are not run again (a stopped run continues). `--budget-s` stops
starting jobs after that many seconds; the report says what did not run.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import statistics
import subprocess
import sys
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import yaml
from omegaconf import OmegaConf

from empathy import CONFIG_DIR, MECHANISMS
from empathy.hardware import usable_cores

RESCORE = "rescore"  # a job's subfolder with its best checkpoint's dev grid scored again
RESCORE_EXTENDED = "rescore_extended"  # ... with the extended grid (min_span, fallback): `run --extended-grid`
RESCORE_LEVELS = "rescore_levels"  # ... with the level offset grid: `run --level-offsets`
RESCORE_GRIDS = {
    RESCORE: "grid=decoding",
    RESCORE_EXTENDED: "grid=decoding_extended",
    RESCORE_LEVELS: "grid=level_offsets",
}  # the evaluate option of each
ENSEMBLE = "ensemble"  # <out>/ensemble/<configuration>/joint-fold<k>: its seeds' ensemble scored on each fold
PAPER = {"ER": 74.46, "IP": 62.6, "EX": 72.58}

# The levers, their bases and their relations: conf/study/levers.yaml (read_levers).
LEVERS_FILE = Path(CONFIG_DIR) / "study" / "levers.yaml"


def read_levers(path: str | os.PathLike = LEVERS_FILE) -> dict:
    """The study's levers file: bases, added_keys, levers (name, base, overrides, about),
    repeats, cheaper, refinements and not_combined."""
    data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    names = [lever["name"] for lever in data["levers"]]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    unknown = sorted({lever["base"] for lever in data["levers"]} - set(data["bases"]))
    if duplicates or unknown:
        raise ValueError(f"{path}: duplicate lever names {duplicates} or unknown bases {unknown}")
    return data


_STUDY = read_levers()
BASES: dict[str, list[str]] = {k: list(v) for k, v in _STUDY["bases"].items()}
# Settings added after some runs: what a resolved config without the key ran with.
ADDED_KEYS: dict[str, object] = dict(_STUDY.get("added_keys") or {})
# name, base ("separate" or "joint"), overrides on top of the base, what it tests
LEVERS: list[tuple[str, str, list[str], str]] = [
    (lever["name"], lever["base"], list(lever["overrides"]), lever["about"]) for lever in _STUDY["levers"]
]
# Seed repeats: a configuration trained again on the same folds with another training seed. One
# seed's CV score moves by more than the tolerance: a cheaper variant is therefore compared with
# its configuration over the seeds both ran, seed by seed (`cheaper_variants`); the report's "Seed
# noise" section shows each one's spread. `choose` compares every candidate on the default seed
# (DEFAULT_SEED), the seed they all have.
DEFAULT_SEED = 12  # conf/train.yaml's seed: that of every CV run without a seed= override
REPEAT_SEEDS = tuple(_STUDY["repeats"]["seeds"])
REPEATED = tuple(_STUDY["repeats"]["of"])
REPEATS: dict[str, str] = {f"{name}_seed{seed}": name for name in REPEATED for seed in REPEAT_SEEDS}
LEVERS += [
    (
        f"{lever}_seed{seed}",
        base,
        [*overrides, f"seed={seed}"],
        f"{lever} again with training seed {seed} (default {DEFAULT_SEED}): the CV's seed noise",
    )
    for lever, base, overrides, _ in LEVERS
    if lever in REPEATED
    for seed in REPEAT_SEEDS
]
BY_NAME: dict[str, tuple[str, list[str]]] = {name: (base, overrides) for name, base, overrides, _ in LEVERS}
# Cheaper variants of a configuration: its training with less work (fewer epochs, frozen layers, no
# encoder dropout, shorter inputs). Each is compared with its configuration's runs on the machine,
# folds and training seeds it ran on, not with its cross-validation on another machine: see `paired`.
CHEAPER: dict[str, tuple[str, ...]] = {k: tuple(v) for k, v in (_STUDY.get("cheaper") or {}).items()}
# Refinements of a configuration: a change that costs the same to train, tried after its
# configuration was chosen. Compared like with like as a cheaper variant is (`paired`); one
# replaces its configuration only when it beats it by more than the tolerance, and then decodes as
# itself (its own CV decoding grid).
REFINEMENTS: dict[str, tuple[str, ...]] = {k: tuple(v) for k, v in (_STUDY.get("refinements") or {}).items()}
# Where `bench_step.py --json` wrote the training step's seconds of each configuration (see CHEAPER).
STEP_SECONDS = "step_seconds.json"
# cheaper variants and refinements (compared with their configuration, never stacked), seed repeats
# and levers that are already a combination
NOT_COMBINED = {
    *_STUDY.get("not_combined", ()),
    *REPEATS,
    *(v for variants in (*CHEAPER.values(), *REFINEMENTS.values()) for v in variants),
}


@dataclass
class Job:
    stage: str
    lever: str
    overrides: list[str]
    folder: Path
    mechanism: str  # ER / IP / EX, or joint
    fold: int | None = None
    seed: int | None = None

    @property
    def done(self) -> bool:
        return (self.folder / "metrics.json").is_file()


class Runner:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out = Path(args.out).resolve()
        self.started = time.monotonic()
        self.manifest = self.out / "jobs.jsonl"
        self.lock = threading.Lock()

    def left(self) -> float:
        return self.args.budget_s - (time.monotonic() - self.started)

    def common(self) -> list[str]:
        return [
            f"trainer={self.args.trainer}",
            "logger=csv",
            "++trainer.enable_progress_bar=false",
            "trainer.deterministic=warn" if self.args.trainer == "gpu" else "trainer.deterministic=true",
            f"paths.cache_dir={self.out / 'cache'}",
            *self.args.set,
        ]

    def run_one(self, job: Job) -> None:
        if job.done:
            return
        if self.left() <= 0:
            self.record(job, "skipped (budget)", 0.0)
            return
        cmd = [sys.executable, "-m", "empathy.train", *self.common(), *job.overrides, f"hydra.run.dir={job.folder}"]
        rc, seconds = self.call(cmd, job.folder)
        self.record(job, "ok" if rc == 0 and job.done else f"failed rc={rc}", seconds)

    def call(self, cmd: list[str], folder: Path) -> tuple[int, float]:
        """Run ``cmd`` from the repository root with its output in ``folder/job.log``: (rc, seconds).
        The job's CPU threads are this machine's cores shared among ``--workers`` (torch would
        otherwise give every one of them all the cores)."""
        folder.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        threads = max(1, usable_cores() // self.args.workers)
        with open(folder / "job.log", "w") as log:
            rc = subprocess.call(
                cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": str(threads)}
            )
        return rc, time.monotonic() - t0

    def evaluate_dev(self, ckpt_path: str, folder: Path, grids: list[str], label: str) -> None:
        """``python -m empathy.evaluate split=dev`` of ``ckpt_path`` (a checkpoint, or ``[a,b,...]``: an
        ensemble) with ``grids`` (e.g. ``grid=decoding_extended``) into ``folder``; one log line."""
        cmd = [
            sys.executable,
            "-m",
            "empathy.evaluate",
            f"ckpt_path={ckpt_path}",
            "split=dev",
            *grids,
            f"trainer={self.args.trainer}",
            "++trainer.enable_progress_bar=false",
            f"paths.cache_dir={self.out / 'cache'}",
            f"hydra.run.dir={folder}",
        ]
        rc, seconds = self.call(cmd, folder)
        ok = rc == 0 and (folder / "eval_dev.json").is_file()
        print(
            f"[{time.monotonic() - self.started:6.0f}s] {label} {'ok' if ok else f'failed rc={rc}'} "
            f"{seconds:6.1f}s {folder.relative_to(self.out)}",
            flush=True,
        )

    def record(self, job: Job, status: str, seconds: float) -> None:
        line = {
            "stage": job.stage,
            "lever": job.lever,
            "mechanism": job.mechanism,
            "fold": job.fold,
            "seed": job.seed,
            "folder": str(job.folder.relative_to(self.out)),
            "status": status,
            "seconds": round(seconds, 1),
            "overrides": job.overrides,
        }
        with self.lock:
            with self.manifest.open("a") as f:
                f.write(json.dumps(line) + "\n")
            print(
                f"[{time.monotonic() - self.started:6.0f}s] {status:18s} {seconds:6.1f}s "
                f"{job.folder.relative_to(self.out)}",
                flush=True,
            )

    def run_all(self, jobs: list[Job]) -> None:
        with ThreadPoolExecutor(self.args.workers) as pool:
            list(pool.map(self.run_one, jobs))


def merge_overrides(*groups: list[str]) -> list[str]:
    """``key=value`` overrides in order, a later value of a key replacing an earlier one (Hydra
    refuses a key given twice)."""
    merged: dict[str, str] = {}
    for override in (o for group in groups for o in group):
        key = override.partition("=")[0]
        merged.pop(key, None)
        merged[key] = override
    return list(merged.values())


def model_overrides(base: str, mechanism: str) -> list[str]:
    return ["model=joint"] if base == "joint" else ["model=biencoder", f"mechanism={mechanism}"]


def cv_jobs(out: Path, stage: str, lever: str, base: str, overrides: list[str], folds: int) -> list[Job]:
    jobs = []
    for mechanism in ("joint",) if base == "joint" else MECHANISMS:
        for k in range(folds):
            jobs.append(
                Job(
                    stage,
                    lever,
                    merge_overrides(
                        model_overrides(base, mechanism),
                        BASES[base],
                        overrides,
                        ["grid=decoding", "test=false", f"data.cv_folds={folds}", f"data.cv_fold={k}"],
                    ),
                    out / stage / lever / f"{mechanism}-fold{k}",
                    mechanism,
                    fold=k,
                )
            )
    return jobs


def test_jobs(out: Path, lever: str, base: str, overrides: list[str], seeds: int) -> list[Job]:
    return [
        Job(
            "test",
            lever,
            merge_overrides(model_overrides(base, m), BASES[base], overrides, [f"seed={s}"]),
            out / "test" / lever / f"{m}-seed{s}",
            m,
            seed=s,
        )
        for m in (("joint",) if base == "joint" else MECHANISMS)
        for s in range(1, seeds + 1)
    ]


# ------------------------------------------------------------------------------------- reading results
def machine(hardware: dict | None) -> str:
    """A run's machine in words, from its metrics.json ``hardware``: the GPU, else the CPU and its cores."""
    if not hardware:
        return "unknown"
    return hardware.get("gpu") or f"{hardware.get('cpu')} ({hardware.get('cores')} cores)"


def load_runs(out: Path) -> list[dict]:
    runs = []
    seconds = {}
    if (out / "jobs.jsonl").is_file():
        for line in (out / "jobs.jsonl").read_text().splitlines():
            rec = json.loads(line)
            if rec["status"] == "ok":
                seconds[rec["folder"]] = rec["seconds"]
    for path in sorted(out.glob("*/*/*/metrics.json")):
        stage, lever, job = path.relative_to(out).parts[:3]
        data = json.loads(path.read_text())
        metrics = dict(data["metrics"])
        rescored = path.parent / RESCORE / "eval_dev.json"
        if rescored.is_file():  # the best checkpoint's dev grid, scored again with today's grid
            metrics.update({k: v for k, v in json.loads(rescored.read_text())["metrics"].items() if "@" in k})
        runs.append(
            {
                "stage": stage,
                "lever": lever,
                "job": job,
                "metrics": metrics,
                "seconds": seconds.get(f"{stage}/{lever}/{job}") or 60 * (data.get("fit_minutes") or 0) or None,
                "fit_minutes": data.get("fit_minutes"),
                "folder": path.parent,
                "machine": machine(data.get("hardware")),
                "best_checkpoint": data.get("best_checkpoint"),
            }
        )
    return runs


def rescore_jobs(runner: Runner, runs: list[dict], sub: str = RESCORE) -> None:
    """Score today's decoding grid on the dev fold of each run's best checkpoint (``empathy.evaluate
    split=dev grid=decoding``, into ``<job>/rescore``): no training again. Runs already
    scored with every decoding of the grid, and runs whose checkpoint is gone, are left as they are.
    ``sub`` = RESCORE_EXTENDED: the extended grid (``grid=decoding_extended``: min_span and the
    fallback) into ``<job>/rescore_extended``, for the runs not yet scored with it; :func:`load_runs`
    leaves it out, :func:`extended_runs` reads it (and :func:`lever_decodings` when ``run
    --extended-grid`` chose from it). RESCORE_LEVELS: the level offset grid
    (``grid=level_offsets``) into ``<job>/rescore_levels``, read by :func:`level_offset_runs`."""
    tags = grid_tags()
    jobs = [
        r
        for r in runs
        if r.get("best_checkpoint")
        and Path(r["best_checkpoint"]).is_file()
        and (run_lacks_grid(r, tags) if sub == RESCORE else not (r["folder"] / sub / "eval_dev.json").is_file())
    ]

    def one(r: dict) -> None:
        runner.evaluate_dev(r["best_checkpoint"], r["folder"] / sub, [RESCORE_GRIDS[sub]], "rescore")

    with ThreadPoolExecutor(runner.args.workers) as pool:
        list(pool.map(one, jobs))


def rescored_runs(runs: list[dict], sub: str) -> list[dict]:
    """The runs rescored into ``<job>/<sub>``, with that evaluation's grid scores as metrics."""
    out = []
    for r in runs:
        path = r["folder"] / sub / "eval_dev.json" if r.get("folder") else None
        if path is not None and path.is_file():
            metrics = {k: v for k, v in json.loads(path.read_text())["metrics"].items() if "@" in k}
            out.append({**r, "metrics": metrics})
    return out


def extended_runs(runs: list[dict]) -> list[dict]:
    """The runs scored with the extended grid (``<job>/rescore_extended``)."""
    return rescored_runs(runs, RESCORE_EXTENDED)


def level_offset_runs(runs: list[dict]) -> list[dict]:
    """The runs scored with the level offset grid (``<job>/rescore_levels``)."""
    return rescored_runs(runs, RESCORE_LEVELS)


def best_offset_tag(scores: dict[str, float]) -> str:
    """The offset tag with the best score; ties: the smallest offsets (then the tag)."""
    from empathy.study.grids import offsets_from_tag

    return min(scores, key=lambda tag: (-scores[tag], sum(map(abs, offsets_from_tag(tag))), tag))


def level_offset_choice(runs: list[dict], tolerance: float) -> dict[str, dict]:
    """Per mechanism, from the runs scored with the level offset grid (one per fold): the pair
    with the best mean dev macro-F1 over the folds (ties: the smallest offsets), its gain over no
    offsets, and ``offsets``: that pair when the gain is more than ``tolerance`` points, else None
    (the argmax stays). ``held_out``: the gain on each fold of the pair chosen on the other folds
    (what choosing costs in optimism), and its mean."""
    from empathy.study.grids import offset_tag, offsets_from_tag

    zero = offset_tag((0, 0))
    out = {}
    for m in MECHANISMS:
        scores: dict[str, list[float]] = defaultdict(list)
        for r in runs:
            for key, value in r["metrics"].items():
                if key.startswith(f"dev/{m}/macro_f1@"):
                    scores[key.partition("@")[2]].append(100 * value)
        folds = max((len(v) for v in scores.values()), default=0)
        scores = {t: v for t, v in scores.items() if len(v) == folds}
        if not folds or zero not in scores:
            continue
        tag = best_offset_tag({t: statistics.mean(v) for t, v in scores.items()})
        gain = statistics.mean(scores[tag]) - statistics.mean(scores[zero])
        held_out = []
        if folds > 1:
            for k in range(folds):
                chosen = best_offset_tag(
                    {t: statistics.mean(x for i, x in enumerate(v) if i != k) for t, v in scores.items()}
                )
                held_out.append(scores[chosen][k] - scores[zero][k])
        out[m] = {
            "tag": tag,
            "folds": folds,
            "macro_f1": statistics.mean(scores[tag]),
            "macro_f1_without": statistics.mean(scores[zero]),
            "gain": gain,
            "held_out": held_out,
            "held_out_gain": statistics.mean(held_out) if held_out else None,
            "offsets": list(offsets_from_tag(tag)) if gain > tolerance else None,
        }
    return out


def ensemble_members(configuration: str) -> list[str]:
    """The levers whose runs make the configuration's seed ensemble: it and its seed repeats."""
    return [name for _, name in sorted(seed_levers(configuration).items())]


def ensemble_jobs(runner: Runner, configuration: str, folds: int) -> None:
    """The seed ensemble of ``configuration`` on each fold: its members' `decoding` stage runs
    (trained where missing, checkpoints kept), each member's best checkpoint scored with the
    extended decoding grid and the level offset grid, then the ensemble of the members' best
    checkpoints scored likewise (``empathy.evaluate 'ckpt_path=[...]' split=dev``) into
    ``<out>/ensemble/<configuration>/joint-fold<k>``."""
    out = runner.out
    members = ensemble_members(configuration)
    for name in members:
        base_kind, overrides = lever_overrides(out, name)
        runner.run_all(cv_jobs(out, "decoding", name, base_kind, overrides, folds))
    runs = [r for r in load_runs(out) if r["stage"] == "decoding" and r["lever"] in members]
    rescore_jobs(runner, runs, RESCORE_EXTENDED)
    rescore_jobs(runner, runs, RESCORE_LEVELS)
    by_fold = defaultdict(dict)
    for r in runs:
        by_fold[r["job"]][r["lever"]] = r.get("best_checkpoint")

    def one(job: str) -> None:
        checkpoints = [by_fold[job].get(name) for name in members]
        folder = out / ENSEMBLE / configuration / job
        if (folder / "eval_dev.json").is_file() or not all(c and Path(c).is_file() for c in checkpoints):
            return
        runner.evaluate_dev(
            f"[{','.join(checkpoints)}]", folder, ["grid=[decoding_extended,level_offsets]"], "ensemble"
        )

    with ThreadPoolExecutor(runner.args.workers) as pool:
        list(pool.map(one, sorted(by_fold)))


def ensemble_summary(
    out: Path, runs: list[dict], configuration: str, decodings: dict[str, str], offsets: dict[str, list[float] | None]
) -> dict | None:
    """The configuration's seed ensemble against its members, on the folds where both were scored:
    CV macro-F1 with the configuration's level offsets (``offsets``) and at the argmax, and CV
    strict IOU-F1 with its decodings (``decodings``: mechanism -> tag), each the mean over the
    folds; the members' figures are the mean over members of theirs. None before it ran."""
    from empathy.study.grids import offset_tag

    members = ensemble_members(configuration)
    folder = out / ENSEMBLE / configuration
    scored = {p.parent.name: json.loads(p.read_text())["metrics"] for p in sorted(folder.glob("*/eval_dev.json"))}
    own = [r for r in runs if r["stage"] == "decoding" and r["lever"] in members]
    member_metrics: dict[str, dict[str, dict]] = defaultdict(lambda: defaultdict(dict))
    for r in [*extended_runs(own), *level_offset_runs(own)]:
        member_metrics[r["job"]][r["lever"]] |= r["metrics"]
    folds = [job for job in scored if set(member_metrics.get(job, {})) >= set(members)]
    if not folds:
        return None

    def figures(metrics: dict) -> dict[str, dict[str, float]]:
        out_ = {"macro_f1": {}, "macro_f1_argmax": {}, "iou_f1": {}}
        for m in MECHANISMS:
            own = offset_tag(offsets.get(m) or (0, 0))
            out_["macro_f1"][m] = 100 * metrics[f"dev/{m}/macro_f1@{own}"]
            out_["macro_f1_argmax"][m] = 100 * metrics[f"dev/{m}/macro_f1@{offset_tag((0, 0))}"]
            if m in decodings:
                out_["iou_f1"][m] = 100 * metrics[f"dev/{m}/rationale_iou_f1@{decodings[m]}"]
        return out_

    def mean_of(items: list[dict]) -> dict[str, dict[str, float]]:
        return {key: {m: statistics.mean(x[key][m] for x in items) for m in items[0][key]} for key in items[0]}

    ensemble = mean_of([figures(scored[job]) for job in folds])
    each = {name: mean_of([figures(member_metrics[job][name]) for job in folds]) for name in members}
    return {
        "configuration": configuration,
        "members": members,
        "folds": len(folds),
        "ensemble": ensemble,
        "member_mean": mean_of(list(each.values())),
        "each_member": each,
    }


def level_offset_overrides(offsets: dict[str, list[float] | None]) -> list[str]:
    """``{mechanism: [level 1, level 2] or None}`` -> ``model.level_offsets.<M>=[a,b]`` overrides."""
    return [f"model.level_offsets.{m}=[{a:g},{b:g}]" for m in MECHANISMS if (o := offsets.get(m)) for a, b in [o]]


def configuration_of(lever: str) -> str:
    """The configuration a cheaper variant (:data:`CHEAPER`) trains with less work; any other
    lever is its own."""
    return next((c for c, variants in CHEAPER.items() if lever in variants), lever)


def lever_decodings(runs: list[dict], lever: str, extended: bool = False) -> dict[str, tuple[str, float]]:
    """A lever's decoding per mechanism (tag, CV strict IOU-F1): the best of the default grid over
    its :func:`decoding_runs`, or with ``extended``, the best of the extended grid when every one
    of those runs was scored with it. A cheaper variant decodes as its configuration: it is chosen
    on macro-F1 alone, and the configuration's decodings were chosen on kept checkpoints."""
    own = decoding_runs(runs, configuration_of(lever))
    scored = extended_runs(own)
    if extended and scored and len(scored) == len(own):
        return best_decodings(scored)
    return best_decodings(own)


def variant_overrides(variant: str, of: str) -> list[str]:
    """What a cheaper variant sets beyond its configuration (its key in ``step_seconds.json``)."""
    return [o for o in BY_NAME[variant][1] if o not in BY_NAME[of][1]]


def lever_seed(lever: str) -> int:
    """The training seed of a lever's CV runs: its ``seed=`` override, else the default's."""
    overrides = BY_NAME[lever][1] if lever in BY_NAME else []
    return next((int(o.partition("=")[2]) for o in overrides if o.startswith("seed=")), DEFAULT_SEED)


def seed_levers(lever: str) -> dict[int, str]:
    """Training seed -> the lever that ran it: ``lever`` and its seed repeats (:data:`REPEATS`)."""
    return {lever_seed(name): name for name in (lever, *[r for r, of in REPEATS.items() if of == lever])}


def paired(variant: str, best: str, runs: list[dict]) -> dict | None:
    """``variant``'s CV against ``best``'s runs on the one machine it ran on, the same folds and
    training seeds (``best``'s `decoding` stage, else its `cv`): like with like. Both are averaged
    over the seeds that both ran there (the variant and its seed repeats, :data:`REPEATS`, each
    paired with ``best``'s run of the same seed). None without such runs."""
    own = [r for r in runs if r["lever"] == variant and r["stage"] == "cv"]
    machines = {r.get("machine") for r in own}
    if len(machines) != 1:
        return None
    (where,) = machines
    jobs = sorted({r["job"] for r in own})
    references = seed_levers(best)
    seeds, mine, theirs = [], [], []
    for seed, name in sorted(seed_levers(variant).items()):
        ran = {r["job"]: r for r in runs if r["lever"] == name and r["stage"] == "cv" and r.get("machine") == where}
        reference = {}
        for stage in ("cv", "decoding"):  # the decoding stage's run of a fold replaces the cv stage's
            reference |= {
                r["job"]: r
                for r in runs
                if r["lever"] == references.get(seed) and r["stage"] == stage and r.get("machine") == where
            }
        if not (set(jobs) <= set(ran) and set(jobs) <= set(reference)):
            continue
        a = summarise_cv([{**ran[j], "stage": "cv"} for j in jobs])[name]
        b = summarise_cv([{**reference[j], "stage": "cv"} for j in jobs])[references[seed]]
        if a["mean_macro_f1"] is not None and b["mean_macro_f1"] is not None:
            seeds.append(seed)
            mine.append(a)
            theirs.append(b)
    if not seeds:
        return None
    minutes = [s["minutes_per_job"] for s in mine if s["minutes_per_job"]]
    return {
        "variant": variant,
        "of": best,
        "machine": where,
        "folds": len(jobs),
        "seeds": seeds,
        "macro_f1": {m: statistics.mean(s["macro_f1"][m] for s in mine) for m in MECHANISMS},
        "mean_macro_f1": statistics.mean(s["mean_macro_f1"] for s in mine),
        "reference_macro_f1": {m: statistics.mean(s["macro_f1"][m] for s in theirs) for m in MECHANISMS},
        "reference_mean_macro_f1": statistics.mean(s["mean_macro_f1"] for s in theirs),
        "minutes_per_job": statistics.mean(minutes) if minutes else None,
    }


def cheaper_variants(best: str, runs: list[dict], tolerance: float) -> list[dict]:
    """Each cheaper variant of ``best`` (:data:`CHEAPER`) :func:`paired` with it; ``within``
    ``tolerance`` points of it is the rule of :func:`choose`. A variant without such runs is left
    out."""
    out = []
    for variant in CHEAPER.get(best, ()):
        if (v := paired(variant, best, runs)) is not None:
            out.append(
                {**v, "kind": "cheaper", "within": v["mean_macro_f1"] >= v["reference_mean_macro_f1"] - tolerance}
            )
    return out


def refinements(best: str, runs: list[dict], tolerance: float) -> list[dict]:
    """Each refinement of ``best`` (:data:`REFINEMENTS`) :func:`paired` with it; ``better``: more
    than ``tolerance`` points above it (closer is a tie, and a tie keeps the configuration)."""
    out = []
    for variant in REFINEMENTS.get(best, ()):
        if (v := paired(variant, best, runs)) is not None:
            out.append(
                {**v, "kind": "refinement", "better": v["mean_macro_f1"] > v["reference_mean_macro_f1"] + tolerance}
            )
    return out


def read_step_seconds(out: Path) -> dict[str, float] | None:
    """``<out>/step_seconds.json`` (``bench_step.py --json``): configuration -> seconds per step."""
    path = out / STEP_SECONDS
    return json.loads(path.read_text())["seconds_per_step"] if path.is_file() else None


def choose_cheaper(
    best: str, runs: list[dict], tolerance: float, step_seconds: dict[str, float] | None = None
) -> tuple[str, list[dict]]:
    """``best``, or the fastest of its cheaper variants within tolerance on their machine
    (:func:`cheaper_variants`, all of them returned too, each with its ``step_seconds``). With
    ``step_seconds`` (``bench_step.py --json`` of the configuration, "", and of its variants' extra
    overrides) the fastest is the one with the shortest measured training step, and it must be
    faster than the configuration's (a variant not measured is not chosen); without, the one with
    the fewest CV minutes a job."""
    variants = cheaper_variants(best, runs, tolerance)
    for v in variants:
        v["step_seconds"] = (step_seconds or {}).get(" ".join(variant_overrides(v["variant"], best)))
    within = [v for v in variants if v["within"]]
    if step_seconds is not None:
        own = step_seconds.get("")
        within = [v for v in within if v["step_seconds"] is not None and own is not None and v["step_seconds"] < own]
        key = lambda v: (v["step_seconds"], -v["mean_macro_f1"])  # noqa: E731
    else:
        key = lambda v: (v["minutes_per_job"] or math.inf, -v["mean_macro_f1"])  # noqa: E731
    if not within:
        return best, variants
    return min(within, key=key)["variant"], variants


def choose_configuration(
    complete: dict[str, dict], runs: list[dict], tolerance: float, step_seconds: dict[str, float] | None = None
) -> tuple[str, list[dict]]:
    """The configuration to test: :func:`choose` among the configurations' CV with the default
    training seed (seed repeats, refinements and cheaper variants are no candidates: every
    candidate then has the same seed and machine rules), then the best of its
    :func:`refinements` that beats it, then :func:`choose_cheaper` among the cheaper variants of
    what that left. Returns it and the refinements and cheaper variants compared."""
    refining = {v for variants in REFINEMENTS.values() for v in variants}
    configurations = {
        k: v for k, v in complete.items() if k not in REPEATS and k not in refining and configuration_of(k) == k
    }
    best = choose(configurations, tolerance)
    compared = refinements(best, runs, tolerance)
    better = [v for v in compared if v["better"]]
    if better:
        best = max(better, key=lambda v: v["mean_macro_f1"])["variant"]
    chosen, variants = choose_cheaper(best, runs, tolerance, step_seconds)
    return chosen, compared + variants


def seed_averaged(complete: dict[str, dict]) -> dict[str, dict]:
    """Complete CV summaries with a repeated configuration's figures the mean over its seeds (its
    own run and each complete repeat of :data:`REPEATS`; ``seeds`` says how many, ``seed_scores``
    lists them), the repeats themselves left out."""
    out = {}
    for name, s in complete.items():
        if name in REPEATS:
            continue
        seeds = [s] + [complete[r] for r, of in REPEATS.items() if of == name and r in complete]
        if len(seeds) > 1:
            s = {
                **s,
                "macro_f1": {m: statistics.mean(x["macro_f1"][m] for x in seeds) for m in MECHANISMS},
                "mean_macro_f1": statistics.mean(x["mean_macro_f1"] for x in seeds),
            }
        out[name] = {**s, "seeds": len(seeds), "seed_scores": [x["mean_macro_f1"] for x in seeds]}
    return out


def config_mismatches(cfg, base: str, overrides: list[str]) -> list[str]:
    """What in a run's resolved config differs from a lever's base and ``key=value`` overrides
    (values parsed by Hydra's own override grammar; config group choices other than model= are not
    checked: the resolved config has no names). A mechanism's rationale decoding is compared as the
    decoding it makes (a run from before min_span and the fallback, without them, is one without)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from empathy import runner
    from empathy.decoding import RationaleDecoding

    joint = len(runner.config_mechanisms(cfg)) > 1
    wrong = [] if joint == (base == "joint") else [f"model: expected the {base} model"]
    for override, parsed in zip(overrides, OverridesParser.create().parse_overrides(overrides), strict=True):
        key, _, value = override.partition("=")
        if "." not in key:
            continue
        got = OmegaConf.select(cfg, key, default=ADDED_KEYS.get(key))
        prefix, _, mechanism = key.rpartition(".")
        if prefix == "model.rationale_decoding" and mechanism in MECHANISMS and isinstance(parsed.value(), dict):
            same = RationaleDecoding.from_config(cfg.model.rationale_decoding, mechanism) == RationaleDecoding(
                **parsed.value()
            )
        else:
            same = got == parsed.value()
        if not same:
            wrong.append(f"{key}={got} (expected {value})")
    return wrong


def external_test_runs(
    spec: str, runs: list[dict], extended: bool = False, offsets: dict[str, list[float] | None] | None = None
) -> list[dict]:
    """``LEVER=DIR``: the test runs of a lever that another command trained (e.g. the 5 seeds of
    ``scripts/reproduce_table.py`` once the lever is the default), one ``empathy.train`` job per
    subfolder of DIR. Each job's resolved config must hold the lever's overrides and its
    cross-validated decoding per mechanism (:func:`lever_decodings`, from the extended grid with
    ``extended``) and the level ``offsets`` chosen for it (``chosen.json``), or the report stops."""
    lever, _, folder = spec.partition("=")
    entry = BY_NAME.get(lever)
    if entry is None or not folder:
        raise SystemExit(f"--test-runs {spec}: expected LEVER=DIR with a lever of LEVERS")
    base, overrides = entry
    decodings = {m: tag for m, (tag, _) in lever_decodings(runs, lever, extended).items()}
    overrides = merge_overrides(
        BASES[base], overrides, mechanism_decoding_overrides(decodings), level_offset_overrides(offsets or {})
    )
    if set(decodings) == set(MECHANISMS):  # the shared setting then decodes nothing: not checked
        shared = {f"model.rationale_decoding.{k}" for k in ("threshold", "fill_gaps", "min_span", "fallback")}
        overrides = [o for o in overrides if o.partition("=")[0] not in shared]
    paths = sorted(Path(folder).glob("*/metrics.json"))
    if not paths:
        raise SystemExit(f"--test-runs {spec}: no */metrics.json under {folder}")
    runs = []
    for path in paths:
        wrong = config_mismatches(OmegaConf.load(path.parent / "resolved_config.yaml"), base, overrides)
        if wrong:
            raise SystemExit(f"--test-runs {spec}: {path.parent} is not {lever}: " + "; ".join(wrong))
        data = json.loads(path.read_text())
        job = f"{'joint' if base == 'joint' else data['mechanism']}-seed{data['seed']}"
        minutes = data.get("fit_minutes")
        runs.append(
            {
                "stage": "test",
                "lever": lever,
                "job": job,
                "metrics": data["metrics"],
                "seconds": 60 * minutes if minutes else None,
                "fit_minutes": minutes,
                "source": str(path.parent),
            }
        )
    return runs


def per_mechanism(run: dict, split: str, key: str) -> dict[str, float]:
    """{mechanism: value} of one run (a joint run gives all three; a single-mechanism run of an
    earlier version logged ``<split>/<key>``)."""
    m = run["metrics"]
    job_mech = run["job"].split("-")[0]
    if job_mech == "joint":
        return {x: m[f"{split}/{x}/{key}"] for x in MECHANISMS if f"{split}/{x}/{key}" in m}
    for name in (f"{split}/{job_mech}/{key}", f"{split}/{key}"):
        if name in m:
            return {job_mech: m[name]}
    return {}


def summarise_cv(runs: list[dict]) -> dict[str, dict]:
    """lever -> mean dev macro-F1 / strict IOU-F1 per mechanism over folds, best grid decoding."""
    out: dict[str, dict] = {}
    by_lever = defaultdict(list)
    for r in runs:
        if r["stage"] in ("cv", "combine"):
            by_lever[r["lever"]].append(r)
    for lever, rs in by_lever.items():
        f1, iou, grid = defaultdict(list), defaultdict(list), defaultdict(list)
        for r in rs:
            for m, v in per_mechanism(r, "dev", "macro_f1").items():
                f1[m].append(v)
            for m, v in per_mechanism(r, "dev", "rationale_iou_f1").items():
                iou[m].append(v)
        for m, tags in grid_scores(rs).items():
            for tag, values in tags.items():
                grid[tag] += [(m, v) for v in values]
        complete = all(len(f1[m]) == max(len(v) for v in f1.values()) for m in MECHANISMS) if f1 else False
        grid_means = {tag: statistics.mean(v for _, v in vals) for tag, vals in grid.items() if vals}
        best_tag = max(grid_means, key=grid_means.get) if grid_means else None
        seconds = [r["seconds"] for r in rs if r["seconds"]]
        out[lever] = {
            "stage": rs[0]["stage"],
            "folds": min((len(v) for v in f1.values()), default=0),
            "complete": complete and set(f1) == set(MECHANISMS),
            "macro_f1": {m: 100 * statistics.mean(v) for m, v in f1.items()},
            "iou_f1": {m: 100 * statistics.mean(v) for m, v in iou.items()},
            "best_decoding": best_tag,
            "best_decoding_iou": 100 * grid_means[best_tag] if best_tag else None,
            "decoding_iou": {tag: 100 * v for tag, v in grid_means.items()},
            "minutes_per_job": statistics.mean(seconds) / 60 if seconds else None,
        }
        s = out[lever]
        s["mean_macro_f1"] = statistics.mean(s["macro_f1"].values()) if s["complete"] else None
    return out


def summarise_test(runs: list[dict]) -> dict[str, dict]:
    by_lever = defaultdict(list)
    for r in runs:
        if r["stage"] == "test":
            by_lever[r["lever"]].append(r)
    out = {}
    for lever, rs in by_lever.items():
        vals = defaultdict(lambda: defaultdict(list))
        for r in rs:
            for key in ("macro_f1", "acc", "rationale_iou_f1", "rationale_iou_f1_paper"):
                for m, v in per_mechanism(r, "test", key).items():
                    vals[key][m].append(100 * v)
        seconds = [r["seconds"] for r in rs if r["seconds"]]
        out[lever] = {
            key: {m: (statistics.mean(v), statistics.stdev(v) if len(v) > 1 else 0.0, len(v)) for m, v in d.items()}
            for key, d in vals.items()
        }
        out[lever]["minutes_per_job"] = statistics.mean(seconds) / 60 if seconds else None
    return out


def minutes_per_configuration(name: str, summary: dict) -> float:
    """Training minutes for all three mechanisms: one joint job, or three separate ones."""
    base = BY_NAME.get(name, ("joint", []))[0]
    minutes = summary.get("minutes_per_job")
    return float("inf") if minutes is None else minutes * (1 if base == "joint" else len(MECHANISMS))


def choose(complete: dict[str, dict], tolerance: float) -> str:
    """The configuration to test: among those whose cross-validated mean macro-F1 is within
    ``tolerance`` points of the best, the one that trains fastest (3-fold CV cannot tell apart
    differences that small, and a cheaper model wins the tie); ties broken by the score."""
    top = max(s["mean_macro_f1"] for s in complete.values())
    near = [name for name, s in complete.items() if s["mean_macro_f1"] >= top - tolerance]
    return min(near, key=lambda n: (minutes_per_configuration(n, complete[n]), -complete[n]["mean_macro_f1"]))


def mechanism_decoding_overrides(decodings: dict[str, str]) -> list[str]:
    """``{mechanism: tag}`` -> one override per mechanism with every value of the decoding (they
    replace the shared ones and any the config had for that mechanism)."""
    from empathy.decoding import RationaleDecoding

    out = []
    for m, tag in sorted(decodings.items(), key=lambda item: MECHANISMS.index(item[0])):
        d = RationaleDecoding.from_tag(tag)
        out.append(
            f"model.rationale_decoding.{m}={{threshold:{d.threshold:g},fill_gaps:{d.fill_gaps},"
            f"min_span:{d.min_span},fallback:{str(d.fallback).lower()}}}"
        )
    return out


def grid_tags() -> list[str]:
    """The decodings today's DecodingGrid scores."""
    from empathy.study.grids import DecodingGrid

    return [d.tag for d in DecodingGrid().decodings]


def grid_scores(runs: list[dict]) -> dict[str, dict[str, list[float]]]:
    """mechanism -> decoding tag -> the dev strict IOU-F1 of each run (fold) that scored it."""
    scores: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in runs:
        for tag in sorted({key.split("@")[1] for key in r["metrics"] if "rationale_iou_f1@" in key}):
            for m, v in per_mechanism(r, "dev", f"rationale_iou_f1@{tag}").items():
                scores[m][tag].append(v)
    return scores


def best_decodings(runs: list[dict]) -> dict[str, tuple[str, float]]:
    """Per mechanism, the grid decoding with the best mean dev strict IOU-F1 over the runs (x100),
    among those every run scored; ties as DecodingGrid.best (RationaleDecoding.preference)."""
    from empathy.decoding import RationaleDecoding

    out = {}
    for m, tags in grid_scores(runs).items():
        runs_of_m = max(len(v) for v in tags.values())
        means = {
            t: statistics.mean(v) for t, v in tags.items() if len(v) == runs_of_m and not any(math.isnan(x) for x in v)
        }
        if not means:
            continue

        tag = min(means, key=lambda t, means=means: (-means[t], *RationaleDecoding.from_tag(t).preference))
        out[m] = (tag, 100 * means[tag])
    return out


def lacks_grid(runs: list[dict], tags: list[str]) -> bool:
    """Whether there are no runs, or some run was not scored with every decoding of ``tags`` for
    each of its mechanisms."""
    return not runs or any(run_lacks_grid(r, tags) for r in runs)


def run_lacks_grid(run: dict, tags: list[str]) -> bool:
    scores = grid_scores([run])
    return not scores or any(set(tags) - set(v) for v in scores.values())


def decoding_runs(runs: list[dict], lever: str) -> list[dict]:
    """The runs a lever's decodings are chosen on: its `decoding` stage if it ran, else its CV."""
    own = [r for r in runs if r["lever"] == lever]
    return [r for r in own if r["stage"] == "decoding"] or [r for r in own if r["stage"] in ("cv", "combine")]


# ------------------------------------------------------------------------------------- run
def combinable(better: list[str], summary: dict[str, dict]) -> list[str]:
    """The levers to combine, in their order: of those that set the same key (two learning rates,
    say), only the one with the best CV macro-F1 (the first of equals)."""
    keys = {name: {o.partition("=")[0] for o in BY_NAME[name][1]} for name in better}
    ranked = sorted(better, key=lambda name: -summary[name]["mean_macro_f1"])
    kept: list[str] = []
    for name in ranked:
        if not any(keys[name] & keys[k] for k in kept):
            kept.append(name)
    return [name for name in better if name in kept]


def lever_overrides(out: Path, name: str) -> tuple[str, list[str]]:
    """A lever's base and overrides (the combined configuration's from combined.json), with the
    DAPT encoder's folder filled in."""
    base_kind, overrides = BY_NAME.get(name, ("joint", None))
    if overrides is None:  # the combined configuration
        overrides = json.loads((out / "combined.json").read_text())["overrides"]
    return base_kind, [o.replace("{dapt}", str(out / "dapt" / "encoder")) for o in overrides]


def run(args: argparse.Namespace) -> None:
    runner = Runner(args)
    out = runner.out
    out.mkdir(parents=True, exist_ok=True)
    levers = [lv for lv in LEVERS if (not args.only or lv[0] in args.only) and lv[0] not in args.skip]
    dapt = out / "dapt"
    pretrain = None
    if any("{dapt}" in " ".join(o) for _, _, o, _ in levers) and not (dapt / "encoder" / "config.json").is_file():
        # pre-trains while the other levers run; the DAPT lever's jobs go last
        cmd = [
            sys.executable,
            "-m",
            "empathy.pretrain",
            "corpus=epitome",
            f"trainer={args.trainer}",
            "logger=csv",
            f"trainer.max_steps={args.dapt_steps}",
            "++trainer.enable_progress_bar=false",
            f"paths.cache_dir={out / 'cache'}",
            f"hydra.run.dir={dapt}",
        ]
        dapt.mkdir(parents=True, exist_ok=True)
        pretrain = subprocess.Popen(cmd, stdout=open(dapt / "job.log", "w"), stderr=subprocess.STDOUT)
    jobs, later = [], []
    for name, base, overrides, _ in levers:
        uses_dapt = "{dapt}" in " ".join(overrides)
        overrides = [o.replace("{dapt}", str(dapt / "encoder")) for o in overrides]
        (later if uses_dapt else jobs).extend(cv_jobs(out, "cv", name, base, overrides, args.folds))
    # levers in the order of LEVERS, fold by fold: a short budget still compares the first ones
    jobs.sort(key=lambda j: (j.fold or 0) if j.lever in ("joint", "separate") else 10)
    runner.run_all(jobs)
    if pretrain is not None:
        print(f"dapt pre-training rc={pretrain.wait()}", flush=True)
    if (dapt / "encoder" / "config.json").is_file():
        runner.run_all(later)

    summary = summarise_cv(load_runs(out))
    base = summary.get("joint", {}).get("mean_macro_f1")
    if args.combine and base is not None:
        better = [
            name
            for name, b, _, _ in levers
            if b == "joint"
            and name not in ("joint", *NOT_COMBINED)
            and name in summary
            and summary[name]["mean_macro_f1"] is not None
            and summary[name]["mean_macro_f1"] > base
        ]
        better = combinable(better, summary)
        if len(better) >= 2:
            overrides = [o for name, _, oo, _ in levers if name in better for o in oo]
            overrides = [o.replace("{dapt}", str(dapt / "encoder")) for o in overrides]
            runner.run_all(cv_jobs(out, "combine", "joint_combined", "joint", overrides, args.folds))
            (out / "combined.json").write_text(json.dumps({"levers": better, "overrides": overrides}, indent=2))
    if not (args.seeds or args.decoding):
        print(f"finished in {time.monotonic() - runner.started:.0f}s", flush=True)
        return
    summary = summarise_cv(load_runs(out))
    complete = {k: v for k, v in summary.items() if v["mean_macro_f1"] is not None}
    if not complete:
        print("no complete cross-validated configuration: no decoding or test stage", flush=True)
        return
    best, variants = choose_configuration(complete, load_runs(out), args.tolerance, read_step_seconds(out))
    finals = [best] + (["separate"] if "separate" in complete and best != "separate" else [])
    if args.decoding:
        tags = grid_tags()
        for name in finals if args.seeds else [best]:  # the separate default's only for its test runs
            name = configuration_of(name)  # a cheaper variant decodes as its configuration
            if lacks_grid(decoding_runs(load_runs(out), name), tags):  # first from the checkpoints kept
                rescore_jobs(runner, decoding_runs(load_runs(out), name))
            if lacks_grid(decoding_runs(load_runs(out), name), tags):
                base_kind, overrides = lever_overrides(out, name)
                runner.run_all(cv_jobs(out, "decoding", name, base_kind, overrides, args.folds))
    if args.extended_grid:
        rescore_jobs(runner, decoding_runs(load_runs(out), configuration_of(best)), RESCORE_EXTENDED)
    offsets: dict[str, list[float] | None] = {}
    level_choice: dict[str, dict] = {}
    if args.level_offsets:
        rescore_jobs(runner, decoding_runs(load_runs(out), configuration_of(best)), RESCORE_LEVELS)
        level_choice = level_offset_choice(
            level_offset_runs(decoding_runs(load_runs(out), configuration_of(best))), args.tolerance
        )
        offsets = {m: c["offsets"] for m, c in level_choice.items()}
    if args.ensemble:
        ensemble_jobs(runner, configuration_of(best), args.folds)
    runs = load_runs(out)
    decodings = {
        name: {m: tag for m, (tag, _) in lever_decodings(runs, name, args.extended_grid and name == best).items()}
        for name in finals
    }
    (out / "chosen.json").write_text(
        json.dumps(
            {
                "lever": best,
                "tolerance": args.tolerance,
                **complete[best],
                "decodings": decodings[best],
                "decoding_grid": "extended" if args.extended_grid else "default",
                "variants": variants,
                "level_offsets": offsets,
                "level_offset_choice": level_choice,
                "ensemble": ensemble_summary(out, runs, configuration_of(best), decodings[best], offsets)
                if args.ensemble
                else None,
            },
            indent=2,
        )
    )
    if args.seeds:
        tests = []
        for name in finals:
            base_kind, overrides = lever_overrides(out, name)
            tests += test_jobs(
                out,
                name,
                base_kind,
                [
                    *overrides,
                    *mechanism_decoding_overrides(decodings[name]),
                    *(level_offset_overrides(offsets) if name == best else []),
                ],
                args.seeds,
            )
        runner.run_all(tests)
    print(f"finished in {time.monotonic() - runner.started:.0f}s", flush=True)


# ------------------------------------------------------------------------------------- report
def fmt(x: float | None, digits: int = 1) -> str:
    return "" if x is None else f"{x:.{digits}f}"


def split_floors(max_len: int) -> dict[str, dict[str, float]]:
    """The floors on the standard split's test rows (default data settings, this max_len):
    majority level and "every response token is rationale" (x100)."""
    from empathy import runner
    from empathy.study.floors import datamodule_floors

    out = {}
    for m in MECHANISMS:
        cfg = runner.compose_config(
            "train", [f"mechanism={m}", f"data.max_len={max_len}"], output_dir=Path("outputs") / "floors"
        )
        f = datamodule_floors(runner.build_datamodule(cfg), m)
        out[m] = {k: 100 * v for k, v in f.items() if k != "majority_level"}
    return out


def decoding_stage_lines(runs: list[dict]) -> list[str]:
    """The `decoding` stage's section of the report: per lever that ran it, its folds' CV scores
    and each mechanism's chosen decoding against the one its CV jobs' smaller grid chose."""
    lines = []
    for lever in sorted({r["lever"] for r in runs if r["stage"] == "decoding"}):
        own = [r for r in runs if r["lever"] == lever and r["stage"] == "decoding"]
        again = summarise_cv([{**r, "stage": "cv"} for r in own])[lever]
        chosen = best_decodings(own)
        before = best_decodings([r for r in runs if r["lever"] == lever and r["stage"] in ("cv", "combine")])
        if not lines:
            lines += [
                "",
                "## Decoding stage: the chosen configuration's folds again, with today's decoding grid",
                "",
                "| lever | folds | CV macro-F1 ER | IP | EX | mean | decoding ER (CV IOU-F1) | IP | EX | "
                "the CV stage's grid chose (ER / IP / EX) | min/job |",
                "| --- | ---: | ---: | ---: | ---: | ---: | --- | --- | --- | --- | ---: |",
            ]
        lines.append(
            f"| {lever} | {again['folds']} | "
            + " | ".join(fmt(again["macro_f1"].get(m)) for m in MECHANISMS)
            + f" | {fmt(again['mean_macro_f1'])} | "
            + " | ".join(f"{chosen[m][0]} ({fmt(chosen[m][1])})" if m in chosen else "" for m in MECHANISMS)
            + " | "
            + " / ".join(f"{before[m][0]} ({fmt(before[m][1])})" if m in before else "-" for m in MECHANISMS)
            + f" | {fmt(again['minutes_per_job'], 2)} |"
        )
    return lines


PAIRED_HEADER = (
    "| variant | of | machine | folds | CV macro-F1 ER | IP | EX | mean | its configuration there: ER | IP "
    "| EX | mean | seeds | difference |"
)
PAIRED_RULE = "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"


def paired_cells(v: dict) -> str:
    """A :func:`paired` comparison's cells, up to its difference."""
    return (
        f"| {v['variant']} | {v['of']} | {v['machine']} | {v['folds']} | "
        + " | ".join(fmt(v["macro_f1"].get(m)) for m in MECHANISMS)
        + f" | {fmt(v['mean_macro_f1'])} | "
        + " | ".join(fmt(v["reference_macro_f1"].get(m)) for m in MECHANISMS)
        + f" | {fmt(v['reference_mean_macro_f1'])} | {', '.join(map(str, v['seeds']))} | "
        + f"{v['mean_macro_f1'] - v['reference_mean_macro_f1']:+.1f} |"
    )


def cheaper_variant_lines(
    runs: list[dict], tolerance: float, step_seconds: dict[str, float] | None = None
) -> list[str]:
    """The section on cheaper variants (:data:`CHEAPER`): each one's CV macro-F1 against its
    configuration's runs on the same machine and folds, over its seeds (:func:`paired`), and the
    training step measured by ``bench_step.py --json`` where given."""
    variants = [v for best in CHEAPER for v in choose_cheaper(best, runs, tolerance, step_seconds)[1]]
    if not variants:
        return []
    lines = [
        "",
        "## Cheaper variants: against their configuration on the same machine and folds",
        "",
        "A variant trains its configuration with less work. It is compared with its configuration on the same "
        "machine, folds and training seeds (`seeds`: each seed of the variant paired with the configuration's "
        "run of that seed; both columns are the mean over them); within "
        f"{tolerance:g} points of it, the fastest variant is chosen in its place (the rule of the main table, on "
        "like with like). Fastest: the shortest training step on the CPU "
        f"(`{STEP_SECONDS}` in the run folder, written by `scripts/bench_step.py --json`), which must beat the "
        "configuration's own; without that file, the fewest CV minutes a job.",
        "",
        PAIRED_HEADER + " within | CPU s/step (configuration) |",
        PAIRED_RULE + " --- | ---: |",
    ]
    own = (step_seconds or {}).get("")
    for v in variants:
        step = f"{v['step_seconds']:.2f} ({own:.2f})" if v.get("step_seconds") and own else ""
        lines.append(paired_cells(v) + (" yes" if v["within"] else " no") + f" | {step} |")
    return lines


def refinement_lines(runs: list[dict], tolerance: float) -> list[str]:
    """The section on refinements (:data:`REFINEMENTS`): each one's CV macro-F1 against its
    configuration's runs on the same machine, folds and seeds (:func:`paired`)."""
    compared = [v for best in REFINEMENTS for v in refinements(best, runs, tolerance)]
    if not compared:
        return []
    return [
        "",
        "## Refinements: against their configuration on the same machine and folds",
        "",
        "A refinement changes the chosen configuration at the same training cost, tried after it was chosen and "
        "on another machine than its main-table row. It is compared with the configuration on the same machine, "
        "folds and training seeds (as a cheaper variant is), and replaces it only when it is more than "
        f"{tolerance:g} points better there (a tie keeps the configuration).",
        "",
        PAIRED_HEADER + " better |",
        PAIRED_RULE + " --- |",
        *(paired_cells(v) + (" yes |" if v["better"] else " no |") for v in compared),
    ]


def seed_noise_lines(cv: dict[str, dict]) -> list[str]:
    """The section on seed repeats (:data:`REPEATS`): each repeated configuration's CV score per
    training seed, their mean and standard deviation."""
    averaged = {
        name: s
        for name, s in seed_averaged({k: v for k, v in cv.items() if v["mean_macro_f1"] is not None}).items()
        if s["seeds"] > 1
    }
    if not averaged:
        return []
    lines = [
        "",
        "## Seed noise: configurations trained again with other training seeds",
        "",
        "The same folds, another training seed (`seed=`; the folds depend on `data.split_seed` only): how far one "
        "seed's CV score moves. The main table's rows all have the default seed; a cheaper variant is compared "
        "with its configuration seed by seed (above).",
        "",
        "| configuration | seeds | CV macro-F1 of each seed | mean | std | ER | IP | EX |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, s in averaged.items():
        lines.append(
            f"| {name} | {s['seeds']} | "
            + " / ".join(fmt(x) for x in s["seed_scores"])
            + f" | {fmt(s['mean_macro_f1'])} | {fmt(statistics.stdev(s['seed_scores']))} | "
            + " | ".join(fmt(s["macro_f1"][m]) for m in MECHANISMS)
            + " |"
        )
    return lines


def extended_grid_lines(runs: list[dict], chosen: str | None = None) -> list[str]:
    """The extended grid's section: per lever whose kept checkpoints were scored with it, each
    mechanism's best decoding of the default grid, the best without the fallback, and the best
    (the decoding of ``chosen``, the lever whose decodings `run --extended-grid` chose from it)."""
    from empathy.decoding import RationaleDecoding

    lines = []
    for lever in sorted({r["lever"] for r in extended_runs(runs)}):
        own = extended_runs(decoding_runs(runs, lever))
        plain = best_decodings(decoding_runs(runs, lever))
        scores = grid_scores(own)
        subsets = {
            "no fallback": [
                {
                    **r,
                    "metrics": {
                        k: v
                        for k, v in r["metrics"].items()
                        if not RationaleDecoding.from_tag(k.partition("@")[2]).fallback
                    },
                }
                for r in own
            ],
            "any": own,
        }
        best = {name: best_decodings(sub) for name, sub in subsets.items()}
        if not lines:
            lines += [
                "",
                "## Extended decoding grid: kept checkpoints scored again",
                "",
                "`ablations.py run --extended-grid`: `python -m empathy.evaluate split=dev grid=decoding_extended` "
                "on each "
                "fold's best checkpoint of the chosen configuration (thresholds 0.1-0.5 x gaps 2-32 x min_span 1, 2, "
                "3, 5 "
                "x fallback off / on: a response with a predicted level > 0 and no rationale token gets every token). "
                "CV strict IOU-F1, mean over the folds. The chosen configuration decodes with the best of this grid "
                f"({chosen or 'none yet'}); a lever scored earlier keeps the decodings of the default grid.",
                "",
                "| lever | mechanism | folds | best of the default grid | best without fallback | best | gain |",
                "| --- | --- | ---: | --- | --- | --- | ---: |",
            ]
        for m in MECHANISMS:
            if m not in best["any"]:
                continue
            folds = max(len(v) for v in scores[m].values())
            plain_m = plain.get(m)
            cells = [f"{t} ({fmt(v)})" for t, v in (best["no fallback"].get(m, ("", None)), best["any"][m])]
            gain = best["any"][m][1] - plain_m[1] if plain_m else None
            lines.append(
                f"| {lever} | {m} | {folds} | "
                + (f"{plain_m[0]} ({fmt(plain_m[1])})" if plain_m else "")
                + f" | {cells[0]} | {cells[1]} | {fmt(gain)} |"
            )
    return lines


def ensemble_lines(summary: dict | None, inference: str = "") -> list[str]:
    """The seed ensemble's section (``chosen.json``: ensemble, from ``run --ensemble``)."""
    if not summary:
        return []
    e, mm = summary["ensemble"], summary["member_mean"]
    lines = [
        "",
        "## Seed ensemble of the chosen configuration",
        "",
        f"`ablations.py run --ensemble`: {summary['configuration']} and its seed repeats "
        f"({', '.join(summary['members'])}) trained on the same {summary['folds']} folds on the CPU (the "
        "`decoding` "
        "stage, checkpoints kept); on each fold `python -m empathy.evaluate 'ckpt_path=[<their best checkpoints>]' "
        "split=dev` scores the ensemble (the mean of the members' probabilities, one seeker pass), and each member "
        "alone (`rescore_extended`, `rescore_levels`). With the chosen configuration's level offsets and decodings; "
        "CV = the mean over the folds. Not a candidate for the default: it trains and predicts "
        f"{len(summary['members'])} models.{(' ' + inference) if inference else ''}",
        "",
        "| model | CV macro-F1 ER | IP | EX | mean | at the argmax: ER | IP | EX | CV strict IOU-F1 ER | IP | EX |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]

    def row(label: str, x: dict) -> str:
        return (
            f"| {label} | "
            + " | ".join(fmt(x["macro_f1"][m]) for m in MECHANISMS)
            + f" | {fmt(statistics.mean(x['macro_f1'].values()))} | "
            + " | ".join(fmt(x["macro_f1_argmax"][m]) for m in MECHANISMS)
            + " | "
            + " | ".join(fmt(x["iou_f1"].get(m)) for m in MECHANISMS)
            + " |"
        )

    lines.append(row(f"ensemble of {len(summary['members'])}", e))
    lines.append(row("its members, mean", mm))
    lines += [row(name, x) for name, x in summary["each_member"].items()]
    gain = statistics.mean(e["macro_f1"].values()) - statistics.mean(mm["macro_f1"].values())
    lines += ["", f"The ensemble against its members' mean: {gain:+.1f} mean CV macro-F1 points."]
    return lines


def level_offset_lines(choice: dict[str, dict], chosen: str | None, tolerance: float) -> list[str]:
    """The level offsets' section (``chosen.json``: level_offset_choice, from ``run --level-offsets``)."""
    if not choice:
        return []
    lines = [
        "",
        "## Level offsets: kept checkpoints' level logits, offset before the argmax",
        "",
        "`ablations.py run --level-offsets`: `python -m empathy.evaluate split=dev grid=level_offsets` on each "
        f"fold's best checkpoint of the chosen configuration ({chosen}): the dev macro-F1 of every pair of offsets "
        "added to the logits of levels 1 and 2 (-3 to 3 in steps of 0.5; empathy/levels.py). A mechanism keeps its "
        f"best pair only when it gains more than {tolerance:g} CV points over the argmax. Held out: each fold "
        "scored with the pair chosen on the other folds, the gain over the argmax there (what the choice is "
        "worth on data it did not see).",
        "",
        "| mechanism | folds | best pair | CV macro-F1 argmax | with the pair | gain | held out: each fold | mean | "
        "kept |",
        "| --- | ---: | --- | ---: | ---: | ---: | --- | ---: | --- |",
    ]
    for m in MECHANISMS:
        if m not in choice:
            continue
        c = choice[m]
        lines.append(
            f"| {m} | {c['folds']} | {c['tag']} | {fmt(c['macro_f1_without'])} | {fmt(c['macro_f1'])} | "
            f"{c['gain']:+.1f} | "
            + " / ".join(f"{x:+.1f}" for x in c["held_out"])
            + " | "
            + (f"{c['held_out_gain']:+.1f}" if c["held_out_gain"] is not None else "")
            + " | "
            + (str(c["offsets"]) if c["offsets"] else "no")
            + " |"
        )
    return lines


def report(args: argparse.Namespace) -> None:
    out = Path(args.out).resolve()
    runs = load_runs(out)
    cv = summarise_cv(runs)
    choice = json.loads((out / "chosen.json").read_text()) if (out / "chosen.json").is_file() else {}
    chosen = choice.get("lever")
    extended = choice.get("decoding_grid") == "extended"  # the chosen lever's decodings came from it

    def is_chosen(spec: str) -> bool:
        return configuration_of(spec.partition("=")[0]) == configuration_of(chosen or "")

    runs += [
        run
        for spec in args.test_runs
        for run in external_test_runs(
            spec, runs, extended and is_chosen(spec), choice.get("level_offsets") if is_chosen(spec) else None
        )
    ]
    test = summarise_test(runs)
    descriptions = {n: (b, o, d) for n, b, o, d in LEVERS}
    if (out / "combined.json").is_file():
        combined = json.loads((out / "combined.json").read_text())
        descriptions["joint_combined"] = ("joint", combined["overrides"], "together: " + ", ".join(combined["levers"]))
    rows = []
    for name in [n for n in descriptions if n in cv] + [n for n in cv if n not in descriptions]:
        s = cv[name]
        base, overrides, what = descriptions.get(name, ("", [], ""))
        t = test.get(name, {})
        best = best_decodings([r for r in runs if r["lever"] == name and r["stage"] in ("cv", "combine")])
        row = {
            "lever": name,
            "base": base,
            "what": what,
            "overrides": " ".join(overrides),
            "cv_folds": s["folds"],
            **{f"cv_macro_f1_{m}": s["macro_f1"].get(m) for m in MECHANISMS},
            "cv_macro_f1_mean": s["mean_macro_f1"],
            **{f"cv_iou_f1_{m}": s["iou_f1"].get(m) for m in MECHANISMS},
            "cv_best_decoding": s["best_decoding"],
            "cv_best_decoding_iou_f1": s["best_decoding_iou"],
            **{f"cv_best_decoding_{m}": best.get(m, (None, None))[0] for m in MECHANISMS},
            **{f"cv_best_decoding_iou_f1_{m}": best.get(m, (None, None))[1] for m in MECHANISMS},
            "minutes_per_job": s["minutes_per_job"],
            "chosen": name == chosen,
        }
        for key in ("macro_f1", "rationale_iou_f1"):
            for m in MECHANISMS:
                mean, std, n = t.get(key, {}).get(m, (None, None, 0))
                row[f"test_{key}_{m}_mean"], row[f"test_{key}_{m}_std"], row[f"test_{key}_{m}_n"] = mean, std, n
        row["test_minutes_per_job"] = t.get("minutes_per_job")
        rows.append(row)
    results = Path(getattr(args, "results", "results"))
    results.mkdir(parents=True, exist_ok=True)
    from empathy.io import atomic_output, write_text_atomic

    with atomic_output(results / "ablations.csv") as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["lever"])
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.3f}" if isinstance(v, float) else v) for k, v in row.items()})
    manifest = (
        [json.loads(x) for x in (out / "jobs.jsonl").read_text().splitlines()] if (out / "jobs.jsonl").is_file() else []
    )
    latest = {m["folder"]: m for m in manifest}  # a job run again: its last record counts
    elsewhere = {spec.partition("=")[0] for spec in args.test_runs}  # their test runs came from --test-runs
    failed = [
        m for m in latest.values() if m["status"] != "ok" and not (m["stage"] == "test" and m["lever"] in elsewhere)
    ]
    lines = [
        "# Ablations: every lever, chosen by cross-validation inside train + dev",
        "",
        f"Produced by `python scripts/ablations.py report --out {args.out}"
        + "".join(f" --test-runs {spec}" for spec in args.test_runs)
        + (" --ensemble-cost '<the sentence in the ensemble section>'" if getattr(args, "ensemble_cost", "") else "")
        + "` from the run folder of "
        "`python scripts/ablations.py run` (see the script's docstring). CV = mean over the folds of "
        "train + dev (grouped by seeker post) of the dev figures of each fold's best epoch; test = the "
        "standard split, mean +- std over seeds, for the chosen configurations only.",
        "",
        "| lever | what | CV macro-F1 ER | IP | EX | mean | CV IOU-F1 ER | IP | EX | best decoding: all (CV IOU-F1) "
        "| ER | IP | EX | min/job |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- | --- | --- | ---: |",
    ]
    for r in rows:
        mark = " **(chosen)**" if r["chosen"] else ""
        lines.append(
            f"| {r['lever']}{mark} | {r['what']} | {fmt(r['cv_macro_f1_ER'])} | {fmt(r['cv_macro_f1_IP'])} | "
            f"{fmt(r['cv_macro_f1_EX'])} | {fmt(r['cv_macro_f1_mean'])} | {fmt(r['cv_iou_f1_ER'])} | "
            f"{fmt(r['cv_iou_f1_IP'])} | {fmt(r['cv_iou_f1_EX'])} | {r['cv_best_decoding'] or ''} "
            f"({fmt(r['cv_best_decoding_iou_f1'])}) | "
            + "".join(
                f"{r[f'cv_best_decoding_{m}'] or ''} ({fmt(r[f'cv_best_decoding_iou_f1_{m}'])}) | " for m in MECHANISMS
            )
            + f"{fmt(r['minutes_per_job'], 2)} |"
        )
    lines += seed_noise_lines(cv)
    lines += refinement_lines(runs, choice.get("tolerance", 0.5))
    lines += cheaper_variant_lines(runs, choice.get("tolerance", 0.5), read_step_seconds(out))
    lines += decoding_stage_lines(runs)
    lines += extended_grid_lines(runs, chosen if extended else None)
    lines += level_offset_lines(choice.get("level_offset_choice") or {}, chosen, choice.get("tolerance", 0.5))
    lines += ensemble_lines(choice.get("ensemble"), getattr(args, "ensemble_cost", ""))
    tested = [r for r in rows if r["test_macro_f1_ER_n"] or r["test_macro_f1_IP_n"]]
    if tested:
        lines += [
            "",
            "## Test (final configurations only)",
            "",
            "| configuration | macro-F1 ER | IP | EX | strict IOU-F1 ER | IP | EX | seeds | min/job |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
            f"| paper (RoBERTa-base) | {PAPER['ER']} | {PAPER['IP']} | {PAPER['EX']} | | | | | |",
        ]
        for r in tested:
            cells = [f"{fmt(r[f'test_macro_f1_{m}_mean'])} +- {fmt(r[f'test_macro_f1_{m}_std'])}" for m in MECHANISMS]
            cells += [
                f"{fmt(r[f'test_rationale_iou_f1_{m}_mean'])} +- {fmt(r[f'test_rationale_iou_f1_{m}_std'])}"
                for m in MECHANISMS
            ]
            lines.append(
                f"| {r['lever']} | "
                + " | ".join(cells)
                + f" | {r['test_macro_f1_ER_n']} | {fmt(r['test_minutes_per_job'], 2)} |"
            )
    if tested and not args.no_floors:
        lengths = sorted(
            {int(o.split("=")[1]) for r in tested for o in r["overrides"].split() if o.startswith("data.max_len=")}
            | {args.max_len}
        )
        for max_len in lengths:
            f = split_floors(max_len)
            lines.append(
                f"| floor: majority level / every token is rationale (max_len {max_len}) | "
                + " | ".join(fmt(f[m]["majority_macro_f1"]) for m in MECHANISMS)
                + " | "
                + " | ".join(fmt(f[m]["every_token_rationale_iou_f1_strict"]) for m in MECHANISMS)
                + " | | |"
            )
    if failed:
        lines += [
            "",
            f"{len(failed)} job(s) did not finish: " + "; ".join(f"{m['folder']} ({m['status']})" for m in failed[:20]),
        ]
    notes = out / "NOTES.md"  # what the run folder cannot say by itself (hardware, failures fixed since)
    if notes.is_file():
        lines += ["", notes.read_text().strip()]
    write_text_atomic(results / "ablations.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    """The command line of ``scripts/ablations.py``."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run the cross-validation, combination and test stages")
    r.add_argument("--out", default="outputs/ablations")
    r.add_argument("--trainer", default="default", help="trainer config group option: default (CPU) or gpu")
    r.add_argument("--workers", type=int, default=1)
    r.add_argument("--folds", type=int, default=3)
    r.add_argument("--seeds", type=int, default=5, help="test seeds of the chosen configurations (0: no test stage)")
    r.add_argument("--budget-s", type=float, default=float("inf"), help="start no job after this many seconds")
    r.add_argument("--dapt-steps", type=int, default=1000)
    r.add_argument("--no-combine", dest="combine", action="store_false")
    r.add_argument(
        "--no-decoding",
        dest="decoding",
        action="store_false",
        help="no decoding stage: the decodings come from the CV jobs' grid, whatever its size",
    )
    r.add_argument(
        "--extended-grid",
        action="store_true",
        help="score the chosen configuration's kept checkpoints with the extended decoding grid "
        "(min_span, fallback) and choose its decodings from it",
    )
    r.add_argument(
        "--level-offsets",
        action="store_true",
        help="score the chosen configuration's kept checkpoints with the level offset grid and choose "
        "each mechanism's offsets from it (kept only when more than --tolerance better)",
    )
    r.add_argument(
        "--ensemble",
        action="store_true",
        help="train the chosen configuration's seed repeats on the same folds (checkpoints kept) and score "
        "their ensemble against its members (reported; 3x the training and prediction: no default)",
    )
    r.add_argument("--only", nargs="*", help="run only these levers")
    r.add_argument("--skip", nargs="*", default=[], help="do not run these levers")
    r.add_argument(
        "--tolerance",
        type=float,
        default=0.5,
        help="CV macro-F1 points within the best at which the faster configuration is chosen (default 0.5)",
    )
    r.add_argument("--set", nargs="*", default=[], help="overrides added to every job (e.g. encoder=tiny)")
    p = sub.add_parser("report", help="write results/ablations.{md,csv} from a run folder")
    p.add_argument("--out", default="outputs/ablations")
    p.add_argument("--results", default="results", help="folder of ablations.md and ablations.csv (default: results)")
    p.add_argument("--max-len", type=int, default=128, help="max_len of the default configuration (for its floors)")
    p.add_argument("--no-floors", action="store_true", help="skip the floors (they read the EPITOME data)")
    p.add_argument(
        "--ensemble-cost",
        default="",
        help="a sentence on the ensemble's measured inference cost (bench_predict.py --ensemble)",
    )
    p.add_argument(
        "--test-runs",
        nargs="*",
        default=[],
        metavar="LEVER=DIR",
        help="test runs of LEVER trained by another command (a multirun folder), checked against its config",
    )
    args = parser.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    run(args) if args.command == "run" else report(args)


if __name__ == "__main__":
    main()
