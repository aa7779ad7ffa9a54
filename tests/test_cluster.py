"""Cluster configs: SLURM launcher settings (with a site file), submitit for real on this machine,
and a job that finds a last.ckpt in its folder resuming from it (what a requeued job does)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import lightning.pytorch as pl
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf, open_dict

from empathy import CONFIG_DIR, runner
from empathy.data.synthetic import write_synthetic_epitome
from empathy.train import resolve_ckpt_path, train


def subprocess_env() -> dict[str, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("EMPATHY_LOG_DIR", None)
    return env


def test_cluster_slurm_switches_the_launcher_and_reads_the_site_file(tmp_path):
    conf = shutil.copytree(CONFIG_DIR, tmp_path / "conf")
    with initialize_config_dir(str(conf), version_base="1.3"):
        cfg = compose("train", overrides=["cluster=slurm"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.max_num_timeout > 0 and launcher.partition is None
    raw = OmegaConf.to_container(cfg.hydra.sweep, resolve=False)
    assert raw["subdir"] == "${hydra.job.num}_${hydra.job.id}"

    # conf/cluster/local.yaml (git-ignored) wins over slurm.yaml; the command line wins over both.
    shutil.copyfile(conf / "cluster" / "local.yaml.example", conf / "cluster" / "local.yaml")
    with initialize_config_dir(str(conf), version_base="1.3"):
        cfg = compose("train", overrides=["cluster=slurm", "hydra.launcher.mem_gb=64"], return_hydra_config=True)
    assert cfg.hydra.launcher.partition == "gpu" and cfg.hydra.launcher.account == "my-project"
    assert cfg.hydra.launcher.timeout_min == 480 and cfg.hydra.launcher.mem_gb == 64


@pytest.mark.slow
def test_submitit_local_runs_two_jobs_and_collects_their_results(tmp_path):
    data = write_synthetic_epitome(tmp_path / "data", n_rows=40, seed=0)
    logs = tmp_path / "logs"
    command = [
        sys.executable, "-m", "empathy.train", "-m", "cluster=submitit_local", "encoder=tiny", "debug=limit",
        "seed=1,2", "logger=csv", f"paths.data_dir={data}", f"paths.log_dir={logs}",
        f"paths.cache_dir={tmp_path / 'cache'}", "trainer.precision=32-true", "++trainer.enable_progress_bar=false",
    ]  # fmt: skip
    done = subprocess.run(command, cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (sweep,) = (logs / "train" / "multiruns").iterdir()
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    # Folders are <job number>_<submitit job id>; each has its results.
    assert [p.name.split("_")[0] for p in jobs] == ["0", "1"] and all("_" in p.name for p in jobs)
    assert [json.loads((job / "metrics.json").read_text())["seed"] for job in jobs] == [1, 2]
    assert "2 jobs, 2 finished" in (sweep / "sweep_summary.md").read_text()


class _CrashAtEpoch(pl.Callback):
    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            raise RuntimeError("simulated preemption")


class _StartStep(pl.Callback):
    def on_train_start(self, trainer, pl_module):
        self.step, self.epoch = trainer.global_step, trainer.current_epoch


def test_a_rerun_of_the_same_job_folder_resumes_from_its_last_checkpoint(tmp_path, monkeypatch):
    data = write_synthetic_epitome(tmp_path / "data", n_rows=40, seed=0)
    out = tmp_path / "job"
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                "encoder=tiny", "debug=limit", "logger=csv", "trainer.max_epochs=2", "trainer.precision=32-true",
                "trainer.accelerator=cpu", "++trainer.enable_progress_bar=false",
                "++trainer.enable_model_summary=false",
                "data.batch_size=8", "callbacks.resumable.every_n_train_steps=0",
            ],
        )  # fmt: skip
    with open_dict(cfg):
        cfg.paths.data_dir, cfg.paths.cache_dir = str(data), str(tmp_path / "cache")
        cfg.paths.output_dir = cfg.paths.log_dir = str(out)
    assert cfg.resume == "auto" and cfg.ckpt_path is None

    build = runner.build_callbacks
    monkeypatch.setattr(runner, "build_callbacks", lambda c, **kw: [*build(c, **kw), _CrashAtEpoch(1)])
    with pytest.raises(RuntimeError, match="simulated preemption"):
        train(cfg, out)
    saved = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["epoch"] == 0 and saved["global_step"] > 0

    probe = _StartStep()
    monkeypatch.setattr(runner, "build_callbacks", lambda c, **kw: [*build(c, **kw), probe])
    result = train(cfg, out)
    assert (probe.step, probe.epoch) == (saved["global_step"], 1)
    assert result["epochs"] == 2 and (out / "metrics.json").exists()


def test_resolve_ckpt_path(tmp_path):
    assert resolve_ckpt_path(None, tmp_path, "auto") is None
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"")
    assert resolve_ckpt_path(None, tmp_path, "auto") == str(tmp_path / "checkpoints" / "last.ckpt")
    assert resolve_ckpt_path(None, tmp_path, "never") is None
    with pytest.raises(ValueError, match="resume: expected auto or never"):
        resolve_ckpt_path(None, tmp_path, "yes")
