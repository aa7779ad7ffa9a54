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
    rationale.update(mask.long(), _pad(test["rationale_paper"]), _pad(test["rationale_strict"]), mask, gold)
    out = {
        "majority_level": float(majority),
        "majority_acc": float(values["acc"]),
        "majority_macro_f1": float(values["macro_f1"]),
    }
    for name, value in rationale.compute().items():
        out[f"every_token_{name}"] = float(value)
    return out


def datamodule_floors(datamodule, mechanism: str) -> dict[str, float]:
    """The floors of ``mechanism`` on a data module's split (set up here)."""
    from empathy.data.merge import IGNORE_INDEX, level_column, rationale_column

    datamodule.setup()
    test = datamodule.dataset("test")
    level = level_column(mechanism)
    labelled = [i for i, v in enumerate(test[level]) if v != IGNORE_INDEX]
    columns = {
        "level": level,
        "response_mask": "response_mask",
        "rationale_paper": rationale_column(mechanism, "paper"),
        "rationale_strict": rationale_column(mechanism, "strict"),
    }
    train = [v for v in datamodule.dataset("train")[level] if v != IGNORE_INDEX]
    return floor_metrics(train, {k: [test[c][i] for i in labelled] for k, c in columns.items()})


def floors_for_run(folder, mechanism: str | None = None) -> dict[str, float]:
    """The floors of ``mechanism`` (default: the run's only one) on the split of a finished
    training run, rebuilt from its ``resolved_config.yaml`` (checked plain: it is loaded data)."""
    from omegaconf import OmegaConf

    from empathy import runner

    source = f"{folder}/resolved_config.yaml"
    cfg = OmegaConf.load(source)
    mechanisms = [mechanism] if mechanism else runner.config_mechanisms(cfg)
    if len(mechanisms) != 1:
        raise ValueError(f"{source}: a run of {', '.join(mechanisms)}: name the mechanism to compute floors for")
    return datamodule_floors(runner.build_datamodule(cfg, mechanisms=mechanisms, source=source), mechanisms[0])
