"""Results tables from hand-written job folders: grouping, statistics, failed jobs, separation."""

from __future__ import annotations

import csv
import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from empathy.study import results

REPO_ROOT = Path(__file__).resolve().parents[1]


def metrics_for(acc: float, f1: float) -> dict[str, float]:
    out = {"test/acc": acc, "test/macro_f1": f1, "dev/macro_f1": f1 - 0.1}
    for policy, shift in (("paper", 0.2), ("strict", 0.0)):
        out[f"test/rationale_token_f1_{policy}"] = 0.5 + shift
        out[f"test/rationale_iou_f1_{policy}"] = 0.4 + shift
    return out


def write_job(
    folder: Path,
    *,
    seed: int,
    mechanism: str = "ER",
    experiment: str | None = None,
    lr: float = 1e-4,
    metrics: dict[str, float] | None = None,
    minutes: float = 2.0,
) -> Path:
    """A job folder as empathy.train under a Hydra multirun leaves it."""
    (folder / ".hydra").mkdir(parents=True)
    config = {
        "seed": seed,
        "mechanism": {"name": mechanism, "file": f"{mechanism}.csv"},
        "model": {"optimizer": {"lr": lr}},
        "paths": {"output_dir": str(folder), "log_dir": str(folder.parent)},
        "callbacks": {"model_checkpoint": {"dirpath": f"{folder}/checkpoints", "monitor": "dev/macro_f1"}},
        "trainer": {"default_root_dir": str(folder), "max_epochs": 6},
    }
    (folder / "resolved_config.yaml").write_text(yaml.safe_dump(config))
    (folder / ".hydra" / "hydra.yaml").write_text(
        yaml.safe_dump({"hydra": {"runtime": {"choices": {"experiment": experiment}}}})
    )
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"seed={seed}", f"mechanism={mechanism}"]))
    if metrics is not None:
        (folder / "metrics.json").write_text(json.dumps({"metrics": metrics, "fit_minutes": minutes, "seed": seed}))
    return folder


def test_seeds_of_one_config_share_a_cell_with_mean_and_sample_std(tmp_path):
    accs, f1s = [0.70, 0.74, 0.78], [0.60, 0.62, 0.67]
    for i, (acc, f1) in enumerate(zip(accs, f1s, strict=True)):
        write_job(tmp_path / "sweep" / str(i), seed=i + 1, metrics=metrics_for(acc, f1), minutes=1.0 + i)
    for i, mechanism in enumerate(["IP", "IP"]):
        write_job(tmp_path / "sweep" / str(3 + i), seed=i + 1, mechanism=mechanism, metrics=metrics_for(0.8, 0.5))

    written = results.aggregate([tmp_path / "sweep"], tmp_path / "out")
    rows = written["rows"]
    assert [(r["experiment"], r["mechanism"], r["policy"]) for r in rows] == [
        ("default", "ER", "paper"),
        ("default", "ER", "strict"),
        ("default", "IP", "paper"),
        ("default", "IP", "strict"),
    ]
    er_paper, er_strict = rows[0], rows[1]
    assert er_paper["n_seeds"] == 3 and er_paper["seeds"] == "1 2 3"
    assert er_paper["acc_mean"] == pytest.approx(0.74)
    assert er_paper["acc_std"] == pytest.approx(statistics.stdev(accs)) == pytest.approx(0.04)
    assert er_paper["macro_f1_mean"] == er_strict["macro_f1_mean"] == pytest.approx(statistics.fmean(f1s))
    # The policy picks the rationale metrics: paper -> *_paper, strict -> *_strict.
    assert er_paper["rationale_token_f1_mean"] == pytest.approx(0.7)
    assert er_strict["rationale_token_f1_mean"] == pytest.approx(0.5)
    assert er_strict["rationale_iou_f1_std"] == pytest.approx(0.0)
    assert er_paper["minutes_per_run"] == pytest.approx(2.0)

    with written["csv"].open() as f:
        table = list(csv.DictReader(f))
    assert len(table) == 4 and float(table[0]["acc_mean"]) == pytest.approx(0.74)
    assert set(results.CSV_COLUMNS) == set(table[0])
    markdown = written["markdown"].read_text()
    assert "| default | paper | 3 | 74.0 ± 4.0 |" in markdown
    assert "paper, reported" in markdown and "79.43" in markdown  # the paper's ER accuracy beside ours
    assert "official code re-run" in markdown and "training minutes" in markdown
    # the floors are computed on the runs' own split (aggregate(floors=...)), never copied from elsewhere
    assert "floor:" not in markdown and "floor on our split" not in markdown


def test_a_single_seed_has_no_std(tmp_path):
    write_job(tmp_path / "0", seed=1, metrics=metrics_for(0.7, 0.6))
    row = results.aggregate([tmp_path], tmp_path / "out")["rows"][0]
    assert row["n_seeds"] == 1 and row["acc_std"] is None
    assert "| default | paper | 1 | 70.0 |" in (tmp_path / "out" / "paper_table.md").read_text()


def test_failed_jobs_are_skipped_with_a_warning_naming_them(tmp_path):
    write_job(tmp_path / "0", seed=1, metrics=metrics_for(0.7, 0.6))
    failed = write_job(tmp_path / "1", seed=2, metrics=None)
    with pytest.warns(UserWarning, match=r"skipping 1 job\(s\).*" + str(failed.resolve())):
        written = results.aggregate([tmp_path], tmp_path / "out")
    assert written["rows"][0]["n_seeds"] == 1
    assert [j.path for j in written["skipped"]] == [failed.resolve()]
    assert "Skipped 1 unfinished job" in written["markdown"].read_text()


def test_different_configs_under_one_experiment_become_separate_rows(tmp_path):
    for seed in (1, 2):
        write_job(tmp_path / "a" / str(seed), seed=seed, experiment="paper", lr=2e-5, metrics=metrics_for(0.7, 0.6))
        write_job(tmp_path / "b" / str(seed), seed=seed, experiment="paper", lr=1e-3, metrics=metrics_for(0.5, 0.3))
        write_job(tmp_path / "c" / str(seed), seed=seed, experiment="no_attention", metrics=metrics_for(0.6, 0.5))
    rows = [r for r in results.aggregate([tmp_path], tmp_path / "out")["rows"] if r["policy"] == "strict"]
    by_label = {r["experiment"]: r for r in rows}
    assert set(by_label) == {"no_attention", "paper [model.optimizer.lr=2e-05]", "paper [model.optimizer.lr=0.001]"}
    assert by_label["paper [model.optimizer.lr=2e-05]"]["acc_mean"] == pytest.approx(0.7)
    assert by_label["paper [model.optimizer.lr=0.001]"]["acc_mean"] == pytest.approx(0.5)
    assert all(r["n_seeds"] == 2 for r in rows)


def test_output_paths_and_seed_do_not_split_a_cell_and_repeated_seeds_count_once(tmp_path):
    # Two sweeps of the same config in different folders aggregate into one cell.
    write_job(tmp_path / "sweep1" / "0", seed=1, metrics=metrics_for(0.7, 0.6))
    write_job(tmp_path / "sweep2" / "0", seed=2, metrics=metrics_for(0.8, 0.6))
    assert results.aggregate([tmp_path / "sweep1", tmp_path / "sweep2"], tmp_path / "out")["rows"][0]["n_seeds"] == 2
    write_job(tmp_path / "sweep3" / "0", seed=2, metrics=metrics_for(0.9, 0.6))
    with pytest.warns(UserWarning, match="seed 2 appears twice"):
        rows = results.aggregate([tmp_path], tmp_path / "out")["rows"]
    assert rows[0]["n_seeds"] == 2 and rows[0]["acc_mean"] == pytest.approx(0.75)


def test_the_table_is_rewritten_atomically_and_a_missing_folder_is_an_error(tmp_path):
    write_job(tmp_path / "runs" / "0", seed=1, metrics=metrics_for(0.7, 0.6))
    results.aggregate([tmp_path / "runs"], tmp_path / "out")
    results.aggregate([tmp_path / "runs"], tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["paper_table.csv", "paper_table.md"]
    with pytest.raises(FileNotFoundError, match="no such folder"):
        results.aggregate([tmp_path / "nowhere"], tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no finished job"):
        results.aggregate([tmp_path / "empty"], tmp_path / "out")


def test_multirun_command_and_the_cli(tmp_path):
    command = results.multirun_command(["default", "paper"], ["ER", "IP"], [1, 2], "/x/sweep", ["encoder=tiny"])
    assert command == [
        "python", "-m", "empathy.train", "-m", "experiment=default,paper", "mechanism=ER,IP", "seed=1,2",
        "hydra.sweep.dir=/x/sweep", "encoder=tiny",
    ]  # fmt: skip
    script = REPO_ROOT / "scripts" / "reproduce_table.py"
    # the default model is the joint one: one run per seed for ER, IP and EX, no mechanism sweep
    dry = subprocess.run(
        [sys.executable, str(script), "--dry-run", "--seeds", "1,2", "trainer=gpu"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert len(dry.stdout.splitlines()) == 1
    assert "-m empathy.train -m experiment=default seed=1,2 " in dry.stdout and "mechanism=" not in dry.stdout
    assert dry.stdout.rstrip().endswith("trainer=gpu")
    # one model per mechanism: the mechanism sweep
    separate = subprocess.run(
        [sys.executable, str(script), "--dry-run", "--seeds", "1,2", "model=biencoder", "trainer=gpu"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert len(separate.stdout.splitlines()) == 1
    assert "-m empathy.train -m experiment=default mechanism=ER,IP,EX seed=1,2" in separate.stdout
    assert separate.stdout.rstrip().endswith("model=biencoder trainer=gpu")
    joint = subprocess.run(
        [sys.executable, str(script), "--dry-run", "--jobs", "1", "--joint", "--seeds", "1,2"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "-m empathy.train -m experiment=default seed=1,2 " in joint.stdout and "mechanism=" not in joint.stdout
    assert joint.stdout.rstrip().endswith("model=joint")
    write_job(tmp_path / "runs" / "0", seed=1, metrics=metrics_for(0.7, 0.6))
    subprocess.run(
        [sys.executable, str(script), "--aggregate-only", str(tmp_path / "runs"), "--out", str(tmp_path / "out")],
        check=True,
        capture_output=True,
    )
    assert (tmp_path / "out" / "paper_table.csv").exists()


def test_reproduce_table_runs_joint_and_separate_experiments_as_two_multiruns(tmp_path):
    script = REPO_ROOT / "scripts" / "reproduce_table.py"
    sweep = tmp_path / "sweep"
    dry = subprocess.run(
        [
            sys.executable,
            str(script),
            "--dry-run",
            "--jobs",
            "1",
            "--experiments",
            "default,paper",
            "--seeds",
            "1,2",
            "--sweep-dir",
            str(sweep),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    lines = dry.stdout.splitlines()
    assert len(lines) == 2, dry.stdout
    joint = next(line for line in lines if "experiment=default " in line)
    separate = next(line for line in lines if "experiment=paper " in line)
    assert "mechanism=" not in joint
    assert f"hydra.sweep.dir={sweep / 'joint'}" in joint.split()
    assert "-m empathy.train -m experiment=paper mechanism=ER,IP,EX seed=1,2" in separate
    assert f"hydra.sweep.dir={sweep / 'separate'}" in separate.split()
    assert "experiment=default,paper" not in dry.stdout  # never one multirun of both kinds
