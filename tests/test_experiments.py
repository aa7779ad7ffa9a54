"""Every named experiment (conf/experiment/*.yaml) composes and trains: one fast_dev_run each.

The parametrisation is the folder listing, so a new experiment file gets its test by existing:
there is no list to forget to update.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf, open_dict

from empathy import CONFIG_DIR
from empathy.data.synthetic import write_synthetic_epitome
from empathy.train import train

EXPERIMENT_DIR = Path(CONFIG_DIR) / "experiment"
EXPERIMENTS = sorted(p.stem for p in EXPERIMENT_DIR.glob("*.yaml"))
# What each ablation changes, checked on the composed config (experiments not listed here only
# need to compose and train).
EXPECTED = {
    "no_attention": ("model.net.use_attention", False),
    "no_rationale": ("loss.lambda_RE", 0.0),
    "seeker_finetuned": ("model.net.freeze_seeker", False),
    "paper": ("model.optimizer.lr", 2.0e-5),
}


@pytest.fixture(scope="module")
def synthetic_dir(tmp_path_factory) -> Path:
    return write_synthetic_epitome(tmp_path_factory.mktemp("epitome"), n_rows=40, seed=0)


def test_the_experiment_folder_is_listed():
    assert {"default", "no_attention", "no_rationale", "seeker_finetuned"} <= set(EXPERIMENTS)
    for name in EXPERIMENTS:
        first = (EXPERIMENT_DIR / f"{name}.yaml").read_text().splitlines()[0]
        assert first == "# @package _global_", f"conf/experiment/{name}.yaml must start with '# @package _global_'"


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_composes_and_runs_a_fast_dev_run(experiment, synthetic_dir, tmp_path):
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                f"experiment={experiment}",
                "encoder=tiny",
                "debug=fast",
                "trainer.accelerator=cpu",
                "trainer.precision=32-true",
                "++trainer.enable_progress_bar=false",
                "++trainer.enable_model_summary=false",
            ],
        )
    with open_dict(cfg):
        cfg.paths.data_dir = str(synthetic_dir)
        cfg.paths.cache_dir = str(tmp_path / "cache")
        cfg.paths.output_dir = str(tmp_path)
        cfg.paths.log_dir = str(tmp_path)
    if experiment in EXPECTED:
        key, value = EXPECTED[experiment]
        assert OmegaConf.select(cfg, key) == value, f"experiment={experiment}: {key}"
    result = train(cfg, tmp_path)
    assert 0.0 <= result["metrics"]["test/macro_f1"] <= 1.0
    assert (tmp_path / "metrics.json").exists()
