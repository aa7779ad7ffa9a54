"""Every config file composes: each option of each group of train.yaml, and each top-level config."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from empathy import CONFIG_DIR, runner

CONF = Path(CONFIG_DIR)
TRAIN_GROUPS = [
    "mechanism",
    "encoder",
    "loss",
    "data",
    "model",
    "trainer",
    "logger",
    "callbacks",
    "grid",
    "debug",
    "paths",
    "cluster",
    "hparams_search",
]
NEEDS_VALUE = {"encoder/local": ["encoder.path=/some/folder"]}
PLUGINS = {"hparams_search/optuna": "hydra_plugins.hydra_optuna_sweeper"}


def _options():
    for group in TRAIN_GROUPS:
        for path in sorted((CONF / group).glob("*.yaml")):
            yield f"{group}/{path.stem}"


@pytest.mark.parametrize("option", list(_options()))
def test_every_train_group_option_composes_and_resolves(option, tmp_path):
    plugin = PLUGINS.get(option)
    if plugin and importlib.util.find_spec(plugin) is None:
        pytest.skip(f"{option} needs the optional {plugin.split('.')[-1]} plugin (pip install -e '.[optuna]')")
    group, name = option.split("/")
    cfg = runner.compose_config("train", [f"{group}={name}", *NEEDS_VALUE.get(option, [])], output_dir=tmp_path)
    container = OmegaConf.to_container(cfg, resolve=True)
    assert container["mechanism"]["mechanisms"] and set(container["mechanism"]["mechanisms"]) <= {"ER", "IP", "EX"}
    assert container["encoder"]["name"]


TOP_LEVEL = {
    "train": [],
    "prepare": [],
    "evaluate": ["ckpt_path=x.ckpt"],
    "predict": ["input=in.csv", "output=out.csv", "models.ER=x.ckpt"],
    "export": ["ckpt_path=x.ckpt", "out=folder"],
    "report": ["input=scored.csv", "output=out.html"],
    "analyze": ["input=scored.csv"],
    "pretrain": [],
}


def test_every_top_level_config_is_tested():
    assert {p.stem for p in CONF.glob("*.yaml")} == set(TOP_LEVEL)


@pytest.mark.parametrize("name", sorted(TOP_LEVEL))
def test_top_level_config_composes(name, tmp_path):
    cfg = runner.compose_config(name, TOP_LEVEL[name])
    assert cfg.task_name == name
    OmegaConf.to_container(cfg.get("paths", {}), resolve=False)


@pytest.mark.parametrize("corpus", sorted(p.stem for p in (CONF / "corpus").glob("*.yaml")))
def test_every_corpus_option_composes(corpus, tmp_path):
    cfg = runner.compose_config("pretrain", [f"corpus={corpus}"], output_dir=tmp_path)
    OmegaConf.to_container(cfg.corpus, resolve=True)
