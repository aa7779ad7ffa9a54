"""Hydra multiruns through the real entry point: one folder per job, a summary, a W&B group."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import open_dict

from empathy import CONFIG_DIR, runner
from empathy.data.synthetic import write_synthetic_epitome
from empathy.study import results
from empathy.sweep import summary_table

REPO_ROOT = Path(__file__).resolve().parents[1]


def subprocess_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("EMPATHY_LOG_DIR", None)
    return {**env, **extra}


def test_a_multirun_of_two_jobs_gives_two_folders_a_summary_and_a_table(tmp_path):
    data = write_synthetic_epitome(tmp_path / "data", n_rows=40, seed=0)
    logs = tmp_path / "logs"
    command = [
        sys.executable, "-m", "empathy.train", "-m", "encoder=tiny", "debug=limit", "trainer.max_epochs=1",
        "seed=1,2", "logger=csv",
        f"paths.data_dir={data}", f"paths.log_dir={logs}", f"paths.cache_dir={tmp_path / 'cache'}",
        "trainer.precision=32-true", "++trainer.enable_progress_bar=false", "++trainer.enable_model_summary=false",
    ]  # fmt: skip
    done = subprocess.run(command, cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    (sweep,) = (logs / "train" / "multiruns").iterdir()
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert [p.name for p in jobs] == ["0", "1"]
    saved = [json.loads((job / "metrics.json").read_text()) for job in jobs]
    assert [m["seed"] for m in saved] == [1, 2]
    assert all(m["mechanism"] == "joint" for m in saved)  # the default model: ER, IP and EX at once
    for job in jobs:
        assert (job / "checkpoints" / "last.ckpt").exists() and (job / ".hydra" / "overrides.yaml").exists()

    summary = (sweep / "sweep_summary.md").read_text()
    assert "2 jobs, 2 finished" in summary and "| 0 | `seed=1` |" in summary and "| 1 | `seed=2` |" in summary
    assert "`encoder=tiny`" in summary.split("|")[0]  # shared overrides above the table
    assert summary in done.stdout  # printed at the end of the multirun

    written = results.aggregate([sweep], tmp_path / "table")
    # the joint model's runs give a row per mechanism (and labelling policy), each over both seeds;
    # the default experiment of the joint model is labelled joint
    rows = written["rows"]
    assert [(r["mechanism"], r["policy"]) for r in rows] == [
        (m, p) for m in ("ER", "IP", "EX") for p in results.POLICIES
    ]
    for row in rows:
        assert row["experiment"] == results.JOINT_EXPERIMENT and row["n_seeds"] == 2 and row["seeds"] == "1 2"


def test_the_summary_marks_unfinished_jobs(tmp_path):
    (tmp_path / "0" / ".hydra").mkdir(parents=True)
    (tmp_path / "0" / ".hydra" / "overrides.yaml").write_text("- seed=1\n")
    assert "| 0 | `seed=1` |  | unfinished |" in summary_table(tmp_path, ("dev/macro_f1",))


def test_multirun_jobs_get_the_sweep_folder_as_their_wandb_group(tmp_path):
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=["encoder=tiny", "logger=wandb"], return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.mode = RunMode.MULTIRUN
        cfg.hydra.sweep.dir = str(tmp_path / "2026-01-01_10-00-00-123456")
        cfg.hydra.runtime.output_dir = str(tmp_path / "0")
        cfg.paths.output_dir = str(tmp_path / "0")
    hydra_cfg = copy.deepcopy(cfg)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]  # the task's config, as the entry point sees it
    try:
        assert runner.sweep_name() == "2026-01-01_10-00-00-123456"
        (wandb,) = runner.build_loggers(cfg, tmp_path / "0")
        assert wandb._wandb_init["group"] == "2026-01-01_10-00-00-123456"
        with open_dict(cfg):
            cfg.group = "mine"
        assert runner.build_loggers(cfg, tmp_path / "0")[0]._wandb_init["group"] == "mine"
        with open_dict(hydra_cfg):
            hydra_cfg.hydra.mode = RunMode.RUN
        HydraConfig.instance().set_config(hydra_cfg)
        assert runner.sweep_name() is None
    finally:
        HydraConfig.instance().cfg = None


def test_run_and_sweep_folders_cannot_collide_within_a_second():
    from omegaconf import OmegaConf

    hydra_cfg = OmegaConf.to_container(OmegaConf.load(Path(CONFIG_DIR) / "hydra" / "default.yaml"))
    assert hydra_cfg["run"]["dir"].endswith("%f}") and hydra_cfg["sweep"]["dir"].endswith("%f}")
    assert "${hydra.job.num}" in hydra_cfg["sweep"]["subdir"]
