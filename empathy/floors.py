"""Floors: what trivial rules score on a split, to show beside a model what it learned.

- majority level: predict the train split's most frequent level for every test row;
- every response token is rationale: under the paper's labelling (all rows) and the strict one
  (rows with gold level > 0).
Computed with the same metric classes as the model's figures.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence

import torch

from empathy.metrics import RationaleMetrics, level_metrics


def _pad(rows: Sequence[Sequence[int]]) -> torch.Tensor:
    width = max(len(r) for r in rows)
    return torch.tensor([list(r) + [0] * (width - len(r)) for r in rows], dtype=torch.long)


def floor_metrics(train_levels: Sequence[int], test: Mapping[str, Sequence]) -> dict[str, float]:
    """``test`` holds the split's ``level``, ``response_mask``, ``rationale_paper`` and
    ``rationale_strict`` columns (an HF dataset or a dict of lists)."""
    majority = Counter(train_levels).most_common(1)[0][0]
    gold = torch.tensor(list(test["level"]), dtype=torch.long)
    levels = level_metrics()
    levels.update(torch.full_like(gold, majority), gold)
    values = levels.compute()
    mask = _pad(test["response_mask"]).bool()
    rationale = RationaleMetrics()
    rationale.update(
        mask.long(), _pad(test["rationale_paper"]), _pad(test["rationale_strict"]), mask, gold
    )
    out = {"majority_level": float(majority), "majority_acc": float(values["acc"]), "majority_macro_f1": float(values["macro_f1"])}
    for name, value in rationale.compute().items():
        out[f"every_token_{name}"] = float(value)
    return out


def floors_for_run(folder, mechanism: str | None = None) -> dict[str, float]:
    """The floors on the split of a finished training run (its ``resolved_config.yaml``); for a
    joint run (``model=joint``), those of ``mechanism`` on the same data settings."""
    from omegaconf import OmegaConf, open_dict

    from empathy import runner
    from empathy.results import is_joint_run

    source = f"{folder}/resolved_config.yaml"
    cfg = OmegaConf.load(source)
    if mechanism is not None and is_joint_run(OmegaConf.to_container(cfg)):
        with open_dict(cfg):
            cfg.mechanism = {"name": mechanism, "file": cfg.data.mechanism_files[mechanism]}
            cfg.data._target_ = "empathy.data.datamodule.EpitomeDataModule"
    datamodule = runner.build_datamodule(cfg, source=source)
    datamodule.setup()
    return floor_metrics(datamodule.dataset("train")["level"], datamodule.dataset("test"))
