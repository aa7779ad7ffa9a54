"""Optuna search (the optional extra `.[optuna]`): two trials on the tiny encoder, for real."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml

from empathy.data.synthetic import write_synthetic_epitome


@pytest.mark.slow
def test_optuna_runs_two_trials_and_maximises_the_dev_macro_f1(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="pip install -e '.[optuna]'")
    data = write_synthetic_epitome(tmp_path / "data", n_rows=40, seed=0)
    logs = tmp_path / "logs"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "TOKENIZERS_PARALLELISM": "false"}
    command = [
        sys.executable, "-m", "empathy.train", "hparams_search=optuna", "hydra.sweeper.n_trials=2",
        "encoder=tiny", "debug=limit", "logger=csv", f"paths.data_dir={data}", f"paths.log_dir={logs}",
        f"paths.cache_dir={tmp_path / 'cache'}", "trainer.precision=32-true", "++trainer.enable_progress_bar=false",
    ]  # fmt: skip
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (sweep,) = (logs / "train" / "multiruns").iterdir()
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1"]
    found = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert set(found["best_params"]) == {
        "model.optimizer.lr",
        "model.scheduler.warmup_ratio",
        "loss.lambda_RE",
        "trainer.max_epochs",
    }
    assert 0.0 <= found["best_value"] <= 1.0
    assert "2 jobs, 2 finished" in (sweep / "sweep_summary.md").read_text()
