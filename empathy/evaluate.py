"""Recompute the metrics of a saved model on a split of its own data.

    python -m empathy.evaluate ckpt_path=<run>/checkpoints/best-epoch03.ckpt [split=dev|test|train]
    python -m empathy.evaluate ckpt_path=... mechanism=IP encoder=minilm   # also checks the checkpoint
    python -m empathy.evaluate ckpt_path=... 'rationale_decoding={threshold:0.2,fill_gaps:4,IP:{fill_gaps:8}}'
    python -m empathy.evaluate ckpt_path=... 'level_offsets={ER:[-1,-1.5]}'   # decide levels otherwise
    python -m empathy.evaluate 'ckpt_path=[a.ckpt,b.ckpt,c.ckpt]'  # an ensemble: the mean of their probabilities
    python -m empathy.evaluate ckpt_path=... split=dev grid=[decoding,level_offsets]  # study plug-ins (docs/study.md)

The checkpoint carries its mechanisms, encoder and data settings; its data is rebuilt from them
with this machine's data and cache folders. Writes ``eval_<split>.json`` into the run folder and
prints the metrics (``<split>/<M>/...`` per mechanism and ``<split>/macro_f1``, their mean).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from empathy import CONFIG_DIR, runner
from empathy.data.split import SPLITS
from empathy.errors import user_errors
from empathy.io import write_json_atomic
from empathy.models.module import EmpathyModule


def check_matches(cfg: DictConfig, hparams: dict[str, Any], ckpt_path: str) -> None:
    """Fail clearly when the checkpoint is of other mechanisms or another encoder than asked for."""
    asked_mechanism = cfg.get("mechanism")
    if asked_mechanism is not None and list(asked_mechanism.mechanisms) != list(hparams["mechanisms"]):
        raise ValueError(
            f"{ckpt_path} is a model of {', '.join(hparams['mechanisms'])}, but mechanism={asked_mechanism.name} "
            f"({', '.join(asked_mechanism.mechanisms)}) was asked for"
        )
    asked_encoder = cfg.get("encoder")
    if asked_encoder is not None:
        saved = hparams["encoder"]
        if (asked_encoder.name, asked_encoder.get("path")) != (saved.get("name"), saved.get("path")):
            raise ValueError(
                f"{ckpt_path} was trained with encoder {saved.get('name')} ({saved.get('path')}), "
                f"but encoder={asked_encoder.name} ({asked_encoder.get('path')}) was asked for"
            )


def checkpoint_datamodule(cfg: DictConfig, module: EmpathyModule):
    """The data a checkpoint was trained on (its mechanisms, tokenizer, max_len, labelling and
    split settings), read from ``cfg.paths`` (the data and cache folders of this machine)."""
    hparams = module.hparams
    with open_dict(cfg):
        cfg.encoder = hparams["encoder"]
    datamodule = runner.build_datamodule(
        cfg, data_overrides=dict(hparams["data_config"]), mechanisms=module.mechanisms, source="checkpoint"
    )
    datamodule.setup()
    return datamodule


def evaluate(cfg: DictConfig, output_dir: Path) -> dict[str, float]:
    runner.quiet_libraries()
    paths = (
        list(cfg.ckpt_path) if OmegaConf.is_list(cfg.ckpt_path) or isinstance(cfg.ckpt_path, list) else [cfg.ckpt_path]
    )
    if not paths:
        raise ValueError("ckpt_path is an empty list")
    if cfg.split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, not {cfg.split!r}")
    callbacks = runner.build_callbacks(cfg)
    choosers = [type(cb).__name__ for cb in callbacks if getattr(cb, "chooses_settings", False)]
    if choosers and cfg.split == "test":
        raise ValueError(
            f"split=test with grid=... ({', '.join(choosers)}): the grids choose settings, which is done on dev "
            "(or the dev fold of a cross-validation), never on test; use split=dev"
        )
    paths = [hydra.utils.to_absolute_path(str(p)) for p in paths]
    module = EmpathyModule.from_checkpoints(paths)
    hparams = module.hparams
    check_matches(cfg, hparams, paths[0])
    if cfg.get("rationale_decoding") is not None:
        module.set_rationale_decoding(cfg.rationale_decoding)
    if cfg.get("level_offsets") is not None:
        module.set_level_offsets(cfg.level_offsets)
    datamodule = checkpoint_datamodule(cfg, module)
    trainer = runner.build_trainer(cfg, logger=False, callbacks=callbacks)
    # Validation scores any split and runs the study plug-ins (callbacks on validation batches).
    results = trainer.validate(module, dataloaders=datamodule.split_dataloader(cfg.split))[0]
    metrics = {key.replace("dev/", f"{cfg.split}/", 1): value for key, value in runner.scalar_metrics(results).items()}
    payload = {
        "checkpoint": paths[0] if len(paths) == 1 else paths,
        "split": cfg.split,
        "mechanisms": list(module.mechanisms),
        "rationale_decoding": dict(hparams["rationale_decoding"]),
        "level_offsets": hparams.get("level_offsets"),
        "metrics": metrics,
    }
    write_json_atomic(output_dir / f"eval_{cfg.split}.json", payload)
    print(json.dumps(payload, indent=2))
    return metrics


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="evaluate")
def main(cfg: DictConfig) -> None:
    with user_errors():
        evaluate(cfg, Path(HydraConfig.get().runtime.output_dir))


if __name__ == "__main__":
    main()
